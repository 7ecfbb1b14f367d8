"""The served flag (``training.flag``): one rule for the service's ``flagged`` and the reports' figures."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models import load_checkpoint
from models.attacks.suite import get_suite
from reports import paired
from service import create_app
from service.config import Settings
from training import flag as served
from training.train import main as train

from ..fixtures import make_tiny_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An mfdv and a vanilla checkpoint from ``python -m training.train`` on the tiny bars data."""
    root = tmp_path_factory.mktemp("flag")
    ds = make_tiny_dataset(n=200)
    npz = root / "tiny.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), class_names=np.array(ds.class_names))
    out = {}
    for method in ("mfdv", "vanilla"):
        out[method] = root / method
        train(
            [
                *("--dataset", str(npz), "--arch", "tiny_cnn", "--method", method, "--feature-dim", "8"),
                *("--max-steps", "30", "--batch-size", "32", "--no-attacks", "--eval-samples", "8"),
                *("--out", str(out[method])),
            ]
        )
    return out


def test_training_writes_the_flag_the_reports_calibrate(trained: dict[str, Path]) -> None:
    """The manifest's flag is the one ``reports.paired`` calibrates with its defaults: the same signal and the same
    threshold, so the service flags what the figures count."""
    defaults = argparse.Namespace(flag_rate=0.05, seed=0, flag_signal="auto")
    for method, signal in (("mfdv", "mutual_information"), ("vanilla", "max_prob")):
        ckpt = load_checkpoint(trained[method])
        flag = ckpt.manifest["flag"]
        assert flag["signal"] == signal, method
        c = flag["calibration"]
        assert c["rate"] == served.FLAG_RATE and c["flagged_correct"] <= c["rate"] and c["n"] == 36
        assert c["source"].startswith("held-out training images of")
        reported = paired.calibrate(trained[method], ckpt, get_suite("adaptive"), defaults)
        assert reported is not None and reported.rule.signal == signal
        assert reported.rule.threshold == flag["threshold"], method
        assert "mi_threshold_calibration" not in ckpt.manifest
    assert (
        load_checkpoint(trained["mfdv"]).manifest["mi_threshold"]
        == load_checkpoint(trained["mfdv"]).manifest["flag"]["threshold"]
    )
    assert load_checkpoint(trained["vanilla"]).manifest["mi_threshold"] == 0.0  # a deterministic model's MI is 0


def test_recalibrating_an_older_checkpoint(trained: dict[str, Path], tmp_path: Path) -> None:
    """``python -m training.flag`` on a checkpoint without a flag writes the one training writes; the files still
    verify and the model id changes (the manifest did)."""
    old = shutil.copytree(trained["vanilla"], tmp_path / "old")
    manifest = json.loads((old / "manifest.json").read_text())
    expected = manifest.pop("flag")
    manifest["mi_threshold"] = 0.123
    manifest["mi_threshold_calibration"] = {"quantile": 0.95, "n": 36, "samples": 8}
    (old / "manifest.json").write_text(json.dumps(manifest))
    before = load_checkpoint(old).model_id
    assert served.main([str(old)]) == 0
    after = load_checkpoint(old)  # verifies every file's sha256
    assert after.manifest["flag"] == expected and after.manifest["mi_threshold"] == 0.0
    assert "mi_threshold_calibration" not in after.manifest and after.model_id != before


def test_the_service_flags_by_the_manifests_rule(trained: dict[str, Path]) -> None:
    """A deterministic model's ``flagged`` is its max-softmax rule (mutual information could never flag it); the
    same rule in /v1/models, the v2 output and the probe report."""
    flag = load_checkpoint(trained["vanilla"]).manifest["flag"]
    ds = make_tiny_dataset(n=40, seed=3)
    x = (ds.x.float() / 255 if not ds.x.is_floating_point() else ds.x).numpy()
    noisy = np.clip(0.5 * x + 0.5 * np.random.default_rng(0).random(x.shape), 0, 1)  # some unconfident inputs
    inputs = np.concatenate([x[:20], noisy[:20]])
    with TestClient(create_app(Settings(model_dir=trained["vanilla"], device="cpu", max_inputs=64))) as c:
        info = c.get("/v1/models").json()["models"][0]
        assert info["flag"]["signal"] == "max_prob" and info["flag"]["threshold"] == flag["threshold"]
        assert info["flag"]["calibration"]["rate"] == 0.05
        preds = c.post("/v1/predict", json={"inputs": inputs.tolist(), "samples": 4, "seed": 0}).json()["predictions"]
        flagged = [p["flagged"] for p in preds]
        assert flagged == [1 - max(p["probs"]) > flag["threshold"] for p in preds]
        assert any(flagged), "no input flagged: the check would pass for a flag that never fires"
        body = {
            "inputs": [
                {"name": "image", "datatype": "FP32", "shape": list(inputs.shape), "data": inputs.ravel().tolist()}
            ],
            "parameters": {"samples": 4, "seed": 0},
        }
        out = {o["name"]: o["data"] for o in c.post("/v2/models/vanilla/infer", json=body).json()["outputs"]}
        assert out["flagged"] == flagged
        probe = c.post(
            "/v1/attack-probe",
            json={"inputs": inputs[:8].tolist(), "attacks": [{"name": "fgsm", "eps": 0.05}], "judge_samples": 4},
        ).json()
        assert probe["flag"]["signal"] == "max_prob" and probe["flag"]["threshold"] == flag["threshold"]
        assert [r["flagged"] for r in probe["clean"]] == [
            1 - max(r["mean_probs"]) > flag["threshold"] for r in probe["clean"]
        ]
