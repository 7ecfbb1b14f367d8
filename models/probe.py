"""Attack probe: attack the submitted inputs on the fly and report what happened.

Pure torch, no web framework: the service's attack-probe endpoint calls ``probe`` and
turns the report into JSON (``ProbeReport.to_dict()`` is JSON-ready).

Each attack's outcome is judged the way the service predicts: ``judge_samples`` fresh
noise draws (one backbone pass), the label is the majority vote of the per-draw argmax,
and an attack succeeds on an input when that label differs from the true label. The
flip probability is the share of draws whose argmax differs from the true label, with
a Wilson 95% interval.

Probe defaults differ from the attack registry's: gradient attacks get ``eot=16`` draws
per gradient (the registry says 1; with one backward pass per step whatever the draws,
16 costs little and a stochastic model needs it), ``steps=20`` and an explicit step size
``alpha=eps/4``. The default ``eps`` is 0.1 for 28x28 inputs and 8/255 for 32x32.
Randomness comes from ``torch.Generator`` objects seeded from ``seed``, one stream per
attack and one per judgement, so a report is reproducible and an attack's result does
not depend on the other attacks in the request. The judging draws never reuse the
attack's draws.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .attacks import eval_mode, get_attack, list_attacks, predict_draws, run_attack
from .classifier import StochasticClassifier
from .uncertainty import majority_vote, summarize, wilson_interval

DEFAULT_JUDGE_SAMPLES = 64
PROBE_DEFAULTS: dict[str, Any] = {"eot": 16, "steps": 20}
"""Settings the probe uses instead of the registry defaults, for attacks that have them."""

_DEFAULT_EPS = {28: 0.1, 32: 8 / 255}
_MIN_INT = {"steps": 1, "eot": 1, "queries": 1, "samples": 1, "iters": 0}
_CHOICES = {"loss": ("ce", "dlr")}
_OPEN_UNIT = ("rho",)  # 0 < value < 1
_HALF_OPEN_UNIT = ("p_init",)  # 0 < value <= 1
_L0_TOL = 1e-6
_RESERVED = ("name", "eps")


def default_eps(input_shape: Sequence[int]) -> float:
    """Default L-inf budget: 0.1 for 28x28 inputs (MNIST-like), 8/255 for 32x32 (CIFAR-like).

    Raises:
        ValueError: for other sizes (the request must give ``eps``).
    """
    h, w = int(input_shape[-2]), int(input_shape[-1])
    if h != w or h not in _DEFAULT_EPS:
        raise ValueError(f"no default eps for {h}x{w} inputs (defaults: 28x28 -> 0.1, 32x32 -> 8/255); give 'eps'")
    return _DEFAULT_EPS[h]


@dataclass
class AttackRequest:
    """A validated attack spec: the name, the budget and every setting the attack will run with."""

    name: str
    eps: float
    settings: dict[str, Any]
    kind: str


def _check_setting(attack: str, key: str, value: Any, default: Any) -> None:
    def bad(what: str) -> ValueError:
        return ValueError(f"attack {attack!r}: setting {key!r} must be {what}, got {value!r}")

    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise bad("an integer")
        if value < _MIN_INT.get(key, 0):
            raise bad(f"an integer >= {_MIN_INT.get(key, 0)}")
    elif isinstance(default, float) or default is None:
        if value is None and default is None:
            return
        if not is_number or not math.isfinite(value) or value < 0:
            raise bad("a finite number >= 0" + (" or null" if default is None else ""))
    elif isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise bad(f"one of {list(_CHOICES[key])}")
    if key in _OPEN_UNIT and not 0.0 < value < 1.0:
        raise bad("a number with 0 < value < 1")
    if key in _HALF_OPEN_UNIT and not 0.0 < value <= 1.0:
        raise bad("a number with 0 < value <= 1")


def resolve_attacks(specs: Sequence[Mapping[str, Any]], input_shape: Sequence[int]) -> list[AttackRequest]:
    """Validate attack specs and merge defaults (registry < ``PROBE_DEFAULTS`` < the spec).

    Each spec is a mapping with ``name``, optional ``eps`` (default: ``default_eps``) and
    any of the attack's settings. ``alpha`` left at None becomes ``eps / 4`` explicitly.

    Raises:
        ValueError: unknown attack (the message lists the valid ones), unknown setting
            (the message lists the attack's settings), or a value of the wrong type/range
            (integers >= their minimum, e.g. ``samples`` >= 1; numbers finite and >= 0;
            ``0 < rho < 1``; ``0 < p_init <= 1``; ``lo < hi``; null only where the
            default is null, e.g. ``alpha``).
    """
    if isinstance(specs, Mapping) or not isinstance(specs, Sequence) or len(specs) == 0:
        raise ValueError("attacks must be a non-empty list of specs like {'name': 'pgd', 'eps': 0.1}")
    out = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise ValueError(f"attack spec {i} must be a mapping with a 'name'; choose one of {list_attacks()}")
        name = spec["name"]
        if name not in list_attacks():
            raise ValueError(f"unknown attack {name!r}; choose one of {list_attacks()}")
        reg = get_attack(name)
        given = {k: v for k, v in spec.items() if k not in _RESERVED}
        unknown = sorted(set(given) - set(reg.defaults))
        if unknown:
            raise ValueError(
                f"attack {name!r} has no setting(s) {unknown}; valid: {list(_RESERVED) + sorted(reg.defaults)}"
            )
        eps = spec.get("eps")
        if eps is None:
            eps = default_eps(input_shape)
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0.0 <= eps <= 1.0:
            raise ValueError(f"attack {name!r}: eps must be a number in [0, 1] (pixel scale), got {eps!r}")
        for k, v in given.items():
            _check_setting(name, k, v, reg.defaults[k])
        settings = {**reg.defaults, **{k: v for k, v in PROBE_DEFAULTS.items() if k in reg.defaults}, **given}
        if "lo" in settings and "hi" in settings and not settings["lo"] < settings["hi"]:
            raise ValueError(
                f"attack {name!r}: needs lo < hi (the search range), got lo={settings['lo']!r}, hi={settings['hi']!r}"
            )
        if "alpha" in settings and settings["alpha"] is None:
            settings["alpha"] = float(eps) / 4
        out.append(AttackRequest(name=name, eps=float(eps), settings=settings, kind=reg.kind))
    return out


@dataclass
class CleanResult:
    """How the model sees one clean input (``judge_samples`` draws)."""

    index: int
    true_label: int
    label: int  # majority vote
    correct: bool
    flip_prob: float  # share of draws whose argmax != true label
    flip_ci: list[float]  # Wilson 95%
    mean_probs: list[float]
    predictive_entropy: float
    mutual_information: float
    flagged: bool | None  # MI > mi_threshold (None without a threshold)


@dataclass
class InputResult:
    """One input under one attack."""

    index: int
    true_label: int
    clean_label: int  # majority vote on the clean input
    adv_label: int  # majority vote on the adversarial input
    success: bool  # adv_label != true_label
    flip_prob: float  # share of draws on the adversarial input whose argmax != true label
    flip_ci: list[float]  # Wilson 95% interval of flip_prob
    mean_probs: list[float]
    predictive_entropy: float
    mutual_information: float
    flagged: bool | None  # MI > mi_threshold (None without a threshold)
    linf: float
    l2: float
    l0: int  # entries (pixels x channels) changed by more than 1e-6
    fools_after_rounding: bool  # still succeeds after round(x * 255) / 255 (fresh draws)
    grad_evals: int  # backward passes this input took part in
    queries: int  # score queries spent on this input (score attacks)
    info: dict[str, Any] = field(default_factory=dict)  # per-input extras, e.g. the min_eps bracket


@dataclass
class AttackReport:
    """One attack over the batch."""

    name: str
    kind: str
    eps: float
    settings: dict[str, Any]  # every setting it ran with, defaults merged
    seed: int  # seed of this attack's generator: run_attack(..., generator=Generator().manual_seed(seed))
    grad_evals: int  # batched backward passes
    draws: int  # noise draws averaged into gradients, summed over steps
    queries: int  # inputs scored (score attacks)
    wall_time_s: float
    success_rate: float
    success_ci: list[float]
    inputs: list[InputResult]
    info: dict[str, Any] = field(default_factory=dict)  # attack-level extras


@dataclass
class ProbeReport:
    """Everything ``probe`` measured; ``to_dict()`` gives plain JSON types."""

    seed: int
    judge_samples: int
    mi_threshold: float | None
    clean: list[CleanResult]
    attacks: list[AttackReport]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def derive_seed(seed: int, *parts: object) -> int:
    """A 62-bit seed for one random stream, from the request seed and a stream name."""
    digest = hashlib.sha256(repr((int(seed), *parts)).encode()).hexdigest()
    return int(digest[:15], 16) >> 2


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class _Judgement:
    label: torch.Tensor  # (B,) majority vote
    flips: torch.Tensor  # (B,) draws whose argmax != y
    mean_probs: torch.Tensor
    entropy: torch.Tensor
    mi: torch.Tensor


def _judge(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor | None, samples: int, seed: int
) -> tuple[_Judgement, torch.Tensor]:
    """Judge ``x`` with fresh draws; ``y=None`` takes the majority vote as the label. Returns (judgement, y)."""
    logits = predict_draws(model, x, samples, _generator(seed))  # (N, B, K): one backbone pass
    u = summarize(logits)
    votes = majority_vote(logits)
    y = votes if y is None else y
    flips = (logits.argmax(-1) != y.unsqueeze(0)).sum(0)
    return _Judgement(votes, flips, u.mean_probs, u.predictive_entropy, u.mutual_information), y


def _flagged(mi: float, threshold: float | None) -> bool | None:
    return None if threshold is None else bool(mi > threshold)


def _ci(successes: int, n: int) -> list[float]:
    """Wilson 95% interval."""
    return list(wilson_interval(successes, n))


def _validate_inputs(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor | None,
    judge_samples: int,
    seed: int,
    mi_threshold: float | None,
) -> None:
    shape = tuple(model.cfg.input_shape)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != shape or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty tensor [B, {', '.join(map(str, shape))}], got {got}")
    if not x.is_floating_point() or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("x must hold finite float pixels in [0, 1]")
    k = model.cfg.num_classes
    if y is not None and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point()):
        raise ValueError(f"y must be an integer tensor [{x.shape[0]}] or None")
    if y is not None and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"labels must be in [0, {k})")
    if isinstance(judge_samples, bool) or not isinstance(judge_samples, int) or judge_samples < 1:
        raise ValueError(f"judge_samples must be an integer >= 1, got {judge_samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if mi_threshold is not None and (
        isinstance(mi_threshold, bool) or not isinstance(mi_threshold, int | float) or not math.isfinite(mi_threshold)
    ):
        raise ValueError(f"mi_threshold must be a finite number or None, got {mi_threshold!r}")


def probe(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor | None,
    attacks: Sequence[Mapping[str, Any]],
    *,
    judge_samples: int = DEFAULT_JUDGE_SAMPLES,
    seed: int = 0,
    mi_threshold: float | None = None,
    after_attack: Callable[[AttackReport, torch.Tensor], bool] | None = None,
) -> ProbeReport:
    """Run each attack on the inputs and judge the results with fresh noise draws.

    Args:
        model: the classifier (switched to eval mode for the run, then restored).
        x: inputs [B, C, H, W], pixels in [0, 1].
        y: true labels [B]; None: each input's clean majority-vote label (from the same draws
            that judge the clean inputs).
        attacks: specs like ``{"name": "pgd", "eps": 0.1, "steps": 10}``; see
            ``resolve_attacks`` for defaults and validation.
        judge_samples: fresh draws per judgement (default 64).
        seed: the request seed; every random stream derives from it (``derive_seed``).
        mi_threshold: inputs whose mutual information exceeds it are ``flagged``.
        after_attack: called after each attack with its report and its adversarial inputs
            [B, C, H, W]; returning True skips the remaining attacks (the report then covers
            the attacks run so far). The service uses it for metrics, images and its wall-time limit.

    Returns:
        A ``ProbeReport``: ``clean`` (one ``CleanResult`` per input), ``attacks`` (one
        ``AttackReport`` per spec, each with one ``InputResult`` per input) and
        ``summary``: ``clean_accuracy`` and per attack (in request order) ``name``,
        ``eps``, ``success_rate``, ``success_ci``, ``fools_after_rounding_rate``,
        ``flagged_rate`` (None without a threshold) and ``wall_time_s``.

    Raises:
        ValueError: invalid inputs or attack specs (nothing is run then).
    """
    _validate_inputs(model, x, y, judge_samples, seed, mi_threshold)
    requests = resolve_attacks(attacks, model.cfg.input_shape)
    dev = model.proj.weight.device
    x = x.detach().to(dev, torch.float32)
    y = None if y is None else y.to(dev, torch.long)
    b = x.shape[0]
    n = judge_samples

    with eval_mode(model):
        clean, y = _judge(model, x, y, n, derive_seed(seed, "clean"))
    yl = y.tolist()
    clean_labels = clean.label.tolist()
    clean_results = [
        CleanResult(
            index=i,
            true_label=yl[i],
            label=clean_labels[i],
            correct=clean_labels[i] == yl[i],
            flip_prob=int(clean.flips[i]) / n,
            flip_ci=_ci(int(clean.flips[i]), n),
            mean_probs=clean.mean_probs[i].tolist(),
            predictive_entropy=float(clean.entropy[i]),
            mutual_information=float(clean.mi[i]),
            flagged=_flagged(float(clean.mi[i]), mi_threshold),
        )
        for i in range(b)
    ]

    reports = []
    for a, req in enumerate(requests):
        attack_seed = derive_seed(seed, a, req.name, "attack")
        start = time.perf_counter()
        res = run_attack(req.name, model, x, y, eps=req.eps, generator=_generator(attack_seed), **req.settings)
        wall = time.perf_counter() - start
        x_adv = res.x_adv.detach().to(dev)
        if x_adv.shape != x.shape:
            raise RuntimeError(f"attack {req.name!r} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
        with eval_mode(model):
            adv, _ = _judge(model, x_adv, y, n, derive_seed(seed, a, req.name, "judge"))
            rounded, _ = _judge(model, torch.round(x_adv * 255) / 255, y, n, derive_seed(seed, a, req.name, "round"))
        delta = (x_adv - x).flatten(1)
        linf = delta.abs().amax(1).tolist()
        l2 = delta.norm(dim=1).tolist()
        l0 = (delta.abs() > _L0_TOL).sum(1).tolist()
        success = (adv.label != y).tolist()
        round_success = (rounded.label != y).tolist()
        adv_labels = adv.label.tolist()
        per_input = {k: v for k, v in res.info.items() if isinstance(v, list) and len(v) == b}
        shared = {k: v for k, v in res.info.items() if k not in per_input}
        grad_list = per_input.pop("grad_evals_per_input", [res.grad_evals] * b)
        query_list = per_input.pop("queries_per_input", [0] * b)
        inputs = [
            InputResult(
                index=i,
                true_label=yl[i],
                clean_label=clean_labels[i],
                adv_label=adv_labels[i],
                success=success[i],
                flip_prob=int(adv.flips[i]) / n,
                flip_ci=_ci(int(adv.flips[i]), n),
                mean_probs=adv.mean_probs[i].tolist(),
                predictive_entropy=float(adv.entropy[i]),
                mutual_information=float(adv.mi[i]),
                flagged=_flagged(float(adv.mi[i]), mi_threshold),
                linf=linf[i],
                l2=l2[i],
                l0=int(l0[i]),
                fools_after_rounding=round_success[i],
                grad_evals=int(grad_list[i]),
                queries=int(query_list[i]),
                info={k: v[i] for k, v in per_input.items()},
            )
            for i in range(b)
        ]
        n_success = sum(success)
        reports.append(
            AttackReport(
                name=req.name,
                kind=req.kind,
                eps=req.eps,
                settings=dict(req.settings),
                seed=attack_seed,
                grad_evals=res.grad_evals,
                draws=res.draws,
                queries=res.queries,
                wall_time_s=wall,
                success_rate=n_success / b,
                success_ci=_ci(n_success, b),
                inputs=inputs,
                info=shared,
            )
        )
        if after_attack is not None and after_attack(reports[-1], x_adv) and a + 1 < len(requests):
            break

    summary = {
        "clean_accuracy": sum(c.correct for c in clean_results) / b,
        "attacks": [
            {
                "name": r.name,
                "eps": r.eps,
                "success_rate": r.success_rate,
                "success_ci": r.success_ci,
                "fools_after_rounding_rate": sum(i.fools_after_rounding for i in r.inputs) / b,
                "flagged_rate": None if mi_threshold is None else sum(bool(i.flagged) for i in r.inputs) / b,
                "wall_time_s": r.wall_time_s,
            }
            for r in reports
        ],
    }
    return ProbeReport(
        seed=seed,
        judge_samples=n,
        mi_threshold=mi_threshold,
        clean=clean_results,
        attacks=reports,
        summary=summary,
    )
