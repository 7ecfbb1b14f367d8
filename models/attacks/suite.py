"""Named evaluation protocols: ``standard`` (what a reviewer accepts) and ``published`` (what the
stochastic-network papers report), side by side so that readers see how much the second inflates,
and ``adaptive`` (``standard`` plus attacks that know the uncertainty flag).

``standard`` (AutoAttack's version='rand' and more): per input, the worst case over APGD-CE and
APGD-DLR (100 steps, EOT 20), PGD-100 with EOT 20, PGD-100 on the noise-free network and Square
(1,000 queries, black box). Attacks run in that order on the inputs still standing, as AutoAttack
does; an input counts as robust only if every attack fails. Each judgement uses 64 fresh draws,
and an input counts as correct only if both the prediction rule (argmax of the mean softmax) and
the majority vote give its true label.

``published`` (PNI, Adv-BNN, WCA-Net, MFDV-SNN): PGD, 10 steps of 0.1 eps, gradients averaged
over 50 draws, success judged on one noisy forward pass.

``adaptive`` (issue 16; Carlini & Wagner, AISec 2017; Tramer et al., NeurIPS 2020; CCAT's
evaluation, Stutz, Hein & Schiele, ICML 2020): the flag is part of the defence, so the attacks
know it. ``standard``'s attacks, then the flag-aware attacks of ``models.attacks.adaptive``
(200 APGD steps, EOT 20 each): the mean-softmax margin with a flag penalty at weights 1, 10 and
100, every draw confident on the best wrong class, and APGD-CE with the flag penalty. The flag is
a ``flag.FlagRule`` (mutual information over the draws above the threshold, the service's
``flagged``; for a deterministic model its max-softmax probability) fixed on clean data
(``flag.calibrate_flag``). Judged as ``standard`` (64 draws, both rules), with the flag computed
from the same draws. Per input the union: an input is an **unflagged error** when it is right
when clean and some attack's output is wrong and not flagged; the figures are the *unflagged
error under attack* (unflagged errors / inputs right when clean) and the *robust-or-flagged
accuracy* (inputs right when clean with no unflagged error / all inputs), each with a Wilson 95%
interval. Attacks run on the inputs without an unflagged error yet (a flagged error goes on to
the next attack). Each attack's random stream depends on its key, not its position, so an attack
run alone on an input sees what it sees inside the suite.

All are pure functions of (model, inputs, labels, eps, seed): ``run_suite`` derives one random
stream per attack and one per judgement from the seed.

On a 2-class model DLR has no third logit: the strict suites run APGD on the logit margin
instead of APGD-DLR, and ``notes`` in their settings says so.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from ..classifier import StochasticClassifier
from ..prediction import majority_vote, predict_label
from ..uncertainty import wilson_interval
from .base import (
    DLR_FALLBACK_NOTE,
    DLR_MIN_CLASSES,
    Attack,
    AttackCost,
    Rng,
    StopFn,
    default_eps,
    eval_mode,
    make_attack,
    predict_draws,
)
from .flag import FlagCalibration, FlagRule

Judge = Literal["strict", "single_draw"]


def derive_seed(seed: int, *parts: object) -> int:
    """A 62-bit seed for one random stream, from a request's seed and a stream name."""
    digest = hashlib.sha256(repr((int(seed), *parts)).encode()).hexdigest()
    return int(digest[:15], 16) >> 2


