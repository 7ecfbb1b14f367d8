"""Uncertainty of a prediction from T stochastic draws.

For probabilities p_t = softmax(logits_t), t = 1..T, and their mean p̄:

- predictive entropy   H[p̄]                    (total uncertainty)
- expected entropy     mean_t H[p_t]             (aleatoric)
- mutual information   H[p̄] - mean_t H[p_t]     (epistemic, >= 0)
- vote agreement       share of draws whose argmax equals argmax p̄
- per-class std        std_t p_t (ddof = 1), and MC standard error = std / sqrt(T)

Entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prediction import predict_label

MI_FLOOR = 1e-9  # nats: below this, mutual information is rounding error


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``; 0 log 0 = 0."""
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim)


@dataclass
class Uncertainty:
    """Per-input summaries of T draws; every tensor has leading dim B."""

    mean_probs: torch.Tensor  # (B, K)
    label: torch.Tensor  # (B,) predict_label: argmax of mean_probs
    predictive_entropy: torch.Tensor  # (B,)
    expected_entropy: torch.Tensor  # (B,)
    mutual_information: torch.Tensor  # (B,)
    vote_agreement: torch.Tensor  # (B,)
    prob_std: torch.Tensor  # (B, K)
    top_prob_stderr: torch.Tensor  # (B,)
    votes: torch.Tensor  # (B, K) counts of per-draw argmax


def summarize(logits: torch.Tensor) -> Uncertainty:
    """Summarize logits [T, B, K] into per-input uncertainty."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [T, B, K], got shape {tuple(logits.shape)}")
    t, _, k = logits.shape
    probs = torch.softmax(logits.double(), dim=-1)  # (T, B, K)
    mean = probs.mean(0)  # (B, K)
    label = predict_label(logits)  # the argmax of ``mean``: the one rule, in models.prediction
    pe = entropy(mean)
    ee = entropy(probs).mean(0)
    mi = pe - ee
    # Rounding leaves ~1e-16 where the draws agree (a noise-free model); call that 0 so a
    # calibrated threshold of 0 never flags an input on rounding error.
    mi = torch.where(mi < MI_FLOOR, torch.zeros_like(mi), mi)
    draw_labels = probs.argmax(-1)  # (T, B)
    votes = torch.nn.functional.one_hot(draw_labels, k).sum(0)  # (B, K)
    agree = (draw_labels == label.unsqueeze(0)).double().mean(0)
    std = probs.std(0, unbiased=True) if t > 1 else torch.zeros_like(mean)
    top_std = std.gather(1, label.unsqueeze(1)).squeeze(1)
    return Uncertainty(
        mean_probs=mean.float(),
        label=label,
        predictive_entropy=pe.float(),
        expected_entropy=ee.float(),
        mutual_information=mi.float(),
        vote_agreement=agree.float(),
        prob_std=std.float(),
        top_prob_stderr=(top_std / t**0.5).float(),
        votes=votes,
    )


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi
