"""Curves past the training radius: robust and robust-or-flagged accuracy against eps, per checkpoint.

    python -m reports.curves run checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla \\
        --n 500 --steps 20 --eot 8 --queries 100 --threads 1
    python -m reports.curves render      # docs/results/curves.json -> docs/curves.md + docs/figures/curves.png

Every checkpoint is attacked at every eps of ``--eps`` (default 0 to 0.3) on the same first ``--n``
test inputs with the same seed, by ``reports.paired``'s evaluation: the suite (``adaptive`` by
default, reduced to ``--steps``/``--eot``/``--queries``) with its flag calibrated once per
checkpoint on its held-out training images (clean data: the threshold does not depend on eps).
Each cell (checkpoint x eps) is cached per ``--batch`` inputs under ``--cache`` (reports.paired's
cache folder), so a killed run goes on where it stopped; a batch that ``reports.paired run``
already computed for the same checkpoint and suite settings at that eps (any ``--n``) is reused.
The cells already cached are read first; then the cells at ``--first`` (eps 0.2, twice the training
radius, by default) run, for every checkpoint, then the rest in ascending eps; the results file is
rewritten after each cell.

At eps 0 no perturbation is possible, so no attack runs: robust and robust-or-flagged are the
suite's clean judgement, the one every other cell makes of the same inputs with the same draws.

``render`` writes the page (a table per checkpoint, the figure, the settings and the verdict at
eps 0.2 against issue 16's goal) from the results file alone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import load_checkpoint
from models.attacks.flag import FLAG_KINDS
from models.uncertainty import wilson_interval
from training.data import Dataset, load_dataset

from . import paired

log = logging.getLogger("reports.curves")

RESULTS = Path("docs/results/curves.json")
PAGE = Path("docs/curves.md")
FIGURE = Path("docs/figures/curves.png")
EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
FIRST = (0.2,)
VERDICT = {"eps": 0.2, "goal": 0.40, "aim": 0.60, "source": "issue 16, item 5 (eps 0.2 = twice the training radius)"}
"""The acceptance line the page judges the eps 0.2 cells against: robust-or-flagged accuracy >= goal, aim >= aim."""


def cell_order(eps: Sequence[float], first: Sequence[float], checkpoints: Sequence[str]) -> list[tuple[float, str]]:
    """The (eps, checkpoint) cells in the order they run: ``first`` eps for every checkpoint, then the
    other eps ascending; eps 0 is not in it (no attack runs there)."""
    rest = sorted(e for e in set(eps) if e not in first and e > 0)
    head = [e for e in dict.fromkeys(first) if e in eps and e > 0]
    return [(e, name) for e in [*head, *rest] for name in checkpoints]


def cell_settings(model_id: str, eps: float, args: argparse.Namespace) -> dict[str, Any]:
    """Everything one cell's batches depend on (not ``--n``: a batch is the same whatever comes after it)."""
    keys = ("suite", "steps", "eot", "queries", "dataset", "flag_rate", "flag_signal", "seed", "batch")
    return {"model_id": model_id, "eps": eps, **{k: getattr(args, k) for k in keys}}


