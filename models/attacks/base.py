"""Shared machinery for attacks: the typed spec every attack declares, the registry, the EOT
gradient and the result type.

An attack is one pydantic model (a subclass of ``Attack``) in one file of this package:
its fields are the settings with their defaults and bounds, ``cost`` is its cost formula
and ``run`` does the work. ``@register_attack`` adds it to the registry; the discriminated
union ``AttackSpec`` (on ``name``) is built from the registry, so the HTTP edge, the
evaluation suites and the training code all validate with the same model, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..classifier import StochasticClassifier

StopFn = Callable[[], bool]
"""Called between steps (queries, bisection rounds); True stops the attack with what it has."""

Rng = torch.Generator | None
"""An attack's random stream (None: torch's global one)."""


def default_eps(input_shape: Sequence[int]) -> float:
    """The default L-inf budget in pixel space: 0.1 for images up to 28x28 (MNIST-like), 8/255 above.

    The one rule for every caller (attack specs, evaluation, training, the probe).
    """
    return 0.1 if int(input_shape[-1]) <= 28 else 8 / 255


@dataclass
class AttackResult:
    """Adversarial inputs and what they cost.

    Attributes:
        x_adv: adversarial inputs [B, C, H, W] in [0, 1].
        grad_evals: backward passes through the backbone (one per step, whatever the EOT draws).
        draws: noise draws whose gradients were averaged, summed over steps.
        queries: forward queries of a score-based attack (0 for gradient attacks).
        stopped: True when ``should_stop`` ended the attack before its budget was spent.
        info: attack-specific extras (e.g. the eps bracket of a minimal-eps search).
    """

    x_adv: torch.Tensor
    grad_evals: int = 0
    draws: int = 0
    queries: int = 0
    stopped: bool = False
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackCost:
    """Work an attack needs for ``inputs`` inputs, in the units the service caps.

    The unit is a backbone pass for one input: all noise is after the backbone, so the EOT draws
    of a step share its one backward pass, and a score query's draws share its one forward pass
    (a draw costs a [D] x [D, K] product, a rounding error next to the backbone). How many draws
    one head evaluation takes is bounded separately (``Attack.draws``).

    Attributes:
        gradient: backward passes x inputs, plus the forward passes that judge tries (min_eps, suites).
        queries: score queries (forward passes) x inputs.
    """

    gradient: int = 0
    queries: int = 0

    def __add__(self, other: AttackCost) -> AttackCost:
        return AttackCost(self.gradient + other.gradient, self.queries + other.queries)


class Attack(BaseModel):
    """Base of every attack spec: the name, the L-inf (or L2) budget ``eps`` and the attack's settings.

    ``eps=None`` means the default for the model's input size (``default_eps``); ``resolve``
    fills it (and any other setting whose default depends on eps), so a resolved spec lists
    every value the attack runs with.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ClassVar[Literal["gradient", "score"]] = "gradient"
    norm: ClassVar[Literal["linf", "l2"]] = "linf"

    name: str
    eps: float | None = Field(
        None, ge=0, le=1, description="Budget in pixel units; default 0.1 (up to 28x28) or 8/255 (larger)."
    )

    def resolve(self, input_shape: Sequence[int]) -> Attack:
        """This spec with ``eps`` (and eps-dependent defaults) filled for a model of ``input_shape``."""
        eps = default_eps(input_shape) if self.eps is None else self.eps
        return self.model_copy(update={"eps": float(eps), **self._eps_defaults(float(eps))})

    def _eps_defaults(self, eps: float) -> dict[str, Any]:
        """Settings whose default depends on eps (e.g. PGD's step eps/4); overridden by attacks."""
        return {}

    @property
    def budget(self) -> float:
        """The resolved eps (raises when the spec is not resolved)."""
        if self.eps is None:
            raise ValueError(f"attack {self.name!r}: eps is not resolved; call resolve(input_shape) first")
        return float(self.eps)

    def radius(self) -> float:
        """The largest perturbation the attack may produce (``eps``; min_eps: its search's ``hi``)."""
        return self.budget

    def cost(self, inputs: int) -> AttackCost:
        """Gradient and query work for ``inputs`` inputs (``AttackCost``'s units: backbone passes)."""
        raise NotImplementedError

    def draws(self) -> int:
        """The most noise draws one head evaluation of this attack takes (EOT draws, samples per query)."""
        return max(int(getattr(self, name, 0) or 0) for name in ("eot", "samples"))

    def run(
        self,
        model: StochasticClassifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        should_stop: StopFn | None = None,
    ) -> AttackResult:
        """Attack inputs ``x`` [B, C, H, W] in [0, 1] with true labels ``y`` [B].

        The model runs in eval mode (BatchNorm statistics frozen; the noise stays as the attack
        asks), restored afterwards; ``x`` is detached. Each attack implements ``attack``.
        """
        with eval_mode(model):
            return self.attack(model, x.detach(), y, generator, should_stop)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        """The attack itself (``run`` calls it in eval mode with ``x`` detached)."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """Every setting but the name and eps."""
        return self.model_dump(exclude={"name", "eps"})

    def key(self) -> str:
        """A readable key, e.g. ``pgd100_eot20_eps0.1``."""
        s = self.settings()
        key = self.name + (str(s["steps"]) if "steps" in s else "")
        if s.get("loss") not in (None, "ce"):
            key += f"_{s['loss']}"
        if s.get("noise_free"):
            key += "_nf"
        elif "eot" in s:
            key += f"_eot{s['eot']}"
        if "queries" in s:
            key += f"_q{s['queries']}"
        return key + ("" if self.eps is None else f"_eps{self.eps:.4g}")


_ATTACKS: dict[str, type[Attack]] = {}


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: add an ``Attack`` subclass to the registry under its ``name`` literal."""
    name = cls.model_fields["name"].default
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__} needs `name: Literal[...] = '...'` with a default")
    if name in _ATTACKS:
        raise ValueError(f"attack {name!r} is already registered")
    _ATTACKS[name] = cls
    return cls


def list_attacks() -> list[str]:
    """Names of the registered attacks."""
    return sorted(_ATTACKS)


def attack_classes() -> list[type[Attack]]:
    """The registered spec classes, by name."""
    return [_ATTACKS[n] for n in list_attacks()]


def get_attack(name: str) -> type[Attack]:
    """The spec class of a registered attack.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name not in _ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of {list_attacks()}")
    return _ATTACKS[name]


def make_attack(name: str, **settings: Any) -> Attack:
    """A validated spec from a name and settings (pydantic's ValidationError is a ValueError)."""
    return get_attack(name).model_validate({"name": name, **settings})


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
    """Build, resolve and run one attack: ``run_attack("pgd", model, x, y, eps=0.1, steps=10)``."""
    spec = make_attack(name, eps=eps, **settings).resolve(model.cfg.input_shape)
    return spec.run(model, x, y, generator=generator)


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


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits [T, B, K], labels [B]) -> per-draw, per-input loss [T, B] that the attacker maximizes."""


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per draw and input [T, B]."""
    t = logits.shape[0]
    return F.cross_entropy(logits.flatten(0, 1), y.repeat(t), reduction="none").view(t, -1)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin loss (Carlini & Wagner 2017) per draw and input [T, B]: ``max_{k != y} z_k - z_y``."""
    z_y = logits.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    other = logits.scatter(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1), float("-inf")).amax(-1)
    return other - z_y


DLR_MIN_CLASSES = 3
"""DLR's denominator ``z_pi1 - z_pi3`` needs a third-largest logit."""

