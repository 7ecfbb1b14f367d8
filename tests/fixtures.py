"""A tiny generated dataset and checkpoints trained on it, so unit tests need no real data.

Each of 4 classes is a bright half (top, bottom, left or right) plus noise on 14x14
grayscale images (``training.data.make_bars_dataset``): any model learns it in a few dozen steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import BARS_CLASSES, Dataset, make_bars_dataset
from training.export import export_checkpoint
from training.train import fit, make_model

TINY_CLASSES = BARS_CLASSES


def make_tiny_dataset(n: int = 400, size: int = 14, seed: int = 0, channels: int = 1) -> Dataset:
    """The generated bars task (``training.data.make_bars_dataset``), named ``tiny``."""
    ds = make_bars_dataset(n=n, size=size, seed=seed, channels=channels)
    return Dataset(ds.x, ds.y, ds.class_names, "tiny")


def train_tiny(method: str = "mfdv", steps: int = 60, seed: int = 0, feature_dim: int = 8, **kw: object):
    """A tiny_cnn model trained on the tiny dataset (a second or two on CPU)."""
    torch.manual_seed(seed)
    ds = make_tiny_dataset(seed=seed)
    args = TrainConfig(
        method=method,
        arch="tiny_cnn",
        feature_dim=feature_dim,
        batch_size=32,
        epochs=100,
        max_steps=steps,
        seed=seed,
        lr=5e-3,
        **kw,
    )  # type: ignore[arg-type]
    model = make_model(args, ds)
    fit(model, ds, args, torch.device("cpu"))
    return model.eval(), ds


def make_tiny_checkpoint(out: Path, method: str = "mfdv", steps: int = 60, seed: int = 0) -> Path:
    model, ds = train_tiny(method, steps, seed)
    return export_checkpoint(
        model,
        out,
        class_names=ds.class_names,
        dataset="tiny",
        mi_threshold=0.05,
        train_args={"method": method, "steps": steps, "lam": 0.1},
        metrics={"clean": {"accuracy": 1.0, "n": 0, "samples": 32, "note": "tiny test model"}},
    )
