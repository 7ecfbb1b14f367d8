"""The flag a defence raises, as one small abstraction: a **signal** of the T draws and a **threshold**.

An input is flagged when ``signal(logits) > threshold``, higher meaning more suspicious:

- ``mutual_information``: H[mean_t p_t] - mean_t H[p_t] (nats) over the T draws, exactly the value
  ``models.uncertainty.summarize`` reports and the service's ``flagged`` compares with the
  manifest's ``mi_threshold`` (``mutual_information > mi_threshold``). A deterministic model
  (method ``vanilla``) has 0 here, always.
- ``max_prob``: 1 - max_k mean_t p_t, the max-softmax baseline (Hendrycks & Gimpel, ICLR 2017)
  written as an uncertainty, so that a low top probability flags. This is the deterministic
  model's own confidence signal (and any model's, if asked).

A rule may hold several such clauses (``FlagRule.also``) and flag an input when **any** fires:
``mutual_information_or_max_prob`` (``UNION``) flags draws that disagree *or* an unconfident
answer, so an attacker has to make every draw agree on a confident wrong answer. Its two
thresholds are calibrated together (``union_thresholds``): each at the same share of the
correctly classified held-out inputs, the largest share at which their union still flags at most
``rate`` of them.

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
UNION = "mutual_information_or_max_prob"
"""The rule of both signals: flagged when the draws disagree or the answer is unconfident."""
FlagKind = Literal["mutual_information", "max_prob", "mutual_information_or_max_prob"]
"""What a flag is calibrated on: one signal, or the union of both (``UNION``)."""
FLAG_KINDS: tuple[str, ...] = get_args(FlagKind)

PENALTY_FLOOR = 1e-6
"""The smallest threshold the flag penalty divides by (a threshold of 0 flags any signal above 0)."""

_RULE_TEXT = {
    "mutual_information": "flagged when the mutual information over the draws (nats) > threshold",
    "max_prob": "flagged when 1 - max mean softmax probability > threshold (max prob < 1 - threshold)",
}
_CLAUSE_TEXT = {
    "mutual_information": "the mutual information over the draws (nats) > {t:.6g}",
    "max_prob": "1 - max mean softmax probability > {t:.6g} (max prob < {p:.6g})",
}


def signal_score(signal: str, logits: torch.Tensor) -> torch.Tensor:
    """The signal [B] of logits [T, B, K], differentiable (float; for the attacks' penalties)."""
    probs = torch.softmax(logits, dim=-1)
    return _score(signal, probs, probs.mean(0))


def _score(signal: str, probs: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``signal_score`` from the draws' probabilities [T, B, K] and their mean [B, K] (computed once for a rule's
    clauses)."""
    if signal == "mutual_information":
        return entropy(mean) - entropy(probs).mean(0)
    return summary_signal(signal, mean, torch.empty(0))


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
    """Flag an input when ``signal`` of its draws exceeds ``threshold``, or when any clause of ``also`` (further
    (signal, threshold) pairs) fires: the union of the clauses."""

    signal: FlagSignal
    threshold: float
    also: tuple[tuple[FlagSignal, float], ...] = ()

    def __post_init__(self) -> None:
        for signal, threshold in self.clauses:
            if signal not in FLAG_SIGNALS:
                raise ValueError(f"unknown flag signal {signal!r}; choose one of {list(FLAG_SIGNALS)}")
            if not math.isfinite(threshold):
                raise ValueError(f"flag threshold must be finite, got {threshold!r}")
        if len({signal for signal, _ in self.clauses}) != len(self.clauses):
            raise ValueError(f"a flag rule names each signal once, got {[c[0] for c in self.clauses]}")

    @classmethod
    def union(cls, thresholds: dict[str, float]) -> FlagRule:
        """The rule flagging when any signal exceeds its threshold (``thresholds``: signal -> threshold; the clauses
        in ``FLAG_SIGNALS``'s order, so a rule's ``kind`` does not depend on how a manifest lists them)."""
        order = {s: i for i, s in enumerate(FLAG_SIGNALS)}
        (first, t), *rest = sorted(thresholds.items(), key=lambda kv: order.get(kv[0], len(order)))
        return cls(first, float(t), tuple((s, float(v)) for s, v in rest))  # type: ignore[arg-type]

    @property
    def clauses(self) -> tuple[tuple[FlagSignal, float], ...]:
        """Every (signal, threshold) of the rule, its own first."""
        return ((self.signal, self.threshold), *self.also)

    @property
    def kind(self) -> str:
        """The rule's name: its signal, or ``_or_``-joined signals for a union (``UNION``)."""
        return "_or_".join(signal for signal, _ in self.clauses)

    def signals(self) -> tuple[FlagSignal, ...]:
        return tuple(signal for signal, _ in self.clauses)

    def score(self, logits: torch.Tensor) -> torch.Tensor:
        """The differentiable signal [B] of logits [T, B, K]: the rule's own signal (its first clause)."""
        return signal_score(self.signal, logits)

    def flagged(self, logits: torch.Tensor) -> torch.Tensor:
        """Which inputs [B] are flagged (the exact, service-side computation)."""
        u = summarize(logits)
        return self.flags_summary(u.mean_probs, u.mutual_information)

    def flags_summary(self, mean_probs: torch.Tensor, mutual_information: torch.Tensor) -> torch.Tensor:
        """Which inputs [B] are flagged, from a summary's mean probabilities [B, K] and mutual information [B]."""
        return self.flags_scores({s: summary_signal(s, mean_probs, mutual_information) for s in self.signals()})

    def flags_scores(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """Which inputs [B] are flagged, from each clause's signal values ``scores`` (signal -> [B])."""
        flagged = [scores[signal] > threshold for signal, threshold in self.clauses]
        return torch.stack(flagged).any(0)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> FlagRule:
        """A checkpoint's served flag: its manifest's ``flag`` (signal and threshold, and any further ``also``
        clauses, calibrated by ``training.flag``), else mutual information above ``mi_threshold`` (older manifests)."""
        flag = manifest.get("flag")
        if isinstance(flag, dict) and "clauses" in flag:
            return cls.union({c["signal"]: float(c["threshold"]) for c in flag["clauses"]})
        if isinstance(flag, dict) and "signal" in flag and "threshold" in flag:
            return cls(flag["signal"], float(flag["threshold"]))
        return cls("mutual_information", float(manifest.get("mi_threshold", 0.0)))

    def penalty(self, logits: torch.Tensor, margin: float) -> torch.Tensor:
        """How far [B] each clause's signal lies above ``margin`` x its threshold, in units of that threshold (0
        below), summed over the clauses: an attacker must keep every clause down.

        What flag-aware attacks steer down (``adaptive.flag_term``). Thresholds differ by orders of magnitude between models
        (a confident model's mutual-information threshold can be 1e-4 nats), so the penalty is
        relative: a weight of 1 trades one threshold's worth of signal for one unit of the attack's
        loss, whatever the model. A threshold under ``PENALTY_FLOOR`` counts as the floor.
        """
        total = torch.zeros((), dtype=logits.dtype, device=logits.device)
        probs = torch.softmax(logits, dim=-1)
        mean = probs.mean(0)
        for signal, threshold in self.clauses:
            over = torch.relu(_score(signal, probs, mean) - margin * threshold)
            total = total + over / max(threshold, PENALTY_FLOOR)
        return total

    def describe(self) -> dict[str, Any]:
        """``signal``/``threshold``/``rule`` for one signal; a union adds ``clauses`` (each signal and threshold),
        its ``signal`` is ``kind`` and its ``threshold`` the first clause's."""
        if not self.also:
            return {"signal": self.signal, "threshold": self.threshold, "rule": _RULE_TEXT[self.signal]}
        words = " or ".join(_CLAUSE_TEXT[s].format(t=t, p=1 - t) for s, t in self.clauses)
        return {
            "signal": self.kind,
            "threshold": self.threshold,
            "clauses": [{"signal": s, "threshold": t} for s, t in self.clauses],
            "rule": f"flagged when {words}",
        }


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


def union_thresholds(scores: dict[str, torch.Tensor], rate: float) -> dict[str, float]:
    """Thresholds for a union rule over ``scores`` (signal -> [N] scores of the same inputs): every signal's at the
    same share k / N (its (k + 1)-th largest score, ``threshold_for_rate``'s rule), k the largest for which the
    union of the clauses flags at most ``rate`` of the N inputs."""
    if not 0 <= rate < 1:
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    ordered = {name: v.double().flatten().sort(descending=True).values for name, v in scores.items()}
    n = min(int(v.numel()) for v in ordered.values())
    if n == 0:
        raise ValueError("no scores to calibrate on (no correctly classified inputs)")
    allowed = math.floor(rate * n + 1e-9)

    def flagged(k: int) -> int:
        out = torch.zeros(n, dtype=torch.bool)
        for name, v in scores.items():
            out |= v.double().flatten() > ordered[name][k]
        return int(out.sum())

    lo, hi = 0, allowed  # flagged(k) >= k for each signal alone, so k never exceeds `allowed`
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if flagged(mid) <= allowed:
            lo = mid
        else:
            hi = mid - 1
    return {name: float(v[lo]) for name, v in ordered.items()}


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
    signal: FlagKind | None = None,
    rate: float = 0.05,
    samples: int = 64,
    generator: torch.Generator | None = None,
    batch: int = 500,
    source: str = "",
) -> FlagCalibration:
    """Fix the threshold on clean held-out inputs ``x`` [N, C, H, W] with labels ``y`` [N].

    Among the inputs the model classifies right (argmax of the mean softmax over ``samples`` fresh
    draws), at most ``rate`` get flagged (``threshold_for_rate``). ``signal`` defaults to
    ``default_signal(model)``; ``UNION`` calibrates both signals' thresholds together (``union_thresholds``).
    Fresh draws at evaluation time may flag a little more or less.
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
    signals: tuple[FlagKind, ...],
    rate: float = 0.05,
    samples: int = 64,
    generator: torch.Generator | None = None,
    batch: int = 500,
    source: str = "",
) -> dict[str, FlagCalibration]:
    """``calibrate_flag`` for several ``signals`` (or unions) from the same draws: one backbone pass per batch
    serves them all (each result equals its own ``calibrate_flag`` call with the same generator)."""
    needed = tuple(dict.fromkeys(part for kind in signals for part in kind_signals(kind)))
    scores: dict[str, list[torch.Tensor]] = {s: [] for s in needed}
    correct = []
    with eval_mode(model):
        for i in range(0, x.shape[0], batch):
            xb, yb = x[i : i + batch], y[i : i + batch]
            logits = predict_draws(model, xb, samples, generator)
            u = summarize(logits)
            for s in needed:
                scores[s].append(summary_signal(s, u.mean_probs, u.mutual_information).cpu())
            correct.append((predict_label(logits) == yb).cpu())
    ok = torch.cat(correct)
    on_correct = {s: torch.cat(v)[ok] for s, v in scores.items()}
    n = int(ok.numel())
    out = {}
    for kind in signals:
        parts = kind_signals(kind)
        if len(parts) == 1:
            rule = FlagRule(parts[0], threshold_for_rate(on_correct[parts[0]], rate))
        else:
            rule = FlagRule.union(union_thresholds({s: on_correct[s] for s in parts}, rate))
        flagged = rule.flags_scores(on_correct)
        out[kind] = FlagCalibration(
            rule=rule,
            rate=rate,
            n=n,
            n_correct=int(ok.sum()),
            flagged_correct=float(flagged.double().mean()),
            samples=samples,
            source=source,
        )
    return out


def kind_signals(kind: str) -> tuple[FlagSignal, ...]:
    """The signals of a flag kind: itself, or both for ``UNION``."""
    if kind == UNION:
        return ("mutual_information", "max_prob")
    if kind not in FLAG_SIGNALS:
        raise ValueError(f"unknown flag signal {kind!r}; choose one of {list(FLAG_KINDS)}")
    return (kind,)  # type: ignore[return-value]
