"""FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ..classifier import StochasticClassifier
from .base import Attack, AttackCost, AttackResult, Rng, StopFn, eot_grad, register_attack


@register_attack
class FGSM(Attack):
    """FGSM, L-inf: one signed-gradient step of size eps.

    Defaults: eot=16 noise draws averaged in the gradient (one backward pass), noise on.
    """

    name: Literal["fgsm"] = "fgsm"
    eot: int = Field(16, ge=1, description="Noise draws averaged in the gradient (one backward pass).")
    noise_free: bool = Field(False, description="Attack the network with its noise switched off.")

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        draws = 0 if self.noise_free else self.eot
        grad = eot_grad(model, x, y, draws, generator)
        x_adv = torch.clamp(x + self.budget * grad.sign(), 0.0, 1.0).detach()
        return AttackResult(x_adv, grad_evals=1, draws=draws)
