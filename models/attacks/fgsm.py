"""FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015)."""

from __future__ import annotations

import torch

from ..classifier import StochasticClassifier
from .base import AttackResult, eot_grad, eval_mode, register_attack


@register_attack("fgsm", eot=1, noise_free=False)
def fgsm(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    eot: int = 1,
    noise_free: bool = False,
) -> AttackResult:
    """FGSM, L-inf: one signed-gradient step of size eps.

    Defaults: eot=1 (one noise draw per gradient), noise_free=False. ``eot`` > 1 averages
    the gradient over that many draws (one backward pass); ``noise_free`` attacks the
    network with the noise switched off.
    """
    draws = 0 if noise_free else eot
    with eval_mode(model):
        grad = eot_grad(model, x, y, draws, generator)
    x_adv = torch.clamp(x + eps * grad.sign(), 0.0, 1.0).detach()
    return AttackResult(x_adv, grad_evals=1, draws=draws)
