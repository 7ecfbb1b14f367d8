"""Flag-aware attacks: fool the classifier **and** keep its flag down (the ``adaptive`` suite's members).

A flag is a defence only against an attacker who knows it (Carlini & Wagner, "Adversarial Examples
Are Not Easily Detected: Bypassing Ten Detection Methods", AISec 2017; Tramer, Carlini, Brendel &
Madry, "On Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020). Each attack here
knows the flag rule (``flag.FlagRule``: a signal of the T draws, mutual information or
1 - max mean softmax, above a threshold) and adds ``flag_term`` to its loss: on inputs the draws
already get wrong, ``weight / (1 + penalty)`` with ``penalty`` the signal above ``margin`` x
threshold in thresholds, so it aims under the threshold with room for the fresh draws that
judge it. The flag signal peaks at the decision boundary: a penalty on the right side would hold
the attack there (``evade_mi`` penalises everywhere; on the unit tests' tiny model at eps 0.2 it
broke 4 of 40 inputs where these broke all 40), while on the wrong side lowering it means moving
deeper into the wrong class. All of them use the
APGD iteration (Croce & Hein, ICML 2020: momentum, step size halved where progress stalls, the
best point kept), 200 steps and EOT 20 by default. The loss and its flag term come from the same
``eot`` draws: all noise is after the backbone, so a step is one backbone pass, one head
evaluation of ``eot`` draws and one backward pass.

- ``flag_margin``: the margin of the **mean softmax**, log p̄_k* - log p̄_y (k* the best wrong
  class), capped at ``kappa`` (as in Carlini & Wagner's confidence), plus the flag term.
  The ``adaptive`` suite runs it at several penalty weights.
- ``flag_targeted``: every draw confident on the best wrong class: the mean over draws of
  min(log p_t, log ``confidence``) for the target t (the wrong class with the highest clean mean
  softmax), plus the flag term. Confident, agreeing draws are what neither the mutual
  information nor the max-softmax flag marks (CCAT's evaluation, Stutz et al., ICML 2020,
  maximises confidence on a wrong class for the same reason).
- ``flag_apgd``: APGD's own loss (CE, DLR or margin) plus the flag term.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..classifier import StochasticClassifier
from .apgd import apgd_loop
from .base import (
    DLR_FALLBACK_NOTE,
    DLR_MIN_CLASSES,
    LOSSES,
    Attack,
    AttackCost,
    AttackResult,
    LossFn,
    Rng,
    StopFn,
    eot_logits,
    register_attack,
)
from .flag import FlagRule, FlagSignal


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax over draws [B, K] from logits [T, B, K] (stable: logsumexp)."""
    return torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def flag_term(rule: FlagRule, logits: torch.Tensor, y: torch.Tensor, margin: float, weight: float) -> torch.Tensor:
    """The flag part of every flag-aware objective [B]: ``weight / (1 + penalty)`` where the draws'
    mean softmax is wrong, 0 where it is right.

    ``penalty`` is ``FlagRule.penalty`` (the signal above ``margin`` x threshold, in thresholds).
    The signal peaks at the decision boundary, so a penalty that applied on the right side would
    hold the attack there; applied on the wrong side only, lowering it moves the input away from
    the boundary, deeper into the wrong class. Bounded, it keeps every wrong point above every
    right one in APGD's best-point bookkeeping (the attack's own loss is <= 0 on right points for
    the margin losses), with the most for wrong points under the aim. APGD steps on the gradient's
    sign, so its small size where the penalty is large does not matter: the attack's loss steers
    there, the penalty once the loss is capped or the penalty small.
    """
    wrong = (log_mean_softmax(logits.detach()).argmax(-1) != y).to(logits.dtype)
    return weight * wrong / (1.0 + rule.penalty(logits, margin))


class FlagClause(BaseModel):
    """One more clause of a flag rule: flagged when ``signal`` exceeds ``threshold``."""

    model_config = ConfigDict(extra="forbid")

    signal: FlagSignal
    threshold: float = Field(allow_inf_nan=False)


