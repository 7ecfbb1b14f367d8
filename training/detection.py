"""What the uncertainty signals catch: ROC AUC of clean against adversarial inputs, and the share
that the service's ``flagged`` (mutual information above the manifest's threshold) marks.

Signals per input:

- ``mutual_information`` and ``predictive_entropy``: from ``samples`` fresh draws (what
  ``/v1/predict`` reports);
- ``flip_probability``: closed form, no sampling. With a linear head the logits given x are
  exactly Gaussian, N(W mu + b, W Sigma W^T); for the noise-free winner c the chance that a
  draw ranks class j above it is Phi(-(l_c - l_j) / sqrt(Var(l_c - l_j))). The signal is the
  largest such chance over j (a lower bound on the chance that a draw disagrees with c).

``detection_report`` compares correctly classified clean inputs with the successful
adversarial inputs of an attack (and, for completeness, with all of its outputs).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from models import StochasticClassifier, summarize
from models.attacks.flag import summary_signal

SIGNALS = ("mutual_information", "predictive_entropy", "flip_probability")


@torch.no_grad()
def flip_probability(
    model: StochasticClassifier, x: torch.Tensor | None = None, mu: torch.Tensor | None = None
) -> torch.Tensor:
    """Closed-form ``max_j P(l_j > l_c)`` [B] for the noise-free winner c (0 or 1 for a noise-free model),
    from inputs ``x`` or their features ``mu`` [B, D] (then no backbone pass)."""
    if mu is None:
        if x is None:
            raise ValueError("flip_probability needs the inputs x or their features mu")
        mu = model.features(x)
    logits = model.head.base_logits(mu)  # (B, K): the mean of the logits given x
    c = logits.argmax(-1)
    cov = model.head.logit_covariance()  # (K, K)
    diff = logits.gather(1, c[:, None]) - logits  # (B, K): l_c - l_j
    var = cov[c, c][:, None] + torch.diagonal(cov)[None, :] - 2 * cov[c, :]  # (B, K): Var(l_c - l_j)
    std = var.clamp_min(0).sqrt()
    z = torch.where(std > 0, -diff / std.clamp_min(1e-30), torch.where(diff > 0, -math.inf, math.inf))
    p = 0.5 * torch.erfc(-z / math.sqrt(2))  # Phi(z)
    p = p.scatter(1, c[:, None], 0.0)  # the winner against itself does not count
    return p.amax(1)


@torch.no_grad()
def signals(
    model: StochasticClassifier, x: torch.Tensor, samples: int, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Every signal [B] for inputs ``x``, from **one** backbone pass: the sampled ones from ``samples``
    draws of the head, the closed form from the same features. ``max_prob`` is the flag rule's
    max-softmax signal (``models.attacks.flag``), the baseline a deterministic model flags with."""
    mu = model.features(x)  # (B, D): the only backbone pass
    logits = model.head(mu, model.sample_noise(samples, generator))  # (T, B, K)
    u = summarize(logits)
    return {
        "mutual_information": u.mutual_information.cpu(),
        "predictive_entropy": u.predictive_entropy.cpu(),
        "flip_probability": flip_probability(model, mu=mu).cpu(),
        "max_prob": summary_signal("max_prob", u.mean_probs, u.mutual_information).cpu(),
        "label": u.label.cpu(),
    }


def roc_auc(negatives: np.ndarray, positives: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting half (Mann-Whitney); None if a side is empty."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return None
    scores = np.concatenate([neg, pos])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty_like(scores)
    sorted_scores = scores[order]
    i = 0
    while i < scores.size:  # average ranks over ties
        j = i
        while j + 1 < scores.size and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = ranks[neg.size :].sum()
    return float((rank_sum - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def histogram(values: np.ndarray, edges: np.ndarray) -> list[int]:
    return np.histogram(np.clip(np.asarray(values, dtype=np.float64), edges[0], edges[-1]), bins=edges)[0].tolist()


def detection_report(
    clean: dict[str, torch.Tensor],
    adv: dict[str, torch.Tensor],
    clean_ok: torch.Tensor,
    fooled: torch.Tensor,
    threshold: float,
    bins: int = 30,
) -> dict[str, Any]:
    """AUCs, flagged shares and histograms for clean inputs (``clean_ok``) against adversarial ones.

    Args:
        clean, adv: ``signals`` of the clean inputs and of the attack's outputs (same order).
        clean_ok: [B] the clean input was classified right (the negatives).
        fooled: [B] the attack broke the input (the positives; ``all`` uses every output of
            an input that was right when clean).
        threshold: the manifest's ``mi_threshold``.
    """
    neg = clean_ok.numpy()
    pos = (fooled & clean_ok).numpy()
    out: dict[str, Any] = {
        "n_clean": int(neg.sum()),
        "n_adversarial": int(pos.sum()),
        "threshold": threshold,
        "flagged_clean": float((clean["mutual_information"].numpy()[neg] > threshold).mean()) if neg.any() else None,
        "flagged_adversarial": float((adv["mutual_information"].numpy()[pos] > threshold).mean())
        if pos.any()
        else None,
        "auc": {},
        "auc_all_outputs": {},
        "histograms": {},
    }
    for name in SIGNALS:
        c, a = clean[name].numpy(), adv[name].numpy()
        out["auc"][name] = roc_auc(c[neg], a[pos])
        out["auc_all_outputs"][name] = roc_auc(c[neg], a[neg])
        hi = float(max(np.quantile(c[neg], 0.995) if neg.any() else 0, np.quantile(a[pos], 0.995) if pos.any() else 0))
        edges = np.linspace(0.0, max(hi, 1e-6), bins + 1)
        out["histograms"][name] = {
            "edges": edges.tolist(),
            "clean": histogram(c[neg], edges),
            "adversarial": histogram(a[pos], edges),
        }
    return out
