"""Architectures, stochastic heads, uncertainty math, attacks and checkpoint loading.

Imported by both ``training/`` and ``service/``.
"""

from .backbones import create_backbone, list_backbones, register_backbone
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest, sha256_file
from .classifier import ModelConfig, StochasticClassifier, build_model, noise_to_margin
from .device import resolve_device
from .heads import METHODS, create_head
from .prediction import majority_vote, predict_label, seeded_noise
from .uncertainty import Uncertainty, summarize, wilson_interval

__all__ = [
    "METHODS",
    "Checkpoint",
    "CheckpointError",
    "ModelConfig",
    "StochasticClassifier",
    "Uncertainty",
    "build_model",
    "create_backbone",
    "create_head",
    "list_backbones",
    "load_checkpoint",
    "majority_vote",
    "noise_to_margin",
    "predict_label",
    "read_manifest",
    "register_backbone",
    "resolve_device",
    "seeded_noise",
    "sha256_file",
    "summarize",
    "wilson_interval",
]
