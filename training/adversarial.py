"""Adversarial training: the inner maximisation, for every head, against the model as served.

    fgsm    FGSM with a random start (Wong, Rice & Kolter, "Fast is better than free", ICLR 2020)
    pgd     PGD with a random start (Madry et al., ICLR 2018)
    trades  TRADES: CE(f(x), y) + beta KL(f(x) || f(x')) (Zhang et al., ICML 2019)

The inner attack runs with BatchNorm frozen (eval mode) and the noise **on**: each step
draws ``eot`` fresh noise draws and averages their gradients, in one backward pass
(all noise is after the backbone). The outer step then trains on one fresh draw per input.

The outer objective (``objective``; fgsm and pgd) decides what an adversarial input is trained
towards:

    at        CE towards the label on the whole batch, all of it adversarial (Madry et al.).
    ccat      confidence-calibrated adversarial training (Stutz, Hein & Schiele, ICML 2020): half
              the batch clean with CE towards the label, half adversarial with CE towards
              lambda one_hot(y) + (1 - lambda) uniform, lambda = (1 - min(1, |delta|_inf / eps))^rho;
              the flag is then low confidence (max mean probability), which CCAT rejects on.
    disagree  half clean, half adversarial, CE towards the label on both (one draw each) plus
              ``disagree_weight`` times (mutual information of ``disagree_draws`` draws on the
              clean half - the same on the adversarial half): the draws are taught to disagree
              on adversarial inputs and agree on clean ones, which is what the served mutual-
              information flag measures.

``inner_loss`` picks what the inner attack maximises: ``ce`` (the label's cross-entropy, as
always) or ``conf`` (the log-probability of the most likely wrong class, per draw: CCAT's attack).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from models import StochasticClassifier
from models.attacks import eot_grad, eval_mode
from models.attacks.base import project_linf
from models.uncertainty import entropy

ADV_KINDS = ("none", "fgsm", "pgd", "trades")
ADV_OBJECTIVES = ("at", "ccat", "disagree")
ADV_INNER_LOSSES = ("ce", "conf")
ADV_RADII = ("full", "uniform")


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
        objective: the outer objective, one of ``ADV_OBJECTIVES`` (module docstring).
        inner_loss: what the inner attack maximises, one of ``ADV_INNER_LOSSES``.
        ccat_rho: CCAT's power rho in lambda(delta) = (1 - min(1, |delta|_inf / eps))^rho.
        disagree_weight: weight of the mutual-information term of ``disagree``.
        disagree_draws: noise draws per input whose mutual information ``disagree`` measures.
        radius: ``full``: every adversarial input at the (ramped) eps; ``uniform``: each at its own
            radius drawn uniformly from [0, eps] (fgsm, pgd), so that CCAT's lambda(delta) spans [0, 1]
            rather than sitting at 0 (a one-step attack with a random start ends at |delta|_inf = eps).
    """

    kind: str = "none"
    eps: float = 0.1
    steps: int = 1
    alpha: float = 0.125
    eot: int = 1
    ramp: float = 0.0
    beta: float = 6.0
    objective: str = "at"
    inner_loss: str = "ce"
    ccat_rho: float = 10.0
    disagree_weight: float = 1.0
    disagree_draws: int = 8
    radius: str = "full"

    def __post_init__(self) -> None:
        if self.kind not in ADV_KINDS:
            raise ValueError(f"unknown adversarial training {self.kind!r}; choose one of {list(ADV_KINDS)}")
        if self.objective not in ADV_OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {list(ADV_OBJECTIVES)}")
        if self.inner_loss not in ADV_INNER_LOSSES:
            raise ValueError(f"unknown inner loss {self.inner_loss!r}; choose one of {list(ADV_INNER_LOSSES)}")
        if self.eps < 0 or self.alpha <= 0 or self.steps < 1 or self.eot < 1 or self.ramp < 0 or self.beta < 0:
            raise ValueError(
                "adversarial training needs eps >= 0, alpha > 0, steps >= 1, eot >= 1, ramp >= 0, beta >= 0"
            )
        if self.radius not in ADV_RADII:
            raise ValueError(f"unknown radius {self.radius!r}; choose one of {list(ADV_RADII)}")
        if self.ccat_rho < 0 or self.disagree_weight < 0 or self.disagree_draws < 2:
            raise ValueError("adversarial training needs ccat_rho >= 0, disagree_weight >= 0, disagree_draws >= 2")
        if (self.objective, self.inner_loss, self.radius) != ("at", "ce", "full") and self.kind not in ("fgsm", "pgd"):
            raise ValueError(
                f"objective {self.objective!r}, inner loss {self.inner_loss!r}, radius {self.radius!r} "
                f"need fgsm or pgd, not {self.kind!r}"
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
        **objective: Any,
    ) -> AdvConfig:
        """Fill the usual defaults: fgsm alpha 1.25 eps (one step); pgd/trades 10 steps of 2.5 eps / steps.

        ``objective`` holds the outer objective's settings (``objective``, ``inner_loss``,
        ``ccat_rho``, ``disagree_weight``, ``disagree_draws``, ``radius``).
        """
        if kind == "fgsm":
            steps = 1
            alpha = 1.25 * eps if alpha is None else alpha
        else:
            steps = 10 if steps is None else steps
            alpha = 2.5 * eps / steps if alpha is None else alpha
        return cls(kind=kind, eps=eps, steps=steps, alpha=max(alpha, 1e-12), eot=eot, ramp=ramp, beta=beta, **objective)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def split(self) -> bool:
        """Whether a batch is half clean, half adversarial (ccat, disagree) rather than all adversarial."""
        return self.active and self.objective != "at"

    @property
    def outer_draws(self) -> int:
        """Noise draws per input the outer loss needs: one for the CE, plus those ``disagree`` compares."""
        return 1 + self.disagree_draws if self.active and self.objective == "disagree" else 1

    def eps_at(self, epoch_progress: float) -> float:
        """Linear eps ramp over the first ``ramp`` epochs."""
        if self.ramp <= 0:
            return self.eps
        return self.eps * min(1.0, epoch_progress / self.ramp)

    def to_dict(self) -> dict[str, Any]:
        """The settings, less those of objectives this run does not use."""
        d = asdict(self)
        if self.objective != "ccat":
            del d["ccat_rho"]
        if self.objective != "disagree":
            del d["disagree_weight"], d["disagree_draws"]
        if self.split:
            d["batch"] = "half clean, half adversarial"
        return d


