"""Detector-aware EOT-PGD: fool the model while keeping its mutual information under the
threshold that flags inputs (Carlini & Wagner, "Adversarial Examples Are Not Easily Detected:
Bypassing Ten Detection Methods", AISec 2017: attack the detector and the classifier together).

The loss is the cross-entropy averaged over ``eot`` draws minus ``weight`` times how far the
draws' mutual information lies above ``margin`` x ``threshold``; both come from the same
draws, so a step is still one backward pass.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..classifier import StochasticClassifier
from ..uncertainty import entropy
from .base import Attack, AttackCost, AttackResult, Rng, StopFn, ce_loss, register_attack
from .pgd import pgd_loop


def mutual_information(logits: torch.Tensor) -> torch.Tensor:
    """Mutual information [B] (nats) of logits [T, B, K]: H[mean p] - mean H[p]; differentiable."""
    probs = torch.softmax(logits, dim=-1)
    return entropy(probs.mean(0)) - entropy(probs).mean(0)


@register_attack
class EvadeMI(Attack):
    """EOT-PGD, L-inf, that keeps the mutual information under the flagging threshold.

    Defaults: 50 steps of eps/4, eot=16 draws (at least 2: mutual information needs
    several), random start, margin=0.8 (aim for MI under 0.8 x threshold, so fresh draws
    still see it under), weight=100. ``threshold`` is the model's ``mi_threshold``
    (``/v1/models``, the manifest).
    """

    name: Literal["evade_mi"] = "evade_mi"
    threshold: float = Field(ge=0, description="The mutual-information threshold to stay under (nats).")
    steps: int = Field(50, ge=1, description="Gradient steps.")
    alpha: float | None = Field(None, ge=0, description="Step size; default eps/4.")
    eot: int = Field(16, ge=2, description="Noise draws per gradient (mutual information needs >= 2).")
    margin: float = Field(0.8, gt=0, le=1, description="Aim for MI under margin x threshold.")
    weight: float = Field(100.0, ge=0, description="Penalty per nat of mutual information over the aim.")

    def _eps_defaults(self, eps: float) -> dict[str, Any]:
        return {"alpha": eps / 4} if self.alpha is None else {}

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=self.steps * inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        aim, weight = self.margin * self.threshold, self.weight

        def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            over = torch.relu(mutual_information(logits) - aim)  # (B,)
            return ce_loss(logits, labels) - weight * over.unsqueeze(0)  # (T, B)

        eps = self.budget
        x_adv, taken = pgd_loop(
            model,
            x,
            y,
            eps=eps,
            alpha=self.alpha if self.alpha is not None else eps / 4,
            steps=self.steps,
            draws=self.eot,
            start=eps > 0,
            loss=loss,
            generator=generator,
            should_stop=should_stop,
        )
        return AttackResult(x_adv, grad_evals=taken, draws=taken * self.eot, stopped=taken < self.steps)
