"""Paired statistics (``reports.stats``): values computed by hand, and the properties a comparison relies on."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.stats import auroc_interval, compare_paired, fast_auc, mcnemar, paired_bootstrap
from training.detection import roc_auc


def test_mcnemar_is_the_exact_binomial_tail_on_the_discordant_pairs() -> None:
    # 10 discordant pairs split 2 / 8: p = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar(8, 2) == mcnemar(2, 8)
    assert mcnemar(5, 5) == 1.0 and mcnemar(0, 0) == 1.0
    assert mcnemar(0, 20) == pytest.approx(2 / 2**20)


def test_agreement_everywhere_is_no_difference() -> None:
    a = np.array([1, 0, 1, 1, 0] * 40)
    c = compare_paired(a, a.copy())
    assert c.difference == 0.0 and c.ci == (0.0, 0.0) and c.p_value == 1.0 and c.a_only == c.b_only == 0


def test_the_paired_interval_is_narrower_than_the_unpaired_one_when_models_agree_mostly() -> None:
    rng = np.random.default_rng(1)
    b = rng.random(1000) < 0.7
    a = b.copy()
    flip = rng.choice(1000, 30, replace=False)  # A differs from B on 30 inputs only, 20 of them for the better
    a[flip[:20]] = True
    a[flip[20:]] = False
    c = compare_paired(a, b)
    assert c.difference == pytest.approx(a.mean() - b.mean())
    lo, hi = c.ci
    assert lo <= c.difference <= hi
    unpaired_half_width = 1.96 * math.sqrt(a.mean() * (1 - a.mean()) / 1000 + b.mean() * (1 - b.mean()) / 1000)
    assert (hi - lo) / 2 < unpaired_half_width / 2  # pairing removes most of the variance


def test_a_clear_difference_is_significant_and_its_interval_excludes_zero() -> None:
    b = np.zeros(400, dtype=bool)
    a = np.zeros(400, dtype=bool)
    a[:60] = True  # right for A only on 60 inputs
    b[60:70] = True  # right for B only on 10
    c = compare_paired(a, b)
    assert (c.a_only, c.b_only) == (60, 10)
    assert c.p_value < 1e-8 and c.ci[0] > 0


def test_outcomes_must_be_paired_zero_one_arrays() -> None:
    with pytest.raises(ValueError, match="same, non-empty set"):
        paired_bootstrap([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        compare_paired([0.5, 1], [1, 1])


def test_the_auroc_interval_covers_the_auroc_and_narrows_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = auroc_interval(rng.normal(0, 1, 50), rng.normal(1, 1, 50), resamples=500)
    large = auroc_interval(rng.normal(0, 1, 2000), rng.normal(1, 1, 2000), resamples=500)
    assert small is not None and large is not None
    true_auc = 0.7602  # Phi(1 / sqrt(2))
    assert large[0] < true_auc < large[1]
    assert large[1] - large[0] < (small[1] - small[0]) / 2
    assert auroc_interval([], [1.0]) is None


def test_the_fast_auc_equals_the_rank_auc_with_ties() -> None:
    rng = np.random.default_rng(3)
    neg, pos = rng.integers(0, 5, 300).astype(float), rng.integers(1, 6, 200).astype(float)  # many ties
    assert fast_auc(neg, pos) == pytest.approx(roc_auc(neg, pos), abs=1e-12)
