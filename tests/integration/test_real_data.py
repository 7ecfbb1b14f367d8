"""Real Fashion-MNIST: a short training run learns, and the committed checkpoints' numbers reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import load_checkpoint
from training.config import TrainConfig
from training.data import load_dataset
from training.evaluate import clean_accuracy, robust_accuracy
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
    ck = load_checkpoint(REPO / "checkpoints" / name)
    m = ck.manifest["metrics"]
    test = load_dataset("fashion_mnist", "test")
    clean = clean_accuracy(ck.model, test.subset(slice(0, 3000)), samples=m["clean"]["samples"], seed=1)
    assert abs(clean["accuracy"] - m["clean"]["accuracy"]) < 0.015
    if name.endswith("mfdv"):
        assert m["clean"]["accuracy"] >= 0.90  # the acceptance bar, measured on all 10k
    fgsm = m["robust"]["fgsm_eot16_eps0.1"]
    again = robust_accuracy(ck.model, test.subset(slice(0, 300)), fgsm["attack"], samples=32, seed=1)
    assert abs(again["accuracy"] - fgsm["accuracy"]) < 0.05
