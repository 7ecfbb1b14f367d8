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
from models.attacks.flag import UNION, FlagRule
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
    for method, signal in (("mfdv", UNION), ("vanilla", "max_prob")):
        ckpt = load_checkpoint(trained[method])
        flag = ckpt.manifest["flag"]
        assert flag["signal"] == signal, method
        c = flag["calibration"]
        assert c["rate"] == served.FLAG_RATE and c["flagged_correct"] <= c["rate"] and c["n"] == 36
        assert c["source"].startswith("held-out training images of")
        reported = paired.calibrate(trained[method], ckpt, get_suite("adaptive"), defaults)
        assert reported is not None and reported.rule.kind == signal
        assert reported.rule == FlagRule.from_manifest(ckpt.manifest), method  # every clause's threshold
        assert "mi_threshold_calibration" not in ckpt.manifest
    mfdv = load_checkpoint(trained["mfdv"]).manifest
    assert [c["signal"] for c in mfdv["flag"]["clauses"]] == ["mutual_information", "max_prob"]
    # mi_threshold: mutual information alone at the rate; the union's own clause is at a smaller share, so not above it
    assert mfdv["flag"]["clauses"][0]["threshold"] >= mfdv["mi_threshold"]
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


def test_a_stochastic_model_flags_by_either_signal(trained: dict[str, Path]) -> None:
    """The union rule in the service: ``flagged`` when the mutual information or 1 - max p exceeds its threshold,
    the same in /v1 and v2; ``python -m training.flag --signal`` swaps it for one signal."""
    clauses = {c["signal"]: c["threshold"] for c in load_checkpoint(trained["mfdv"]).manifest["flag"]["clauses"]}
    ds = make_tiny_dataset(n=40, seed=3)
    x = (ds.x.float() / 255 if not ds.x.is_floating_point() else ds.x).numpy()
    noisy = np.clip(0.5 * x + 0.5 * np.random.default_rng(0).random(x.shape), 0, 1)
    inputs = np.concatenate([x[:20], noisy[:20]])
    with TestClient(create_app(Settings(model_dir=trained["mfdv"], device="cpu", max_inputs=64))) as c:
        info = c.get("/v1/models").json()["models"][0]
        assert info["flag"]["signal"] == UNION and "or" in info["flag"]["rule"]
        preds = c.post("/v1/predict", json={"inputs": inputs.tolist(), "samples": 8, "seed": 0}).json()["predictions"]
        by_mi = [p["uncertainty"]["mutual_information"] > clauses["mutual_information"] for p in preds]
        by_p = [1 - max(p["probs"]) > clauses["max_prob"] for p in preds]
        assert [p["flagged"] for p in preds] == [a or b for a, b in zip(by_mi, by_p, strict=True)]
        assert any(by_mi) or any(by_p), "no input flagged: the check would pass for a flag that never fires"


def test_the_flag_kind_can_be_chosen(trained: dict[str, Path], tmp_path: Path) -> None:
    ckpt = shutil.copytree(trained["mfdv"], tmp_path / "mfdv")
    assert served.main([str(ckpt), "--signal", "max_prob"]) == 0
    rule = FlagRule.from_manifest(load_checkpoint(ckpt).manifest)
    assert rule.kind == "max_prob" and not rule.also
    assert served.main([str(ckpt)]) == 0  # the default again: the union
    assert FlagRule.from_manifest(load_checkpoint(ckpt).manifest).kind == UNION


def test_one_checkpoint_under_two_flag_rules_is_compared_paired(trained: dict[str, Path], tmp_path: Path) -> None:
    """``reports.paired run CKPT CKPT@max_prob``: the same checkpoint and inputs, each entry calibrated and attacked
    with its own rule, and the pair compared on the same inputs."""
    out = tmp_path / "flags.json"
    ckpt = str(trained["mfdv"])
    argv = ["run", ckpt, f"{ckpt}@max_prob", f"{ckpt}@mutual_information", "--suite", "adaptive", "--n", "16"]
    argv += ["--clean-n", "16", "--samples", "4", "--steps", "2", "--eot", "2", "--queries", "0"]
    argv += [
        "--dataset",
        str(trained["mfdv"].parent / "tiny.npz"),
        "--cache",
        str(tmp_path / "cache"),
        "--out",
        str(out),
    ]
    assert paired.main(argv) == 0
    results = json.loads(out.read_text())
    names = [c["checkpoint"] for c in results["checkpoints"]]
    assert names == ["mfdv", "mfdv@max_prob", "mfdv@mutual_information"]
    kinds = [c["flag"]["signal"] for c in results["checkpoints"]]
    assert kinds == [UNION, "max_prob", "mutual_information"]
    assert [(p["a"], p["b"]) for p in results["pairs"]] == [("mfdv", names[1]), ("mfdv", names[2])]
    clean = {c["outcomes"]["clean"] for c in results["checkpoints"]}
    assert len(clean) == 1, "the same checkpoint, seed and inputs: the same clean outcomes"
    assert f"{ckpt}@max_prob" in results["command"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # one cache entry per rule


def test_a_flag_kind_after_at_is_checked() -> None:
    assert paired.split_kind("checkpoints/a@max_prob") == (Path("checkpoints/a"), "max_prob")
    assert paired.split_kind("runs/x@y/ckpt") == (Path("runs/x@y/ckpt"), None)  # an @ inside a folder name
    with pytest.raises(SystemExit, match="flag kind"):
        paired.split_kind("checkpoints/a@entropy")


def test_training_evaluates_the_adaptive_suite_against_the_flag_it_serves(tmp_path: Path) -> None:
    """``--suite adaptive`` at the end of training: the attacks evade the flag the manifest then serves (the union),
    not a mutual-information flag of its own."""
    ds = make_tiny_dataset(n=200)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), class_names=np.array(ds.class_names))
    out = tmp_path / "ck"
    train(
        [
            *("--dataset", str(npz), "--arch", "tiny_cnn", "--method", "mfdv", "--feature-dim", "8"),
            *("--max-steps", "20", "--batch-size", "32", "--eval-samples", "4", "--attack-n", "8"),
            *("--suite", "adaptive", "--max-steps", "20", "--out", str(out)),
        ]
    )
    manifest = load_checkpoint(out).manifest
    (summary,) = [v for k, v in manifest["metrics"]["robust"].items() if k.startswith("adaptive")]
    evaded = summary["flag"]
    assert evaded["signal"] == UNION
    assert FlagRule.from_manifest({"flag": evaded}) == FlagRule.from_manifest(manifest)
