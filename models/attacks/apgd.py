"""APGD: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML 2020), L-inf.

Auto-PGD needs no step size: it starts at 2 eps, takes momentum steps and halves the
step (restarting from the best point) at checkpoints where the loss stalled. On this
model each step's gradient is the EOT gradient over ``eot`` noise draws, computed in
one backward pass (all noise is after the backbone), and the per-input loss used for
the step-size checks is the mean over the same draws, so it costs nothing extra.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from ..classifier import StochasticClassifier
from .base import (
    DLR_FALLBACK_NOTE,
    DLR_MIN_CLASSES,
    Attack,
    AttackCost,
    AttackResult,
    LossFn,
    Rng,
    StopFn,
    eot_loss_grad,
    eval_mode,
    project_linf,
    register_attack,
)


def _oscillation(loss_hist: list[torch.Tensor], k: int, rho: float) -> torch.Tensor:
    """Condition 1 of APGD: the loss rose in at most ``rho * k`` of the last ``k`` steps."""
    rises = torch.zeros_like(loss_hist[-1])
    for j in range(1, k + 1):
        rises += (loss_hist[-j] > loss_hist[-j - 1]).float()
    return rises <= k * rho


def apgd_loop(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    draws: int,
    loss: str | LossFn = "ce",
    rho: float = 0.75,
    generator: torch.Generator | None = None,
    should_stop: StopFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The APGD iteration (see ``APGD``) on any loss the attacker maximises.

    Args:
        draws: noise draws per gradient (0: the noise-free network).
        loss: a name in ``base.LOSSES`` or a function of (logits [T, B, K], y) -> [T, B] (or [1, B]).
        should_stop: checked before each step; True ends the loop early.

    Returns:
        The highest-loss point seen per input, its loss (mean over the draws of that step) and the
        number of steps taken (the start point is evaluated too: ``taken + 1`` backward passes).
    """
    x = x.detach()
    b = x.shape[0]
    view = (b, *([1] * (x.dim() - 1)))
    k = max(int(0.22 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    k_decr = max(int(0.03 * steps), 1)

    # Random start inside the ball (uniform direction, scaled so that |delta|_inf = eps).
    t = 2 * torch.rand(x.shape, generator=generator).to(x.device) - 1
    t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view(view)
    x_adv = torch.clamp(x + eps * t, 0.0, 1.0)

    taken = 0
    with eval_mode(model):
        loss_cur, grad = eot_loss_grad(model, x_adv, y, draws, generator, loss)
        x_best, grad_best, loss_best = x_adv.clone(), grad.clone(), loss_cur.clone()
        loss_hist = [loss_cur]  # loss at the start point, then after each step
        step_size = torch.full(view, 2.0 * eps, device=x.device)
        x_old = x_adv.clone()
        since_check = 0
        best_at_check = loss_best.clone()
        reduced_at_check = torch.ones(b, dtype=torch.bool, device=x.device)

        for i in range(steps):
            if should_stop is not None and should_stop():
                break
            with torch.no_grad():
                a = 0.75 if i > 0 else 1.0
                z = project_linf(x_adv + step_size * grad.sign(), x, eps)
                x_new = project_linf(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_old), x, eps)
                x_old, x_adv = x_adv, x_new

            loss_cur, grad = eot_loss_grad(model, x_adv, y, draws, generator, loss)
            taken += 1
            loss_hist.append(loss_cur)
            better = loss_cur > loss_best
            x_best[better] = x_adv[better]
            grad_best[better] = grad[better]
            loss_best = torch.where(better, loss_cur, loss_best)

            since_check += 1
            if since_check == k:
                stalled = _oscillation(loss_hist, k, rho)
                no_gain = ~reduced_at_check & (best_at_check >= loss_best)
                reduce = stalled | no_gain
                reduced_at_check = reduce
                best_at_check = loss_best.clone()
                if reduce.any():
                    step_size[reduce] /= 2.0
                    x_adv = x_adv.clone()
                    x_adv[reduce] = x_best[reduce]
                    grad[reduce] = grad_best[reduce]
                since_check = 0
                k = max(k - k_decr, k_min)
    return x_best.detach(), loss_best, taken


@register_attack
class APGD(Attack):
    """APGD (Croce & Hein 2020), L-inf ball of radius eps, one run with a random start.

    Defaults: AutoAttack's version='rand' settings: steps=100, eot=20 draws per gradient,
    loss="ce" (or "dlr", the difference-of-logits-ratio loss, or "margin", Carlini & Wagner's logit
    margin), rho=0.75. DLR needs 3 classes; on a 2-class model ``loss="dlr"`` runs the margin loss
    (``base.dlr_loss``) and ``info["note"]`` says so. Step size starts
    at 2 eps; momentum 0.75 (the first step has none); checkpoints after ``0.22 steps``
    steps, the gap shrinking by ``0.03 steps`` down to ``0.06 steps`` (each at least 1). At
    a checkpoint an input's step size is halved, and it restarts from its best point, when
    the loss rose in at most ``rho`` of the steps since the previous checkpoint, or when
    the step was not halved at the previous checkpoint and the best loss has not improved
    since (the reference implementation's ``<=`` test). Returns the highest-loss point seen
    per input; ``info["best_loss"]`` holds that loss (mean over the ``eot`` draws).

    Each step costs one backward pass through the backbone whatever ``eot`` is; the loss
    estimate for the checks comes from the same draws. ``grad_evals`` is steps + 1 (the
    starting point is evaluated too).
    """

    name: Literal["apgd"] = "apgd"
    steps: int = Field(100, ge=1, description="Iterations.")
    eot: int = Field(20, ge=1, description="Noise draws averaged per gradient (one backward pass).")
    noise_free: bool = Field(False, description="Attack the network with its noise switched off.")
    loss: Literal["ce", "dlr", "margin"] = Field(
        "ce",
        description="Cross-entropy, difference-of-logits-ratio (2 classes: the margin loss) or logit margin.",
    )
    rho: float = Field(0.75, gt=0, lt=1, description="Oscillation threshold of the step-size checks.")

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(gradient=(self.steps + 1) * inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        draws = 0 if self.noise_free else self.eot
        x_best, loss_best, taken = apgd_loop(
            model,
            x,
            y,
            eps=self.budget,
            steps=self.steps,
            draws=draws,
            loss=self.loss,
            rho=self.rho,
            generator=generator,
            should_stop=should_stop,
        )
        info: dict[str, Any] = {"best_loss": loss_best.tolist()}
        if self.loss == "dlr" and model.cfg.num_classes < DLR_MIN_CLASSES:
            info["note"] = DLR_FALLBACK_NOTE
        return AttackResult(
            x_best,
            grad_evals=taken + 1,
            draws=(taken + 1) * draws,
            stopped=taken < self.steps,
            info=info,
        )
