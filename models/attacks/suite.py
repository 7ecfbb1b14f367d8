"""Named evaluation protocols: ``standard`` (what a reviewer accepts) and ``published`` (what the
stochastic-network papers report), side by side so that readers see how much the second inflates.

``standard`` (AutoAttack's version='rand' and more): per input, the worst case over APGD-CE and
APGD-DLR (100 steps, EOT 20), PGD-100 with EOT 20, PGD-100 on the noise-free network and Square
(1,000 queries, black box). Attacks run in that order on the inputs still standing, as AutoAttack
does; an input counts as robust only if every attack fails. Each judgement uses 64 fresh draws,
and an input counts as correct only if both the prediction rule (argmax of the mean softmax) and
the majority vote give its true label.

``published`` (PNI, Adv-BNN, WCA-Net, MFDV-SNN): PGD, 10 steps of 0.1 eps, gradients averaged
over 50 draws, success judged on one noisy forward pass.

Both are pure functions of (model, inputs, labels, eps, seed): ``run_suite`` derives one random
stream per attack and one per judgement from the seed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
    StopFn,
    default_eps,
    eval_mode,
    make_attack,
    predict_draws,
)

Judge = Literal["strict", "single_draw"]


def derive_seed(seed: int, *parts: object) -> int:
    """A 62-bit seed for one random stream, from a request's seed and a stream name."""
    digest = hashlib.sha256(repr((int(seed), *parts)).encode()).hexdigest()
    return int(digest[:15], 16) >> 2


@dataclass(frozen=True)
class Suite:
    """A named protocol: which attacks, how a prediction is judged, and with how many draws.

    Attributes:
        name: ``standard`` or ``published`` (or a reduced variant's name).
        judge: ``strict`` (mean-softmax label and majority vote over ``judge_samples`` draws
            must both be right) or ``single_draw`` (one noisy forward pass).
        judge_samples: fresh draws per judgement.
        steps, eot: gradient steps and EOT draws of the gradient attacks.
        queries, query_samples: Square's per-input queries and draws per query (0 queries: no Square).
        square_n: Square runs on the first ``square_n`` inputs of a call only (None: all); the
            result states it.
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

    @property
    def family(self) -> str:
        """``standard`` or ``published``, with ``-reduced`` for a cheaper variant."""
        base = self.base or self.name
        return base if self.name == base else f"{base}-reduced"

    def attacks(self, eps: float, num_classes: int | None = None) -> list[Attack]:
        """The resolved attack specs at radius ``eps``, in the order they run.

        ``num_classes`` < 3: APGD-DLR becomes APGD on the logit margin (DLR needs a third logit;
        ``notes`` says so).
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

    def describe(self, eps: float, num_classes: int | None = None) -> dict[str, Any]:
        """The settings to print beside every number this suite produced (``notes``: substitutions)."""
        attacks = self.attacks(eps, num_classes)
        return {
            "suite": self.name,
            "eps": eps,
            "norm": "linf",
            "judge": self.judge,
            "judge_samples": self.judge_samples,
            "square_n": self.square_n,
            "attacks": [{"name": a.name, "key": a.key(), **a.model_dump(exclude={"name"})} for a in attacks],
            "notes": self.notes(num_classes),
        }

    def reduced(self, *, steps: int, eot: int, queries: int, judge_samples: int | None = None) -> Suite:
        """A cheaper variant (fewer steps, draws, queries) under a name that says so."""
        base = self.base or self.name
        name = f"{base}-reduced(steps={steps},eot={eot},queries={queries})"
        return Suite(
            name,
            self.judge,
            judge_samples or self.judge_samples,
            steps,
            eot,
            queries,
            self.query_samples,
            self.square_n,
            base,
        )


