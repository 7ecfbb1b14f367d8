"""Export and reload: sha256 verification, ONNX parity, atomic writes, no training code needed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import CheckpointError, load_checkpoint, read_manifest
from training.export import export_checkpoint

from ..fixtures import train_tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, ds = train_tiny("wca", steps=20)
    return export_checkpoint(
        model,
        tmp_path_factory.mktemp("x") / "ck",
        class_names=ds.class_names,
        dataset="tiny",
        train_args={"lam": 0.1},
        metrics={"clean": {"accuracy": 0.5}},
        mi_threshold=0.01,
    )


def test_manifest_is_self_describing(exported: Path) -> None:
    manifest, model_id = read_manifest(exported)
    for key in (
        "arch",
        "method",
        "dataset",
        "class_names",
        "input_shape",
        "feature_dim",
        "lambda",
        "sigma",
        "mi_threshold",
        "training",
        "metrics",
        "files",
        "versions",
        "model",
    ):
        assert key in manifest, key
    assert manifest["input_shape"] == [1, 14, 14]
    assert set(manifest["files"]) == {"weights.safetensors", "model.onnx"}
    assert len(model_id) == 64
    assert sorted(p.name for p in exported.parent.iterdir()) == ["ck"], "temporary directories left behind"


def test_the_loaded_checkpoint_keeps_the_typed_manifest(exported: Path) -> None:
    ck = load_checkpoint(exported)
    info = ck.info
    assert (info.arch, info.method, info.dataset) == (ck.manifest["arch"], ck.manifest["method"], "tiny")
    assert info.lambda_ == ck.manifest["lambda"] and info.sigma == ck.manifest["sigma"]
    assert info.metrics == {"clean": {"accuracy": 0.5}} and info.model == ck.model.cfg
    assert ck.class_names == info.class_names and info.model_extra is not None and "training" in info.model_extra


@pytest.mark.parametrize("method", ["vanilla", "mfdv", "wca"])
def test_onnx_matches_torch_with_the_same_noise(tmp_path: Path, method: str) -> None:
    model, ds = train_tiny(method, steps=10)
    ck = export_checkpoint(model, tmp_path / "ck", class_names=ds.class_names, dataset="tiny")
    loaded = load_checkpoint(ck)
    sess = ort.InferenceSession(str(ck / "model.onnx"), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(9, 1, 14, 14, generator=g)
    noise = torch.randn(33, loaded.model.feature_dim, generator=g)
    out = sess.run(["logits"], {"image": x.numpy(), "noise": noise.numpy()})[0]
    with torch.no_grad():
        ref = loaded.model(x, noise).numpy()
    assert out.shape == (33, 9, 4)
    assert float(np.abs(out - ref).max()) <= 1e-4


def test_reload_gives_identical_outputs(exported: Path) -> None:
    a = load_checkpoint(exported).model
    b = load_checkpoint(exported).model
    x = torch.rand(2, 1, 14, 14)
    n = torch.randn(4, a.feature_dim)
    torch.testing.assert_close(a(x, n), b(x, n), rtol=0, atol=0)


def test_altered_weights_fail_with_a_clear_error(exported: Path, tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    raw = bytearray((bad / "weights.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (bad / "weights.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"weights\.safetensors fails its sha256 check"):
        load_checkpoint(bad)


def test_missing_or_incomplete_checkpoints_are_named(exported: Path, tmp_path: Path) -> None:
    import shutil

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    (bad / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match=r"model\.onnx is listed in the manifest but missing"):
        load_checkpoint(bad)
    manifest = json.loads((exported / "manifest.json").read_text())
    manifest["model"]["method"] = "bogus"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"not a valid manifest: model\.method.*unknown method 'bogus'"):
        load_checkpoint(bad, verify=False)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.update(format="mfdv-snn-checkpoint/9"), "format 'mfdv-snn-checkpoint/9' is not one"),
        (lambda m: m.update(class_names=m["class_names"][:-1]), "class names .* disagree"),
        (lambda m: m.update(method="mfdv"), "disagree with the 'model' section"),
        (lambda m: m["model"]["head"].update(sigma_max=6.0), r"sigma_max: Extra inputs are not permitted"),
        (lambda m: m["model"]["head"].update(sigma_init=-1), r"sigma_init: Input should be greater than 0"),
        (lambda m: m.pop("dataset"), "dataset: Field required"),
    ],
)
def test_the_manifest_is_validated_when_loading(exported: Path, tmp_path: Path, edit: Any, match: str) -> None:
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(exported, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    edit(manifest)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(bad)


def test_format_1_checkpoints_still_load(exported: Path, tmp_path: Path) -> None:
    """Format 1 kept the head's settings flat in ``model`` (and every head's, whatever the method)."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(exported, old)
    manifest = json.loads((old / "manifest.json").read_text())
    head = manifest["model"].pop("head")
    manifest["model"].update({"sigma_init": 0.5, "fixed_sigma": 1.0, "sigma_max": None, "entropy_max": 2.0, **head})
    manifest["format"] = "mfdv-snn-checkpoint/1"
    (old / "manifest.json").write_text(json.dumps(manifest))
    ck, new = load_checkpoint(old), load_checkpoint(exported)
    assert ck.model.cfg.head == new.model.cfg.head
    x = torch.rand(3, *ck.model.cfg.input_shape)
    noise = ck.model.sample_noise(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(ck.model(x, noise), new.model(x, noise))


def test_refuses_to_overwrite(exported: Path) -> None:
    model, ds = train_tiny("vanilla", steps=1)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint(model, exported, class_names=ds.class_names, dataset="tiny")


def test_loading_needs_no_training_code(exported: Path) -> None:
    code = (
        "import sys, models\n"
        f"ck = models.load_checkpoint({str(exported)!r})\n"
        "assert not any(m == 'training' or m.startswith('training.') for m in sys.modules), 'training imported'\n"
        "print(ck.model.cfg.method)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "wca"


def test_cifar_resnet18_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    from models import ModelConfig, build_model
    from training.export import export_onnx

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="resnet18",
        method="mfdv",
        in_chans=3,
        img_size=32,
        feature_dim=32,
        mean=[0.49, 0.48, 0.45],
        std=[0.25, 0.24, 0.26],
    )
    model = build_model(cfg).eval()
    assert export_onnx(model, tmp_path / "r18.onnx", samples=3, batch=1) <= 1e-4
