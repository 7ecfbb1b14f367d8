"""Two (or more) checkpoints on the same inputs: paired statistics for clean, robust and robust-or-flagged accuracy.

    python -m reports.paired run checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla \\
        --suite adaptive --n 1000 --steps 20 --eot 8 --queries 100
    python -m reports.paired render      # docs/results/paired.json -> docs/paired.md
    python -m reports.paired run checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_mfdv@max_prob \\
        --out docs/results/paired-flags.json          # one checkpoint under two flag rules

Every checkpoint is judged on the same inputs with the same seed: clean accuracy on the first
``--clean-n`` test images (T = ``--samples`` draws), and the suite (``adaptive`` by default, with
its flag calibrated per checkpoint on its held-out training images so that at most
``--flag-rate`` of the correctly classified ones are flagged, with the checkpoint's own flag kind
(``training.flag.checkpoint_signal``: its manifest's rule) or ``--flag-signal``'s; ``PATH@KIND``
names a checkpoint under flag kind ``KIND``, so one checkpoint can be compared with itself under
another rule) on the first ``--n``. The per-input outcomes are kept in the results file, so every pair is compared with the exact McNemar test and a paired bootstrap interval of
the difference (``reports.stats``); the first checkpoint is compared with each of the others.
A checkpoint's result is cached in ``--cache`` as soon as it is done, keyed on its model id and
the settings, and each batch of ``--batch`` attacked inputs as soon as it is done, so an
interrupted run goes on where it stopped (the suite's streams derive from each input's position,
so batching does not change a result).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import Checkpoint, load_checkpoint
from models.attacks import run_suite
from models.attacks.flag import FLAG_KINDS, FlagCalibration
from models.attacks.suite import Suite, SuiteResult, get_suite, merge_results
from models.uncertainty import wilson_interval
from training.data import Dataset, as_float, load_dataset
from training.evaluate import calibrate_suite_flag, clean_outcomes, held_out_images
from training.flag import checkpoint_signal

from .readme import replace_block
from .stats import compare_paired

log = logging.getLogger("reports.paired")

RESULTS = Path("docs/results/paired.json")
PAGE = Path("docs/paired.md")
CACHE = Path("runs/paired-cache")
MEASURES = ("clean", "robust", "robust_or_flagged")


def _bits(mask: Any) -> str:
    return "".join("1" if v else "0" for v in np.asarray(mask, dtype=bool))


def _unbits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def make_suite(args: argparse.Namespace) -> Suite:
    """The suite ``args`` name, reduced to ``--steps``/``--eot``/``--queries`` when ``--steps`` is set."""
    suite = get_suite(args.suite)
    if args.steps:
        suite = suite.reduced(steps=args.steps, eot=args.eot, queries=args.queries)
    return suite


def calibrate(
    path: Path, ckpt: Checkpoint, suite: Suite, args: argparse.Namespace, kind: str | None = None
) -> FlagCalibration | None:
    """A flag-aware suite's flag for checkpoint ``path``, calibrated on its held-out training images
    (clean data: it does not depend on eps); None for a suite without a flag."""
    if not suite.flag_aware:
        return None
    held, source = held_out_images(ckpt.manifest)
    if held is None:
        raise SystemExit(f"{path}: its held-out training images cannot be rebuilt, so its flag cannot be calibrated")
    signal = kind or (checkpoint_signal(ckpt.manifest, ckpt.model) if args.flag_signal == "auto" else args.flag_signal)
    return calibrate_suite_flag(ckpt.model, held, signal=signal, rate=args.flag_rate, seed=args.seed, source=source)


def attack_batches(
    model: Any,
    attacked: Dataset,
    suite: Suite,
    flag: FlagCalibration | None,
    eps: float,
    args: argparse.Namespace,
    cache_dir: Path,
    label: str,
) -> SuiteResult:
    """The suite at ``eps`` on ``attacked``, one cache file per ``--batch`` inputs in ``cache_dir``
    (``batch{start:06d}.pt``): a killed run resumes where it stopped. A cached batch made with other suite
    settings (attacks, flag rule and thresholds, judge) is refused: mixing them would give figures no single run
    gives.

    Raises:
        SystemExit: a cached batch's settings differ from this run's.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    expected = suite.describe(eps, model.cfg.num_classes, flag)
    parts = []
    for start in range(0, len(attacked), args.batch):  # one cache entry per batch: a killed run resumes
        sl = slice(start, min(start + args.batch, len(attacked)))
        part_file = cache_dir / f"batch{start:06d}.pt"
        if part_file.exists():
            part = torch.load(part_file, weights_only=False)
            if not same_settings(part.settings, expected):
                raise SystemExit(
                    f"{part_file}: cached with other suite settings (flag, attacks) than this run's; remove {cache_dir}"
                )
            parts.append(part)
            continue
        x, y = as_float(attacked.x[sl]), attacked.y[sl]
        part = run_suite(model, x, y, suite, eps=eps, seed=args.seed, offset=start, flag=flag)
        part.x_adv = part.x_adv[:0]  # the images are not needed here
        tmp = part_file.with_suffix(".tmp")
        torch.save(part, tmp)
        tmp.replace(part_file)
        log.info("%s: inputs %d-%d done (robust %d of %d)", label, sl.start, sl.stop, int(part.robust.sum()), part.n)
        parts.append(part)
    return merge_results(parts)