@dataclass(frozen=True)
class Suite:
    """A named protocol: which attacks, how a prediction is judged, and with how many draws.

    Attributes:
        name: ``standard``, ``published`` or ``adaptive`` (or a reduced variant's name).
        judge: ``strict`` (mean-softmax label and majority vote over ``judge_samples`` draws
            must both be right) or ``single_draw`` (one noisy forward pass).
        judge_samples: fresh draws per judgement.
        steps, eot: gradient steps and EOT draws of the gradient attacks.
        queries, query_samples: Square's per-input queries and draws per query (0 queries: no Square).
        square_n: Square runs on the first ``square_n`` inputs of a call only (None: all); the
            result states it.
        flag_aware: the ``adaptive`` protocol: the flag-aware attacks follow ``standard``'s, and
            the run needs a flag rule (``run_suite(flag=...)``).
        flag_steps, flag_eot: APGD steps and EOT draws of each flag-aware attack.
        flag_weights: penalty weights of ``flag_margin`` (one attack each).
        flag_weight: penalty weight of ``flag_targeted`` and ``flag_apgd``.
        flag_margin: the attacks aim for the signal under ``flag_margin`` x threshold.
    """

    name: str
    judge: Judge
    judge_samples: int
    steps: int
    eot: int
    queries: int = 0
    query_samples: int = 32
    square_n: int | None = None
    base: str = ""
    flag_aware: bool = False
    flag_steps: int = 200
    flag_eot: int = 20
    flag_weights: tuple[float, ...] = (1.0, 10.0, 100.0)
    flag_weight: float = 10.0
    flag_margin: float = 0.8

    @property
    def family(self) -> str:
        """``standard``, ``published`` or ``adaptive``, with ``-reduced`` for a cheaper variant."""
        base = self.base or self.name
        return base if self.name == base else f"{base}-reduced"

    def attacks(self, eps: float, num_classes: int | None = None, flag: FlagRule | None = None) -> list[Attack]:
        """The resolved attack specs at radius ``eps``, in the order they run.

        ``num_classes`` < 3: APGD-DLR becomes APGD on the logit margin (DLR needs a third logit;
        ``notes`` says so). ``flag``: the rule the flag-aware attacks evade (without one, a
        placeholder threshold of 0 on mutual information: enough for ``cost`` and ``draws``).
        """
        if self.judge == "single_draw":
            return [make_attack("pgd", eps=eps, steps=self.steps, alpha=0.1 * eps, eot=self.eot)]
        alpha = max(eps / 10, 2.5 * eps / self.steps)
        dlr = "margin" if num_classes is not None and num_classes < DLR_MIN_CLASSES else "dlr"
        specs = [
            make_attack("apgd", eps=eps, steps=self.steps, eot=self.eot, loss="ce"),
            make_attack("apgd", eps=eps, steps=self.steps, eot=self.eot, loss=dlr),
            make_attack("pgd", eps=eps, steps=self.steps, eot=self.eot, alpha=alpha),
            make_attack("surrogate", eps=eps, steps=self.steps, alpha=alpha),
        ]
        if self.queries > 0:
            specs.append(make_attack("square", eps=eps, queries=self.queries, samples=self.query_samples))
        if self.flag_aware:
            rule = flag or FlagRule("mutual_information", 0.0)
            common = {
                "eps": eps,
                "threshold": rule.threshold,
                "signal": rule.signal,
                **({"also": [{"signal": sig, "threshold": t} for sig, t in rule.also]} if rule.also else {}),
                "steps": self.flag_steps,
                "eot": self.flag_eot,
                "margin": self.flag_margin,
            }
            specs += [make_attack("flag_margin", weight=w, **common) for w in self.flag_weights]
            specs.append(make_attack("flag_targeted", weight=self.flag_weight, **common))
            specs.append(make_attack("flag_apgd", loss="ce", weight=self.flag_weight, **common))
        return specs

    def notes(self, num_classes: int | None) -> list[str]:
        """What this suite changes for a model with ``num_classes`` classes (empty: nothing)."""
        if self.judge == "strict" and num_classes is not None and num_classes < DLR_MIN_CLASSES:
            return [f"{num_classes} classes: APGD-DLR replaced by APGD on the logit margin loss. {DLR_FALLBACK_NOTE}"]
        return []

    def cost(self, eps: float, inputs: int) -> AttackCost:
        """Upper bound of the work for ``inputs`` inputs (every attack on every input), plus the judging passes."""
        specs = self.attacks(eps)
        total = AttackCost(gradient=(1 + len(specs)) * inputs)  # judging: the clean input, then each attack's output
        for spec in specs:
            n = min(inputs, self.square_n) if spec.kind == "score" and self.square_n is not None else inputs
            total = total + spec.cost(n)
        return total

    def draws(self, eps: float) -> int:
        """The most noise draws one head evaluation of the suite takes (its attacks' and its judge's)."""
        return max([self.judge_samples, *(a.draws() for a in self.attacks(eps))])

    def describe(
        self, eps: float, num_classes: int | None = None, flag: FlagRule | FlagCalibration | None = None
    ) -> dict[str, Any]:
        """The settings to print beside every number this suite produced (``notes``: substitutions;
        ``flag``: the rule a flag-aware suite evades, and how its threshold was fixed)."""
        rule = flag.rule if isinstance(flag, FlagCalibration) else flag
        attacks = self.attacks(eps, num_classes, rule)
        extra = {"flag": None if flag is None else flag.describe()} if self.flag_aware else {}
        return {
            "suite": self.name,
            "eps": eps,
            "norm": "linf",
            "judge": self.judge,
            "judge_samples": self.judge_samples,
            "square_n": self.square_n,
            "attacks": [{"name": a.name, "key": a.key(), **_settings(a)} for a in attacks],
            "notes": self.notes(num_classes),
            **extra,
        }

    def reduced(self, *, steps: int, eot: int, queries: int, judge_samples: int | None = None) -> Suite:
        """A cheaper variant (fewer steps, draws, queries) under a name that says so.

        A flag-aware suite scales its flag-aware attacks' steps by the same factor (200 -> 2 x
        ``steps`` by default) and gives them ``eot`` draws (at least 2: mutual information needs them).
        """
        base = self.base or self.name
        name = f"{base}-reduced(steps={steps},eot={eot},queries={queries})"
        return replace(
            self,
            name=name,
            judge_samples=judge_samples or self.judge_samples,
            steps=steps,
            eot=eot,
            queries=queries,
            base=base,
            flag_steps=max(1, round(steps * self.flag_steps / self.steps)),
            flag_eot=max(eot, 2),
        )


