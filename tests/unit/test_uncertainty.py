"""Uncertainty math against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models import majority_vote, summarize, wilson_interval


def _logits_from_probs(p: list[list[float]]) -> torch.Tensor:
    return torch.log(torch.tensor(p, dtype=torch.float64)).unsqueeze(1)  # (T, 1, K)


def test_two_confident_disagreeing_draws() -> None:
    # draws: [1, 0] and [0, 1] (almost): mean [0.5, 0.5]; PE = ln 2, EE ~ 0, MI ~ ln 2.
    u = summarize(_logits_from_probs([[1 - 1e-12, 1e-12], [1e-12, 1 - 1e-12]]))
    assert float(u.predictive_entropy) == pytest.approx(math.log(2), abs=1e-6)
    assert float(u.expected_entropy) == pytest.approx(0.0, abs=1e-6)
    assert float(u.mutual_information) == pytest.approx(math.log(2), abs=1e-6)
    assert float(u.vote_agreement) == pytest.approx(0.5)


def test_identical_draws_have_no_epistemic_uncertainty() -> None:
    u = summarize(_logits_from_probs([[0.7, 0.2, 0.1]] * 4))
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert float(u.predictive_entropy) == pytest.approx(h, abs=1e-6)
    assert float(u.expected_entropy) == pytest.approx(h, abs=1e-6)
    assert float(u.mutual_information) == 0.0  # exactly: a calibrated threshold of 0 must not flag it
    assert float(u.vote_agreement) == 1.0
    assert float(u.top_prob_stderr) == pytest.approx(0.0, abs=1e-7)
    assert int(u.label) == 0


def test_mixed_draws_by_hand() -> None:
    p = [[0.6, 0.4], [0.3, 0.7], [0.75, 0.25]]
    u = summarize(_logits_from_probs(p))
    mean = [0.55, 0.45]
    pe = -sum(m * math.log(m) for m in mean)
    ee = sum(-sum(q * math.log(q) for q in row) for row in p) / 3
    assert float(u.predictive_entropy) == pytest.approx(pe, abs=1e-6)
    assert float(u.expected_entropy) == pytest.approx(ee, abs=1e-6)
    assert float(u.mutual_information) == pytest.approx(pe - ee, abs=1e-6)
    # draws 1 and 3 vote for class 0, the mean's argmax
    assert int(u.label) == 0
    assert float(u.vote_agreement) == pytest.approx(2 / 3)
    std0 = math.sqrt((0.05**2 + 0.25**2 + 0.2**2) / 2)
    assert float(u.prob_std[0, 0]) == pytest.approx(std0, abs=1e-6)
    assert float(u.top_prob_stderr) == pytest.approx(std0 / math.sqrt(3), abs=1e-6)
    assert u.votes.tolist() == [[2, 1]]


def test_majority_vote_and_shape_check() -> None:
    logits = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[0.0, 1.0]]])
    assert majority_vote(logits).tolist() == [1]
    with pytest.raises(ValueError, match=r"\[T, B, K\]"):
        summarize(torch.zeros(3, 4))


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4)
    assert hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)


def test_wilson_interval_contains_the_estimate_at_the_ends() -> None:
    for n in (1, 7, 64, 1000):
        assert wilson_interval(n, n)[1] == 1.0
        assert wilson_interval(0, n)[0] == 0.0
        lo, hi = wilson_interval(n // 3, n)
        assert lo <= (n // 3) / n <= hi
