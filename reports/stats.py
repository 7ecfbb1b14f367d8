"""Paired statistics for comparing two models on the same inputs, and intervals for detection figures.

Two models judged on the same inputs are not two independent samples: most inputs are right (or
wrong) for both, and only the inputs where they disagree carry the difference. So:

- ``mcnemar``: the exact McNemar test (a two-sided binomial test on the discordant pairs: inputs
  right for one model and wrong for the other), its p-value and the counts;
- ``paired_bootstrap``: a percentile bootstrap interval of the difference in accuracy, resampling
  *inputs* (both models' outcomes on an input stay together);
- ``auroc_interval``: a bootstrap interval of a ROC AUC, resampling negatives and positives apart.

Each is a pure function of 0/1 outcome arrays (or scores), so the report, the README and tests
compute the same figure the same way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PairedComparison:
    """Model A against model B on the same ``n`` inputs (A minus B).

    Attributes:
        n: inputs judged by both.
        accuracy_a, accuracy_b: shares right.
        difference: ``accuracy_a - accuracy_b``.
        ci: the paired bootstrap 95% interval of ``difference``.
        a_only, b_only: discordant inputs (right for A only, right for B only).
        p_value: exact two-sided McNemar p-value (1.0 with no discordant pairs).
    """

    n: int
    accuracy_a: float
    accuracy_b: float
    difference: float
    ci: tuple[float, float]
    a_only: int
    b_only: int
    p_value: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _outcomes(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-d array of 0/1 (or bool) outcomes, one per input")
    return arr.astype(bool)


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value for ``a_only`` and ``b_only`` discordant pairs.

    Under the null each discordant pair is A's or B's with probability 1/2, so the p-value is twice
    the binomial tail of the smaller count (capped at 1).
    """
    if a_only < 0 or b_only < 0:
        raise ValueError("discordant counts must be non-negative")
    m = a_only + b_only
    if m == 0:
        return 1.0
    k = min(a_only, b_only)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0**m
    return min(1.0, 2.0 * tail)


def paired_bootstrap(
    a: Any, b: Any, *, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(a) - mean(b)``, resampling inputs (pairs stay together)."""
    x, y = _outcomes(a, "a"), _outcomes(b, "b")
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"a and b must judge the same, non-empty set of inputs (got {x.size} and {y.size})")
    d = x.astype(np.int8) - y.astype(np.int8)  # (n,) in {-1, 0, 1}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    means = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def compare_paired(a: Any, b: Any, *, resamples: int = 10_000, seed: int = 0) -> PairedComparison:
    """McNemar and the paired bootstrap interval for outcomes ``a`` and ``b`` (1 = right) on the same inputs."""
    x, y = _outcomes(a, "a"), _outcomes(b, "b")
    ci = paired_bootstrap(x, y, resamples=resamples, seed=seed)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    return PairedComparison(
        n=int(x.size),
        accuracy_a=float(x.mean()),
        accuracy_b=float(y.mean()),
        difference=float(x.mean() - y.mean()),
        ci=ci,
        a_only=a_only,
        b_only=b_only,
        p_value=mcnemar(a_only, b_only),
    )


def fast_auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """``training.detection.roc_auc`` (ties count half) by sorting: O(n log n), for bootstrap loops."""
    neg = np.sort(np.asarray(negatives, dtype=np.float64))
    pos = np.asarray(positives, dtype=np.float64)
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    return float((below + 0.5 * (at_or_below - below)).sum() / (pos.size * neg.size))


def auroc_interval(
    negatives: Any, positives: Any, *, resamples: int = 2_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float] | None:
    """Bootstrap interval of the ROC AUC (negatives and positives resampled apart); None if a side is empty."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    rng = np.random.default_rng(seed)
    aucs = [
        fast_auc(neg[rng.integers(0, neg.size, neg.size)], pos[rng.integers(0, pos.size, pos.size)])
        for _ in range(resamples)
    ]
    lo, hi = np.quantile(np.asarray(aucs, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
