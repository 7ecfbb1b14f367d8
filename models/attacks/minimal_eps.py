"""Minimal-epsilon search: bisection over the L-inf radius with EOT-PGD (Madry et al. 2018;
Athalye et al. 2018), judged by the majority vote of fresh noise draws.

Every input gets its own bracket: ``hi`` is the smallest radius at which EOT-PGD was
seen to change the majority-vote label, ``lo`` the largest at which it was seen not to.
"""

from __future__ import annotations

import torch

from ..classifier import StochasticClassifier
from ..uncertainty import majority_vote
from .base import AttackResult, eot_grad, eval_mode, predict_draws, register_attack


def _pgd_linf_per_input(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    eot: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """EOT-PGD from the clean input with a radius per input (``eps`` [B]), step eps/4."""
    e = eps.view(-1, *([1] * (x.dim() - 1)))
    x_adv = x.clone()
    for _ in range(steps):
        grad = eot_grad(model, x_adv, y, eot, generator)
        x_adv = torch.clamp(torch.min(torch.max(x_adv + e / 4 * grad.sign(), x - e), x + e), 0.0, 1.0)
    return x_adv.detach()


def _fooled(
    model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, samples: int, generator: torch.Generator | None
) -> torch.Tensor:
    return majority_vote(predict_draws(model, x, samples, generator)) != y


@register_attack("min_eps", steps=20, eot=16, lo=0.0, hi=0.3, iters=6, samples=32)
def min_eps(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    generator: torch.Generator | None = None,
    steps: int = 20,
    eot: int = 16,
    lo: float = 0.0,
    hi: float = 0.3,
    iters: int = 6,
    samples: int = 32,
) -> AttackResult:
    """Smallest L-inf radius that fools the model, by bisection with EOT-PGD.

    Defaults: steps=20 (step size eps/4, start at the clean input), eot=16 draws per
    gradient (one backward pass), search range lo=0.0 to hi=0.3, iters=6 bisections,
    samples=32 fresh draws for the majority vote that judges each try. ``eps`` is not
    used (the range is [lo, hi]); it is there for the common attack signature.

    The clean input is judged first: if it is already misclassified the bracket is
    [0, 0]. Otherwise EOT-PGD runs at ``hi``; where that fails there is no bracket
    (``found`` False, ``hi`` None, ``lo`` = the initial hi, x_adv = the clean input).
    Each bisection then tries the midpoint of the remaining inputs' brackets. The
    initial ``lo`` is assumed, not tested, to fail unless a try there was made:
    ``lo_tested`` says which inputs had their lower end seen to fail (a clean, correctly
    classified input counts as a failed try at 0).

    Returns:
        x_adv at each input's ``hi`` (the clean input where not found); ``info`` lists
        per input ``lo``, ``hi``, ``found``, ``lo_tested`` and ``grad_evals_per_input``.
        ``grad_evals`` counts batched backward passes.
    """
    if not 0.0 <= lo < hi:
        raise ValueError(f"min_eps needs 0 <= lo < hi, got lo={lo}, hi={hi}")
    if steps < 1 or eot < 1 or iters < 0 or samples < 1:
        raise ValueError("min_eps needs steps >= 1, eot >= 1, iters >= 0 and samples >= 1")
    x = x.detach()
    b = x.shape[0]
    dev = x.device
    lo_t = torch.full((b,), float(lo), device=dev)
    hi_t = torch.full((b,), float(hi), device=dev)
    lo_tested = torch.zeros(b, dtype=torch.bool, device=dev)
    per_input = torch.zeros(b, dtype=torch.long, device=dev)
    x_best = x.clone()
    grad_evals = 0

    with eval_mode(model):
        clean_fooled = _fooled(model, x, y, samples, generator)
        lo_t[clean_fooled] = 0.0
        hi_t[clean_fooled] = 0.0
        if lo == 0.0:
            lo_tested |= ~clean_fooled

        idx = (~clean_fooled).nonzero().squeeze(1)
        found = clean_fooled.clone()
        if idx.numel():
            adv = _pgd_linf_per_input(model, x[idx], y[idx], hi_t[idx], steps, eot, generator)
            grad_evals += steps
            per_input[idx] += steps
            ok = _fooled(model, adv, y[idx], samples, generator)
            found[idx[ok]] = True
            x_best[idx[ok]] = adv[ok]
            lo_t[idx[~ok]] = hi_t[idx[~ok]]
            lo_tested[idx[~ok]] = True
            idx = idx[ok]

        for _ in range(iters):
            if idx.numel() == 0:
                break
            mid = (lo_t[idx] + hi_t[idx]) / 2
            adv = _pgd_linf_per_input(model, x[idx], y[idx], mid, steps, eot, generator)
            grad_evals += steps
            per_input[idx] += steps
            ok = _fooled(model, adv, y[idx], samples, generator)
            hi_t[idx[ok]] = mid[ok]
            x_best[idx[ok]] = adv[ok]
            lo_t[idx[~ok]] = mid[~ok]
            lo_tested[idx[~ok]] = True

    hi_list: list[float | None] = [h if f else None for h, f in zip(hi_t.tolist(), found.tolist(), strict=True)]
    return AttackResult(
        x_best,
        grad_evals=grad_evals,
        draws=grad_evals * eot,
        info={
            "lo": lo_t.tolist(),
            "hi": hi_list,
            "found": found.tolist(),
            "lo_tested": lo_tested.tolist(),
            "grad_evals_per_input": per_input.tolist(),
        },
    )
