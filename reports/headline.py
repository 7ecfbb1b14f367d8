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

from models import load_checkpoint

from .readme import replace_block

COMMAND = "python -m reports.headline --readme README.md"
SERVED = Path("checkpoints/fashion_mnist_mfdv")
BASELINE = Path("checkpoints/fashion_mnist_vanilla")
PAIRED = Path("docs/results/paired.json")


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


def render(served: Path, baseline: Path, paired: dict[str, Any]) -> str:
    """The block: the table, the paired differences, the settings."""
    by_name = {c["checkpoint"]: c for c in paired["checkpoints"]}
    ms, mb = load_checkpoint(served, verify=False).manifest, load_checkpoint(baseline, verify=False).manifest
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
    for measure, d in pair.items():
        if isinstance(d, dict) and "difference" in d:
            lines.append(
                f"- {measure.replace('_', '-')}: {100 * d['difference']:+.1f} points [{100 * d['ci'][0]:+.1f}, "
                f"{100 * d['ci'][1]:+.1f}], p = {d['p_value']:.2g} (n {d['n']})"
            )
    lines += [
        "",
        f"Clean: all {ms['metrics']['clean']['n']} test images, T = {ms['metrics']['clean']['samples']}. `standard`: "
        f"the manifests' evaluation, worst case per input over {_attacks(ms)}. `adaptive`: "
        f"`python -m reports.paired`, eps {st['eps']}{reduced}, first {st['n']} test images; "
        f"each flag calibrated on held-out training images to flag at most {st['flag_rate']:.0%} of the correctly "
        "classified ones. Issue 16's goal for the served checkpoint, an unflagged error of at most 8%, is "
        f"{'met' if a['summary']['unflagged_error_under_attack'] <= 0.08 else 'not met'} "
        f"({100 * a['summary']['unflagged_error_under_attack']:.1f}%). Details: [docs/paired.md](docs/paired.md), "
        "[docs/curves.md](docs/curves.md) (past the training radius).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reports.headline", description=__doc__.split("\n\n")[0])
    ap.add_argument("--paired", type=Path, default=PAIRED, help="python -m reports.paired's results file")
    ap.add_argument("--served", type=Path, default=SERVED)
    ap.add_argument("--baseline", type=Path, default=BASELINE)
    ap.add_argument("--readme", type=Path, help="write the block into this README (else print it)")
    args = ap.parse_args(argv)
    body = render(args.served, args.baseline, json.loads(args.paired.read_text()))
    if args.readme is None:
        print(body)
    else:
        replace_block(args.readme, "headline", COMMAND, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
