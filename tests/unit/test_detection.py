"""Detection signals: the closed-form flip probability matches sampling; AUC is the Mann-Whitney statistic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.attacks import predict_draws
from tests.unit._attack_models import one_thread, synthetic, trained_model
from training.detection import detection_report, flip_probability, roc_auc, signals


def test_roc_auc_is_the_probability_a_positive_outranks_a_negative() -> None:
    assert roc_auc(np.array([0.1, 0.2]), np.array([0.3, 0.4])) == 1.0
    assert roc_auc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5  # ties count half
    neg, pos = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0.2, 0.9, 0.5])
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert roc_auc(neg, pos) == pytest.approx(sum(pairs) / len(pairs))
    assert roc_auc(np.array([]), pos) is None


def test_flip_probability_matches_monte_carlo() -> None:
    with one_thread():
        model = trained_model("wca")
        x, _ = synthetic(6, torch.Generator().manual_seed(4))
        closed = flip_probability(model, x)
        logits = predict_draws(model, x, 20000, torch.Generator().manual_seed(0))  # (T, B, K)
        c = model.head.base_logits(model.features(x)).argmax(-1)
        beats = logits > logits.gather(2, c.view(1, -1, 1).expand(logits.shape[0], -1, 1))  # (T, B, K)
        mc = beats.float().mean(0).amax(1)
    assert closed.shape == (6,) and ((closed >= 0) & (closed <= 0.5 + 1e-6)).all()
    torch.testing.assert_close(closed, mc, atol=0.015, rtol=0)  # 3 standard errors of 20k draws at p=0.5


def test_a_noise_free_model_never_flips_and_the_report_counts_what_it_should() -> None:
    with one_thread():
        model = trained_model("vanilla")
        x, y = synthetic(20, torch.Generator().manual_seed(5))
        s = signals(model, x, 8)
    assert (s["flip_probability"] == 0).all() and (s["mutual_information"] == 0).all()
    ok = s["label"] == y
    fooled = torch.zeros(20, dtype=torch.bool)
    fooled[:5] = True
    rep = detection_report(s, s, ok, fooled, threshold=0.0)
    assert rep["n_clean"] == int(ok.sum()) and rep["n_adversarial"] == int((ok & fooled).sum())
    assert rep["flagged_clean"] == 0.0
    assert rep["auc"]["mutual_information"] == 0.5  # identical scores: no signal
    assert sum(rep["histograms"]["predictive_entropy"]["clean"]) == int(ok.sum())