class _FlagAware(Attack):
    """Settings every flag-aware attack shares (the flag rule, the penalty, APGD's budget)."""

    threshold: float = Field(
        allow_inf_nan=False,
        description="The flag threshold on the signal (the model's mi_threshold for MI); flagged above it.",
    )
    signal: FlagSignal = Field(
        "mutual_information", description="Flag signal: mutual_information, or max_prob (1 - max mean softmax)."
    )
    also: list[FlagClause] = Field(
        default_factory=list,
        description="Further clauses of the flag (each a signal and its threshold): flagged when any fires (a union "
        "rule, e.g. mutual information or max_prob); the penalty sums over every clause.",
    )
    steps: int = Field(200, ge=1, description="APGD iterations.")
    eot: int = Field(20, ge=1, description="Noise draws per gradient (one backward pass); MI needs >= 2.")
    margin: float = Field(0.8, gt=0, le=1, description="Aim for the signal under margin x threshold.")
    weight: float = Field(
        10.0, ge=0, description="Flag term: weight / (1 + signal above the aim, in thresholds) on wrong answers."
    )
    rho: float = Field(0.75, gt=0, lt=1, description="Oscillation threshold of APGD's step-size checks.")

    @model_validator(mode="after")
    def _draws(self) -> _FlagAware:
        if "mutual_information" in self.rule.signals() and self.eot < 2:
            raise ValueError("mutual information needs eot >= 2 draws per step")
        return self

    @property
    def rule(self) -> FlagRule:
        return FlagRule(self.signal, self.threshold, tuple((c.signal, c.threshold) for c in self.also))

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=(self.steps + 1) * inputs)

    def key(self) -> str:
        loss = getattr(self, "loss", "")
        key = f"{self.name}{self.steps}" + (f"_{loss}" if loss not in ("", "ce") else "")
        key += f"_eot{self.eot}_w{self.weight:g}"
        return key + ("" if self.eps is None else f"_eps{self.eps:.4g}")

    def objective(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[LossFn, dict[str, Any]]:
        """The loss (logits [T, B, K], y) -> [T, B] or [1, B] that APGD maximises, and info to report."""
        raise NotImplementedError

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        loss, extra = self.objective(model, x, y, generator)
        x_best, loss_best, taken = apgd_loop(
            model,
            x,
            y,
            eps=self.budget,
            steps=self.steps,
            draws=self.eot,
            loss=loss,
            rho=self.rho,
            generator=generator,
            should_stop=should_stop,
        )
        info = {"best_loss": loss_best.tolist(), **extra}
        return AttackResult(
            x_best, grad_evals=taken + 1, draws=(taken + 1) * self.eot, stopped=taken < self.steps, info=info
        )


@register_attack
class FlagMargin(_FlagAware):
    """Mean-softmax margin with a flag penalty, APGD, L-inf (see the module docstring).

    Maximises min(log p̄_k* - log p̄_y, kappa) + ``flag_term`` (weight / (1 + penalty) where p̄ is
    wrong), p̄ the mean softmax over the step's ``eot`` draws. Defaults: 200 steps, eot=20, kappa=2 nats,
    margin=0.8, weight=10; ``threshold`` is required (the model's ``mi_threshold`` for the MI flag).
    """

    name: Literal["flag_margin"] = "flag_margin"
    kappa: float = Field(2.0, gt=0, description="Cap on the log mean-softmax margin (nats), as C&W's confidence.")

    def objective(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[LossFn, dict[str, Any]]:
        rule, margin, weight, kappa = self.rule, self.margin, self.weight, self.kappa

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            lp = log_mean_softmax(logits)  # (B, K)
            lp_y = lp.gather(1, labels[:, None]).squeeze(1)
            lp_other = lp.scatter(1, labels[:, None], float("-inf")).amax(1)
            gain = torch.clamp(lp_other - lp_y, max=kappa)
            return (gain + flag_term(rule, logits, labels, margin, weight)).unsqueeze(0)

        return loss, {}


@register_attack
class FlagTargeted(_FlagAware):
    """Every draw confident on the best wrong class, with a flag penalty; APGD, L-inf.

    The target t is the wrong class with the highest mean softmax on the clean input (one forward
    pass over ``eot`` draws). Maximises mean_t min(log p_t, log confidence) + ``flag_term``. Defaults: 200 steps, eot=20, confidence=0.99, margin=0.8,
    weight=10; ``threshold`` is required. ``info["target"]`` lists the targets.
    """

    name: Literal["flag_targeted"] = "flag_targeted"
    confidence: float = Field(0.99, gt=0, lt=1, description="Per-draw probability of the target to aim for.")

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=(self.steps + 2) * inputs)  # + the forward pass that picks the targets

    def objective(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[LossFn, dict[str, Any]]:
        with torch.no_grad():
            lp = log_mean_softmax(eot_logits(model, x, self.eot, generator))
            target = lp.scatter(1, y[:, None], float("-inf")).argmax(1)  # (B,)
        rule, margin, weight, cap = self.rule, self.margin, self.weight, math.log(self.confidence)

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logp = torch.log_softmax(logits, dim=-1)  # (T, B, K)
            lp_t = logp.gather(-1, target.view(1, -1, 1).expand(logits.shape[0], -1, 1)).squeeze(-1)
            return torch.clamp(lp_t, max=cap) + flag_term(rule, logits, labels, margin, weight).unsqueeze(0)

        return loss, {"target": target.tolist()}


@register_attack
class FlagAPGD(_FlagAware):
    """APGD (Croce & Hein 2020) on its own loss plus the flag term, L-inf.

    Maximises loss(logits, y) + ``flag_term``, per draw. Defaults:
    200 steps, eot=20, loss="ce" (or "dlr": on 2 classes the margin loss, ``info["note"]``; or
    "margin"), margin=0.8, weight=10; ``threshold`` is required.
    """

    name: Literal["flag_apgd"] = "flag_apgd"
    loss: Literal["ce", "dlr", "margin"] = Field("ce", description="APGD's loss: cross-entropy, DLR or logit margin.")

    def objective(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[LossFn, dict[str, Any]]:
        rule, margin, weight, base = self.rule, self.margin, self.weight, LOSSES[self.loss]

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return base(logits, labels) + flag_term(rule, logits, labels, margin, weight).unsqueeze(0)

        two_classes = self.loss == "dlr" and model.cfg.num_classes < DLR_MIN_CLASSES
        return loss, ({"note": DLR_FALLBACK_NOTE} if two_classes else {})
