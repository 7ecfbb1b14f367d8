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


def _with_ci(r: dict[str, Any]) -> str:
    lo, hi = r["robust_ci"]
    return f"{100 * r['robust_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _adv(m: dict[str, Any]) -> str:
    adv = m.get("adversarial_training")
    if not adv:
        return "-"
    return f"{adv['kind']} eps {adv['eps']:g}" + (f", EOT {adv['eot']}" if adv.get("eot", 1) > 1 else "")


def comparison_table(manifests: list[dict[str, Any]]) -> str:
    """Clean and robust accuracy (%) per checkpoint, with each suite's settings beneath."""
    keys: list[str] = []
    for m in manifests:
        for k in m["metrics"].get("robust", {}):
            if k not in keys:
                keys.append(k)
    head = ["checkpoint", "method", "adv. training", "clean", "noise-free", "sigma min/median/max", "noise/margin"]
    head += [f"{k} [95% CI]" for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in manifests:
        clean = m["metrics"].get("clean", {})
        robust = m["metrics"].get("robust", {})
        ntm = clean.get("noise_to_margin_median")
        sig = m["sigma"]
        row = [
            m["name"],
            m["method"],
            _adv(m),
            _pct(clean.get("accuracy")),
            _pct(clean.get("accuracy_noise_free")),
            f"{sig.get('min', sig['mean']):.3g} / {sig.get('median', sig['mean']):.3g} / {sig.get('max', sig['mean']):.3g}",
            "-" if ntm is None else f"{ntm:.3g}",
            *(_with_ci(robust[k]) if k in robust else "-" for k in keys),
        ]
        lines.append("| " + " | ".join(row) + " |")
    samples = sorted({str(m["metrics"].get("clean", {}).get("samples", "?")) for m in manifests})
    out = [
        f"Accuracy in %. Clean accuracy on the full test set: the prediction rule (argmax of the mean softmax) "
        f"over T={'/'.join(samples)} noise draws.",
        "",
        *lines,
        "",
        "Suite settings (L-inf, pixel space):",
        "",
    ]
    for k in keys:
        r = next(m["metrics"]["robust"][k] for m in manifests if k in m["metrics"].get("robust", {}))
        attacks = ", ".join(f"`{a['key']}`" for a in r.get("attacks", []))
        judge = (
            f"judged on {r['judge_samples']} fresh draws (mean-softmax label and majority vote must both be right)"
            if r.get("judge") == "strict"
            else f"judged on {r.get('judge_samples', 1)} noisy forward pass"
        )
        square = f"; Square on the first {r['square_n']} inputs only" if r.get("square_n") else ""
        out.append(f"- `{k}`: worst case per input over {attacks}; {judge}; n={r['n']} test inputs{square}")
    out.append("")
    out.append(
        "Reproduce: " + "; ".join(f"`{m['training']['command']}`" for m in manifests if m["training"].get("command"))
    )
    evals = [f"`{m['evaluation']['command']}`" for m in manifests if m.get("evaluation", {}).get("command")]
    if evals:
        out.append("")
        out.append("Evaluated with: " + "; ".join(evals))
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
