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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file

from .classifier import ModelConfig, StochasticClassifier, build_model

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
ONNX = "model.onnx"
FORMAT = "mfdv-snn-checkpoint/2"
FORMATS = ("mfdv-snn-checkpoint/1", FORMAT)
"""Formats this loader reads: 1 kept the head's settings flat in ``model``; 2 nests them in ``model.head``."""


class Manifest(BaseModel):
    """``manifest.json``, validated: the fields loading and serving rely on, typed (others are kept as
    they are, in ``model_extra``). ``Checkpoint.info`` holds it."""

    model_config = ConfigDict(extra="allow")

    format: str
    name: str = Field(min_length=1)
    arch: str
    method: str
    dataset: str
    class_names: list[str] = Field(min_length=2)
    input_shape: list[int] = Field(min_length=3, max_length=3)
    feature_dim: int = Field(ge=1)
    mi_threshold: float = Field(0.0, ge=0)
    model: ModelConfig
    files: dict[str, str] = Field(min_length=1)
    lambda_: float | None = Field(None, alias="lambda", description="The variance term's weight (None: no such term).")
    sigma: dict[str, Any] = Field(default_factory=dict, description="Summary of the learned noise scales.")
    metrics: dict[str, Any] = Field(default_factory=dict, description="Clean and robust accuracy, with their settings.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r} is not one this loader reads ({list(FORMATS)}); upgrade mfdv-snn")
        m = self.model
        if (self.arch, self.method, self.feature_dim) != (m.arch, m.method, m.feature_dim):
            raise ValueError("arch/method/feature_dim disagree with the 'model' section")
        if len(self.class_names) != m.num_classes or tuple(self.input_shape) != m.input_shape:
            raise ValueError(
                f"{len(self.class_names)} class names and input shape {self.input_shape} disagree with the "
                f"'model' section ({m.num_classes} classes, {list(m.input_shape)})"
            )
        if WEIGHTS not in self.files:
            raise ValueError(f"'files' lists no sha256 for {WEIGHTS}; the checkpoint is incomplete")
        bad = [name for name, digest in self.files.items() if not isinstance(digest, str) or len(digest) != 64]
        if bad:
            raise ValueError(f"'files' has malformed sha256 entries for {bad}")
        return self


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
    """A verified checkpoint: the model (eval mode), its manifest and its id.

    Attributes:
        info: the manifest, validated (typed fields; read these).
        manifest: the manifest as written (every field, untyped; for tools that copy or rewrite it).
    """

    model: StochasticClassifier
    manifest: dict[str, Any]
    model_id: str
    path: Path
    info: Manifest

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)


def read_manifest(path: str | Path, verify: bool = True) -> tuple[dict[str, Any], str]:
    """``manifest.json`` as written (validated, every file's sha256 checked) and the model id.

    Raises:
        CheckpointError: with a message naming the file at fault.
    """
    _, manifest, model_id = _read_manifest(path, verify)
    return manifest, model_id


def _read_manifest(path: str | Path, verify: bool) -> tuple[Manifest, dict[str, Any], str]:
    """Read ``manifest.json``, validate it and check the sha256 of every file it lists.

    Returns:
        The validated manifest, the manifest as written, and the model id (sha256 of the manifest file).

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
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{mpath} must hold a JSON object")
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files:
        raise CheckpointError(f"{mpath} lists no sha256 for {WEIGHTS}; the checkpoint is incomplete")
    try:
        info = Manifest.model_validate(manifest)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'manifest'}: {err['msg']}" for err in e.errors())
        raise CheckpointError(f"{mpath} is not a valid manifest: {problems}") from None
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
    return info, manifest, hashlib.sha256(raw).hexdigest()


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", verify: bool = True) -> Checkpoint:
    """Rebuild the model from ``manifest.json`` and load its safetensors weights.

    No training code is needed: the manifest's ``model`` section is a ``ModelConfig`` (validated once,
    in ``Manifest``).
    """
    root = Path(path)
    info, manifest, model_id = _read_manifest(root, verify=verify)
    try:
        model = build_model(info.model)
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
    return Checkpoint(model=model, manifest=manifest, model_id=model_id, path=root, info=info)