SUITES: dict[str, Suite] = {
    "standard": Suite("standard", "strict", judge_samples=64, steps=100, eot=20, queries=1000, query_samples=32),
    "published": Suite("published", "single_draw", judge_samples=1, steps=10, eot=50),
    "adaptive": Suite(
        "adaptive", "strict", judge_samples=64, steps=100, eot=20, queries=1000, query_samples=32, flag_aware=True
    ),
}


SuiteName = Literal[tuple(SUITES)]  # type: ignore[valid-type]
"""A named suite (``standard``, ``published``, ``adaptive``): the type every caller validates with."""


def get_suite(suite: str | Suite) -> Suite:
    """A suite by name (or the suite itself).

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if isinstance(suite, Suite):
        return suite
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    return SUITES[suite]


@torch.no_grad()
def judge_inputs(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    judge: Judge,
    samples: int,
    generator: torch.Generator | None,
    flag: FlagRule | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which inputs the model gets right [B], and which the flag marks [B] (all False without a
    rule), from the same fresh draws."""
    with eval_mode(model):
        if judge == "single_draw":
            logits = predict_draws(model, x, 1, generator)
            ok = logits[0].argmax(-1) == y
        else:
            logits = predict_draws(model, x, samples, generator)  # (T, B, K): one backbone pass
            ok = (predict_label(logits) == y) & (majority_vote(logits) == y)
    flagged = flag.flagged(logits).to(ok.device) if flag is not None else torch.zeros_like(ok)
    return ok, flagged


def judge_correct(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, judge: Judge, samples: int, generator: Rng
) -> torch.Tensor:
    """Which inputs the model gets right [B] under a judging rule, with fresh draws."""
    return judge_inputs(model, x, y, judge, samples, generator)[0]


