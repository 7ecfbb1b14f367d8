"""Square attack: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search" (ECCV 2020), L-inf.

Score-based and black-box: it only ever calls ``score_fn(x) -> probabilities [B, K]``,
never a gradient. ``square_linf`` takes any score function (the service can pass its
own API client); the registered ``"square"`` attack builds one from the model's mean
softmax over ``samples`` fresh noise draws, which is what a client of the API sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field

from ..classifier import StochasticClassifier
from .base import Attack, AttackCost, AttackResult, Rng, StopFn, predict_draws, register_attack

ScoreFn = Callable[[torch.Tensor], torch.Tensor]

_MAX_RESAMPLE = 10
# (last iteration of a 10 000-iteration run, divisor of p_init up to it)
_P_SCHEDULE = (
    (10, 1),
    (50, 2),
    (200, 4),
    (500, 8),
    (1000, 16),
    (2000, 32),
    (4000, 64),
    (6000, 128),
    (8000, 256),
    (10000, 512),
)


def model_score_fn(model: StochasticClassifier, samples: int, generator: torch.Generator | None = None) -> ScoreFn:
    """Mean softmax probabilities [B, K] over ``samples`` fresh draws per call (no gradients).

    One backbone pass per call; each call draws new noise, as repeated API requests would.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")

    def score(x: torch.Tensor) -> torch.Tensor:
        logits = predict_draws(model, x, samples, generator)  # (T, B, K), under no_grad
        return torch.softmax(logits, dim=-1).mean(0)  # (B, K)

    return score