DLR_FALLBACK_NOTE = (
    "DLR needs >= 3 classes (its denominator is z_pi1 - z_pi3); with 2 classes it runs as the logit margin "
    "loss (Carlini & Wagner 2017), i.e. DLR with denominator 1"
)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference-of-logits-ratio loss (Croce & Hein 2020) per draw and input, [T, B].

    ``-(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3)`` with pi the logits sorted in decreasing order.
    With fewer than 3 classes the denominator does not exist, and no shift- and scale-invariant
    normalisation of two logits is left (their only shift-invariant quantity is the margin
    itself, and margin / |margin| is a constant with no gradient); the loss then is
    ``margin_loss`` (denominator 1), as ``DLR_FALLBACK_NOTE`` says.
    """
    if logits.shape[-1] < DLR_MIN_CLASSES:
        return margin_loss(logits, y)
    srt, _ = logits.sort(dim=-1)
    z_y = logits.gather(-1, y.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
    top = srt[..., -1]
    second = srt[..., -2]
    other = torch.where(z_y == top, second, top)
    return -(z_y - other) / (srt[..., -1] - srt[..., -3] + 1e-12)


def wrong_confidence_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The log-probability of the most likely wrong class, per draw and input [T, B]: CCAT's attack
    objective (Stutz, Hein & Schiele, ICML 2020), which seeks confident mistakes."""
    logp = F.log_softmax(logits, dim=-1)
    own = F.one_hot(y, logits.shape[-1]).bool().expand_as(logp)
    return logp.masked_fill(own, float("-inf")).amax(-1)


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "dlr": dlr_loss, "margin": margin_loss, "conf": wrong_confidence_loss}

Forward = Callable[[StochasticClassifier, torch.Tensor, int, Rng], torch.Tensor]
"""(model, x, draws, generator) -> what a step's loss reads; ``eot_logits`` (logits [T, B, K]) unless an
attack compares more (TRADES: the logits of x and of a reference under the same draws)."""


def eot_loss_grad(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eot: int,
    generator: torch.Generator | None = None,
    loss: str | LossFn = "ce",
    forward: Forward = eot_logits,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-input loss [B] averaged over ``eot`` draws (0: noise off) and its gradient w.r.t. x.

    One backward pass whatever ``eot`` is (all noise is after the backbone); ``eot_grad``
    is its gradient alone. ``loss`` is a name in ``LOSSES`` or a function of (logits, y);
    ``forward`` computes what it reads (default: ``eot_logits``).
    """
    fn = LOSSES[loss] if isinstance(loss, str) else loss
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(model, x, eot, generator)  # (T, B, K)
        per_input = fn(logits, y).mean(0)  # (B,)
        (grad,) = torch.autograd.grad(per_input.sum(), x)
    return per_input.detach(), grad


def eot_grad(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, eot: int, generator: Rng = None, **how: Any
) -> torch.Tensor:
    """Gradient w.r.t. x of the loss averaged over ``eot`` noise draws (0: noise off).

    All noise is after the backbone, so the mean over T draws of the per-draw
    gradients is one backward pass: d/dx mean_t L(head(f(x), eps_t)).
    Each input's loss is summed over the batch, so its gradient does not depend
    on the batch size. ``how``: ``loss`` and ``forward``, as ``eot_loss_grad`` takes them.
    """
    return eot_loss_grad(model, x, y, eot, generator, **how)[1]


@torch.no_grad()
def predict_draws(
    model: StochasticClassifier, x: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logits [T, B, K] for ``samples`` fresh noise draws (one backbone pass)."""
    return eot_logits(model, x, samples, generator)


def _per_input(eps: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    """A scalar radius, or a per-input radius [B] shaped to broadcast over [B, C, H, W]."""
    return eps.view(-1, *([1] * (x.dim() - 1))) if isinstance(eps, torch.Tensor) else eps


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Clip into the L-inf ball of radius ``eps`` (a float or one per input) around x, and into [0, 1]."""
    e = _per_input(eps, x)
    return torch.clamp(torch.min(torch.max(x_adv, x - e), x + e), 0.0, 1.0)


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float | torch.Tensor) -> torch.Tensor:
    """Scale into the L2 ball of radius ``eps`` around x, then clip into [0, 1]."""
    delta = x_adv - x
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    delta = delta * torch.clamp(_per_input(eps, x) / norms, max=1.0)
    return torch.clamp(x + delta, 0.0, 1.0)


def random_start(
    x: torch.Tensor, eps: float | torch.Tensor, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform random point of the L-inf ball, or a random direction and radius in the L2 ball."""
    if norm == "linf":
        u = torch.rand(x.shape, generator=generator).to(x.device)
        return project_linf(x + (2 * u - 1) * _per_input(eps, x), x, eps)
    d = torch.randn(x.shape, generator=generator).to(x.device)
    n = d.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))
    r = torch.rand((x.shape[0],), generator=generator).to(x.device).view_as(n)
    return project_l2(x + d / n.clamp_min(1e-12) * r * _per_input(eps, x), x, eps)