@dataclass
class AttackOutcome:
    """One attack of a suite run: what it was given and what it broke."""

    key: str
    name: str
    settings: dict[str, Any]
    evaluated: int  # inputs still standing when it ran (and within square_n)
    fooled: int  # of those, how many it broke
    seconds: float
    grad_evals: int
    queries: int
    stopped: bool
    evaded: int | None = None  # flag-aware suites: of those, broken and not flagged


@dataclass
class SuiteResult:
    """Per-input outcome of a suite run.

    Attributes:
        clean_correct: [B] right on the clean input (the suite's judging rule).
        robust: [B] right on the clean input and on every attack's output.
        fooled_by: [B] index of the first attack that broke the input (-1: none; -2: wrong when clean).
        x_adv: [B, C, H, W] an unflagged breaking input where one was found, else the first
            breaking input, else the last attack's output (the clean input where no attack ran).
        attacks: one ``AttackOutcome`` per attack, in order.
        settings: ``Suite.describe`` of the run.
        complete: False when ``should_stop`` or ``after_attack`` cut the run short.
        clean_flagged: flag-aware suites: [B] the clean input is flagged (else None).
        evaded: flag-aware suites: [B] right when clean, and some attack's output wrong and not
            flagged (an *unflagged error*; else None).
        evaded_by: flag-aware suites: [B] index of the first attack that made an unflagged error
            (-1: none; -2: wrong when clean).
    """

    clean_correct: torch.Tensor
    robust: torch.Tensor
    fooled_by: torch.Tensor
    x_adv: torch.Tensor
    attacks: list[AttackOutcome]
    settings: dict[str, Any]
    complete: bool = True
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    clean_flagged: torch.Tensor | None = None
    evaded: torch.Tensor | None = None
    evaded_by: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.robust.shape[0])

    @property
    def flag_aware(self) -> bool:
        return self.evaded is not None

    @property
    def robust_or_flagged(self) -> torch.Tensor:
        """[B] right when clean, and every attack's output right or flagged (no flag: ``robust``)."""
        return self.robust if self.evaded is None else self.clean_correct & ~self.evaded

    def summary(self) -> dict[str, Any]:
        """Clean and robust accuracy with Wilson 95% intervals, per-attack counts and the settings.

        A flag-aware suite adds ``unflagged_error_under_attack`` (unflagged errors / inputs right
        when clean; None when none is right), ``robust_or_flagged_accuracy`` (over all inputs) and
        ``clean_flagged_rate`` (flagged share of the inputs right when clean), each with its interval.
        """
        n = self.n
        clean, robust = int(self.clean_correct.sum()), int(self.robust.sum())
        out: dict[str, Any] = {
            **self.settings,
            "n": n,
            "clean_accuracy": clean / n,
            "clean_ci": list(wilson_interval(clean, n)),
            "robust_accuracy": robust / n,
            "robust_ci": list(wilson_interval(robust, n)),
            "robust": robust,
        }
        if self.evaded is not None and self.clean_flagged is not None:
            evaded = int(self.evaded.sum())
            kept = int(self.robust_or_flagged.sum())
            flagged_clean = int((self.clean_flagged & self.clean_correct).sum())
            out.update(
                {
                    "unflagged_errors": evaded,
                    "unflagged_error_under_attack": evaded / clean if clean else None,
                    "unflagged_error_ci": list(wilson_interval(evaded, clean)) if clean else None,
                    "robust_or_flagged_accuracy": kept / n,
                    "robust_or_flagged_ci": list(wilson_interval(kept, n)),
                    "clean_flagged_rate": flagged_clean / clean if clean else None,
                    "clean_flagged_ci": list(wilson_interval(flagged_clean, clean)) if clean else None,
                }
            )
        out.update(
            {
                "complete": self.complete,
                "seconds": round(self.seconds, 2),
                "per_attack": [
                    {
                        "key": a.key,
                        "evaluated": a.evaluated,
                        "fooled": a.fooled,
                        **({} if a.evaded is None else {"evaded": a.evaded}),
                        "seconds": round(a.seconds, 2),
                        "grad_evals": a.grad_evals,
                        "queries": a.queries,
                        "stopped": a.stopped,
                    }
                    for a in self.attacks
                ],
            }
        )
        return out


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    return None if any(p is None for p in parts) else torch.cat(parts)  # type: ignore[arg-type]


