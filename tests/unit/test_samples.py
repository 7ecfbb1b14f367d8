"""The committed ``samples/`` files are exactly what ``python -m reports.samples`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reports.samples import ARRAY_SAMPLE, SAMPLES_DIR, first_of_each_class, sample_name, write_samples
from training.data import FASHION_CLASSES, Dataset, load_fashion_mnist


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "L" and im.size == (28, 28), (path, im.format, im.mode, im.size)
        return np.asarray(im)


def test_names_are_lowercase_class_names_without_slashes_or_spaces() -> None:
    names = [sample_name(c) for c in FASHION_CLASSES]
    assert names[0] == "t-shirt_top.png" and names[-1] == "ankle_boot.png"
    assert all(n == n.lower() and "/" not in n and " " not in n for n in names)
    assert len(set(names)) == len(names)


def test_first_image_of_each_class_in_class_order() -> None:
    x = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 1, 2, 2).contiguous()
    ds = Dataset(x, torch.tensor([1, 0, 1, 0, 2]), ["a b", "c/d", "e"], "toy")
    got = first_of_each_class(ds)
    assert list(got) == ["a_b.png", "c_d.png", "e.png"]
    assert [int(v[0, 0, 0]) for v in got.values()] == [1, 0, 4]  # indices of each class's first image


@pytest.mark.usefixtures("fashion_mnist_available")
def test_committed_samples_equal_what_the_script_writes(tmp_path: Path) -> None:
    written = {p.name: p for p in write_samples(tmp_path)}
    pngs = [sample_name(c) for c in FASHION_CLASSES]
    assert sorted(written) == sorted([*pngs, f"{ARRAY_SAMPLE}.json"])
    assert sorted(p.name for p in SAMPLES_DIR.iterdir()) == sorted(written)
    test = load_fashion_mnist("test")
    for label, name in enumerate(pngs):
        first = int((test.y == label).nonzero()[0, 0])
        assert np.array_equal(pixels(written[name]), test.x[first, 0].numpy()), name
        assert np.array_equal(pixels(SAMPLES_DIR / name), pixels(written[name])), f"samples/{name} is stale"
        assert (SAMPLES_DIR / name).stat().st_size < 4096

    array = json.loads((SAMPLES_DIR / f"{ARRAY_SAMPLE}.json").read_text())
    assert array == json.loads(written[f"{ARRAY_SAMPLE}.json"].read_text())
    png = pixels(SAMPLES_DIR / f"{ARRAY_SAMPLE}.png") / 255.0
    assert np.asarray(array).shape == (1, 28, 28) and np.abs(np.asarray(array)[0] - png).max() <= 5e-4