def same_settings(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two suite settings (``Suite.describe``) agree on everything but the notes (model-dependent remarks)."""

    def norm(s: dict[str, Any]) -> str:
        return json.dumps({k: v for k, v in s.items() if k != "notes"}, sort_keys=True, default=str)

    return norm(a) == norm(b)


def suite_outcomes(res: SuiteResult) -> dict[str, str | None]:
    """A suite result's per-input outcomes as bit strings (the results file's ``outcomes``, less ``clean``)."""
    return {
        "suite_clean": _bits(res.clean_correct.cpu()),
        "robust": _bits(res.robust.cpu()),
        "robust_or_flagged": _bits(res.robust_or_flagged.cpu()),
        "evaded": _bits(res.evaded.cpu()) if res.evaded is not None else None,
    }


def split_kind(arg: str | Path) -> tuple[Path, str | None]:
    """``PATH@KIND`` -> (PATH, KIND); a plain path -> (path, None).

    Raises:
        SystemExit: KIND is not a flag kind.
    """
    text = str(arg)
    path, at, kind = text.rpartition("@")
    if not at or "/" in kind:
        return Path(text), None
    if kind not in FLAG_KINDS:
        raise SystemExit(f"{text}: after '@' name a flag kind, one of {list(FLAG_KINDS)}")
    return Path(path), kind


def label_of(path: Path, kind: str | None) -> str:
    """A checkpoint's name in the results: its folder's, with ``@KIND`` for a chosen flag kind."""
    return path.name + (f"@{kind}" if kind else "")


def evaluate_one(path: Path, args: argparse.Namespace, cache_dir: Path, kind: str | None = None) -> dict[str, Any]:
    """One checkpoint's per-input outcomes (bit strings) and its summary; suite batches cached in ``cache_dir``;
    ``kind``: the flag kind to calibrate and evade (default: as ``calibrate``)."""
    ckpt = load_checkpoint(path)
    manifest = ckpt.manifest
    model = ckpt.model
    test = load_dataset(args.dataset or str(manifest["dataset"]), "test")
    clean_ds = Dataset(test.x[: args.clean_n], test.y[: args.clean_n], test.class_names, test.name)
    attacked = Dataset(test.x[: args.n], test.y[: args.n], test.class_names, test.name)
    suite = make_suite(args)
    flag = calibrate(path, ckpt, suite, args, kind)
    clean = clean_outcomes(model, clean_ds, args.samples, seed=args.seed)["correct"].numpy()
    res = attack_batches(model, attacked, suite, flag, args.eps, args, cache_dir, label_of(path, kind))
    summary = res.summary()
    return {
        "checkpoint": label_of(path, kind),
        "model_id": ckpt.model_id,
        "run": {"seed": args.seed, "dataset": args.dataset},  # what the suite's settings do not record
        "method": str(manifest["method"]),
        "flag": flag.describe() if flag is not None else None,
        "suite": summary.get("settings", {}).get("suite", suite.name),
        "clean_accuracy": float(clean.mean()),
        "summary": {k: v for k, v in summary.items() if k != "per_attack"},
        "outcomes": {"clean": _bits(clean), **suite_outcomes(res)},
    }


def compare(results: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The first checkpoint against each of the others, on each measure."""
    first, rows = results[0], []
    for other in results[1:]:
        row: dict[str, Any] = {"a": first["checkpoint"], "b": other["checkpoint"]}
        for m in MEASURES:
            row[m] = compare_paired(_unbits(first["outcomes"][m]), _unbits(other["outcomes"][m]), seed=seed).to_dict()
        rows.append(row)
    return rows


