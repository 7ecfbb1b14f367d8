"""Which device to run on: one rule for training, evaluation and the service."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU, else CPU; ``cpu`` and ``cuda`` as named.

    Raises:
        ValueError: ``cuda`` asked for but torch sees no GPU, or an unknown name (the
            message says what to use instead).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)