def margin(probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``p_y - max_{k != y} p_k`` per input [B]; negative once the input is misclassified."""
    p_y = probs.gather(1, y.view(-1, 1)).squeeze(1)
    other = probs.scatter(1, y.view(-1, 1), float("-inf")).amax(1)
    return p_y - other


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """Fraction of pixels the square covers at iteration ``it``: the paper's piecewise schedule,
    halving at fixed points of a 10 000-iteration run, rescaled to ``n_iters``."""
    it = int(it / n_iters * 10000)
    for bound, div in _P_SCHEDULE:
        if it <= bound:
            return p_init / div
    return p_init


def _rand_sign(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(device=device, dtype=torch.float32)


@torch.no_grad()
def square_linf(
    score_fn: ScoreFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    queries: int = 1000,
    p_init: float = 0.8,
    generator: torch.Generator | None = None,
    should_stop: StopFn | None = None,
) -> AttackResult:
    """Square attack (Andriushchenko et al. 2020), L-inf ball of radius eps, untargeted.

    Minimizes the margin ``p_y - max_{k != y} p_k`` of the scores by random search:
    start from vertical stripes of +-eps, then each iteration change one random square
    window (side ``sqrt(p * H * W)``, ``p`` from ``p_selection``) to a random +-eps per
    channel, keeping it when the margin drops. Each input stops as soon as its scores
    misclassify it, or when it has used ``queries`` score calls.

    Args:
        score_fn: maps inputs [N, C, H, W] in [0, 1] to probabilities [N, K]; called on
            the inputs still being attacked only, never differentiated.
        x: clean inputs [B, C, H, W] in [0, 1].
        y: true labels [B].
        eps: L-inf radius.
        queries: per-input budget of score calls, the clean query included (default 1000).
        p_init: initial fraction of pixels per square (default 0.8).
        generator: for the window positions and signs.
        should_stop: checked before each iteration; True ends the search with what it has.

    Returns:
        ``queries`` is the total number of inputs scored; ``info`` has
        ``queries_per_input`` and ``fooled`` (lists, per the last scores seen) and
        ``score_calls`` (batched calls of ``score_fn``).
    """
    if eps < 0 or queries < 1 or not 0.0 < p_init <= 1.0:
        raise ValueError("square needs eps >= 0, queries >= 1 and 0 < p_init <= 1")
    x = x.detach()
    b, c, h, w = x.shape
    dev = x.device
    used = torch.zeros(b, dtype=torch.long, device=dev)
    calls = 0

    def query(idx: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        used[idx] += 1
        return score_fn(xs)

    all_idx = torch.arange(b, device=dev)
    probs = query(all_idx, x)
    fooled = probs.argmax(1) != y
    x_best = x.clone()
    margin_min = margin(probs, y)

    # Vertical stripes: one random sign per channel and column, [B, C, 1, W].
    todo = all_idx[~fooled]
    if todo.numel() and queries > 1 and eps > 0:
        stripes = eps * _rand_sign((todo.numel(), c, 1, w), generator, dev)
        x_best[todo] = torch.clamp(x[todo] + stripes, 0.0, 1.0)
        probs = query(todo, x_best[todo])
        margin_min[todo] = margin(probs, y[todo])
        fooled[todo] = probs.argmax(1) != y[todo]

    rows = torch.arange(h, device=dev).view(1, 1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, 1, w)
    n_features = c * h * w
    stopped = False
    for it in range(queries):
        active = all_idx[~fooled & (used < queries)]
        if active.numel() == 0 or eps == 0:
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        n = active.numel()
        xa, xb = x[active], x_best[active]
        p = p_selection(p_init, it, queries)
        s = min(max(round((p * n_features / c) ** 0.5), 1), min(h, w) - 1)
        top = torch.randint(0, h - s, (n,), generator=generator).to(dev).view(n, 1, 1, 1)
        left = torch.randint(0, w - s, (n,), generator=generator).to(dev).view(n, 1, 1, 1)
        window = (rows >= top) & (rows < top + s) & (cols >= left) & (cols < left + s)  # (n, 1, H, W)
        signs = eps * _rand_sign((n, c, 1, 1), generator, dev)
        for _ in range(_MAX_RESAMPLE):  # a candidate that changes nothing wastes a query: redraw its signs
            x_new = torch.where(window, torch.clamp(xa + signs, 0.0, 1.0), xb)
            same = ((x_new - xb).abs() < 1e-7).flatten(1).all(1)
            if not same.any():
                break
            signs[same] = eps * _rand_sign((int(same.sum()), c, 1, 1), generator, dev)
        probs = query(active, x_new)
        m = margin(probs, y[active])
        better = m < margin_min[active]
        x_best[active[better]] = x_new[better]
        margin_min[active[better]] = m[better]
        fooled[active[better]] = probs[better].argmax(1) != y[active[better]]

    return AttackResult(
        x_best,
        queries=int(used.sum()),
        stopped=stopped,
        info={"queries_per_input": used.tolist(), "fooled": fooled.tolist(), "score_calls": calls},
    )


@register_attack
class Square(Attack):
    """Square attack (Andriushchenko et al. 2020), L-inf, black-box on the model's mean probabilities.

    Defaults: queries=1000 per input, p_init=0.8, samples=16 noise draws per query (one
    backbone pass each, fresh draws every query). No gradient is ever computed.
    """

    kind = "score"
    name: Literal["square"] = "square"
    queries: int = Field(1000, ge=1, description="Score queries per input (the clean query included).")
    p_init: float = Field(0.8, gt=0, le=1, description="Initial fraction of pixels per square.")
    samples: int = Field(16, ge=1, description="Fresh noise draws averaged per query.")

    def cost(self, inputs: int) -> AttackCost:
        return AttackCost(queries=self.queries * inputs)

    def attack(
        self, model: StochasticClassifier, x: torch.Tensor, y: torch.Tensor, generator: Rng, should_stop: StopFn | None
    ) -> AttackResult:
        score_fn = model_score_fn(model, self.samples, generator)
        return square_linf(
            score_fn,
            x,
            y,
            eps=self.budget,
            queries=self.queries,
            p_init=self.p_init,
            generator=generator,
            should_stop=should_stop,
        )
