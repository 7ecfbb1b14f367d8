from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from training.data import FASHION_MNIST_DIR

from .fixtures import make_tiny_checkpoint, make_tiny_dataset
from .support.hand_model import export_hand_checkpoint

REPO = Path(__file__).resolve().parents[1]
FOLDER_MARKERS = {"integration": "integration"}
"""Tests under ``tests/<folder>/`` get the marker, so ``-m "not integration"`` selects by location."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    tests = Path(__file__).resolve().parent
    for item in items:
        folder = Path(item.path).resolve().relative_to(tests).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_dataset():
    return make_tiny_dataset()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported mfdv checkpoint (tiny_cnn, 4 classes, 1x14x14) trained on the tiny dataset."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_mfdv", "mfdv")


@pytest.fixture(scope="session")
def tiny_vanilla_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vanilla", "vanilla")


@pytest.fixture(scope="session")
def hand_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-set mfdv model (``tests/support/hand_model.py``) as a checkpoint named ``tiny_mfdv``."""
    return export_hand_checkpoint(tmp_path_factory.mktemp("hand") / "tiny_mfdv", "mfdv")


@pytest.fixture(scope="session")
def hand_vanilla_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The hand-set model without noise, named ``tiny_vanilla``."""
    return export_hand_checkpoint(tmp_path_factory.mktemp("hand") / "tiny_vanilla", "vanilla")


@pytest.fixture(scope="session")
def default_checkpoint() -> Path:
    """The committed default checkpoint (mfdv on Fashion-MNIST)."""
    path = REPO / "checkpoints" / "fashion_mnist_mfdv"
    if not (path / "manifest.json").is_file():
        pytest.fail(f"default checkpoint missing at {path}")
    return path


@pytest.fixture(scope="session")
def fashion_mnist_available() -> None:
    if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST missing: sudo apt-get install -y dataset-fashion-mnist")


@pytest.fixture
def held_batches(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """Every batch waits in the compute thread until released: (computing, release) events."""
    from service.compute.engine import InferenceEngine

    computing, release = threading.Event(), threading.Event()
    real = InferenceEngine.run

    def held(self: InferenceEngine, jobs: list[Any]) -> Any:
        computing.set()
        assert release.wait(60), "the test never released the batch"
        return real(self, jobs)

    monkeypatch.setattr(InferenceEngine, "run", held)
    yield computing, release
    release.set()