SUITES: dict[str, Suite] = {
    "standard": Suite("standard", "strict", judge_samples=64, steps=100, eot=20, queries=1000, query_samples=32),
    "published": Suite("published", "single_draw", judge_samples=1, steps=10, eot=50),
}


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
def judge_correct(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    judge: Judge,
    samples: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Which inputs the model gets right [B] under a judging rule, with fresh draws."""
    with eval_mode(model):
        if judge == "single_draw":
            return predict_draws(model, x, 1, generator)[0].argmax(-1) == y
        logits = predict_draws(model, x, samples, generator)  # (T, B, K): one backbone pass
        return (predict_label(logits) == y) & (majority_vote(logits) == y)


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


@dataclass
class SuiteResult:
    """Per-input outcome of a suite run.

    Attributes:
        clean_correct: [B] right on the clean input (the suite's judging rule).
        robust: [B] right on the clean input and on every attack's output.
        fooled_by: [B] index of the first attack that broke the input (-1: none; -2: wrong when clean).
        x_adv: [B, C, H, W] the breaking input where one was found, else the last attack's output
            (the clean input where no attack ran).
        attacks: one ``AttackOutcome`` per attack, in order.
        settings: ``Suite.describe`` of the run.
        complete: False when ``should_stop`` or ``after_attack`` cut the run short.
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

    @property
    def n(self) -> int:
        return int(self.robust.shape[0])

    def summary(self) -> dict[str, Any]:
        """Clean and robust accuracy with Wilson 95% intervals, per-attack counts and the settings."""
        n = self.n
        clean, robust = int(self.clean_correct.sum()), int(self.robust.sum())
        return {
            **self.settings,
            "n": n,
            "clean_accuracy": clean / n,
            "clean_ci": list(wilson_interval(clean, n)),
            "robust_accuracy": robust / n,
            "robust_ci": list(wilson_interval(robust, n)),
            "robust": robust,
            "complete": self.complete,
            "seconds": round(self.seconds, 2),
            "per_attack": [
                {
                    "key": a.key,
                    "evaluated": a.evaluated,
                    "fooled": a.fooled,
                    "seconds": round(a.seconds, 2),
                    "grad_evals": a.grad_evals,
                    "queries": a.queries,
                    "stopped": a.stopped,
                }
                for a in self.attacks
            ],
        }


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
    )


AfterAttack = Callable[[int, AttackOutcome], bool]
"""Called after each attack with its index and outcome; True stops the suite (partial result)."""


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
) -> SuiteResult:
    """Run a suite on inputs ``x`` [B, C, H, W] in [0, 1] with true labels ``y`` [B].

    Args:
        suite: a name in ``SUITES`` or a ``Suite``.
        eps: L-inf radius (default: ``default_eps`` of the model's input size).
        seed: every random stream derives from it and from the attack's position.
        offset: index of ``x[0]`` in the whole evaluation set; Square's ``square_n`` counts from 0
            of the whole set, and each slice gets its own streams, so running slices separately
            (batches, ranks) gives the same answer as one call.
        should_stop: checked between attack steps; True ends the run with partial results.
        after_attack: see ``AfterAttack``.
    """
    s = get_suite(suite)
    eps = default_eps(model.cfg.input_shape) if eps is None else float(eps)
    k = model.cfg.num_classes
    specs = [a.resolve(model.cfg.input_shape) for a in s.attacks(eps, k)]
    t0 = time.perf_counter()
    x = x.detach()
    b = x.shape[0]
    clean = judge_correct(
        model, x, y, s.judge, s.judge_samples, torch.Generator().manual_seed(derive_seed(seed, offset, "clean"))
    )
    robust = clean.clone()
    fooled_by = torch.where(clean, -1, -2).to(torch.long)
    x_adv = x.clone()
    outcomes: list[AttackOutcome] = []
    complete = True
    positions = torch.arange(offset, offset + b, device=x.device)
    for i, spec in enumerate(specs):
        todo = robust.clone()
        if spec.kind == "score" and s.square_n is not None:
            todo &= positions < s.square_n
        idx = todo.nonzero().squeeze(1)
        start = time.perf_counter()
        fooled = 0
        res = None
        if idx.numel():
            gen = torch.Generator().manual_seed(derive_seed(seed, offset, i, spec.key(), "attack"))
            res = spec.run(model, x[idx], y[idx], generator=gen, should_stop=should_stop)
            ok = judge_correct(
                model,
                res.x_adv,
                y[idx],
                s.judge,
                s.judge_samples,
                torch.Generator().manual_seed(derive_seed(seed, offset, i, spec.key(), "judge")),
            )
            broken = idx[~ok]
            robust[broken] = False
            fooled_by[broken] = i
            x_adv[idx] = res.x_adv
            fooled = int((~ok).sum())
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
        )
        outcomes.append(outcome)
        if outcome.stopped or (after_attack is not None and after_attack(i, outcome)):
            complete = i + 1 == len(specs) and not outcome.stopped
            break
    return SuiteResult(
        clean_correct=clean,
        robust=robust,
        fooled_by=fooled_by,
        x_adv=x_adv,
        attacks=outcomes,
        settings=s.describe(eps, k),
        complete=complete,
        seconds=time.perf_counter() - t0,
    )
