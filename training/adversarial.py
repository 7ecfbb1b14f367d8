"""Adversarial training: the inner maximisation, for every head, against the model as served.

    fgsm    FGSM with a random start (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020)
    pgd     PGD with a random start (Madry et al., ICLR 2018)
    trades  TRADES: CE(f(x), y) + beta KL(f(x) || f(x')) (Zhang et al., ICML 2019)

The inner attack runs with BatchNorm frozen (eval mode) and the noise **on**: each step
draws ``eot`` fresh noise draws and averages their gradients, in one backward pass
(all noise is after the backbone). The outer step then trains on one fresh draw per input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from models import StochasticClassifier
from models.attacks import eot_grad, eval_mode
from models.attacks.base import project_linf

ADV_KINDS = ("none", "fgsm", "pgd", "trades")


@dataclass(frozen=True)
class AdvConfig:
    """Settings of adversarial training.

    Attributes:
        kind: one of ``ADV_KINDS``.
        eps: L-inf radius in pixel space (reached after ``ramp`` epochs).
        steps: inner steps (pgd, trades; fgsm takes one).
        alpha: inner step size.
        eot: noise draws averaged per inner gradient (fresh each step).
        ramp: epochs over which eps rises linearly from 0 (0: full eps from the start).
        beta: TRADES weight of the KL term.
    """

    kind: str = "none"
    eps: float = 0.1
    steps: int = 1
    alpha: float = 0.125
    eot: int = 1
    ramp: float = 0.0
    beta: float = 6.0

    def __post_init__(self) -> None:
        if self.kind not in ADV_KINDS:
            raise ValueError(f"unknown adversarial training {self.kind!r}; choose one of {list(ADV_KINDS)}")
        if self.eps < 0 or self.alpha <= 0 or self.steps < 1 or self.eot < 1 or self.ramp < 0 or self.beta < 0:
            raise ValueError(
                "adversarial training needs eps >= 0, alpha > 0, steps >= 1, eot >= 1, ramp >= 0, beta >= 0"
            )

    @classmethod
    def build(
        cls,
        kind: str,
        eps: float,
        *,
        steps: int | None = None,
        alpha: float | None = None,
        eot: int = 1,
        ramp: float = 0.0,
        beta: float = 6.0,
    ) -> AdvConfig:
        """Fill the usual defaults: fgsm alpha 1.25 eps (one step); pgd/trades 10 steps of 2.5 eps / steps."""
        if kind == "fgsm":
            steps = 1
            alpha = 1.25 * eps if alpha is None else alpha
        else:
            steps = 10 if steps is None else steps
            alpha = 2.5 * eps / steps if alpha is None else alpha
        return cls(kind=kind, eps=eps, steps=steps, alpha=max(alpha, 1e-12), eot=eot, ramp=ramp, beta=beta)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def eps_at(self, epoch_progress: float) -> float:
        """Linear eps ramp over the first ``ramp`` epochs."""
        if self.ramp <= 0:
            return self.eps
        return self.eps * min(1.0, epoch_progress / self.ramp)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kl_per_draw(logits_clean: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(softmax(clean) || softmax(adv)) per draw and input [T, B]."""
    p_log = F.log_softmax(logits_clean, dim=-1)
    q_log = F.log_softmax(logits_adv, dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def _trades_inner(
    model: StochasticClassifier,
    x: torch.Tensor,
    eps: float,
    cfg: AdvConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Maximise KL(f(x) || f(x')) over the eps ball; each step's draws are shared by x and x'."""
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=generator).to(x.device)).clamp(0.0, 1.0)
    with torch.no_grad():
        mu_clean = model.features(x)  # (B, D): the clean pass, reused by every step
    alpha = cfg.alpha * eps / cfg.eps if cfg.eps > 0 else cfg.alpha
    for _ in range(cfg.steps):
        x_adv = x_adv.detach().requires_grad_(True)
        noise = model.sample_noise(cfg.eot, generator)  # (T, D)
        kl = _kl_per_draw(model.head(mu_clean, noise), model.head(model.features(x_adv), noise))  # (T, B)
        (grad,) = torch.autograd.grad(kl.mean(0).sum(), x_adv)
        x_adv = project_linf(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def perturb(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AdvConfig,
    eps: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Adversarial inputs for one training batch at radius ``eps`` (the ramped value).

    The step size scales with the ramp (``alpha * eps / cfg.eps``), so a ramped run keeps
    the ratio of step to radius.
    """
    if eps <= 0:
        return x
    with eval_mode(model):
        if cfg.kind == "trades":
            return _trades_inner(model, x, eps, cfg, generator)
        alpha = cfg.alpha * eps / cfg.eps
        u = torch.rand(x.shape, generator=generator).to(x.device)
        x_adv = project_linf(x + (2 * u - 1) * eps, x, eps)  # random start, uniform in the ball
        for _ in range(cfg.steps):
            grad = eot_grad(model, x_adv, y, cfg.eot, generator)
            x_adv = project_linf(x_adv + alpha * grad.sign(), x, eps)
    return x_adv.detach()


def adversarial_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    cfg: AdvConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The outer loss on one draw per input ``noise`` [1, B, D], and the logits it was judged on.

    fgsm/pgd: CE on the adversarial inputs. trades: CE on the clean inputs plus beta times
    the KL between clean and adversarial predictions under the same draw. ``net`` may be the
    DDP wrapper: clean and adversarial inputs go through it in one call.
    """
    if cfg.kind != "trades":
        logits = net(x_adv, noise)[0]  # (B, K)
        return F.cross_entropy(logits, y), logits
    b = x.shape[0]
    both = net(torch.cat([x, x_adv]), torch.cat([noise, noise], dim=1))[0]  # (2B, K)
    clean, adv = both[:b], both[b:]
    kl = _kl_per_draw(clean.unsqueeze(0), adv.unsqueeze(0)).mean()
    return F.cross_entropy(clean, y) + cfg.beta * kl, clean
