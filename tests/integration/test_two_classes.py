"""A two-class image folder end to end: ``python -m training.train`` evaluates it under the
``standard`` suite and writes a checkpoint, and a real ``python -m service`` answers the attack
probe with ``attacks=standard`` and with APGD-DLR (whose loss needs three classes: with two it
runs the logit margin, and the report says so).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.server import REPO, ServerProcess

pytestmark = pytest.mark.integration

SIZE = 14
PER_CLASS = 20  # every 10th image (by name) is the test split: 2 per class


def two_class_folder(root: Path) -> Path:
    """``root/top/*.png`` (bright top half) and ``root/bottom/*.png`` (bright bottom half), grayscale."""
    rng = np.random.default_rng(0)
    for name, rows in (("top", slice(0, SIZE // 2)), ("bottom", slice(SIZE // 2, SIZE))):
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            img = rng.uniform(0, 0.3, (SIZE, SIZE))
            img[rows] += 0.6
            Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8), "L").save(root / name / f"{i:03d}.png")
    return root


def test_two_class_folder_trains_evaluates_and_serves_probes(tmp_path: Path) -> None:
    data = two_class_folder(tmp_path / "data")
    out = tmp_path / "ck"
    cmd = [
        sys.executable,
        "-m",
        "training.train",
        "--dataset",
        str(data),
        "--arch",
        "tiny_cnn",
        "--method",
        "mfdv",
        "--feature-dim",
        "8",
        "--max-steps",
        "20",
        "--batch-size",
        "16",
        "--attack-n",
        "4",
        "--suite",
        "standard",
        "--eval-samples",
        "8",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["class_names"] == ["bottom", "top"]
    standard = manifest["metrics"]["robust"]["standard_eps0.1"]
    assert standard["n"] == 4 and [a["loss"] for a in standard["attacks"] if a["name"] == "apgd"] == ["ce", "margin"]
    assert any("DLR" in note for note in standard["notes"])

    test_images = sorted((data / "top").glob("*.png"))[9::10] + sorted((data / "bottom").glob("*.png"))[9::10]
    inputs = [(np.asarray(Image.open(p), dtype=np.float32) / 255).tolist() for p in test_images[:2]]
    labels = [1, 0]
    with ServerProcess(out, env={"MFDV_ATTACK_THREADS": "1"}) as server:
        r = httpx.post(
            f"{server.url}/v1/attack-probe",
            json={"inputs": inputs, "labels": labels, "attacks": "standard", "judge_samples": 8, "seed": 1},
            timeout=300,
        )
        assert r.status_code == 200, r.text[-2000:]
        body = r.json()
        (entry,) = body["attacks"]
        assert entry["name"] == "standard" and len(entry["inputs"]) == 2
        assert entry["info"]["suite"]["notes"]

        r = httpx.post(
            f"{server.url}/v1/attack-probe",
            json={
                "inputs": inputs,
                "labels": labels,
                "attacks": [{"name": "apgd", "loss": "dlr", "steps": 10, "eot": 4}],
                "judge_samples": 8,
                "seed": 1,
            },
            timeout=300,
        )
        assert r.status_code == 200, r.text[-2000:]
        (entry,) = r.json()["attacks"]
        assert entry["name"] == "apgd" and "DLR needs >= 3 classes" in entry["info"]["note"]
