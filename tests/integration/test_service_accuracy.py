"""On the default checkpoint, PNG-encoded Fashion-MNIST test images sent one by one score what offline evaluation scores."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from models import load_checkpoint, predict_label, seeded_noise
from service import Settings, create_app
from training.data import Dataset, as_float, load_dataset
from training.evaluate import clean_accuracy

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "checkpoints" / "fashion_mnist_mfdv"
N = 300
SAMPLES = 64


def png_b64(x: torch.Tensor) -> str:
    """uint8 [1, H, W] -> base64 PNG."""
    buf = io.BytesIO()
    Image.fromarray(x[0].numpy()).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def service_labels(checkpoint: Path, ds: Dataset) -> tuple[list[int], list[int]]:
    """Labels the service answers for each image sent alone as a PNG, and the seeds it used."""
    labels, seeds = [], []
    with TestClient(create_app(Settings(model_dir=checkpoint, device="cpu", max_wait_ms=0))) as client:
        for i in range(len(ds)):
            r = client.post("/v1/predict", json={"inputs": [png_b64(ds.x[i])], "samples": SAMPLES, "seed": i})
            assert r.status_code == 200, r.text
            labels.append(r.json()["predictions"][0]["label"])
            seeds.append(r.json()["seed"])
    return labels, seeds


def check_service_accuracy(checkpoint: Path) -> dict[str, float]:
    """Compare the service with offline evaluation on the first ``N`` test images; returns the numbers."""
    ds = load_dataset("fashion_mnist", "test").subset(slice(0, N))
    labels, seeds = service_labels(checkpoint, ds)
    served = float(np.mean(np.array(labels) == ds.y.numpy()))

    model = load_checkpoint(checkpoint).model
    offline = clean_accuracy(model, ds, samples=SAMPLES, seed=0)["accuracy"]
    # The same images with the same seeds, straight through the model: the PNG path loses nothing.
    with torch.no_grad():
        direct = [
            int(predict_label(model(as_float(ds.x[i : i + 1]), seeded_noise(SAMPLES, model.feature_dim, s)))[0])
            for i, s in enumerate(seeds)
        ]
    agree = float(np.mean(np.array(direct) == np.array(labels)))
    assert abs(served - offline) <= 0.01, f"service {served:.4f} vs offline {offline:.4f} on {N} images"
    assert agree >= 1 - 1 / N, f"only {agree:.4f} of labels match a direct model call with the same seeds"
    return {"service": served, "offline": offline, "same_seed_agreement": agree}


def test_service_accuracy_matches_offline_evaluation(fashion_mnist_available: None) -> None:
    if not (DEFAULT / "manifest.json").is_file():
        pytest.skip(f"default checkpoint not committed yet at {DEFAULT} (train it with `python -m training.train`)")
    check_service_accuracy(DEFAULT)