def cell_dir(cache: Path, name: str, settings: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return cache / f"curves-{key}-{name}"


def reuse_paired_batches(
    cache: Path,
    name: str,
    model_id: str,
    target: Path,
    expected: dict[str, Any],
    n: int,
    batch: int,
    run: dict[str, Any] | None = None,
) -> int:
    """Link into ``target`` the batches that a finished ``reports.paired run`` of the same checkpoint
    (its cache entry names the model id, and the ``run`` settings the suite's own settings do not
    hold: the seed and the dataset) computed with the same suite settings (attacks, eps, flag rule
    and threshold, judge): they are what this cell would compute. Returns how many."""
    target.mkdir(parents=True, exist_ok=True)
    reused = 0
    for entry in sorted(cache.glob(f"*-{name}.json")):
        src = entry.with_suffix("")
        try:
            found = json.loads(entry.read_text())
            if found.get("model_id") != model_id or not src.is_dir():
                continue
            if run is not None and any(found.get("run", {}).get(k) != v for k, v in run.items()):
                continue  # another seed or dataset (an entry from before ``run`` was recorded: not reused)
        except (OSError, json.JSONDecodeError):
            continue
        for start in range(0, n, batch):
            dst, f = target / f"batch{start:06d}.pt", src / f"batch{start:06d}.pt"
            if dst.exists() or not f.exists():
                continue
            part = torch.load(f, weights_only=False)
            if (
                part.n != min(batch, n - start)
                or not part.complete
                or not paired.same_settings(part.settings, expected)
            ):
                continue
            try:
                os.link(f, dst)
            except OSError:
                shutil.copyfile(f, dst)
            reused += 1
    if reused:
        log.info("%s: %d batches reused from reports.paired's cache at eps %g", name, reused, expected["eps"])
    return reused


def _zeros(bits: str) -> str:
    return "0" * len(bits)


def clean_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """The eps 0 cell from any other cell of the checkpoint: nothing can be perturbed, so robust and
    robust-or-flagged are the clean judgement, and no input has an unflagged error."""
    clean = cell["outcomes"]["suite_clean"]
    return {
        "eps": 0.0,
        "n": cell["n"],
        "attacked": False,
        "seconds": 0.0,
        "outcomes": {"suite_clean": clean, "robust": clean, "robust_or_flagged": clean, "evaded": _zeros(clean)},
    }


def command_line(paths: Sequence[Path], args: argparse.Namespace) -> str:
    """The command that gives these results (written into the results file and the page)."""
    parts = ["python -m reports.curves run", *map(str, paths), f"--suite {args.suite} --n {args.n}"]
    parts.append(f"--steps {args.steps} --eot {args.eot} --queries {args.queries}")
    parts.append("--eps " + " ".join(f"{e:g}" for e in args.eps) + " --first " + " ".join(f"{e:g}" for e in args.first))
    parts.append(f"--flag-rate {args.flag_rate} --seed {args.seed} --batch {args.batch}")
    return " ".join(parts + paired.set_options(args, "flag_signal", "dataset", "threads"))


def _write(out: Path, results: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(out)


def run(paths: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate every cell in ``cell_order``, rewriting ``args.out`` after each one."""
    if not any(e > 0 for e in args.eps):
        raise SystemExit("name at least one eps > 0: the eps 0 cell is the clean judgement the attacked cells make")
    if len({p.name for p in paths}) != len(paths):
        raise SystemExit(
            "the checkpoints' folder names must differ (they name the cache entries and the page's tables)"
        )
    suite = paired.make_suite(args)
    settings = {
        k: getattr(args, k)
        for k in ("suite", "n", "steps", "eot", "queries", "dataset", "flag_rate", "flag_signal", "seed", "batch")
    }
    settings.update(suite_name=suite.name, eps=list(args.eps), first=list(args.first), threads=args.threads)
    models: dict[str, Any] = {}
    records: dict[str, dict[str, Any]] = {}
    for path in paths:
        ckpt = load_checkpoint(path)
        test = load_dataset(args.dataset or str(ckpt.manifest["dataset"]), "test")
        attacked = Dataset(test.x[: args.n], test.y[: args.n], test.class_names, test.name)
        flag = paired.calibrate(path, ckpt, suite, args)  # once per checkpoint: clean data, any eps
        adv = ckpt.manifest.get("adversarial_training") or {}
        models[path.name] = (ckpt, attacked, flag)
        records[path.name] = {
            "checkpoint": path.name,
            "path": str(path),
            "model_id": ckpt.model_id,
            "method": str(ckpt.manifest["method"]),
            "adversarial_training": {"kind": adv.get("kind"), "objective": adv.get("objective"), "eps": adv.get("eps")}
            if adv
            else None,
            "flag": flag.describe() if flag is not None else None,
            "cells": [],
        }
    results = {
        "settings": settings,
        "command": command_line(paths, args),
        "verdict": VERDICT,
        "checkpoints": list(records.values()),
        "complete": False,
    }
    cells_todo = []
    for eps, name in cell_order(args.eps, args.first, [p.name for p in paths]):
        ckpt, attacked, flag = models[name]
        target = cell_dir(args.cache, name, cell_settings(ckpt.model_id, eps, args))
        expected = suite.describe(eps, ckpt.model.cfg.num_classes, flag)
        run_settings = {"seed": args.seed, "dataset": args.dataset}
        reuse_paired_batches(args.cache, name, ckpt.model_id, target, expected, len(attacked), args.batch, run_settings)
        cached = all((target / f"batch{b:06d}.pt").exists() for b in range(0, len(attacked), args.batch))
        cells_todo.append((not cached, eps, name, target))
    order = sorted(cells_todo, key=lambda c: c[0])  # the cells already cached first: the file shows them at once
    for i, (_, eps, name, target) in enumerate(order):
        ckpt, attacked, flag = models[name]
        log.info("cell %d of %d: %s at eps %g", i + 1, len(order), name, eps)
        res = paired.attack_batches(ckpt.model, attacked, suite, flag, eps, args, target, f"{name} eps {eps:g}")
        summary = res.summary()
        cells = records[name]["cells"]
        cells.append(
            {
                "eps": eps,
                "n": res.n,
                "attacked": True,
                "seconds": summary["seconds"],
                "per_attack": summary["per_attack"],
                "outcomes": paired.suite_outcomes(res),
            }
        )
        if 0.0 in args.eps and not any(c["eps"] == 0.0 for c in cells):
            cells.append(clean_cell(cells[-1]))
        cells.sort(key=lambda c: c["eps"])
        results["complete"] = i + 1 == len(order)
        _write(args.out, results)
    return results


# ---------------------------------------------------------------- render


def worst_so_far(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eps, the cell an attacker with that budget gets from every attack run up to it: the L-inf ball
    of a smaller eps lies inside it, so an input with an unflagged error (or an error) at a smaller eps has
    one here too. Per input: evaded at any eps <= this one, robust at every one (cells sorted by eps, one
    clean judgement)."""
    out: list[dict[str, Any]] = []
    evaded = robust = None
    for c in sorted(cells, key=lambda c: c["eps"]):
        o = c["outcomes"]
        ev, rob, clean = (paired._unbits(o[m]) for m in ("evaded", "robust", "suite_clean"))
        evaded = ev if evaded is None else evaded | ev
        robust = rob if robust is None else robust & rob
        bits = {"suite_clean": o["suite_clean"], "robust": paired._bits(robust), "evaded": paired._bits(evaded)}
        out.append({**c, "outcomes": {**bits, "robust_or_flagged": paired._bits(clean & ~evaded)}})
    return out


def _rate(cell: dict[str, Any], measure: str) -> tuple[float, float, float, int, int]:
    """A cell's share for ``measure`` over all its inputs: (share, low, high, count, n)."""
    bits = paired._unbits(cell["outcomes"][measure])
    k, n = int(bits.sum()), int(bits.size)
    lo, hi = wilson_interval(k, n)
    return k / n, lo, hi, k, n


def verdict(name: str, cell: dict[str, Any] | None, v: dict[str, Any], what: str = "robust-or-flagged") -> str:
    """One checkpoint's sentence on the acceptance line, from its cell at ``v['eps']`` (``what``: how the
    page names that cell's robust-or-flagged figure)."""
    if cell is None:
        return f"- {name}: eps {v['eps']:g} not measured yet."
    p, lo, hi, k, n = _rate(cell, "robust_or_flagged")
    rp, rlo, rhi, *_ = _rate(cell, "robust")
    parts = []
    for label, t in (("goal", v["goal"]), ("aim", v["aim"])):
        if p >= t:
            where = (
                "the whole 95% interval is above it" if lo >= t else f"the interval's lower end, {lo:.1%}, is below it"
            )
            parts.append(f"meets the {label} ({t:.0%}) by {100 * (p - t):.1f} points ({where})")
        else:
            where = "the whole 95% interval is below it" if hi < t else f"the interval reaches {hi:.1%}"
            parts.append(f"misses the {label} ({t:.0%}) by {100 * (t - p):.1f} points ({where})")
    return (
        f"- {name}: {what} {p:.1%} [{lo:.1%}, {hi:.1%}] ({k} of {n}) {parts[0]}, and {parts[1]}; "
        f"robust {rp:.1%} [{rlo:.1%}, {rhi:.1%}]."
    )


def summary(at: dict[str, dict[str, Any] | None], v: dict[str, Any]) -> str:
    """One sentence over all checkpoints: which meet the goal (and the aim), or how far the best falls short."""
    done = {name: _rate(cell, "robust_or_flagged")[0] for name, cell in at.items() if cell is not None}
    if not done:
        return f"No checkpoint has been measured at eps {v['eps']:g} yet."
    best = max(done, key=lambda name: done[name])
    met = [name for name, p in done.items() if p >= v["goal"]]
    aimed = [name for name, p in done.items() if p >= v["aim"]]
    if not met:
        return (
            f"No checkpoint measured reaches the goal: the best, {best}, is {100 * (v['goal'] - done[best]):.1f} "
            f"points short of {v['goal']:.0%} and {100 * (v['aim'] - done[best]):.1f} short of the aim."
        )
    text = f"Reach the goal ({v['goal']:.0%}): {', '.join(met)}. "
    if aimed:
        return text + f"Reach the aim ({v['aim']:.0%}): {', '.join(aimed)}."
    return text + f"None reaches the aim: the best, {best}, is {100 * (v['aim'] - done[best]):.1f} points short."


def inversions(cells: Sequence[dict[str, Any]], measure: str) -> list[str]:
    """Where a larger eps scored higher than a smaller one (``measure``): the attacks are stochastic and
    each eps is a separate run, so the curves need not fall monotonically."""
    out = []
    for a, b in pairwise(cells):
        if paired._unbits(b["outcomes"][measure]).sum() > paired._unbits(a["outcomes"][measure]).sum():
            out.append(f"{a['eps']:g} -> {b['eps']:g}")
    return out


def clean_disagreements(cells: Sequence[dict[str, Any]]) -> int:
    """Inputs whose clean judgement differs between a checkpoint's attacked cells (0: it depends on the
    seed and the input's position only, as it should; more: e.g. batches computed with other thread counts)."""
    bits = [paired._unbits(c["outcomes"]["suite_clean"]) for c in cells if c.get("attacked")]
    if len(bits) < 2:
        return 0
    stack = np.stack(bits)
    return int((stack.any(0) & ~stack.all(0)).sum())


def _settings_text(results: dict[str, Any]) -> str:
    st = results["settings"]
    reduced = (
        f" (reduced: {st['steps']} steps, EOT {st['eot']}, {st['queries']} Square queries; the flag-aware "
        f"attacks {2 * st['steps']} steps)"
        if st["steps"]
        else ""
    )
    return (
        f"Suite `{st['suite_name']}`{reduced}, judged on 64 fresh draws (mean-softmax label and majority vote "
        f"both right), on the first {st['n']} test images, seed {st['seed']}, batches of {st['batch']}; each "
        f"flag calibrated once per checkpoint on its held-out training images so that at most "
        f"{st['flag_rate']:.0%} of the correctly classified ones are flagged."
    )


def figure(results: dict[str, Any], path: Path) -> None:
    """Robust and robust-or-flagged accuracy against eps, one panel per checkpoint, Wilson 95% bands,
    robust-or-flagged up to each eps (``worst_so_far``), the training radius and the goal marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cks = results["checkpoints"]
    v = results["verdict"]
    cols = min(2, len(cks))
    rows = -(-len(cks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 0.4 + 3.5 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(cks) :]:
        ax.set_visible(False)
    for ax, ck in zip(axes.flat, cks, strict=False):
        cells = ck["cells"]
        eps = [c["eps"] for c in cells]
        for measure, label, style, color in (
            ("robust", "robust", "-o", "#1f77b4"),
            ("robust_or_flagged", "robust or flagged", "--s", "#d62728"),
        ):
            rates = np.array([_rate(c, measure)[:3] for c in cells]).reshape(-1, 3) * 100
            ax.plot(eps, rates[:, 0], style, color=color, label=label, markersize=4)
            ax.fill_between(eps, rates[:, 1], rates[:, 2], color=color, alpha=0.2, linewidth=0)
        upto = [100 * _rate(c, "robust_or_flagged")[0] for c in worst_so_far(cells)]
        ax.plot(eps, upto, ":", color="#7f0000", label="robust or flagged, up to this eps", linewidth=1.2)
        radius = (ck.get("adversarial_training") or {}).get("eps")
        if radius is not None:
            ax.axvline(radius, color="#555555", linestyle=":", linewidth=1)
            ax.annotate(f"training radius {radius:g}", (radius, 3), fontsize=7, ha="right", rotation=90, va="bottom")
        for t, name in ((v["goal"], "goal"), (v["aim"], "aim")):
            ax.plot([v["eps"]], [100 * t], marker="_", markersize=14, color="#2ca02c")
            ax.annotate(f"{name} {t:.0%}", (v["eps"], 100 * t), fontsize=7, xytext=(6, -3), textcoords="offset points")
        objective = (ck.get("adversarial_training") or {}).get("objective")
        ax.set_title(f"{ck['checkpoint']} ({ck['method']}{', ' + objective if objective else ''})", fontsize=9)
        ax.set_xlabel("L-inf eps (pixel space)")
        ax.set_xlim(-0.005, max(results["settings"]["eps"]) + 0.01)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("accuracy under attack (%)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    st = results["settings"]
    fig.suptitle(f"{st['suite_name']}, n={st['n']}, judged on 64 draws; bands: Wilson 95%", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def render(results: dict[str, Any], figure_link: str = "figures/curves.png", results_name: str = str(RESULTS)) -> str:
    """The markdown page for a results file (every figure comes from it)."""
    st, v = results["settings"], results["verdict"]
    lines = [
        "# Robustness past the training radius",
        "",
        f"<!-- generated by `python -m reports.curves render` from {results_name}; do not edit -->",
        "",
        "Robust and robust-or-flagged accuracy against the L-inf radius eps, every checkpoint on the same inputs. "
        + _settings_text(results),
        "",
        "Robust: right on the clean input and on every attack's output. Robust-or-flagged: right on the clean input, "
        "and every attack's output right or flagged. Unflagged error: of the inputs right when clean, the share "
        "some attack turned into an error the flag does not mark. Intervals: Wilson 95%. At eps 0 no attack "
        "runs (nothing can be perturbed): both figures are the suite's clean judgement of the same inputs. "
        "Robust-or-flagged up to this eps: an input with an unflagged error at this eps or any smaller one "
        "counts as lost (the ball of a smaller eps lies inside this one's).",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    if not results.get("complete"):
        lines += ["**The run is not finished**: the cells below are those done so far.", ""]
    lines += [f"![robust and robust-or-flagged accuracy against eps]({figure_link})", ""]
    lines += [f"## At eps {v['eps']:g}: the goal", ""]
    lines += [
        f"{v['source']}: robust-or-flagged accuracy >= {v['goal']:.0%}, aim >= {v['aim']:.0%}, settings as above.",
        "",
    ]

    def at_eps(cells: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
        return next((c for c in cells if c["eps"] == v["eps"]), None)

    at = {ck["checkpoint"]: at_eps(ck["cells"]) for ck in results["checkpoints"]}
    lines += [f"The attacks run at eps {v['eps']:g}:", ""]
    lines += [verdict(name, cell, v) for name, cell in at.items()]
    lines += ["", summary(at, v), ""]
    worst = {ck["checkpoint"]: at_eps(worst_so_far(ck["cells"])) for ck in results["checkpoints"]}
    lines += [
        f"Counting, per input, the unflagged errors the attacks found at every smaller eps too (an attacker "
        f"allowed {v['eps']:g} may use a smaller perturbation; the figure to judge by):",
        "",
    ]
    lines += [verdict(name, cell, v, "robust-or-flagged up to this eps") for name, cell in worst.items()]
    lines += ["", summary(worst, v), ""]
    attacks = next((c["per_attack"] for ck in results["checkpoints"] for c in ck["cells"] if c.get("per_attack")), None)
    if attacks:
        keys = ", ".join(f"`{a['key'].rsplit('_eps', 1)[0]}`" for a in attacks)
        lines += [
            f"Attacks at every eps, in this order, each on the inputs without an unflagged error yet: {keys}.",
            "",
        ]
    for ck in results["checkpoints"]:
        adv = ck.get("adversarial_training")
        trained = (
            f"adversarially trained ({adv['kind']}"
            + (f", objective {adv['objective']}" if adv.get("objective") else "")
            + f") at eps {adv['eps']:g}"
            if adv and adv.get("eps") is not None
            else "no adversarial training recorded"
        )
        flag = ck["flag"]
        flag_text = f"{flag['rule']}, threshold {flag['threshold']:.4g}" if flag else "no flag"
        lines += [
            f"## {ck['checkpoint']} ({ck['method']})",
            "",
            f"{trained}; flag: {flag_text}. `{st['suite_name']}`, n = {st['n']} per eps.",
            "",
            "| eps | robust % [95% CI] (count) | robust-or-flagged % [95% CI] (count) | unflagged error % of correct "
            "[95% CI] (count) | robust-or-flagged up to this eps % [95% CI] (count) | n | right when clean |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c, w in zip(ck["cells"], worst_so_far(ck["cells"]), strict=True):
            robust, rof = (paired._share(*_rate(c, m)[3:], count=True) for m in ("robust", "robust_or_flagged"))
            ue = paired.unflagged_error(c)
            ue_txt = paired._share(ue[2], ue[3], count=True) if ue else "-"
            upto = paired._share(*_rate(w, "robust_or_flagged")[3:], count=True)
            clean = int(paired._unbits(c["outcomes"]["suite_clean"]).sum())
            lines.append(f"| {c['eps']:g} | {robust} | {rof} | {ue_txt} | {upto} | {c['n']} | {clean} |")
        missing = [e for e in st["eps"] if not any(c["eps"] == e for c in ck["cells"])]
        notes = []
        if missing:
            notes.append("not measured yet: eps " + ", ".join(f"{e:g}" for e in missing))
        for measure in ("robust", "robust_or_flagged"):
            up = inversions(ck["cells"], measure)
            if up:
                notes.append(
                    f"{measure} rises from eps {'; '.join(up)} (stochastic attacks, a separate run per eps: "
                    "compare the intervals)"
                )
        differ = clean_disagreements(ck["cells"])
        if differ:
            notes.append(f"the clean judgement differs between the eps cells on {differ} inputs")
        lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.curves", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate every checkpoint at every eps on the same inputs; write the results file")
    r.add_argument("checkpoints", type=Path, nargs="+")
    r.add_argument("--suite", default="adaptive")
    r.add_argument("--n", type=int, default=500, help="attacked test inputs (the same at every eps)")
    r.add_argument("--steps", type=int, default=20, help="reduce the suite to this many steps (0: the full suite)")
    r.add_argument("--eot", type=int, default=8)
    r.add_argument("--queries", type=int, default=100)
    r.add_argument("--eps", type=float, nargs="+", default=list(EPS))
    r.add_argument("--first", type=float, nargs="*", default=list(FIRST), help="eps whose cells run first")
    r.add_argument("--flag-rate", type=float, default=0.05)
    r.add_argument("--flag-signal", choices=["auto", *FLAG_KINDS], default="auto")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch", type=int, default=100, help="attacked inputs per cached batch")
    r.add_argument("--dataset", help="test data (default: each checkpoint's manifest dataset)")
    r.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    r.add_argument("--cache", type=Path, default=paired.CACHE)
    r.add_argument("--out", type=Path, default=RESULTS)
    d = sub.add_parser("render", help="write the page and the figure from the results file")
    d.add_argument("--results", type=Path, default=RESULTS)
    d.add_argument("--out", type=Path, default=PAGE)
    d.add_argument("--figure", type=Path, default=FIGURE)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "run":
        if args.threads:
            torch.set_num_threads(args.threads)
        run(args.checkpoints, args)
        return 0
    results = json.loads(args.results.read_text())
    figure(results, args.figure)
    link = os.path.relpath(args.figure, args.out.parent)
    args.out.write_text(render(results, link, str(args.results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
