"""Export a trained model as a self-describing checkpoint directory.

``weights.safetensors`` + ``model.onnx`` + ``manifest.json`` (with the sha256 of every
file), written into a temporary sibling directory and renamed into place, so a
reader never sees half a checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from models import StochasticClassifier, sha256_file
from models.checkpoint import FORMAT, MANIFEST, ONNX, WEIGHTS

ONNX_OPSET = 17


def sigma_summary(model: StochasticClassifier) -> dict[str, float]:
    """min / mean / median / max of the per-dimension noise std, and the logit-noise scale."""
    with torch.no_grad():
        sig = model.head.sigma().detach().cpu().double()
        logit_std = torch.sqrt(torch.diagonal(model.head.logit_covariance()).clamp_min(0)).cpu()
    return {
        "min": float(sig.min()),
        "mean": float(sig.mean()),
        "median": float(sig.median()),
        "max": float(sig.max()),
        "logit_std_mean": float(logit_std.mean()),
    }


def export_onnx(model: StochasticClassifier, path: Path, *, samples: int = 4, batch: int = 2) -> float:
    """Write ``model.onnx`` (inputs image [B,C,H,W], noise [T,D]; output logits [T,B,K]).

    Returns:
        max |logit difference| between onnxruntime and torch on fresh inputs of other sizes.
    """
    import onnxruntime as ort

    model = model.cpu().eval()
    c, h, w = model.cfg.input_shape
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, c, h, w, generator=g)
    noise = torch.randn(samples, model.feature_dim, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x, noise),
            str(path),
            input_names=["image", "noise"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "noise": {0: "samples"}, "logits": {0: "samples", 1: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.rand(batch + 3, c, h, w, generator=g)
    n2 = torch.randn(samples + 5, model.feature_dim, generator=g)
    out = sess.run(["logits"], {"image": x2.numpy(), "noise": n2.numpy()})[0]
    with torch.no_grad():
        ref = model(x2, n2).numpy()
    return float(np.abs(out - ref).max())


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def export_checkpoint(
    model: StochasticClassifier,
    out_dir: str | Path,
    *,
    class_names: list[str],
    dataset: str,
    train_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    mi_threshold: float = 0.0,
    command: str | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write weights, ONNX graph and manifest to ``out_dir`` atomically.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass --overwrite to replace it")
    if len(class_names) != model.cfg.num_classes:
        raise ValueError(f"{len(class_names)} class names for {model.cfg.num_classes} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
        parity = export_onnx(model, tmp / ONNX)
        manifest = {
            "format": FORMAT,
            "name": out.name,
            "arch": model.cfg.arch,
            "method": model.cfg.method,
            "dataset": dataset,
            "class_names": list(class_names),
            "input_shape": list(model.cfg.input_shape),
            "feature_dim": model.cfg.feature_dim,
            # vanilla and fixed have no variance term: lambda does not apply to them
            "lambda": (train_args or {}).get("lam") if model.head.has_variance_term else None,
            "sigma": sigma_summary(model),
            "mi_threshold": float(mi_threshold),
            "model": model.cfg.to_dict(),
            "training": {"args": train_args or {}, "command": command},
            "metrics": metrics or {},
            "onnx": {"opset": ONNX_OPSET, "max_abs_diff_vs_torch": parity},
            "versions": versions(),
            **(extra or {}),
            "files": {name: sha256_file(tmp / name) for name in (WEIGHTS, ONNX)},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; a checkpoint is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            trash = out.with_name(f".{out.name}.old")
            shutil.rmtree(trash, ignore_errors=True)
            out.rename(trash)
            tmp.rename(out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def update_metrics(path: Path, metrics: dict[str, Any]) -> None:
    """Replace the clean and robust metrics of a checkpoint's manifest (training stats kept), atomically.

    ``metrics["evaluation"]`` (the command that measured them) goes into the manifest too.
    The weights and graph are untouched, so their sha256 stay valid; the model id (the
    manifest's sha256) changes.
    """

    def update(manifest: dict[str, Any]) -> None:
        old = manifest.get("metrics", {})
        manifest["metrics"] = {**old, **{k: v for k, v in metrics.items() if k != "evaluation"}}
        if "evaluation" in metrics:
            manifest["evaluation"] = metrics["evaluation"]

    rewrite_manifest(path, update)


def update_flag(path: Path, flag: dict[str, Any], mi_threshold: float) -> None:
    """Set a checkpoint's served flag (``flag``: signal, threshold, rule, calibration; ``training.flag``) and
    ``mi_threshold``, atomically; as ``update_metrics``, the model id changes, the files' sha256 stay valid."""

    def update(manifest: dict[str, Any]) -> None:
        manifest["flag"] = flag
        manifest["mi_threshold"] = float(mi_threshold)
        manifest.pop("mi_threshold_calibration", None)  # the flag's calibration says how (one rule)

    rewrite_manifest(path, update)


def rewrite_manifest(path: Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Apply ``update`` to a checkpoint's ``manifest.json`` and write it back atomically."""
    manifest_path = Path(path) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    update(manifest)
    tmp = manifest_path.with_name(f".{MANIFEST}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.chmod(0o644)
    os.replace(tmp, manifest_path)
