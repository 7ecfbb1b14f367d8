"""Real Fashion-MNIST: a short training run learns, and the committed checkpoints' numbers reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_checkpoint, wilson_interval
from models.attacks import SUITES
from training.config import TrainConfig
from training.data import load_dataset
from training.evaluate import clean_accuracy, evaluate_suite
from training.train import fit, make_model, split_train_val

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_few_hundred_steps_on_fashion_mnist_land_clearly_above_chance(fashion_mnist_available: None) -> None:
    torch.manual_seed(0)
    train, _ = split_train_val(load_dataset("fashion_mnist", "train"), 5000, 0)
    test = load_dataset("fashion_mnist", "test").subset(slice(0, 2000))
    args = TrainConfig(method="mfdv", arch="tiny_cnn", feature_dim=32, batch_size=64, max_steps=300, lr=3e-3)
    model = make_model(args, train)
    fit(model, train, args, torch.device("cpu"))
    acc = clean_accuracy(model, test, samples=16)["accuracy"]
    assert acc > 0.6, acc  # chance is 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fashion_mnist_mfdv", "fashion_mnist_vanilla"])
def test_committed_checkpoint_metrics_reproduce(name: str, fashion_mnist_available: None) -> None:
    """Clean accuracy on 3,000 test images, and a reduced ``standard`` suite on 300, against the manifest.

    The reduced suite (20 steps, EOT 8, 100 Square queries) is weaker than the full one, so it may
    score above the manifest's figure, never far below: the test fails when its Wilson interval lies
    wholly under the manifest's (a drop of about 7 points at these sizes), or below 60% at eps 0.1.
    """
    torch.set_num_threads(1)
    ck = load_checkpoint(REPO / "checkpoints" / name)
    m = ck.manifest["metrics"]
    test = load_dataset("fashion_mnist", "test")
    clean = clean_accuracy(ck.model, test.subset(slice(0, 3000)), samples=m["clean"]["samples"], seed=1)
    lo, hi = wilson_interval(round(clean["accuracy"] * 3000), 3000)
    assert lo <= m["clean"]["accuracy"] <= hi, (clean, m["clean"])
    assert m["clean"]["accuracy"] >= 0.87  # the acceptance bar, measured on all 10k
    full = m["robust"]["standard_eps0.1"]
    assert full["n"] >= 2000 and full["judge_samples"] >= 64 and full["complete"]
    assert full["robust_accuracy"] >= 0.60
    reduced = SUITES["standard"].reduced(steps=20, eot=8, queries=100)
    res = evaluate_suite(ck.model, test.subset(slice(0, 300)), reduced, eps=0.1, seed=1, batch=150).summary()
    assert res["robust_ci"][1] >= full["robust_ci"][0], (res["robust_accuracy"], full["robust_accuracy"])
    assert res["robust_accuracy"] >= 0.60
