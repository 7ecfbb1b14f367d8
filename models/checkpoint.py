"""Load a self-describing checkpoint directory, verifying every file's sha256.

Layout (written by ``training.export``)::

    weights.safetensors   state dict (no pickle)
    model.onnx            inputs image [B,C,H,W], noise [T,D]; output logits [T,B,K]
    manifest.json         config, classes, metrics, ... and ``files``: {name: sha256}

The model id is the sha256 of ``manifest.json`` (which pins every other file).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .classifier import StochasticClassifier, build_model

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ONNX = "model.onnx"


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete, altered or inconsistent."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Checkpoint:
    """A verified checkpoint: the model (eval mode), its manifest and its id."""

    model: StochasticClassifier
    manifest: dict[str, Any]
    model_id: str
    path: Path

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])


def read_manifest(path: str | Path, verify: bool = True) -> tuple[dict[str, Any], str]:
    """Read ``manifest.json`` and check the sha256 of every file it lists.

    Returns:
        The manifest and the model id (sha256 of the manifest file).

    Raises:
        CheckpointError: with a message naming the file at fault.
    """
    root = Path(path)
    mpath = root / MANIFEST
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory {root} does not exist")
    if not mpath.is_file():
        raise CheckpointError(
            f"{mpath} is missing: not a checkpoint directory (train one with `python -m training.train`)"
        )
    raw = mpath.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath} is not valid JSON: {e}") from e
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise CheckpointError(f"{mpath} lists no sha256 for {WEIGHTS}; the checkpoint is incomplete")
    if verify:
        for name, digest in files.items():
            fpath = root / name
            if not fpath.is_file():
                raise CheckpointError(f"{fpath} is listed in the manifest but missing")
            actual = sha256_file(fpath)
            if actual != digest:
                raise CheckpointError(
                    f"{fpath} fails its sha256 check (manifest {digest[:12]}…, file {actual[:12]}…): "
                    "the file was altered or corrupted; re-export or restore the checkpoint"
                )
    return manifest, hashlib.sha256(raw).hexdigest()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Checkpoint:
    """Rebuild the model from ``manifest.json`` and load its safetensors weights.

    No training code is needed: the manifest's ``model`` section is a ``ModelConfig``.
    """
    root = Path(path)
    manifest, model_id = read_manifest(root, verify=verify)
    try:
        model = build_model(manifest["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{root / MANIFEST} has an invalid 'model' section: {e}") from e
    state = load_file(str(root / WEIGHTS))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{root / WEIGHTS} does not match the manifest's model: missing {missing}, unexpected {unexpected}"
        )
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Checkpoint(model=model, manifest=manifest, model_id=model_id, path=root)