def unflagged_error(r: dict[str, Any]) -> tuple[float, tuple[float, float], int, int] | None:
    """Share of the correctly classified (suite's judge) inputs that an attack turned into an unflagged
    error: (share, Wilson interval, errors, correctly classified)."""
    if r["outcomes"]["evaded"] is None:
        return None
    ok, evaded = _unbits(r["outcomes"]["suite_clean"]), _unbits(r["outcomes"]["evaded"])
    k, n = int((evaded & ok).sum()), int(ok.sum())
    return k / n, wilson_interval(k, n), k, n


def set_options(args: argparse.Namespace, *names: str) -> list[str]:
    """``--name value`` for each option in ``names`` that is set (not None, 0 or "auto"), for a command line."""
    values = ((name, getattr(args, name)) for name in names)
    return [f"--{name.replace('_', '-')} {v}" for name, v in values if v is not None and v != 0 and v != "auto"]


def command_line(paths: Sequence[Path], args: argparse.Namespace) -> str:
    """The command that gives these results (written into the results file and the page)."""
    parts = ["python -m reports.paired run", *map(str, paths), f"--suite {args.suite} --n {args.n}"]
    parts.append(f"--clean-n {args.clean_n} --samples {args.samples} --eps {args.eps} --flag-rate {args.flag_rate}")
    parts += set_options(args, "flag_signal")
    if args.steps:
        parts.append(f"--steps {args.steps} --eot {args.eot} --queries {args.queries}")
    return " ".join(parts + set_options(args, "dataset"))


