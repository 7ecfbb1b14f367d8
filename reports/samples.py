"""Sample images: the first Fashion-MNIST test image of each class, one PNG per class.

    python -m reports.samples            # writes samples/t-shirt_top.png ... samples/ankle_boot.png
    python -m reports.samples --out DIR

The committed ``samples/`` folder is this command's output (``tests/unit/test_samples.py``
checks it), so the README's and docs' examples run right after ``scripts/serve`` without the
dataset. Files are named by class: lowercase, ``/`` and spaces replaced by ``_``. One of them
is also written as JSON (``sneaker.json``): its pixels in [0, 1] as a nested ``[C, H, W]``
array (3 decimals), one element of ``/v1/predict``'s JSON ``inputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from training.data import Dataset, load_fashion_mnist

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
ARRAY_SAMPLE = "sneaker"
"""The class whose sample is also written as a JSON array (``samples/sneaker.json``)."""


def sample_name(class_name: str) -> str:
    """The file name of a class's sample: ``"T-shirt/top"`` -> ``t-shirt_top.png``."""
    return class_name.lower().replace("/", "_").replace(" ", "_") + ".png"


def first_of_each_class(ds: Dataset) -> dict[str, np.ndarray]:
    """File name -> uint8 pixels [C, H, W] of the first image of each class, in class order."""
    out: dict[str, np.ndarray] = {}
    for label, name in enumerate(ds.class_names):
        hits = (ds.y == label).nonzero()
        if not len(hits):
            raise ValueError(f"{ds.name} has no image of class {label} ({name})")
        out[sample_name(name)] = ds.x[int(hits[0, 0])].numpy()
    return out


def pixel_array(pixels: np.ndarray) -> list:
    """uint8 pixels [C, H, W] -> nested lists of values in [0, 1], rounded to 3 decimals."""
    return np.round(pixels.astype(np.float64) / 255.0, 3).tolist()


def _write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the samples unreadable to other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Write uint8 pixels [C, H, W] as a grey (1 channel) or RGB (3) PNG."""
    image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
    _write(path, lambda f: image.save(f, format="PNG", optimize=True))


def write_samples(out: Path = SAMPLES_DIR, root: Path | None = None) -> list[Path]:
    """Write the samples of Fashion-MNIST's test split (from ``root``, default Debian's folder) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, pixels in first_of_each_class(load_fashion_mnist("test", root)).items():
        write_png(pixels, out / name)
        paths.append(out / name)
        if name == sample_name(ARRAY_SAMPLE):
            text = json.dumps(pixel_array(pixels), separators=(",", ":")) + "\n"
            _write(out / f"{ARRAY_SAMPLE}.json", lambda f, text=text: f.write(text.encode()))
            paths.append(out / f"{ARRAY_SAMPLE}.json")
    return paths


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m reports.samples", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--out", type=Path, default=SAMPLES_DIR, help="folder to write the PNGs into (default: samples/)")
    args = p.parse_args(argv)
    for path in write_samples(args.out):
        print(path)


if __name__ == "__main__":
    main()
