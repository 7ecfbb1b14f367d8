"""A checkpoint's served flag: one rule for the service's ``flagged`` and the reports' figures.

The flag is a ``models.attacks.flag.FlagRule`` (a signal of the T draws and a threshold). Its signal is
the checkpoint's own (``served_signal``): mutual information for a stochastic model trained to
disagree or with plain adversarial training, 1 - max mean probability (max-softmax) for a
deterministic model (its mutual information is 0) or a ccat-trained one. Its threshold is
calibrated on the training images the run held out (``split_train_val``) so that at most
``FLAG_RATE`` (5%) of the correctly classified ones are flagged (``calibrate_suite_flag``, with
``FLAG_SEED`` and 64 draws): the calibration ``python -m reports.paired`` makes with its defaults,
so the served threshold and the reported one are the same number.

``python -m training.train`` writes it into the manifest (``flag``, and ``mi_threshold``: the
mutual-information threshold at the same rate); for an older checkpoint,

    python -m training.flag checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla

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
from models.attacks.flag import FlagCalibration, FlagSignal, default_signal

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


def served_signal(model: StochasticClassifier, objective: str | None) -> FlagSignal:
    """A checkpoint's flag signal: a deterministic model's max-softmax (``default_signal``), else the signal
    its training objective flags with (``objective_signal``)."""
    if not model.stochastic or objective is None:
        return default_signal(model)
    return objective_signal(objective)


def checkpoint_signal(manifest: dict[str, Any], model: StochasticClassifier) -> FlagSignal:
    """``served_signal`` of a checkpoint, the objective read from its manifest."""
    return served_signal(model, (manifest.get("adversarial_training") or {}).get("objective"))


def served_flag(
    model: StochasticClassifier, objective: str | None, held_out: Dataset, source: str
) -> tuple[FlagCalibration, float]:
    """The served flag calibrated on ``held_out`` and the mutual-information threshold at the same rate
    (the flag's own threshold when its signal is mutual information)."""
    signal = served_signal(model, objective)
    signals: tuple[FlagSignal, ...] = tuple(dict.fromkeys((signal, "mutual_information")))
    flags = calibrate_suite_flags(model, held_out, signals, rate=FLAG_RATE, seed=FLAG_SEED, source=source)
    return flags[signal], flags["mutual_information"].rule.threshold


def recalibrate(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Calibrate checkpoint ``path``'s served flag and write it into its manifest; returns (before, after):
    the ``flag`` (or ``mi_threshold``) it had and the one it has now.

    Raises:
        SystemExit: its held-out training images cannot be rebuilt (no dataset or ``val_size`` in the manifest).
    """
    ckpt = load_checkpoint(path)
    held, source = held_out_images(ckpt.manifest)
    if held is None or source is None:
        raise SystemExit(f"{path}: its held-out training images cannot be rebuilt, so its flag cannot be calibrated")
    objective = (ckpt.manifest.get("adversarial_training") or {}).get("objective")
    flag, mi = served_flag(ckpt.model, objective, held, source)
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
        before, after = recalibrate(path)
        c = after["calibration"]
        print(
            f"{path}: flag {after['signal']} > {after['threshold']:.6g} (was {before.get('signal')} > "
            f"{before.get('threshold')}), {c['flagged_correct']:.2%} of {c['n_correct']} correctly classified "
            f"held-out images flagged (at most {c['rate']:.0%}); mi_threshold {after['mi_threshold']:.6g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
