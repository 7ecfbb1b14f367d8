"""A markdown table comparing checkpoints from their manifests (no re-evaluation).

python -m training.compare checkpoints/fashion_mnist_mfdv checkpoints/fashion_mnist_vanilla > docs/comparison.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from models import read_manifest


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def comparison_table(manifests: list[dict[str, Any]]) -> str:
    """Clean and robust accuracy (%) per checkpoint, with the attack settings beneath."""
    keys: list[str] = []
    for m in manifests:
        for k in m["metrics"].get("robust", {}):
            if k not in keys:
                keys.append(k)
    head = ["checkpoint", "method", "clean (T=32)", "noise-free", "sigma mean", "noise/margin", *keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in manifests:
        clean = m["metrics"].get("clean", {})
        robust = m["metrics"].get("robust", {})
        ntm = clean.get("noise_to_margin_median")
        row = [
            m["name"],
            m["method"],
            _pct(clean.get("accuracy")),
            _pct(clean.get("accuracy_noise_free")),
            f"{m['sigma']['mean']:.3g}",
            "-" if ntm is None else f"{ntm:.3g}",
            *(_pct(robust[k]["accuracy"]) if k in robust else "-" for k in keys),
        ]
        lines.append("| " + " | ".join(row) + " |")
    out = ["Accuracy in %. Clean accuracy on the full test set: mean softmax over T noise draws.", "", *lines, ""]
    out.append("Attack settings (L-inf, pixel space; every prediction judged with the mean softmax over fresh draws):")
    out.append("")
    for k in keys:
        r = next(m["metrics"]["robust"][k] for m in manifests if k in m["metrics"].get("robust", {}))
        a = r["attack"]
        settings = ", ".join(f"{n}={v}" for n, v in a.items() if n != "name")
        out.append(
            f"- `{k}`: {a['name']} ({settings}); n={r['n']} test inputs, judged with {r['judged_with_samples']} "
            f"draws, seed {r['seed']}"
        )
    out.append("")
    out.append(
        "Reproduce: " + "; ".join(f"`{m['training']['command']}`" for m in manifests if m["training"].get("command"))
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m training.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("checkpoints", nargs="+", type=Path)
    args = p.parse_args(argv)
    manifests = [read_manifest(c)[0] for c in args.checkpoints]
    sys.stdout.write(comparison_table(manifests))


if __name__ == "__main__":
    main()
