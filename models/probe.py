"""Attack probe: attack the submitted inputs on the fly and report what happened.

Pure torch, no web framework: the service's attack-probe endpoint calls ``probe_items`` and
serialises the ``ProbeReport`` it returns (pydantic models: the same types are its response
schema), adding only images and its own fields.

Attacks are typed specs (``models.attacks.AttackSpec``: validated once, where they come in),
or a named evaluation suite (``SuiteSpec``: ``standard``, ``published`` or ``adaptive``), which
runs all its attacks and reports the per-input worst case as one entry. ``adaptive`` attacks the
flag too: by default the model's own (``flag``: a ``FlagRule``, the checkpoint's calibrated signal and
threshold; mutual information above ``mi_threshold`` when only that is given), and an input counts
as a success when it was wrong when clean or some attack made it wrong without a flag.

Each outcome is judged the way the service predicts (``models.prediction.predict_label``:
the argmax of the mean softmax over ``judge_samples`` fresh noise draws, one backbone pass),
and an attack succeeds on an input when that label differs from the true label (a suite
uses its own, stricter judgement). The flip probability is the share of draws whose argmax
differs from the true label, with a Wilson 95% interval.

Randomness comes from ``torch.Generator`` objects seeded from ``seed``, one stream per
attack and one per judgement, so a report is reproducible and an attack's result does
not depend on the other attacks in the request. The judging draws never reuse the
attack's draws.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .attacks import ATTACK_SPEC, Attack, AttackCost, AttackResult, StopFn, eval_mode, predict_draws, run_suite
from .attacks.flag import FlagRule, FlagSignal
from .attacks.suite import SUITES, derive_seed, get_suite
from .classifier import StochasticClassifier
from .prediction import predict_label
from .uncertainty import summarize, wilson_interval

DEFAULT_JUDGE_SAMPLES = 64
_L0_TOL = 1e-6


SuiteName = Literal["standard", "published", "adaptive"]
"""The suites a probe (and the service's ``attacks`` field) accepts by name."""


class SuiteSpec(BaseModel):
    """A named evaluation suite as one probe entry: every attack of it, per-input worst case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    suite: SuiteName = Field(
        description="standard (AutoAttack-grade), published (the papers' protocol) or adaptive (attacks that "
        "know the flag)."
    )
    eps: float | None = Field(
        None, ge=0, le=1, description="Budget in pixel units; default 0.1 (up to 28x28) or 8/255 (larger)."
    )
    flag_signal: FlagSignal | None = Field(
        None,
        description="adaptive only: the flag to evade: mutual_information or max_prob (1 - max mean softmax); "
        "default: the model's own flag (the service's `flagged`). Another signal than the model's needs flag_threshold.",
    )
    flag_threshold: float | None = Field(
        None, ge=0, description="adaptive only: the flag threshold (default: the model's own flag's)."
    )

    @model_validator(mode="after")
    def _flag_settings(self) -> SuiteSpec:
        if self.suite != "adaptive" and (self.flag_signal is not None or self.flag_threshold is not None):
            raise ValueError(f"flag_signal and flag_threshold apply to the adaptive suite only, not {self.suite!r}")
        return self

    def flag_rule(self, default: FlagRule | None) -> FlagRule | None:
        """The flag an adaptive suite evades (None for the other suites): the spec's signal and threshold
        where given, else the model's own flag ``default``.

        Raises:
            ValueError: adaptive without a threshold to use: no ``flag_threshold`` and no model flag, or
                a ``flag_signal`` other than the model flag's without ``flag_threshold``.
        """
        if self.suite != "adaptive":
            return None
        if self.flag_threshold is not None:
            if self.flag_signal is None and default is not None and default.also:
                raise ValueError(
                    f"flag_threshold is one number, and the model's own flag is {default.kind}: name the signal it is "
                    "for in flag_signal (mutual_information or max_prob)"
                )
            signal = self.flag_signal or (default.signal if default is not None else "mutual_information")
            return FlagRule(signal, float(self.flag_threshold))
        if default is None:
            raise ValueError("the adaptive suite needs a flag threshold: the model's flag or flag_threshold")
        if self.flag_signal is not None and self.flag_signal != default.kind:
            raise ValueError(
                f"flag_signal {self.flag_signal} needs flag_threshold: the model's own flag is {default.kind}"
            )
        return default

    @property
    def name(self) -> str:
        return self.suite

    kind: ClassVar[str] = "suite"

    def resolve(self, input_shape: Sequence[int]) -> SuiteSpec:
        from .attacks import default_eps

        return self.model_copy(update={"eps": default_eps(input_shape) if self.eps is None else float(self.eps)})

    def radius(self) -> float:
        return float(self.eps or 0.0)

    def cost(self, inputs: int) -> AttackCost:
        """Every attack of the suite on every input (the worst case: later attacks see fewer)."""
        return get_suite(self.suite).cost(self.radius(), inputs)

    def settings(self) -> dict[str, Any]:
        out = get_suite(self.suite).describe(self.radius())
        if self.suite == "adaptive":
            out["flag"] = {"signal": self.flag_signal, "threshold": self.flag_threshold, "default": "the model's flag"}
        return out

    def draws(self) -> int:
        """The most noise draws one head evaluation of the suite takes."""
        return get_suite(self.suite).draws(self.radius())


ProbeItem = Attack | SuiteSpec


def parse_item(item: ProbeItem | Mapping[str, Any] | str) -> ProbeItem:
    """An attack spec, a suite spec, or a suite name, validated (pydantic errors are ValueErrors)."""
    if isinstance(item, Attack | SuiteSpec):
        return item
    if isinstance(item, str):
        if item not in SUITES:
            raise ValueError(f"unknown suite {item!r}; choose one of {sorted(SUITES)} or give a list of attacks")
        return SuiteSpec(suite=item)  # type: ignore[arg-type]
    if isinstance(item, Mapping) and "suite" in item:
        return SuiteSpec.model_validate(dict(item))
    return ATTACK_SPEC.validate_python(item, strict=True)


class CleanResult(BaseModel):
    """How the model sees one clean input (`judge_samples` fresh draws)."""

    index: int
    true_label: int
    label: int = Field(description="The prediction (argmax of the mean softmax over judge_samples draws).")
    correct: bool
    flip_prob: float = Field(description="Share of draws whose argmax differs from the true label.")
    flip_ci: list[float] = Field(description="Wilson 95% interval of flip_prob.")
    mean_probs: list[float]
    predictive_entropy: float
    mutual_information: float
    flagged: bool | None = Field(
        description="Flagged by the model's flag rule (`flag` of the report; null without one)."
    )


class InputResult(BaseModel):
    """One input under one attack."""

    index: int
    true_label: int
    clean_label: int = Field(description="The prediction on the clean input.")
    adv_label: int = Field(description="The prediction on the adversarial input.")
    success: bool = Field(description="adv_label differs from the true label (a suite: its own, stricter verdict).")
    flip_prob: float = Field(description="Share of draws on the adversarial input whose argmax differs from the label.")
    flip_ci: list[float] = Field(description="Wilson 95% interval of flip_prob.")
    mean_probs: list[float]
    predictive_entropy: float
    mutual_information: float
    flagged: bool | None = Field(
        description="Flagged by the model's flag rule (`flag` of the report; null without one)."
    )
    linf: float
    l2: float
    l0: int = Field(description="Entries (pixels x channels) changed by more than 1e-6.")
    fools_after_rounding: bool = Field(description="Still succeeds after round(x * 255) / 255 (fresh draws).")
    grad_evals: int = Field(description="Backward passes this input took part in.")
    queries: int = Field(description="Score queries spent on this input (score attacks).")
    info: dict[str, Any] = Field(description="Per-input extras, e.g. the min_eps bracket.")
    adversarial: str | None = Field(
        None, description="Base64 8-bit PNG; present only with return_adversarial (the caller adds it)."
    )


class AttackReport(BaseModel):
    """One attack (or suite) over the batch."""

    name: str
    kind: str = Field(description="gradient, score or suite.")
    eps: float
    settings: dict[str, Any] = Field(description="Every setting it ran with, defaults filled in.")
    seed: int = Field(description="Seed of this attack's generator (derived from the request's seed).")
    grad_evals: int = Field(description="Batched backward passes.")
    draws: int = Field(description="Noise draws averaged into gradients, summed over steps.")
    queries: int = Field(description="Inputs scored (score attacks).")
    wall_time_s: float
    success_rate: float
    success_ci: list[float]
    inputs: list[InputResult]
    info: dict[str, Any] = Field(
        description="Attack-level extras; `stopped` when a stop (wall-time limit, shutdown, cancellation) cut it short."
    )


class AttackSummary(BaseModel):
    name: str
    eps: float
    success_rate: float
    success_ci: list[float]
    fools_after_rounding_rate: float
    flagged_rate: float | None
    wall_time_s: float


class ProbeSummary(BaseModel):
    clean_accuracy: float
    attacks: list[AttackSummary] = Field(description="One per attack run, in request order.")


class ProbeReport(BaseModel):
    """Everything ``probe`` measured: the object the service serialises (``ProbeResponse`` adds its own fields)."""

    seed: int
    judge_samples: int
    mi_threshold: float | None
    flag: dict[str, Any] | None = Field(
        None, description="The rule `flagged` follows: signal, threshold and the rule in words (null: no flag)."
    )
    clean: list[CleanResult]
    attacks: list[AttackReport]
    summary: ProbeSummary

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (fields never set, such as ``adversarial``, left out)."""
        return self.model_dump(mode="json", exclude_unset=True)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class _Judgement:
    label: torch.Tensor  # (B,) predict_label
    flips: torch.Tensor  # (B,) draws whose argmax != y
    mean_probs: torch.Tensor
    entropy: torch.Tensor
    mi: torch.Tensor


def _judge(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor | None, samples: int, seed: int
) -> tuple[_Judgement, torch.Tensor]:
    """Judge ``x`` with fresh draws; ``y=None`` takes the predicted label as the label. Returns (judgement, y)."""
    with eval_mode(model):
        logits = predict_draws(model, x, samples, _generator(seed))  # (N, B, K): one backbone pass
    u = summarize(logits)
    label = predict_label(logits)
    y = label if y is None else y
    flips = (logits.argmax(-1) != y.unsqueeze(0)).sum(0)
    return _Judgement(label, flips, u.mean_probs, u.predictive_entropy, u.mutual_information), y


def _flagged(rule: FlagRule | None, j: _Judgement, i: int) -> bool | None:
    """Whether ``rule`` flags input ``i`` of judgement ``j`` (None without a rule): the service's computation."""
    if rule is None:
        return None
    return bool(rule.flags_summary(j.mean_probs[i : i + 1], j.mi[i : i + 1])[0])


def model_flag(flag: FlagRule | None, mi_threshold: float | None) -> FlagRule | None:
    """The flag a probe judges with: ``flag``, else mutual information above ``mi_threshold``, else none."""
    if flag is not None:
        return flag
    return None if mi_threshold is None else FlagRule("mutual_information", float(mi_threshold))


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


ProbeAttacks = Sequence[ProbeItem | Mapping[str, Any]] | Mapping[str, Any] | str | SuiteSpec
"""What ``probe`` takes as attacks: typed specs, mappings to validate, or one suite (name, spec or mapping)."""


def parse_items(attacks: ProbeAttacks) -> list[ProbeItem]:
    """The probe's attack list, validated (not yet resolved for a model: ``resolve_items``)."""
    if isinstance(attacks, str | SuiteSpec) or (isinstance(attacks, Mapping) and "suite" in attacks):
        return [parse_item(attacks)]
    if isinstance(attacks, Mapping) or not isinstance(attacks, Sequence) or len(attacks) == 0:
        raise ValueError("attacks must be a non-empty list of specs like {'name': 'pgd', 'eps': 0.1}, or a suite name")
    return [parse_item(a) for a in attacks]


def resolve_items(attacks: ProbeAttacks, input_shape: Sequence[int]) -> list[ProbeItem]:
    """The attacks validated and resolved for a model of ``input_shape``: an unset ``eps`` becomes
    ``default_eps``, so each spec lists every value it runs with (what ``probe_items`` takes)."""
    return [item.resolve(input_shape) for item in parse_items(attacks)]


def _run_item(
    item: ProbeItem,
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    should_stop: StopFn | None,
    flag: FlagRule | None = None,
) -> tuple[AttackResult, torch.Tensor | None]:
    """Run one attack (or suite); returns its result and the suite's per-input verdict (None for
    an attack: the probe judges it). A flag-aware suite's verdict: wrong when clean, or an
    unflagged error under some attack."""
    if isinstance(item, SuiteSpec):
        res = run_suite(
            model, x, y, item.suite, eps=item.radius(), seed=seed, should_stop=should_stop, flag=item.flag_rule(flag)
        )
        grad = sum(a.grad_evals for a in res.attacks)
        queries = sum(a.queries for a in res.attacks)
        extras: dict[str, Any] = {"suite": res.summary(), "fooled_by": res.fooled_by.tolist()}
        if res.evaded_by is not None:
            extras["unflagged_by"] = res.evaded_by.tolist()
        result = AttackResult(res.x_adv, grad_evals=grad, queries=queries, stopped=not res.complete, info=extras)
        return result, ~res.robust_or_flagged
    return item.run(model, x, y, generator=_generator(seed), should_stop=should_stop), None


@dataclass(frozen=True)
class _Probe:
    """What every step of one probe shares: the model, the clean inputs and their judgement."""

    model: StochasticClassifier
    x: torch.Tensor  # (B, C, H, W) on the model's device
    y: torch.Tensor  # (B,) the true labels (given, or the clean prediction)
    clean: list[CleanResult]
    judge_samples: int
    seed: int
    flag: FlagRule | None
    should_stop: StopFn | None


def _judge_clean(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor | None, n: int, seed: int, flag: FlagRule | None
) -> tuple[list[CleanResult], torch.Tensor]:
    """The clean inputs judged with ``n`` fresh draws; ``y=None``: the clean prediction is the label."""
    clean, y = _judge(model, x, y, n, derive_seed(seed, "clean"))
    yl, labels = y.tolist(), clean.label.tolist()
    results = [
        CleanResult(
            index=i,
            true_label=yl[i],
            label=labels[i],
            correct=labels[i] == yl[i],
            flip_prob=int(clean.flips[i]) / n,
            flip_ci=_ci(int(clean.flips[i]), n),
            mean_probs=clean.mean_probs[i].tolist(),
            predictive_entropy=float(clean.entropy[i]),
            mutual_information=float(clean.mi[i]),
            flagged=_flagged(flag, clean, i),
        )
        for i in range(len(yl))
    ]
    return results, y


def _attack(p: _Probe, a: int, item: ProbeItem) -> tuple[AttackReport, torch.Tensor, bool]:
    """Run the ``a``-th item and judge its adversarial inputs: (report, adversarial inputs, stopped early)."""
    x, y, n, b = p.x, p.y, p.judge_samples, p.x.shape[0]
    attack_seed = derive_seed(p.seed, a, item.name, "attack")
    start = time.perf_counter()
    res, verdict = _run_item(item, p.model, x, y, attack_seed, p.should_stop, p.flag)
    wall = time.perf_counter() - start
    x_adv = res.x_adv.detach().to(x.device)
    if x_adv.shape != x.shape:
        raise RuntimeError(f"attack {item.name!r} returned shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    adv, _ = _judge(p.model, x_adv, y, n, derive_seed(p.seed, a, item.name, "judge"))
    rounded, _ = _judge(p.model, torch.round(x_adv * 255) / 255, y, n, derive_seed(p.seed, a, item.name, "round"))
    delta = (x_adv - x).flatten(1)
    linf = delta.abs().amax(1).tolist()
    l2 = delta.norm(dim=1).tolist()
    l0 = (delta.abs() > _L0_TOL).sum(1).tolist()
    success = (adv.label != y).tolist() if verdict is None else verdict.tolist()
    round_success = (rounded.label != y).tolist()
    adv_labels = adv.label.tolist()
    per_input = {k: v for k, v in res.info.items() if isinstance(v, list) and len(v) == b}
    shared = {k: v for k, v in res.info.items() if k not in per_input}
    if res.stopped:  # the stop function may say why (service.probe.runner.StopCheck.reason)
        why = getattr(p.should_stop, "reason", None) or "a stop was requested"
        shared["stopped"] = f"stopped before its budget was spent: {why}"
    grad_list = per_input.pop("grad_evals_per_input", [res.grad_evals] * b)
    query_list = per_input.pop("queries_per_input", [0] * b)
    inputs = [
        InputResult(
            index=i,
            true_label=c.true_label,
            clean_label=c.label,
            adv_label=adv_labels[i],
            success=bool(success[i]),
            flip_prob=int(adv.flips[i]) / n,
            flip_ci=_ci(int(adv.flips[i]), n),
            mean_probs=adv.mean_probs[i].tolist(),
            predictive_entropy=float(adv.entropy[i]),
            mutual_information=float(adv.mi[i]),
            flagged=_flagged(p.flag, adv, i),
            linf=linf[i],
            l2=l2[i],
            l0=int(l0[i]),
            fools_after_rounding=round_success[i],
            grad_evals=int(grad_list[i]),
            queries=int(query_list[i]),
            info={k: v[i] for k, v in per_input.items()},
        )
        for i, c in enumerate(p.clean)
    ]
    n_success = sum(r.success for r in inputs)
    report = AttackReport(
        name=item.name,
        kind=item.kind,
        eps=item.radius() if isinstance(item, SuiteSpec) else item.budget,
        settings=item.settings(),
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
    return report, x_adv, res.stopped


def summarise(clean: list[CleanResult], attacks: list[AttackReport], flag: FlagRule | None) -> ProbeSummary:
    """Clean accuracy and, per attack (in order), its rates and wall time."""
    b = len(clean)
    return ProbeSummary(
        clean_accuracy=sum(c.correct for c in clean) / b,
        attacks=[
            AttackSummary(
                name=r.name,
                eps=r.eps,
                success_rate=r.success_rate,
                success_ci=r.success_ci,
                fools_after_rounding_rate=sum(i.fools_after_rounding for i in r.inputs) / b,
                flagged_rate=None if flag is None else sum(bool(i.flagged) for i in r.inputs) / b,
                wall_time_s=r.wall_time_s,
            )
            for r in attacks
        ],
    )


def probe(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor | None,
    attacks: ProbeAttacks,
    *,
    judge_samples: int = DEFAULT_JUDGE_SAMPLES,
    seed: int = 0,
    mi_threshold: float | None = None,
    flag: FlagRule | None = None,
    after_attack: Callable[[AttackReport, torch.Tensor], bool] | None = None,
    should_stop: StopFn | None = None,
) -> ProbeReport:
    """Run each attack on the inputs and judge the results with fresh noise draws.

    Args:
        model: the classifier (switched to eval mode for the run, then restored).
        x: inputs [B, C, H, W], pixels in [0, 1].
        y: true labels [B]; None: each input's clean predicted label (from the same draws
            that judge the clean inputs).
        attacks: typed specs (``models.attacks.AttackSpec``; mappings are validated into
            them), or a suite: ``"standard"``, ``"published"``, ``"adaptive"`` or a ``SuiteSpec``.
            An unset ``eps`` becomes ``default_eps`` of the model's input size (``resolve_items``).
        judge_samples: fresh draws per judgement (default 64).
        seed: the request seed; every random stream derives from it (``derive_seed``).
        mi_threshold: inputs whose mutual information exceeds it are ``flagged`` (when no ``flag``).
        flag: the model's flag rule (``models.attacks.flag.FlagRule``: signal and threshold, e.g. the
            checkpoint's calibrated flag); what ``flagged`` follows and the ``adaptive`` suite evades
            unless its spec names another. Supersedes ``mi_threshold``.
        after_attack: called after each attack with its report and its adversarial inputs
            [B, C, H, W]; returning True skips the remaining attacks (the report then covers
            the attacks run so far). The service uses it for metrics and images.
        should_stop: checked between an attack's steps (queries, bisection rounds); True
            ends the running attack with what it has (``info["stopped"]``) and skips the rest.

    Returns:
        A ``ProbeReport``: ``clean`` (one ``CleanResult`` per input), ``attacks`` (one
        ``AttackReport`` per spec, each with one ``InputResult`` per input) and ``summary``
        (``summarise``).

    Raises:
        ValueError: invalid inputs or attack specs (nothing is run then).
    """
    items = resolve_items(attacks, model.cfg.input_shape)
    return probe_items(
        model,
        x,
        y,
        items,
        judge_samples=judge_samples,
        seed=seed,
        mi_threshold=mi_threshold,
        flag=flag,
        after_attack=after_attack,
        should_stop=should_stop,
    )


def probe_items(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor | None,
    items: Sequence[ProbeItem],
    *,
    judge_samples: int = DEFAULT_JUDGE_SAMPLES,
    seed: int = 0,
    mi_threshold: float | None = None,
    flag: FlagRule | None = None,
    after_attack: Callable[[AttackReport, torch.Tensor], bool] | None = None,
    should_stop: StopFn | None = None,
) -> ProbeReport:
    """``probe`` with the attacks already resolved (``resolve_items``: what the service checked
    against its caps is what runs): judge the clean inputs, run and judge each item, summarise.

    Raises:
        ValueError: invalid inputs, an unresolved spec, or an adaptive suite without a flag
            threshold (nothing is run then).
    """
    _validate_inputs(model, x, y, judge_samples, seed, mi_threshold)
    rule = model_flag(flag, mi_threshold)
    for item in items:
        if item.eps is None:
            raise ValueError(f"{item.name}: eps is not resolved; resolve the attacks first (resolve_items)")
        if isinstance(item, SuiteSpec):
            item.flag_rule(rule)  # an adaptive suite without a threshold fails before anything runs
    dev = model.proj.weight.device
    x = x.detach().to(dev, torch.float32)
    clean, labels = _judge_clean(model, x, None if y is None else y.to(dev, torch.long), judge_samples, seed, rule)
    p = _Probe(model, x, labels, clean, judge_samples, seed, rule, should_stop)
    reports: list[AttackReport] = []
    for a, item in enumerate(items):
        report, x_adv, stopped = _attack(p, a, item)
        reports.append(report)
        stop = stopped or (after_attack is not None and after_attack(report, x_adv))
        if stop and a + 1 < len(items):
            break
    return ProbeReport(
        seed=seed,
        judge_samples=judge_samples,
        mi_threshold=mi_threshold,
        flag=None if rule is None else rule.describe(),
        clean=clean,
        attacks=reports,
        summary=summarise(clean, reports, rule),
    )