def run(paths: Sequence[Path], args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        k: getattr(args, k) for k in ("suite", "n", "clean_n", "samples", "steps", "eot", "queries", "eps", "dataset")
    }
    settings.update(flag_rate=args.flag_rate, seed=args.seed)
    if args.flag_signal != "auto":
        settings["flag_signal"] = args.flag_signal
    args.cache.mkdir(parents=True, exist_ok=True)
    results = []
    for arg in paths:
        path, kind = split_kind(arg)
        ckpt_id = load_checkpoint(path, verify=False).model_id
        own = {**settings, "flag_signal": kind} if kind else settings
        key = json.dumps({"model_id": ckpt_id, **own}, sort_keys=True)
        cached = args.cache / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}-{label_of(path, kind)}.json"
        if cached.exists() and json.loads(cached.read_text()).get("model_id") == ckpt_id:
            log.info("%s: cached (%s)", label_of(path, kind), cached)
            results.append(json.loads(cached.read_text()))
            continue
        log.info("%s: evaluating", label_of(path, kind))
        r = evaluate_one(path, args, cached.with_suffix(""), kind)
        tmp = cached.with_suffix(".tmp")
        tmp.write_text(json.dumps(r))
        tmp.replace(cached)
        results.append(r)
    out = {
        "settings": settings,
        "command": command_line(paths, args),
        "checkpoints": results,
        "pairs": compare(results, args.seed),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(args.out)
    return out


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _share(k: int, n: int, count: bool = False) -> str:
    """``k / n`` in % with its Wilson 95% interval (and ``(k)`` with ``count``)."""
    lo, hi = wilson_interval(k, n)
    return f"{_pct(k / n)} [{_pct(lo)}, {_pct(hi)}]" + (f" ({k})" if count else "")


def _figures(r: dict[str, Any], count: bool) -> tuple[str, str, str]:
    """One checkpoint's robust, robust-or-flagged and unflagged-error cells, from its per-input outcomes."""
    rob, rof = _unbits(r["outcomes"]["robust"]), _unbits(r["outcomes"]["robust_or_flagged"])
    ue = unflagged_error(r)
    ue_txt = _share(ue[2], ue[3], count) if ue else "-"
    return _share(int(rob.sum()), rob.size), _share(int(rof.sum()), rof.size), ue_txt


def against_lines(results: dict[str, Any], other: dict[str, Any], other_source: str) -> list[str]:
    """Each checkpoint of ``results`` that ``other`` (a run of another suite, on at least as many inputs) also
    judged, counted on the same inputs (the first ``n``) under both: the share of the correctly classified turned
    into unflagged errors, and the robust inputs, with the inputs only one suite broke."""
    by_name = {r["checkpoint"]: r for r in other["checkpoints"]}
    n = results["settings"]["n"]
    if other["settings"]["n"] < n:
        return []
    lines = [
        f"The same first {n} inputs under `{other['checkpoints'][0]['suite']}` ({other_source}):",
        "",
        "| checkpoint | correct (this / other) | unflagged errors (this / other) | only this / only other "
        "| robust (this / other) |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results["checkpoints"]:
        o = by_name.get(r["checkpoint"])
        if o is None:
            continue
        a, b = ({m: _unbits(x["outcomes"][m])[:n] for m in ("suite_clean", "evaded", "robust")} for x in (r, o))
        ea, eb = a["evaded"] & a["suite_clean"], b["evaded"] & b["suite_clean"]
        lines.append(
            f"| {r['checkpoint']} | {int(a['suite_clean'].sum())} / {int(b['suite_clean'].sum())} | "
            f"{int(ea.sum())} / {int(eb.sum())} | {int((ea & ~eb).sum())} / {int((eb & ~ea).sum())} | "
            f"{int(a['robust'].sum())} / {int(b['robust'].sum())} |"
        )
    return [*lines, ""]


def render(
    results: dict[str, Any],
    source: str = str(RESULTS),
    against: dict[str, Any] | None = None,
    against_source: str = "",
) -> str:
    """The page for a results file (``source``: its path, named in the page's header); with ``against``, another
    suite's results on the same inputs (``against_lines``)."""
    st = results["settings"]
    command = "python -m reports.paired render" + ("" if source == str(RESULTS) else f" --results {source}")
    command += f" --against {against_source}" if against is not None else ""
    lines = [
        "# Paired comparison on the same inputs",
        "",
        f"<!-- generated by `{command}` from {source}; do not edit -->",
        "",
        f"Clean accuracy on the first {st['clean_n']} test images (T = {st['samples']}); suite `{st['suite']}`"
        + (f" reduced to {st['steps']} steps, EOT {st['eot']}, {st['queries']} queries" if st["steps"] else "")
        + f" at eps {st['eps']} on the first {st['n']}; flags calibrated per checkpoint on its held-out training "
        f"images so that at most {st['flag_rate']:.0%} of the correctly classified ones are flagged. Intervals: "
        "Wilson 95% for one model, paired bootstrap 95% for a difference; p: exact McNemar.",
        "",
    ]
    if results.get("command"):
        lines += [f"Command: `{results['command']}`", ""]
    if against is not None:
        lines += against_lines(results, against, against_source)
    lines += [
        "| checkpoint | flag | clean % | robust % | robust-or-flagged % | unflagged error % (of correct) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["checkpoints"]:
        flag = r["flag"]["rule"] if r["flag"] else "-"
        robust, rof, ue = _figures(r, count=True)
        lines.append(
            f"| {r['checkpoint']} ({r['method']}) | {flag} | {_pct(r['clean_accuracy'])} | {robust} | {rof} | {ue} |"
        )
    lines += ["", "| A - B | measure | n | difference (points) | paired 95% interval | A only | B only | McNemar p |"]
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for p in results["pairs"]:
        for m in MEASURES:
            c = p[m]
            lines.append(
                f"| {p['a']} - {p['b']} | {m} | {c['n']} | {100 * c['difference']:+.2f} | "
                f"[{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}] | {c['a_only']} | {c['b_only']} | {c['p_value']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def readme_block(results: dict[str, Any]) -> str:
    """The README's summary: per checkpoint the adaptive figures, and the first checkpoint against the second."""
    st = results["settings"]
    reduced = f", reduced to {st['steps']} steps, EOT {st['eot']}" if st["steps"] else ""
    lines = [
        f"`{st['suite']}` suite{reduced}, eps {st['eps']}, first {st['n']} test images; each flag calibrated "
        f"on held-out training images to flag at most {st['flag_rate']:.0%} of the correctly classified:",
        "",
        "| checkpoint | flag signal | clean % | robust % | robust-or-flagged % | unflagged error % of correct |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in results["checkpoints"]:
        signal = r["flag"]["signal"] if r["flag"] else "-"
        robust, rof, ue = _figures(r, count=False)
        lines.append(f"| {r['checkpoint']} | {signal} | {_pct(r['clean_accuracy'])} | {robust} | {rof} | {ue} |")
    p = results["pairs"][0]
    lines += ["", f"{p['a']} minus {p['b']}, paired on the same inputs:", ""]
    for m in MEASURES:
        c = p[m]
        lines.append(
            f"- {m}: {100 * c['difference']:+.2f} points [{100 * c['ci'][0]:+.2f}, {100 * c['ci'][1]:+.2f}] "
            f"(McNemar p = {c['p_value']:.2g}, n = {c['n']})"
        )
    lines += ["", "Every pair and the settings: [docs/paired.md](docs/paired.md)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.paired", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="evaluate the checkpoints on the same inputs and write the results file")
    r.add_argument(
        "checkpoints",
        type=Path,
        nargs="+",
        help="the first is compared with each of the others; PATH@KIND: under flag kind KIND (e.g. "
        "checkpoints/fashion_mnist_mfdv@max_prob)",
    )
    r.add_argument("--suite", default="adaptive")
    r.add_argument("--n", type=int, default=1000, help="attacked test inputs")
    r.add_argument("--clean-n", type=int, default=10000, help="test inputs for clean accuracy")
    r.add_argument("--samples", type=int, default=32)
    r.add_argument("--steps", type=int, default=0, help="reduce the suite to this many steps (0: the full suite)")
    r.add_argument("--eot", type=int, default=20)
    r.add_argument("--queries", type=int, default=1000)
    r.add_argument("--eps", type=float, default=0.1)
    r.add_argument("--flag-rate", type=float, default=0.05)
    r.add_argument(
        "--flag-signal",
        choices=["auto", *FLAG_KINDS],
        default="auto",
        help="auto: the checkpoint's served flag (training.flag.checkpoint_signal); mutual_information_or_max_prob: "
        "flagged when either signal fires, both thresholds calibrated together",
    )
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--batch", type=int, default=100, help="attacked inputs per cached batch")
    r.add_argument("--dataset", help="test data (default: each checkpoint's manifest dataset)")
    r.add_argument("--cache", type=Path, default=CACHE)
    r.add_argument("--out", type=Path, default=RESULTS)
    d = sub.add_parser("render", help="write the markdown page from the results file")
    d.add_argument("--results", type=Path, default=RESULTS)
    d.add_argument("--out", type=Path, default=PAGE)
    d.add_argument("--readme", type=Path, help="also rewrite this README's `paired` block (e.g. README.md)")
    d.add_argument("--against", type=Path, help="another suite's results on the same inputs, counted beside these")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cmd == "run":
        if len(args.checkpoints) < 2:
            p.error("name at least two checkpoints: the first is compared with each of the others")
        run(args.checkpoints, args)
        return 0
    results = json.loads(args.results.read_text())
    against = json.loads(args.against.read_text()) if args.against else None
    args.out.write_text(render(results, str(args.results), against, str(args.against or "")))
    if args.readme:
        write_readme_block(args.readme, results)
    return 0


def write_readme_block(readme: Path, results: dict[str, Any]) -> None:
    """Rewrite ``readme``'s ``paired`` block from ``results``."""
    replace_block(readme, "paired", "python -m reports.paired render --readme README.md", readme_block(results))


if __name__ == "__main__":
    sys.exit(main())
