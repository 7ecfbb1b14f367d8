"""Architectures, stochastic heads, uncertainty math, attacks and checkpoint loading.

Imported by both ``training/`` and ``service/``.
"""

from .backbones import create_backbone, list_backbones, register_backbone
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, read_manifest, sha256_file
from .classifier import ModelConfig, StochasticClassifier, build_model, noise_to_margin
from .heads import METHODS, create_head
from .uncertainty import Uncertainty, majority_vote, summarize, wilson_interval

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
    "read_manifest",
    "register_backbone",
    "sha256_file",
    "summarize",
    "wilson_interval",
]
