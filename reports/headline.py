"""The README's first table: the served checkpoint against vanilla+AT, the figures issue 16 asks for side by side.

    python -m reports.headline --readme README.md

For the served checkpoint and the deterministic baseline: clean accuracy (each manifest's, all test
images), `standard` robust accuracy (each manifest's evaluation), and from ``python -m
reports.paired``'s results file the `adaptive` figures (robust-or-flagged accuracy and the
unflagged error under attack, with the settings they were measured with), the share of correctly
classified clean test inputs the flag marks, and the paired differences. Every number comes from
those files; nothing is computed here but the formatting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.checkpoint import read_manifest

from . import curves as curve_report
from .readme import replace_block

COMMAND = "python -m reports.headline --readme README.md"
SERVED = Path("checkpoints/fashion_mnist_mfdv")
BASELINE = Path("checkpoints/fashion_mnist_vanilla")
PAIRED = Path("docs/results/paired.json")
SEED1 = Path("docs/results/paired-seed1.json")
CURVES = Path("docs/results/curves.json")
OOD = Path("docs/results/ood.json")
GOALS = {"unflagged_error": 0.08, "clean_flagged": 0.05, "clean": 0.87, "robust_margin": 0.01, "ood_auroc": 0.95}
"""Issue 16's acceptance for the served checkpoint (the eps 0.2 goal is the curves results' own ``verdict``)."""


def _ci(v: float, ci: list[float]) -> str:
    return f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _row(label: str, manifest: dict[str, Any], entry: dict[str, Any]) -> str:
    clean = manifest["metrics"]["clean"]
    std = manifest["metrics"]["robust"].get("standard_eps0.1")
    s = entry["summary"]
    standard = f"{_ci(std['robust_accuracy'], std['robust_ci'])} (n {std['n']})" if std else "-"
    signal = entry["flag"]["signal"]
    return (
        f"| {label} | {100 * clean['accuracy']:.1f} | {standard} | {signal} | "
        f"{_ci(s['robust_or_flagged_accuracy'], s['robust_or_flagged_ci'])} | "
        f"{_ci(s['unflagged_error_under_attack'], s['unflagged_error_ci'])} | "
        f"{_ci(s['clean_flagged_rate'], s['clean_flagged_ci'])} |"
    )


def _attacks(manifest: dict[str, Any]) -> str:
    std = manifest["metrics"]["robust"].get("standard_eps0.1") or {}
    return ", ".join(f"`{a['key']}`" for a in std.get("attacks", [])) or "its attacks"


def _pair_lines(pair: dict[str, Any]) -> list[str]:
    return [
        f"- {measure.replace('_', '-')}: {100 * d['difference']:+.1f} points [{100 * d['ci'][0]:+.1f}, "
        f"{100 * d['ci'][1]:+.1f}], p = {d['p_value']:.2g} (n {d['n']})"
        for measure, d in pair.items()
        if isinstance(d, dict) and "difference" in d
    ]


def _met(ok: bool, by: float) -> str:
    return f"met (by {100 * by:.1f} points)" if ok else f"**missed by {100 * by:.1f} points**"


def goal_lines(
    name: str,
    clean: float,
    entry: dict[str, Any],
    pair: dict[str, Any],
    curves: dict[str, Any] | None,
    ood: dict[str, Any] | None,
) -> list[str]:
    """Each of issue 16's goals for the served checkpoint against its measured figure, from the results files."""
    s = entry["summary"]
    ue, ue_ci = s["unflagged_error_under_attack"], s["unflagged_error_ci"]
    fl, fl_ci = s["clean_flagged_rate"], s["clean_flagged_ci"]
    rob = pair["robust"]
    lines = [
        f"- unflagged error under `adaptive` <= {GOALS['unflagged_error']:.0%} of correct: {_ci(ue, ue_ci)}, "
        + _met(ue <= GOALS["unflagged_error"], abs(ue - GOALS["unflagged_error"])),
        _clean_flag_line(entry, fl, fl_ci),
        f"- clean accuracy >= {GOALS['clean']:.0%}: {100 * clean:.1f}, "
        + _met(clean >= GOALS["clean"], abs(clean - GOALS["clean"])),
    ]
    lo, margin = rob["ci"][0], GOALS["robust_margin"]
    shown = "the whole interval is above it" if lo >= -margin else f"the interval reaches {100 * lo:+.1f}"
    lines.append(
        f"- robust no lower than vanilla+AT's minus {100 * margin:.0f} point (paired, the `adaptive` suite's "
        f"attacks, `standard`'s among them): {100 * rob['difference']:+.1f} [{100 * rob['ci'][0]:+.1f}, "
        f"{100 * rob['ci'][1]:+.1f}], " + ("met" if lo >= -margin else "**not met**") + f" ({shown})"
    )
    if curves is not None:
        v = curves["verdict"]
        ck = next((c for c in curves["checkpoints"] if c["checkpoint"] == name), None)
        cell = next((c for c in ck["cells"] if c["eps"] == v["eps"] and c.get("attacked")), None) if ck else None
        if cell is not None:
            share, lo_, hi_, _, n = curve_report._rate(cell, "robust_or_flagged")
            lines.append(
                f"- robust-or-flagged at eps {v['eps']:g} >= {v['goal']:.0%} (curves, {n} inputs): "
                f"{_ci(share, [lo_, hi_])}, " + _met(share >= v["goal"], abs(share - v["goal"]))
            )
    if ood is not None:
        ck = next((c for c in ood["checkpoints"] if c["checkpoint"] == name), None)
        mnist = ck["sets"].get("mnist") if ck else None
        if mnist is not None:
            key = "served_flag" if "served_flag" in mnist["auroc"] else ck["flag_signal"]
            auc, ci = mnist["auroc"][key], mnist["auroc_ci"][key]
            lines.append(
                f"- MNIST digits (out of distribution) AUROC of the served flag >= {GOALS['ood_auroc']}: {auc:.3f} "
                f"[{ci[0]:.3f}, {ci[1]:.3f}], "
                + (
                    f"met (by {auc - GOALS['ood_auroc']:.3f})"
                    if auc >= GOALS["ood_auroc"]
                    else f"**missed by {GOALS['ood_auroc'] - auc:.3f}**"
                )
            )
    return lines


