"""Minimal-epsilon search: bisection over the L-inf radius with EOT-PGD (Madry et al. 2018;
Athalye et al. 2018), each try judged with fresh noise draws by the model's prediction rule.

Every input gets its own bracket: ``hi`` is the smallest radius at which EOT-PGD was
seen to change the predicted label, ``lo`` the largest at which it was seen not to.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..classifier import StochasticClassifier
from ..prediction import predict_label
from .base import Attack, AttackCost, AttackResult, Rng, StopFn, predict_draws, register_attack
from .pgd import pgd_loop


def _fooled(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    return predict_label(predict_draws(model, x, samples, generator)) != y


@register_attack
class MinEps(Attack):
    """Smallest L-inf radius that fools the model, by bisection with EOT-PGD.

    Defaults: steps=20 (step size radius/4, start at the clean input), eot=16 draws per
    gradient (one backward pass), search range lo=0.0 to hi=0.3, iters=6 bisections,
    samples=32 fresh draws judging each try (the prediction rule: argmax of the mean
    softmax). ``eps`` is not used (the range is [lo, hi]).

    The clean input is judged first: if it is already misclassified the bracket is
    [0, 0]. Otherwise EOT-PGD runs at ``hi``; where that fails there is no bracket
    (``found`` False, ``hi`` None, ``lo`` = the initial hi, x_adv = the clean input).
    Each bisection then tries the midpoint of the remaining inputs' brackets. The
    initial ``lo`` is assumed, not tested, to fail unless a try there was made:
    ``lo_tested`` says which inputs had their lower end seen to fail (a clean, correctly
    classified input counts as a failed try at 0).

    Returns x_adv at each input's ``hi`` (the clean input where not found); ``info`` lists
    per input ``lo``, ``hi``, ``found``, ``lo_tested`` and ``grad_evals_per_input``.
    ``grad_evals`` counts batched backward passes.
    """

    name: Literal["min_eps"] = "min_eps"
    eps: float | None = Field(None, ge=0, le=1, description="Not used: the search runs over [lo, hi].")
    steps: int = Field(20, ge=1, description="EOT-PGD steps per try.")
    eot: int = Field(16, ge=1, description="Noise draws averaged per gradient.")
    lo: float = Field(0.0, ge=0, le=1, description="Lower end of the search range.")
    hi: float = Field(0.3, gt=0, le=1, description="Upper end of the search range (the largest radius tried).")
    iters: int = Field(6, ge=0, description="Bisection rounds after the try at hi.")
    samples: int = Field(32, ge=1, description="Fresh noise draws judging each try.")

    @model_validator(mode="after")
    def _range(self) -> MinEps:
        if not self.lo < self.hi:
            raise ValueError(f"min_eps needs lo < hi (the search range), got lo={self.lo}, hi={self.hi}")
        return self

    def radius(self) -> float:
        return self.hi

    def cost(self, inputs: int) -> AttackCost:
        rounds = self.iters + 1  # EOT-PGD at hi, then one per bisection; each try judged by one forward pass
        return AttackCost(gradient=(self.steps * rounds + rounds + 1) * inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        steps, eot, samples = self.steps, self.eot, self.samples
        b = x.shape[0]
        dev = x.device
        lo_t = torch.full((b,), float(self.lo), device=dev)
        hi_t = torch.full((b,), float(self.hi), device=dev)
        lo_tested = torch.zeros(b, dtype=torch.bool, device=dev)
        per_input = torch.zeros(b, dtype=torch.long, device=dev)
        x_best = x.clone()
        grad_evals = 0
        stopped = False

        def try_at(idx: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal grad_evals, stopped
            adv, taken = pgd_loop(
                model,
                x[idx],
                y[idx],
                eps=radius,
                alpha=radius / 4,
                steps=steps,
                draws=eot,
                start=False,
                generator=generator,
                should_stop=should_stop,
            )
            grad_evals += taken
            per_input[idx] += taken
            stopped = stopped or taken < steps
            return adv, _fooled(model, adv, y[idx], samples, generator)

        clean_fooled = _fooled(model, x, y, samples, generator)
        lo_t[clean_fooled] = 0.0
        hi_t[clean_fooled] = 0.0
        if self.lo == 0.0:
            lo_tested |= ~clean_fooled

        idx = (~clean_fooled).nonzero().squeeze(1)
        found = clean_fooled.clone()
        if idx.numel():
            adv, ok = try_at(idx, hi_t[idx])
            found[idx[ok]] = True
            x_best[idx[ok]] = adv[ok]
            if not stopped:  # an interrupted try proves nothing about hi
                lo_t[idx[~ok]] = hi_t[idx[~ok]]
                lo_tested[idx[~ok]] = True
            idx = idx[ok]

        for _ in range(self.iters):
            if idx.numel() == 0 or stopped:
                break
            mid = (lo_t[idx] + hi_t[idx]) / 2
            adv, ok = try_at(idx, mid)
            hi_t[idx[ok]] = mid[ok]
            x_best[idx[ok]] = adv[ok]
            if not stopped:
                lo_t[idx[~ok]] = mid[~ok]
                lo_tested[idx[~ok]] = True

        hi_list: list[float | None] = [h if f else None for h, f in zip(hi_t.tolist(), found.tolist(), strict=True)]
        return AttackResult(
            x_best,
            grad_evals=grad_evals,
            draws=grad_evals * eot,
            stopped=stopped,
            info={
                "lo": lo_t.tolist(),
                "hi": hi_list,
                "found": found.tolist(),
                "lo_tested": lo_tested.tolist(),
                "grad_evals_per_input": per_input.tolist(),
            },
        )