def merge_results(parts: list[SuiteResult]) -> SuiteResult:
    """One result from runs over consecutive slices of the inputs (batches, or ranks)."""
    if not parts:
        raise ValueError("nothing to merge")
    attacks = []
    for i, first in enumerate(parts[0].attacks):
        same = [p.attacks[i] for p in parts if i < len(p.attacks)]
        attacks.append(
            AttackOutcome(
                key=first.key,
                name=first.name,
                settings=first.settings,
                evaluated=sum(a.evaluated for a in same),
                fooled=sum(a.fooled for a in same),
                seconds=sum(a.seconds for a in same),
                grad_evals=sum(a.grad_evals for a in same),
                queries=sum(a.queries for a in same),
                stopped=any(a.stopped for a in same),
                evaded=None if first.evaded is None else sum(a.evaded or 0 for a in same),
            )
        )
    return SuiteResult(
        clean_correct=torch.cat([p.clean_correct for p in parts]),
        robust=torch.cat([p.robust for p in parts]),
        fooled_by=torch.cat([p.fooled_by for p in parts]),
        x_adv=torch.cat([p.x_adv for p in parts]),
        attacks=attacks,
        settings=parts[0].settings,
        complete=all(p.complete for p in parts),
        seconds=sum(p.seconds for p in parts),
        clean_flagged=_cat([p.clean_flagged for p in parts]),
        evaded=_cat([p.evaded for p in parts]),
        evaded_by=_cat([p.evaded_by for p in parts]),
    )


def _settings(attack: Attack) -> dict[str, Any]:
    """An attack's fields for ``Suite.describe``; a one-signal flag's empty ``also`` is left out (the settings of
    runs from before union rules existed stay equal, and with them their caches)."""
    d = attack.model_dump(exclude={"name"})
    if d.get("also") == []:
        del d["also"]
    return d


AfterAttack = Callable[[int, AttackOutcome], bool]
"""Called after each attack with its index and outcome; True stops the suite (partial result)."""


def flag_notes(model: StochasticClassifier, rule: FlagRule) -> list[str]:
    """What a reader must know about a flag rule on this model (empty: nothing)."""
    if not model.stochastic and rule.kind == "mutual_information":
        return [
            "deterministic model: its mutual information is always 0, so the mutual-information flag never "
            "fires; its own confidence signal is max_prob (1 - max softmax probability)"
        ]
    return []


