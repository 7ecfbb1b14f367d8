"""PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks" (ICLR 2018).

With ``eot`` > 1 this is EOT-PGD (Athalye et al., "Obfuscated Gradients Give a
False Sense of Security", ICML 2018): each step's gradient is averaged over
``eot`` noise draws, in one backward pass because the noise is after the backbone.
``surrogate`` is PGD on the noise-free network (E[logits] for these zero-mean heads).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..classifier import StochasticClassifier
from .base import (
    Attack,
    AttackCost,
    AttackResult,
    Forward,
    LossFn,
    Rng,
    StopFn,
    eot_grad,
    eot_logits,
    eval_mode,
    project_l2,
    project_linf,
    random_start,
    register_attack,
)


def pgd_loop(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    draws: int,
    norm: str = "linf",
    start: bool | torch.Tensor = True,
    loss: str | LossFn = "ce",
    forward: Forward = eot_logits,
    generator: torch.Generator | None = None,
    should_stop: StopFn | None = None,
) -> tuple[torch.Tensor, int]:
    """The PGD iteration shared by every PGD-style attack (and adversarial training's inner attack).

    Args:
        eps, alpha: radius and step size, each a float or one value per input [B].
        draws: noise draws per gradient (0: the noise-free network).
        start: True begins at a random point of the ball, False at x, a tensor at that point.
        loss, forward: what each step's gradient is of (``base.eot_loss_grad``).
        should_stop: checked before each step; True ends the loop early.

    Returns:
        The adversarial inputs and the number of steps taken.
    """
    x = x.detach()
    if isinstance(start, torch.Tensor):
        x_adv = start.detach()
    else:
        x_adv = random_start(x, eps, norm, generator) if start else x.clone()
    a = alpha.view(-1, *([1] * (x.dim() - 1))) if isinstance(alpha, torch.Tensor) else alpha
    taken = 0
    with eval_mode(model):
        for _ in range(steps):
            if should_stop is not None and should_stop():
                break
            grad = eot_grad(model, x_adv, y, draws, generator, loss=loss, forward=forward)
            if norm == "linf":
                x_adv = project_linf(x_adv + a * grad.sign(), x, eps)
            else:
                g = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
                x_adv = project_l2(x_adv + a * grad / g, x, eps)
            taken += 1
    return x_adv.detach(), taken


class _PGDBase(Attack):
    steps: int = Field(20, ge=1, description="Gradient steps.")
    alpha: float | None = Field(None, ge=0, description="Step size; default eps/4.")
    random_start: bool = Field(True, description="Start at a random point of the ball.")

    def _eps_defaults(self, eps: float) -> dict[str, Any]:
        return {"alpha": eps / 4} if self.alpha is None else {}

    def noise_draws(self) -> int:
        """Noise draws per gradient (0: the noise-free network)."""
        return 0

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=self.steps * inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        x_adv, taken = self.perturb(model, x, y, generator=generator, should_stop=should_stop)
        draws = self.noise_draws()
        return AttackResult(x_adv, grad_evals=taken, draws=taken * draws, stopped=taken < self.steps)

    def perturb(
        self,
        model: StochasticClassifier,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        radius: float | torch.Tensor | None = None,
        loss: str | LossFn = "ce",
        forward: Forward = eot_logits,
        start: torch.Tensor | None = None,
        generator: Rng = None,
        should_stop: StopFn | None = None,
    ) -> tuple[torch.Tensor, int]:
        """``pgd_loop`` with this spec's settings: what ``run`` does, for callers that change what is
        maximised or the radius (adversarial training's inner attack).

        Args:
            radius: a float, or one per input [B] (default: eps); the step scales with it
                (alpha x radius / eps), keeping the ratio of step to radius.
            loss, forward: what each step's gradient is of (default: the cross-entropy of the logits of
                ``noise_draws()`` draws).
            start: the starting point (default: a random point of the ball if ``random_start``, else x).

        Returns:
            The adversarial inputs and the number of steps taken.
        """
        eps: float | torch.Tensor = self.budget
        alpha: float | torch.Tensor = self.alpha if self.alpha is not None else eps / 4
        begin: bool | torch.Tensor = self.random_start and self.budget > 0 if start is None else start
        if radius is not None:
            alpha, eps = alpha * radius / eps, radius
        return pgd_loop(
            model,
            x,
            y,
            eps=eps,
            alpha=alpha,
            steps=self.steps,
            draws=self.noise_draws(),
            norm=self.norm,
            start=begin,
            loss=loss,
            forward=forward,
            generator=generator,
            should_stop=should_stop,
        )


class _EOTPGD(_PGDBase):
    eot: int = Field(16, ge=1, description="Noise draws averaged per gradient (one backward pass).")
    noise_free: bool = Field(False, description="Attack the network with its noise switched off.")

    def noise_draws(self) -> int:
        return 0 if self.noise_free else self.eot


@register_attack
class PGD(_EOTPGD):
    """PGD, L-inf, random start (Madry et al. 2018); with eot > 1, EOT-PGD (Athalye et al. 2018).

    Defaults: 20 steps of eps/4, eot=16 draws per gradient, random start.
    """

    name: Literal["pgd"] = "pgd"


@register_attack
class PGDL2(_EOTPGD):
    """PGD, L2 ball of radius eps, random start. Defaults: 20 steps of eps/4, eot=16."""

    norm = "l2"
    name: Literal["pgd_l2"] = "pgd_l2"


@register_attack
class Surrogate(_PGDBase):
    """Noise-free surrogate, L-inf: PGD on the network with the noise switched off.

    With zero-mean feature noise and a linear head, E[logits] equals the noise-free
    logits, so this is a cheap and strong adaptive attack; judge it with the noise on.
    Defaults: 20 steps of eps/4, random start.
    """

    name: Literal["surrogate"] = "surrogate"
