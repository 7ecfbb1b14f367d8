"""The flag a defence raises, as one small abstraction: a **signal** of the T draws and a **threshold**.

An input is flagged when ``signal(logits) > threshold``, higher meaning more suspicious:

- ``mutual_information``: H[mean_t p_t] - mean_t H[p_t] (nats) over the T draws, exactly the value
  ``models.uncertainty.summarize`` reports and the service's ``flagged`` compares with the
  manifest's ``mi_threshold`` (``mutual_information > mi_threshold``). A deterministic model
  (method ``vanilla``) has 0 here, always.
- ``max_prob``: 1 - max_k mean_t p_t, the max-softmax baseline (Hendrycks & Gimpel, ICLR 2017)
  written as an uncertainty, so that a low top probability flags. This is the deterministic
  model's own confidence signal (and any model's, if asked).

``FlagRule.score`` is the differentiable signal the flag-aware attacks penalise; ``FlagRule.flagged``
is the exact decision (double precision, via ``summarize``). ``calibrate_flag`` picks the threshold
on held-out clean inputs so that at most ``rate`` of the correctly classified ones are flagged
(CCAT, Stutz, Hein & Schiele, ICML 2020, fix theirs on clean data at 99% kept).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from ..classifier import StochasticClassifier
from ..prediction import predict_label
from ..uncertainty import entropy, summarize
from .base import eval_mode, predict_draws

FlagSignal = Literal["mutual_information", "max_prob"]
FLAG_SIGNALS: tuple[str, ...] = get_args(FlagSignal)

PENALTY_FLOOR = 1e-6
"""The smallest threshold the flag penalty divides by (a threshold of 0 flags any signal above 0)."""

_RULE_TEXT = {
    "mutual_information": "flagged when the mutual information over the draws (nats) > threshold",
    "max_prob": "flagged when 1 - max mean softmax probability > threshold (max prob < 1 - threshold)",
}


def signal_score(signal: str, logits: torch.Tensor) -> torch.Tensor:
    """The signal [B] of logits [T, B, K], differentiable (float; for the attacks' penalties)."""
    probs = torch.softmax(logits, dim=-1)
    mean = probs.mean(0)
    if signal == "mutual_information":
        return entropy(mean) - entropy(probs).mean(0)
    if signal == "max_prob":
        return 1.0 - mean.amax(-1)
    raise ValueError(f"unknown flag signal {signal!r}; choose one of {list(FLAG_SIGNALS)}")


def summary_signal(signal: str, mean_probs: torch.Tensor, mutual_information: torch.Tensor) -> torch.Tensor:
    """The signal [B] from a summary's mean probabilities [B, K] and mutual information [B]
    (``models.uncertainty.summarize``'s fields: what the service has when it answers)."""
    if signal == "mutual_information":
        return mutual_information
    if signal == "max_prob":
        return 1.0 - mean_probs.amax(-1)
    raise ValueError(f"unknown flag signal {signal!r}; choose one of {list(FLAG_SIGNALS)}")


@torch.no_grad()
def signal_value(signal: str, logits: torch.Tensor) -> torch.Tensor:
    """The signal [B] as the service computes it (``summarize``: double precision, MI floored at 1e-9 -> 0)."""
    u = summarize(logits)
    return summary_signal(signal, u.mean_probs, u.mutual_information)


def default_signal(model: StochasticClassifier) -> FlagSignal:
    """``mutual_information`` for a stochastic model, ``max_prob`` for a deterministic one (MI is 0 there)."""
    return "mutual_information" if model.stochastic else "max_prob"


@dataclass(frozen=True)
class FlagRule:
    """Flag an input when ``signal`` of its draws exceeds ``threshold``."""

    signal: FlagSignal
    threshold: float

    def __post_init__(self) -> None:
        if self.signal not in FLAG_SIGNALS:
            raise ValueError(f"unknown flag signal {self.signal!r}; choose one of {list(FLAG_SIGNALS)}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"flag threshold must be finite, got {self.threshold!r}")

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The differentiable signal [B] of logits [T, B, K]."""
        return signal_score(self.signal, logits)

    def flagged(self, logits: torch.Tensor) -> torch.Tensor:
        """Which inputs [B] are flagged (the exact, service-side computation)."""
        return signal_value(self.signal, logits) > self.threshold

    def flags_summary(self, mean_probs: torch.Tensor, mutual_information: torch.Tensor) -> torch.Tensor:
        """Which inputs [B] are flagged, from a summary's mean probabilities [B, K] and mutual information [B]."""
        return summary_signal(self.signal, mean_probs, mutual_information) > self.threshold

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FlagRule:
        """A checkpoint's served flag: its manifest's ``flag`` (signal and threshold, calibrated by
        ``training.flag``), else mutual information above ``mi_threshold`` (older manifests)."""
        flag = manifest.get("flag")
        if isinstance(flag, dict) and "signal" in flag and "threshold" in flag:
            return cls(flag["signal"], float(flag["threshold"]))
        return cls("mutual_information", float(manifest.get("mi_threshold", 0.0)))

    def penalty(self, logits: torch.Tensor, margin: float) -> torch.Tensor:
        """How far [B] the signal lies above ``margin`` x threshold, in units of the threshold (0 below).

        What flag-aware attacks steer down (``adaptive.flag_term``). Thresholds differ by orders of magnitude between models
        (a confident model's mutual-information threshold can be 1e-4 nats), so the penalty is
        relative: a weight of 1 trades one threshold's worth of signal for one unit of the attack's
        loss, whatever the model. A threshold under ``PENALTY_FLOOR`` counts as the floor.
        """
        return torch.relu(self.score(logits) - margin * self.threshold) / max(self.threshold, PENALTY_FLOOR)

    def describe(self) -> dict[str, Any]:
        return {"signal": self.signal, "threshold": self.threshold, "rule": _RULE_TEXT[self.signal]}


def threshold_for_rate(scores: torch.Tensor, rate: float) -> float:
    """The smallest threshold at which at most ``rate`` of ``scores`` [N] lie strictly above it.

    That is the (floor(rate N) + 1)-th largest score: ties at it stay unflagged, so the flagged
    share may fall below ``rate`` but never exceeds it.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    n = int(scores.numel())
    if n == 0:
        raise ValueError("no scores to calibrate on (no correctly classified inputs)")
    k = math.floor(rate * n + 1e-9)
    return float(scores.double().flatten().sort(descending=True).values[k])


@dataclass(frozen=True)
class FlagCalibration:
    """A threshold fixed on clean held-out inputs, and what it was fixed on."""

    rule: FlagRule
    rate: float  # the most flagged share allowed among correctly classified inputs
    n: int  # calibration inputs
    n_correct: int  # of those, classified right (the prediction rule over ``samples`` draws)
    flagged_correct: float  # share of the correct ones the threshold flags (<= rate)
    samples: int
    source: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            **self.rule.describe(),
            "calibration": {
                "source": self.source,
                "rate": self.rate,
                "n": self.n,
                "n_correct": self.n_correct,
                "flagged_correct": self.flagged_correct,
                "samples": self.samples,
                "rule": "largest share of correctly classified clean inputs flagged is `rate`",
            },
        }


@torch.no_grad()
def calibrate_flag(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    signal: FlagSignal | None = None,
    rate: float = 0.05,
    samples: int = 64,
    generator: torch.Generator | None = None,
    batch: int = 500,
    source: str = "",
) -> FlagCalibration:
    """Fix the threshold on clean held-out inputs ``x`` [N, C, H, W] with labels ``y`` [N].

    Among the inputs the model classifies right (argmax of the mean softmax over ``samples`` fresh
    draws), at most ``rate`` get flagged (``threshold_for_rate``). ``signal`` defaults to
    ``default_signal(model)``. Fresh draws at evaluation time may flag a little more or less.
    """
    signal = signal or default_signal(model)
    return calibrate_flags(
        model, x, y, signals=(signal,), rate=rate, samples=samples, generator=generator, batch=batch, source=source
    )[signal]


@torch.no_grad()
def calibrate_flags(
    model: StochasticClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    signals: tuple[FlagSignal, ...],
    rate: float = 0.05,
    samples: int = 64,
    generator: torch.Generator | None = None,
    batch: int = 500,
    source: str = "",
) -> dict[str, FlagCalibration]:
    """``calibrate_flag`` for several ``signals`` from the same draws: one backbone pass per batch serves
    them all (each result equals its own ``calibrate_flag`` call with the same generator)."""
    scores: dict[str, list[torch.Tensor]] = {s: [] for s in signals}
    correct = []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i : i + batch], y[i : i + batch]
            logits = predict_draws(model, xb, samples, generator)
            u = summarize(logits)
            for s in signals:
                scores[s].append(summary_signal(s, u.mean_probs, u.mutual_information).cpu())
            correct.append((predict_label(logits) == yb).cpu())
    ok = torch.cat(correct)
    out = {}
    for signal in signals:
        s = torch.cat(scores[signal])
        threshold = threshold_for_rate(s[ok], rate)
        out[signal] = FlagCalibration(
            rule=FlagRule(signal, threshold),
            rate=rate,
            n=int(s.numel()),
            n_correct=int(ok.sum()),
            flagged_correct=float((s[ok] > threshold).double().mean()),
            samples=samples,
            source=source,
        )
    return out