def run_suite(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    suite: str | Suite = "standard",
    *,
    eps: float | None = None,
    seed: int = 0,
    offset: int = 0,
    should_stop: StopFn | None = None,
    after_attack: AfterAttack | None = None,
    flag: FlagRule | FlagCalibration | None = None,
) -> SuiteResult:
    """Run a suite on inputs ``x`` [B, C, H, W] in [0, 1] with true labels ``y`` [B].

    Args:
        suite: a name in ``SUITES`` or a ``Suite``.
        eps: L-inf radius (default: ``default_eps`` of the model's input size).
        seed: every random stream derives from it and from the attack's position (a flag-aware
            suite: from the attack's key).
        offset: index of ``x[0]`` in the whole evaluation set; Square's ``square_n`` counts from 0
            of the whole set, and each slice gets its own streams, so running slices separately
            (batches, ranks) gives the same answer as one call.
        should_stop: checked between attack steps; True ends the run with partial results.
        after_attack: see ``AfterAttack``.
        flag: the flag rule (or its calibration) a flag-aware suite (``adaptive``) judges and
            evades; required there, ignored elsewhere.

    Raises:
        ValueError: a flag-aware suite without a flag.
    """
    s = get_suite(suite)
    eps = default_eps(model.cfg.input_shape) if eps is None else float(eps)
    k = model.cfg.num_classes
    rule: FlagRule | None = None
    if s.flag_aware:
        if flag is None:
            raise ValueError(f"suite {s.name!r} needs a flag rule (a signal and its threshold): pass flag=")
        rule = flag.rule if isinstance(flag, FlagCalibration) else flag
    specs = [a.resolve(model.cfg.input_shape) for a in s.attacks(eps, k, rule)]
    keys = [spec.key() for spec in specs]
    if rule is not None and len(set(keys)) != len(keys):
        raise ValueError(f"suite {s.name!r}: attack keys must differ (their random streams derive from them): {keys}")
    t0 = time.perf_counter()
    x = x.detach()
    b = x.shape[0]
    clean, clean_flagged = judge_inputs(
        model, x, y, s.judge, s.judge_samples, torch.Generator().manual_seed(derive_seed(seed, offset, "clean")), rule
    )
    robust = clean.clone()
    evaded = torch.zeros_like(clean)  # right when clean, then wrong and unflagged after some attack
    fooled_by = torch.where(clean, -1, -2).to(torch.long)
    evaded_by = fooled_by.clone()
    x_adv = x.clone()
    outcomes: list[AttackOutcome] = []
    complete = True
    positions = torch.arange(offset, offset + b, device=x.device)
    for i, spec in enumerate(specs):
        todo = clean & ~evaded  # without a flag rule every error is unflagged: todo == robust
        if spec.kind == "score" and s.square_n is not None:
            todo &= positions < s.square_n
        idx = todo.nonzero().squeeze(1)
        start = time.perf_counter()
        fooled = n_evaded = 0
        res = None
        stream = (offset, spec.key()) if rule is not None else (offset, i, spec.key())
        if idx.numel():
            gen = torch.Generator().manual_seed(derive_seed(seed, *stream, "attack"))
            res = spec.run(model, x[idx], y[idx], generator=gen, should_stop=should_stop)
            ok, flagged = judge_inputs(
                model,
                res.x_adv,
                y[idx],
                s.judge,
                s.judge_samples,
                torch.Generator().manual_seed(derive_seed(seed, *stream, "judge")),
                rule,
            )
            wrong, evades = ~ok, ~ok & ~flagged
            first_break = wrong & robust[idx]
            fooled_by[idx[first_break]] = i
            evaded_by[idx[evades]] = i
            # keep an unflagged breaking input; else the first breaking one; else the latest output
            keep = evades | robust[idx]
            x_adv[idx[keep]] = res.x_adv[keep]
            robust[idx[wrong]] = False
            evaded[idx[evades]] = True
            fooled = int(wrong.sum())
            n_evaded = int(evades.sum())
        outcome = AttackOutcome(
            key=spec.key(),
            name=spec.name,
            settings=spec.settings(),
            evaluated=int(idx.numel()),
            fooled=fooled,
            seconds=time.perf_counter() - start,
            grad_evals=res.grad_evals if res else 0,
            queries=res.queries if res else 0,
            stopped=bool(res and res.stopped),
            evaded=n_evaded if rule is not None else None,
        )
        outcomes.append(outcome)
        if outcome.stopped or (after_attack is not None and after_attack(i, outcome)):
            complete = i + 1 == len(specs) and not outcome.stopped
            break
    settings = s.describe(eps, k, flag)
    if rule is not None:
        settings["notes"] = [*settings["notes"], *flag_notes(model, rule)]
    return SuiteResult(
        clean_correct=clean,
        robust=robust,
        fooled_by=fooled_by,
        x_adv=x_adv,
        attacks=outcomes,
        settings=settings,
        complete=complete,
        seconds=time.perf_counter() - t0,
        clean_flagged=clean_flagged if rule is not None else None,
        evaded=evaded if rule is not None else None,
        evaded_by=evaded_by if rule is not None else None,
    )