def clean_count(batch: int) -> int:
    """How many inputs of a split batch stay clean: the first half (the rest are attacked)."""
    return batch // 2


def wrong_confidence_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CCAT's attack objective per draw and input [T, B]: the log-probability of the most likely wrong class."""
    logp = F.log_softmax(logits, dim=-1)
    own = F.one_hot(y, logits.shape[-1]).bool().expand_as(logp)
    return logp.masked_fill(own, float("-inf")).amax(-1)


def ccat_lambda(delta: torch.Tensor, eps: float, rho: float) -> torch.Tensor:
    """CCAT's weight of the label per input [B]: (1 - min(1, |delta|_inf / eps))^rho (1 when eps is 0)."""
    if eps <= 0:
        return delta.new_ones(delta.shape[0])
    size = delta.detach().flatten(1).abs().amax(1) / eps
    return (1 - size.clamp(max=1.0)) ** rho


def mutual_information(logits: torch.Tensor) -> torch.Tensor:
    """Mutual information [B] (nats) between the draws of logits [T, B, K] and the label; differentiable."""
    probs = F.softmax(logits, dim=-1)
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


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
    the ratio of step to radius; with ``cfg.radius == "uniform"`` each input gets its own radius,
    uniform in [0, eps]. With a split objective (``cfg.split``) only the second half of the batch
    is attacked; the first ``clean_count`` inputs come back unchanged.
    """
    if eps <= 0:
        return x
    if cfg.split:
        h = clean_count(x.shape[0])
        return torch.cat([x[:h], perturb(model, x[h:], y[h:], replace(cfg, objective="at"), eps, generator)])
    loss = "ce" if cfg.inner_loss == "ce" else wrong_confidence_loss
    with eval_mode(model):
        if cfg.kind == "trades":
            return _trades_inner(model, x, eps, cfg, generator)
        r: float | torch.Tensor = eps  # the radius, or one per input [B]
        scale: float | torch.Tensor = eps  # the same, shaped to broadcast over [B, C, H, W]
        if cfg.radius == "uniform":
            r = eps * torch.rand(x.shape[0], generator=generator).to(x.device)
            scale = r.view(-1, *([1] * (x.dim() - 1)))
        alpha = cfg.alpha * scale / cfg.eps
        u = torch.rand(x.shape, generator=generator).to(x.device)
        x_adv = project_linf(x + (2 * u - 1) * scale, x, r)  # random start, uniform in the ball
        for _ in range(cfg.steps):
            grad = eot_grad(model, x_adv, y, cfg.eot, generator, loss=loss)
            x_adv = project_linf(x_adv + alpha * grad.sign(), x, r)
    return x_adv.detach()


def adversarial_loss(
    net: torch.nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    cfg: AdvConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The outer loss, the logits it was judged on (one draw per input, [B, K]) and what it is made of.

    ``noise`` [cfg.outer_draws, B, D]: the first draw for the CE terms, the others (disagree) for
    the mutual information. fgsm/pgd with ``at``: CE on the adversarial inputs. trades: CE on the
    clean inputs plus beta times the KL between clean and adversarial predictions under the same
    draw. ccat/disagree: ``x_adv`` is the split batch from ``perturb`` (module docstring). ``net``
    may be the DDP wrapper: every input goes through it in one call.
    """
    if cfg.kind == "trades":
        b = x.shape[0]
        both = net(torch.cat([x, x_adv]), torch.cat([noise, noise], dim=1))[0]  # (2B, K)
        clean, adv = both[:b], both[b:]
        kl = _kl_per_draw(clean.unsqueeze(0), adv.unsqueeze(0)).mean()
        return F.cross_entropy(clean, y) + cfg.beta * kl, clean, {}
    if cfg.objective == "at":
        logits = net(x_adv, noise)[0]  # (B, K)
        return F.cross_entropy(logits, y), logits, {}
    h = clean_count(x.shape[0])
    draws = net(x_adv, noise)  # (outer_draws, B, K)
    logits = draws[0]
    hit = (logits.argmax(-1) == y).float()
    parts = {"acc_clean": float(hit[:h].mean()) if h else float("nan"), "acc_adv": float(hit[h:].mean())}
    if cfg.objective == "ccat":
        k = logits.shape[-1]
        lam = ccat_lambda(x_adv[h:] - x[h:], cfg.eps, cfg.ccat_rho)  # (B - h,)
        target = F.one_hot(y, k).to(logits.dtype)
        target = torch.cat([target[:h], lam[:, None] * target[h:] + (1 - lam[:, None]) / k])
        parts["ccat_lambda"] = float(lam.mean())
        return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean(), logits, parts
    mi = mutual_information(draws[1:])  # (B,)
    mi_clean = mi[:h].mean() if h else mi.new_zeros(())
    mi_adv = mi[h:].mean()
    parts.update(mi_clean=float(mi_clean.detach()), mi_adv=float(mi_adv.detach()))
    return F.cross_entropy(logits, y) + cfg.disagree_weight * (mi_clean - mi_adv), logits, parts