def _clean_flag_line(entry: dict[str, Any], fl: float, fl_ci: list[float]) -> str:
    """The clean flag rate goal: met by construction on the held-out images the rule was calibrated on (its
    ``flag.calibration``), and the rate on the attacked test inputs with its interval beside it."""
    goal = GOALS["clean_flagged"]
    cal = (entry.get("flag") or {}).get("calibration") or {}
    test = f"on the attacked test inputs {_ci(fl, fl_ci)}"
    if fl_ci[0] <= goal <= fl_ci[1]:
        test += f" (the interval contains {goal:.0%})"
    if "flagged_correct" not in cal:
        return f"- clean inputs flagged <= {goal:.0%} of correct: {test}, " + _met(fl <= goal, abs(fl - goal))
    held = cal["flagged_correct"]
    verdict = "met" if held <= goal else "**missed**"
    return (
        f"- clean inputs flagged <= {goal:.0%} of correct: {100 * held:.2f} on the {cal['n_correct']} correctly "
        f"classified held-out images it was calibrated on ({verdict}), {test}"
    )


def render(
    served: Path,
    baseline: Path,
    paired: dict[str, Any],
    seed1: dict[str, Any] | None = None,
    curves: dict[str, Any] | None = None,
    ood: dict[str, Any] | None = None,
) -> str:
    """The block: the table, the paired differences, the goals, the second seed, the settings."""
    by_name = {c["checkpoint"]: c for c in paired["checkpoints"]}
    (ms, _), (mb, _) = read_manifest(served, verify=False), read_manifest(baseline, verify=False)
    a, b = by_name[ms["name"]], by_name[mb["name"]]
    pair = next(p for p in paired["pairs"] if (p["a"], p["b"]) == (ms["name"], mb["name"]))
    st = paired["settings"]
    reduced = f", reduced to {st['steps']} steps, EOT {st['eot']}" if st.get("steps") else ""
    lines = [
        "| checkpoint | clean % | `standard` robust % [95% CI] | flag signal | `adaptive` robust-or-flagged % | "
        "`adaptive` unflagged error % of correct | clean inputs flagged % of correct |",
        "|---|---:|---:|---|---:|---:|---:|",
        _row(f"{ms['name']} (served, mfdv+AT)", ms, a),
        _row(f"{mb['name']} (vanilla+AT)", mb, b),
        "",
        f"{ms['name']} minus {mb['name']}, paired on the same inputs (difference [95% CI], McNemar p):",
        "",
    ]
    lines += _pair_lines(pair)
    lines += ["", f"Issue 16's goals for {ms['name']}:", ""]
    lines += goal_lines(ms["name"], ms["metrics"]["clean"]["accuracy"], a, pair, curves, ood)
    if seed1 is not None and seed1.get("pairs"):
        p1 = seed1["pairs"][0]
        e = {c["checkpoint"]: c for c in seed1["checkpoints"]}
        ua, ub = (e[p1[k]]["summary"] for k in ("a", "b"))
        lines += [
            "",
            f"The same two recipes trained again with `--seed 1`: {p1['a']} minus {p1['b']}, same settings "
            f"(unflagged error {_ci(ua['unflagged_error_under_attack'], ua['unflagged_error_ci'])} vs "
            f"{_ci(ub['unflagged_error_under_attack'], ub['unflagged_error_ci'])}):",
            "",
            *_pair_lines(p1),
        ]
    lines += [
        "",
        f"Clean: all {ms['metrics']['clean']['n']} test images, T = {ms['metrics']['clean']['samples']}. `standard`: "
        f"the manifests' evaluation, worst case per input over {_attacks(ms)}. `adaptive`: "
        f"`python -m reports.paired`, eps {st['eps']}{reduced}, first {st['n']} test images; "
        f"each flag calibrated on held-out training images to flag at most {st['flag_rate']:.0%} of the correctly "
        "classified ones. Details: [docs/paired.md](docs/paired.md), "
        "[docs/paired-flags.md](docs/paired-flags.md) (the served checkpoint under each flag rule), "
        "[docs/paired-seed1.md](docs/paired-seed1.md), [docs/curves.md](docs/curves.md) (past the training "
        "radius), [docs/ood.md](docs/ood.md).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.headline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--paired", type=Path, default=PAIRED, help="python -m reports.paired's results file")
    ap.add_argument("--served", type=Path, default=SERVED)
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--seed1", type=Path, default=SEED1, help="the second seeds' paired results (skipped if missing)")
    ap.add_argument("--curves", type=Path, default=CURVES, help="python -m reports.curves's results (optional)")
    ap.add_argument("--ood", type=Path, default=OOD, help="python -m reports.ood's results (optional)")
    ap.add_argument("--readme", type=Path, help="write the block into this README (else print it)")
    args = ap.parse_args(argv)

    def optional(path: Path) -> dict[str, Any] | None:
        return json.loads(path.read_text()) if path.is_file() else None

    body = render(
        args.served,
        args.baseline,
        json.loads(args.paired.read_text()),
        optional(args.seed1),
        optional(args.curves),
        optional(args.ood),
    )
    if args.readme is None:
        print(body)
    else:
        replace_block(args.readme, "headline", COMMAND, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
