"""A checkpoint's served flag: one rule for the service's ``flagged`` and the reports' figures.

The flag is a ``models.attacks.flag.FlagRule``: signals of the T draws with their thresholds. Its kind is
the checkpoint's own (``served_signal``): for a stochastic model, mutual information **or** 1 - max mean
probability (``UNION``: the draws disagree, or the answer is unconfident); 1 - max mean probability
(max-softmax) alone for a deterministic model (its mutual information is 0) or a ccat-trained one
(ccat trains adversarial inputs to be unconfident). Its thresholds are calibrated on the training
images the run held out (``split_train_val``) so that at most ``FLAG_RATE`` (5%) of the correctly
classified ones are flagged (``calibrate_suite_flag``, with ``FLAG_SEED`` and 64 draws; a union's two
thresholds at the same share each, the largest whose union keeps to the rate): the calibration
``python -m reports.paired`` makes with its defaults, so the served thresholds and the reported ones
are the same numbers.

Why the union for a stochastic model: against the ``adaptive`` suite (an attacker who knows the
flag) on the served checkpoint, mutual information alone let 14.0% of the correctly classified
inputs become unflagged errors, the union 11.6%, max-softmax alone 10.2%; on MNIST digits (out of
distribution) mutual information and the union separate far better than max-softmax
(docs/paired.md, docs/ood.md). The union keeps most of both; ``--signal`` picks another.

``python -m training.train`` writes it into the manifest (``flag``, and ``mi_threshold``: the
mutual-information threshold at the same rate); for an older checkpoint, or to serve another kind,

    python -m training.flag checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla
    python -m training.flag checkpoints/fashion_mnist_mfdv --signal max_prob

calibrates it and rewrites the manifest (the weights are untouched; the model id changes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from models import StochasticClassifier, load_checkpoint
from models.attacks.flag import FLAG_KINDS, UNION, FlagCalibration, FlagKind, FlagRule, FlagSignal

from .data import Dataset
from .evaluate import calibrate_suite_flags, held_out_images
from .export import update_flag

log = logging.getLogger(__name__)

FLAG_RATE = 0.05
"""The most correctly classified held-out clean inputs the served flag may flag."""
FLAG_SEED = 0
"""Seed of the calibration's noise draws (``reports.paired``'s default ``--seed``)."""


def objective_signal(objective: str) -> FlagSignal:
    """The uncertainty a split objective trains for: low confidence (ccat: ``max_prob``) or disagreement
    of the draws (``mutual_information``, also plain adversarial training's)."""
    return "max_prob" if objective == "ccat" else "mutual_information"


def served_signal(model: StochasticClassifier, objective: str | None) -> FlagKind:
    """The flag a new checkpoint serves: max-softmax for a deterministic or ccat-trained model, else the union
    of mutual information and max-softmax (``UNION``)."""
    if not model.stochastic or objective == "ccat":
        return "max_prob"
    return UNION  # type: ignore[return-value]


def checkpoint_signal(manifest: dict[str, Any], model: StochasticClassifier) -> FlagKind:
    """The kind of flag a checkpoint's figures use: its manifest's ``flag`` rule's; for a manifest from before
    the served flag (no ``flag``), the signal its training flagged with then: max-softmax for a deterministic or
    ccat-trained model, else mutual information (``objective_signal``). The kind is fixed by the manifest, so
    ``reports.paired``'s cache (keyed by the model id) never mixes two kinds."""
    if isinstance(manifest.get("flag"), dict):
        return FlagRule.from_manifest(manifest).kind  # type: ignore[return-value]
    objective = (manifest.get("adversarial_training") or {}).get("objective")
    return "max_prob" if not model.stochastic else objective_signal(objective or "at")


def served_flag(
    model: StochasticClassifier, objective: str | None, held_out: Dataset, source: str, kind: FlagKind | None = None
) -> tuple[FlagCalibration, float]:
    """The served flag (``kind``, default ``served_signal``) calibrated on ``held_out``, and the
    mutual-information threshold at the same rate alone."""
    signal = kind or served_signal(model, objective)
    signals: tuple[FlagKind, ...] = tuple(dict.fromkeys((signal, "mutual_information")))
    flags = calibrate_suite_flags(model, held_out, signals, rate=FLAG_RATE, seed=FLAG_SEED, source=source)
    return flags[signal], flags["mutual_information"].rule.threshold


def recalibrate(path: Path, kind: FlagKind | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrate checkpoint ``path``'s served flag (``kind``, default ``served_signal``) and write it into its
    manifest; returns (before, after): the ``flag`` (or ``mi_threshold``) it had and the one it has now.

    Raises:
        SystemExit: its held-out training images cannot be rebuilt (no dataset or ``val_size`` in the manifest).
    """
    ckpt = load_checkpoint(path)
    held, source = held_out_images(ckpt.manifest)
    if held is None or source is None:
        raise SystemExit(f"{path}: its held-out training images cannot be rebuilt, so its flag cannot be calibrated")
    objective = (ckpt.manifest.get("adversarial_training") or {}).get("objective")
    flag, mi = served_flag(ckpt.model, objective, held, source, kind)
    before = ckpt.manifest.get("flag") or {
        "signal": "mutual_information",
        "threshold": ckpt.manifest.get("mi_threshold"),
    }
    update_flag(path, flag.describe(), mi)
    return before, {**flag.describe(), "mi_threshold": mi}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.flag", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument(
        "--signal",
        choices=FLAG_KINDS,
        help="the flag to serve (default: the union of mutual information and max_prob for a stochastic model, "
        "max_prob for a deterministic or ccat-trained one)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the thread count moves the last digits of the sums, and with it the "
        "threshold's; reports.paired's figures were computed with 1)",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for path in args.checkpoints:
        before, after = recalibrate(path, args.signal)
        c = after["calibration"]
        print(
            f"{path}: {after['rule']} (was {before.get('rule') or before.get('signal')}; threshold "
            f"{before.get('threshold')}), {c['flagged_correct']:.2%} of {c['n_correct']} correctly classified "
            f"held-out images flagged (at most {c['rate']:.0%}); mi_threshold {after['mi_threshold']:.6g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
