"""Shared machinery for attacks: the registry, the EOT gradient, and the result type."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..classifier import StochasticClassifier


@dataclass
class AttackResult:
    """Adversarial inputs and what they cost.

    Attributes:
        x_adv: adversarial inputs [B, C, H, W] in [0, 1].
        grad_evals: backward passes through the backbone (one per step, whatever the EOT draws).
        draws: noise draws whose gradients were averaged, summed over steps.
        queries: forward queries of a score-based attack (0 for gradient attacks).
        info: attack-specific extras (e.g. the eps bracket of a minimal-eps search).
    """

    x_adv: torch.Tensor
    grad_evals: int = 0
    draws: int = 0
    queries: int = 0
    info: dict[str, Any] = field(default_factory=dict)


AttackFn = Callable[..., AttackResult]


@dataclass(frozen=True)
class AttackSpec:
    """A registered attack: its function, default settings and kind (gradient or score)."""

    name: str
    fn: AttackFn
    defaults: dict[str, Any]
    kind: str
    doc: str


_ATTACKS: dict[str, AttackSpec] = {}


def register_attack(name: str, *, kind: str = "gradient", **defaults: Any) -> Callable[[AttackFn], AttackFn]:
    """Register ``fn(model, x, y, *, eps, generator, **settings) -> AttackResult``."""

    def deco(fn: AttackFn) -> AttackFn:
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is already registered")
        _ATTACKS[name] = AttackSpec(name, fn, dict(defaults), kind, (fn.__doc__ or "").strip())
        return fn

    return deco


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack(name: str) -> AttackSpec:
    if name not in _ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {list_attacks()}")
    return _ATTACKS[name]


def run_attack(
    name: str,
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    **settings: Any,
) -> AttackResult:
    """Run a registered attack with its defaults overridden by ``settings``."""
    spec = get_attack(name)
    unknown = set(settings) - set(spec.defaults)
    if unknown:
        raise ValueError(f"attack {name!r} has no setting(s) {sorted(unknown)}; valid: {sorted(spec.defaults)}")
    kwargs = {**spec.defaults, **settings}
    return spec.fn(model, x, y, eps=eps, generator=generator, **kwargs)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put the model in eval mode (BatchNorm statistics frozen), restoring afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def eot_logits(
    model: StochasticClassifier, x: torch.Tensor, eot: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Logits [T, B, K] for ``eot`` draws (0: noise off), from **one** backbone pass."""
    mu = model.features(x)  # (B, D): the only backbone pass
    noise = None if eot == 0 else model.sample_noise(eot, generator)  # (T, D)
    return model.head(mu, noise)  # (T, B, K)


def eot_loss_grad(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eot: int,
    generator: torch.Generator | None = None,
    loss: str = "ce",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input loss [B] averaged over ``eot`` draws (0: noise off) and its gradient w.r.t. x.

    One backward pass whatever ``eot`` is (all noise is after the backbone); ``eot_grad``
    is its gradient alone.
    """
    x = x.detach().requires_grad_(True)
    logits = eot_logits(model, x, eot, generator)  # (T, B, K)
    t = logits.shape[0]
    if loss == "ce":
        per_draw = F.cross_entropy(logits.flatten(0, 1), y.repeat(t), reduction="none").view(t, -1)  # (T, B)
    elif loss == "dlr":
        per_draw = dlr_loss(logits, y)  # (T, B)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose 'ce' or 'dlr'")
    per_input = per_draw.mean(0)  # (B,)
    (grad,) = torch.autograd.grad(per_input.sum(), x)
    return per_input.detach(), grad


def eot_grad(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eot: int,
    generator: torch.Generator | None = None,
    loss: str = "ce",
) -> torch.Tensor:
    """Gradient w.r.t. x of the loss averaged over ``eot`` noise draws (0: noise off).

    All noise is after the backbone, so the mean over T draws of the per-draw
    gradients is one backward pass: d/dx mean_t L(head(f(x), eps_t)).
    Each input's loss is summed over the batch, so its gradient does not depend
    on the batch size.
    """
    return eot_loss_grad(model, x, y, eot, generator, loss)[1]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020) per draw and input, [T, B]."""
    srt, _ = logits.sort(dim=-1)
    z_y = logits.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    top = srt[..., -1]
    second = srt[..., -2]
    other = torch.where(z_y == top, second, top)
    return -(z_y - other) / (srt[..., -1] - srt[..., -3] + 1e-12)


@torch.no_grad()
def predict_draws(
    model: StochasticClassifier, x: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logits [T, B, K] for ``samples`` fresh noise draws (one backbone pass)."""
    return eot_logits(model, x, samples, generator)


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(torch.min(torch.max(x_adv, x - eps), x + eps), 0.0, 1.0)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    delta = delta * torch.clamp(eps / norms, max=1.0)
    return torch.clamp(x + delta, 0.0, 1.0)
