"""What the model predicts, and which noise a seed gives: one rule each, for every caller.

The prediction for an input is the **argmax of the mean softmax** over T noise draws
(the Monte Carlo estimate of the Bayesian model average). ``/v1/predict``, the v2
endpoint, the attack probe and the evaluation suites all label with ``predict_label``;
``majority_vote`` (the most frequent per-draw argmax) is the other, named rule, which the
``standard`` evaluation suite also checks so that an input counts as robust only when
both rules get it right.
"""

from __future__ import annotations

import torch


def predict_label(logits: torch.Tensor) -> torch.Tensor:
    """Labels [B] for logits [T, B, K]: the argmax of the mean softmax over the T draws."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [T, B, K], got shape {tuple(logits.shape)}")
    return torch.softmax(logits.double(), dim=-1).mean(0).argmax(-1)


def majority_vote(logits: torch.Tensor) -> torch.Tensor:
    """Most frequent per-draw argmax [B] for logits [T, B, K] (ties go to the lowest class index)."""
    k = logits.shape[-1]
    return torch.nn.functional.one_hot(logits.argmax(-1), k).sum(0).argmax(-1)


def seeded_noise(samples: int, dim: int, seed: int) -> torch.Tensor:
    """Standard normal draws [T, D] (CPU float32) from a generator seeded with ``seed``.

    The noise a request with ``samples`` and ``seed`` gets, whatever the backend or device.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.randn((samples, dim), generator=g)
