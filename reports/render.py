"""Render the robustness report (markdown + PNG figures) from a results file, and nothing else.

Every number and every comparison word ("ahead", "within its interval") in docs/robustness.md
is computed here from ``docs/results/robustness.json``; ``python -m reports render``
regenerates the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

COLORS = {"vanilla": "#4d4d4d", "fixed": "#1f77b4", "wca": "#2ca02c", "mfdv": "#d62728"}


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _ci(r: dict[str, Any], acc: str = "robust_accuracy", ci: str = "robust_ci") -> str:
    lo, hi = r[ci]
    return f"{100 * r[acc]:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _cells(results: dict[str, Any], kind: str, checkpoint: str | None = None) -> list[dict[str, Any]]:
    out = [c for c in results["cells"].values() if c["kind"] == kind]
    if checkpoint is not None:
        out = [c for c in out if c["checkpoint"] == checkpoint]
    return out


def _minutes(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.1f}"


def _adv_text(info: dict[str, Any]) -> str:
    adv = info.get("adversarial_training")
    if not adv:
        return "none"
    text = f"{adv['kind']} eps {adv['eps']:g}, alpha {adv['alpha']:.3g}, EOT {adv['eot']}, ramp {adv['ramp']:g} ep"
    if adv.get("rolled_back"):
        text += f", rolled back to epoch {adv['kept_epoch']}"
    return text


# -- figures ------------------------------------------------------------------------------------


def figure_eps(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, info in results["checkpoints"].items():
        cells = sorted(_cells(results, "eps", name), key=lambda c: c["params"]["eps"])
        if not cells:
            continue
        eps = [c["params"]["eps"] for c in cells]
        acc = [100 * c["result"]["robust_accuracy"] for c in cells]
        lo = [100 * (c["result"]["robust_accuracy"] - c["result"]["robust_ci"][0]) for c in cells]
        hi = [100 * (c["result"]["robust_ci"][1] - c["result"]["robust_accuracy"]) for c in cells]
        at = bool(info.get("adversarial_training"))
        ax.errorbar(
            eps,
            acc,
            yerr=[lo, hi],
            label=name,
            color=COLORS.get(info["method"]),
            linestyle="-" if at else "--",
            marker="o" if at else "x",
            markersize=3,
            capsize=2,
        )
    suite = results["curve_suite"]
    ax.set_xlabel("L-inf eps (pixel space)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(
        f"{suite['suite']}, n={results['plan']['curve_n']}, judged on {suite['judge_samples']} draws", fontsize=9
    )
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_curve(results: dict[str, Any], kind: str, key: str, path: Path, xlabel: str) -> None:
    default = results["plan"]["default"]
    cells = sorted(_cells(results, kind, default), key=lambda c: c["params"][key])
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    if cells:
        xs = [c["params"][key] for c in cells]
        acc = [100 * c["result"]["robust_accuracy"] for c in cells]
        lo = [100 * (c["result"]["robust_accuracy"] - c["result"]["robust_ci"][0]) for c in cells]
        hi = [100 * (c["result"]["robust_ci"][1] - c["result"]["robust_accuracy"]) for c in cells]
        ax.errorbar(xs, acc, yerr=[lo, hi], marker="o", capsize=3, color=COLORS["mfdv"])
        ax.set_xscale("log", base=2 if kind == "eot" else 10)
        ax.set_xticks(xs, [str(x) for x in xs])
        a = cells[0]["result"]["attack"]
        ax.set_title(f"{default}: APGD-CE, eps {a['eps']:g}, n={cells[0]['result']['n']}", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("robust accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_histograms(det: dict[str, Any], path: Path) -> None:
    names = ("mutual_information", "flip_probability")
    fig, axes = plt.subplots(1, len(names), figsize=(9, 3.4))
    for ax, name in zip(axes, names, strict=True):
        h = det["standard"]["histograms"][name]
        edges = h["edges"]
        width = edges[1] - edges[0]
        for label, color in (("clean", "#1f77b4"), ("adversarial", "#d62728")):
            counts = h[label]
            total = max(sum(counts), 1)
            ax.bar(
                edges[:-1], [c / total for c in counts], width=width, align="edge", alpha=0.55, color=color, label=label
            )
        auc = det["standard"]["auc"][name]
        ax.set_title(f"{name.replace('_', ' ')} (AUC {auc:.3f})" if auc is not None else name, fontsize=9)
        if name == "mutual_information":
            ax.axvline(det["standard"]["threshold"], color="k", linestyle=":", label="flag threshold")
        ax.set_ylabel("share of inputs")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def figure_sigma(results: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, info in results["checkpoints"].items():
        if info["method"] not in ("mfdv", "wca", "fixed"):
            continue
        sig = sorted(info["sigma_per_dim"])
        at = bool(info.get("adversarial_training"))
        ax.plot(range(len(sig)), sig, label=name, color=COLORS[info["method"]], linestyle="-" if at else "--")
    ax.set_xlabel("feature dimension (sorted by sigma)")
    ax.set_ylabel("sigma")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- markdown -----------------------------------------------------------------------------------


def _main_section(results: dict[str, Any]) -> list[str]:
    plan = results["plan"]
    infos = results["checkpoints"]
    key = results["main_key"]
    family, eps = key.rsplit("_eps", 1)
    pub_key = f"published_eps{eps}"
    lines = [f"## The served checkpoint against its baseline, eps = {eps}", ""]
    clean = infos[plan["default"]]["clean"]
    head = (
        f"| checkpoint | adversarial training | clean ({clean.get('n', '?')} test images, T={clean.get('samples', '?')}) "
        f"| `{family}` robust [95% CI] | n | `published` robust [95% CI] |"
    )
    lines += [head, "|---|---|---|---|---|---|"]
    for name in (plan["default"], plan["baseline"]):
        info = infos[name]
        std, pub = info["robust"].get(key), info["robust"].get(pub_key)
        lines.append(
            f"| {name} (`{info['path']}`) | {_adv_text(info)} | {_pct(info['clean'].get('accuracy'), 2)} | "
            f"{_ci(std) if std else '-'} | {std['n'] if std else '-'} | {_ci(pub) if pub else '-'} |"
        )
    d, b = infos[plan["default"]]["robust"].get(key), infos[plan["baseline"]]["robust"].get(key)
    lines.append("")
    if d and b:
        diff = 100 * (d["robust_accuracy"] - b["robust_accuracy"])
        overlap = d["robust_ci"][0] <= b["robust_ci"][1] and b["robust_ci"][0] <= d["robust_ci"][1]
        verdict = (
            f"{plan['default']} is {abs(diff):.1f} points {'above' if diff > 0 else 'below'} {plan['baseline']} "
            f"under `{family}`; the 95% intervals {'overlap' if overlap else 'do not overlap'}"
        )
        verdict += (
            ", so the noise is **not** shown to add robustness at this budget."
            if overlap or diff <= 0
            else ", so the noise adds robustness at this budget."
        )
        lines += [verdict, ""]
        pd = infos[plan["default"]]["robust"].get(pub_key)
        if pd:
            lines += [
                f"The papers' protocol (`published`) reports {_pct(pd['robust_accuracy'])}% for {plan['default']}, "
                f"{100 * (pd['robust_accuracy'] - d['robust_accuracy']):.1f} points above `{family}` on the same "
                "model: that is how much judging on one noisy pass with weak PGD inflates the figure.",
                "",
            ]
        std = d
        attacks = ", ".join(f"`{a['key']}`" for a in std["attacks"])
        lines += [
            f"`{std['suite']}`: per input, the worst case over {attacks}; an input counts as robust only if every attack "
            f"fails; each judgement uses {std['judge_samples']} fresh noise draws, and both the prediction rule "
            "(argmax of the mean softmax, what the service returns) and the majority vote must give the true "
            f"label. First {std['n']} test images, seed 0. Wilson 95% intervals."
            + (f" Square ran on the first {std['square_n']} inputs only." if std.get("square_n") else ""),
            "",
            "Per attack (inputs still standing when it ran / inputs it broke):",
            "",
            "| attack | " + " | ".join(infos[n]["name"] for n in (plan["default"], plan["baseline"])) + " |",
            "|---|---|---|",
        ]
        per = {n: infos[n]["robust"][key]["per_attack"] for n in (plan["default"], plan["baseline"])}
        for i, a in enumerate(std["per_attack"]):
            row = [f"`{a['key']}`"] + [f"{per[n][i]['evaluated']} / {per[n][i]['fooled']}" for n in per]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def _methods_section(results: dict[str, Any]) -> list[str]:
    infos = results["checkpoints"]
    suite = results["curve_suite"]
    eps_values = sorted({c["params"]["eps"] for c in _cells(results, "eps")})
    lines = [
        "## Every head, with and without adversarial training",
        "",
        "![robust accuracy vs eps](figures/robust_vs_eps.png)",
        "",
        f"Robust accuracy (%) under `{suite['suite']}`: per input the worst case over "
        + ", ".join(f"`{a['key'].rsplit('_eps', 1)[0]}`" for a in suite["attacks"])
        + f" (no Square), judged on {suite['judge_samples']} fresh draws with both rules; first "
        f"{results['plan']['curve_n']} test images. Dashed: no adversarial training.",
        "",
        "| checkpoint | clean | sigma min / median / max | " + " | ".join(f"eps {e:g}" for e in eps_values) + " |",
        "|---|---|---|" + "---|" * len(eps_values),
    ]
    for name, info in infos.items():
        by_eps = {c["params"]["eps"]: c["result"] for c in _cells(results, "eps", name)}
        sig = info["sigma"]
        sigma = f"{sig.get('min', 0):.3g} / {sig.get('median', 0):.3g} / {sig.get('max', 0):.3g}"
        row = [name, _pct(info["clean"].get("accuracy"), 2), sigma]
        row += [_pct(by_eps[e]["robust_accuracy"]) if e in by_eps else "-" for e in eps_values]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    at10 = {n: {c["params"]["eps"]: c["result"] for c in _cells(results, "eps", n)}.get(0.1) for n in infos}
    ranked = sorted(((r["robust_accuracy"], n) for n, r in at10.items() if r), reverse=True)
    if ranked:
        best, name = ranked[0]
        ties = [n for acc, n in ranked[1:] if at10[n]["robust_ci"][1] >= at10[name]["robust_ci"][0]]
        lines += [
            f"At eps 0.1 the most robust is {name} ({_pct(best)}%)"
            + (
                f"; within its interval: {', '.join(ties)}."
                if ties
                else "; no other checkpoint is within its interval."
            )
            + "",
            "",
        ]
    return lines


def _sigma_section(results: dict[str, Any]) -> list[str]:
    infos = results["checkpoints"]
    lines = [
        "## Is the learned variance learned?",
        "",
        "![sigma per dimension](figures/sigma_per_dim.png)",
        "",
        "| checkpoint | lambda | cap | dims at the cap | sigma min / median / max | clean noise-to-margin (median) |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in infos.items():
        if info["method"] == "vanilla":
            continue
        cap = _sigma_cap(info)
        per = info["sigma_per_dim"]
        at_cap = sum(1 for s in per if cap is not None and s >= cap - 1e-3) if info["method"] == "mfdv" else None
        sig = info["sigma"]
        ntm = info["clean"].get("noise_to_margin_median")
        lines.append(
            f"| {name} | {info.get('lambda') if info.get('lambda') is not None else '-'} | "
            f"{cap if cap is not None else '-'} | {'-' if at_cap is None else f'{at_cap} of {len(per)}'} | "
            f"{sig.get('min', 0):.3g} / {sig.get('median', 0):.3g} / {sig.get('max', 0):.3g} | "
            f"{'-' if ntm is None else f'{ntm:.3g}'} |"
        )
    lines.append("")
    for name, info in infos.items():
        cap = _sigma_cap(info)
        if info["method"] != "mfdv" or cap is None or "weight_norm_per_dim" not in info:
            continue
        sig, wn = info["sigma_per_dim"], info["weight_norm_per_dim"]
        below = [i for i, v in enumerate(sig) if v < cap - 1e-3]
        if not below or len(below) == len(sig):
            continue
        share = sum(wn[i] ** 2 for i in below) / max(sum(w**2 for w in wn), 1e-12)
        mean_below = sum(wn[i] for i in below) / len(below)
        mean_at = sum(wn[i] for i in range(len(sig)) if i not in below) / (len(sig) - len(below))
        lines += [
            f"{name}: {len(below)} of {len(sig)} dimensions stayed under the cap; the classifier's weight columns "
            f"there average {mean_below:.3g} in norm against {mean_at:.3g} at the cap, and hold {100 * share:.0f}% "
            "of the squared weight norm: the network reads its evidence where the noise is lowest.",
            "",
        ]
    lines += _trained_isotropic_lines(results)
    ablated = sorted({c["checkpoint"] for c in _cells(results, "sigma_ablation")})
    for name in ablated:
        cells = {c["params"]["variant"]: c for c in _cells(results, "sigma_ablation", name)}
        order = [v for v in ("learned", "isotropic_mean", "isotropic_rms", "shuffled", "off") if v in cells]
        if not order:
            continue
        some = cells[order[0]]
        lines += [
            f"Does the learned profile matter for {name}? Its per-dimension sigma swapped at test time (no retraining); "
            f"`{some['result']['suite']}` at eps {some['params']['eps']:g}, first {some['params']['n']} test images; "
            "clean accuracy on the full test set (T=32).",
            "",
            "| sigma at test time | mean sigma | clean | robust [95% CI] |",
            "|---|---|---|---|",
        ]
        for v in order:
            r = cells[v]["result"]
            mean_sigma = sum(r["sigma"]) / len(r["sigma"])
            lines.append(f"| {v} | {mean_sigma:.3g} | {_pct(r['clean_full']['accuracy'], 2)} | {_ci(r)} |")
        learned = cells.get("learned")
        iso = cells.get("isotropic_mean")
        if learned and iso:
            a, b = learned["result"], iso["result"]
            overlap = a["robust_ci"][0] <= b["robust_ci"][1] and b["robust_ci"][0] <= a["robust_ci"][1]
            diff = 100 * (a["robust_accuracy"] - b["robust_accuracy"])
            lines += [
                "",
                f"Learned profile against the same mean sigma in every dimension: {diff:+.1f} points robust "
                f"({'within' if overlap else 'outside'} the intervals), "
                f"{100 * (a['clean_full']['accuracy'] - b['clean_full']['accuracy']):+.2f} points clean.",
            ]
        lines.append("")
    return lines


def _trained_isotropic_lines(results: dict[str, Any]) -> list[str]:
    """mfdv against a ``fixed`` head trained with the same recipe (adversarial training or not):
    the learned profile against isotropic noise of about its mean level, at the main eps of the curves."""
    infos = results["checkpoints"]
    eps_cells = _cells(results, "eps")
    eps = max((c["params"]["eps"] for c in eps_cells), default=None, key=lambda e: (e <= 0.1 + 1e-9, e))
    if eps is None:
        return []

    def at_eps(name: str) -> dict[str, Any] | None:
        return next((c["result"] for c in eps_cells if c["checkpoint"] == name and c["params"]["eps"] == eps), None)

    lines: list[str] = []
    for name, info in infos.items():
        if info["method"] != "mfdv":
            continue
        adv = bool(info.get("adversarial_training"))
        twins = [n for n, i in infos.items() if i["method"] == "fixed" and bool(i.get("adversarial_training")) == adv]
        a = at_eps(name)
        for twin in twins:
            b = at_eps(twin)
            if a is None or b is None:
                continue
            overlap = a["robust_ci"][0] <= b["robust_ci"][1] and b["robust_ci"][0] <= a["robust_ci"][1]
            lines += [
                f"{name} (learned sigma, mean {infos[name]['sigma'].get('mean', 0):.3g}) against {twin} "
                f"(trained with isotropic sigma {infos[twin]['sigma'].get('mean', 0):.3g}, same recipe otherwise), "
                f"eps {eps:g}, first {a['n']} test images: robust {_ci(a)} vs {_ci(b)} "
                f"({'within' if overlap else 'outside'} the intervals); clean "
                f"{_pct(infos[name]['clean']['accuracy'], 2)} vs {_pct(infos[twin]['clean']['accuracy'], 2)}.",
                "",
            ]
    return lines


def _plateau_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Do the attacks converge? (EOT draws and steps)", ""]
    for kind, key, fig, label in (
        ("eot", "eot", "robust_vs_eot.png", "EOT draws per gradient"),
        ("steps", "steps", "robust_vs_steps.png", "APGD steps"),
    ):
        cells = sorted(_cells(results, kind, results["plan"]["default"]), key=lambda c: c["params"][key])
        if not cells:
            continue
        a = cells[0]["result"]["attack"]
        fixed = f"{a['steps']} steps" if kind == "eot" else f"EOT {a['eot']}"
        lines += [
            f"![robust accuracy vs {label}](figures/{fig})",
            "",
            f"APGD-CE at eps {a['eps']:g} ({fixed}) on {results['plan']['default']}, first {cells[0]['result']['n']} "
            "test images, judged like `standard`.",
            "",
            f"| {label} | " + " | ".join(str(c["params"][key]) for c in cells) + " |",
            "|---|" + "---|" * len(cells),
            "| robust % [95% CI] | " + " | ".join(_ci(c["result"]) for c in cells) + " |",
            "",
        ]
        first, last = cells[0]["result"], cells[-1]["result"]
        drop = 100 * (first["robust_accuracy"] - last["robust_accuracy"])
        half = len(cells) // 2
        tail = [c["result"]["robust_accuracy"] for c in cells[half:]]
        lines += [
            f"From {cells[0]['params'][key]} to {cells[-1]['params'][key]} the robust accuracy falls by {drop:.1f} "
            f"points; over the upper half of the grid it moves within {100 * (max(tail) - min(tail)):.1f} points.",
            "",
        ]
    return lines


def _detection_section(results: dict[str, Any]) -> list[str]:
    cells = _cells(results, "detection", results["plan"]["default"])
    if not cells:
        return []
    lines = ["## What `flagged` catches", ""]
    for cell in sorted(cells, key=lambda c: c["params"]["eps"]):
        r = cell["result"]
        std, evade = r["standard"], r["detector_aware"]
        suite = r["suite"]["suite"]
        lines += [
            f"### eps {cell['params']['eps']:g} ({results['plan']['default']}, first {cell['params']['n']} test images)",
            "",
            "![clean vs adversarial](figures/detection_hist.png)",
            "",
            f"Negatives: the {std['n_clean']} clean inputs classified right. Positives: those that "
            f"`{suite}` broke ({std['n_adversarial']}); then those the detector-aware attack "
            f"(`{evade['attack']['key']}`: maximise the loss while keeping the mutual information under "
            f"{evade['attack']['margin']:g} x the threshold) broke ({evade['n_adversarial']}).",
            "",
            f"| signal | AUC, `{suite}` adversarial | AUC, detector-aware |",
            "|---|---|---|",
        ]
        for name in std["auc"]:
            a, b = std["auc"][name], evade["auc"][name]
            lines.append(
                f"| {name.replace('_', ' ')} | {'-' if a is None else f'{a:.3f}'} | {'-' if b is None else f'{b:.3f}'} |"
            )
        lines += [
            "",
            f"`flagged` (mutual information > {std['threshold']:.4g}, the checkpoint's threshold when these cells were "
            "computed; the served rule today: [service.md](service.md#what-flagged-does-and-does-not-detect)) "
            f"marks {_pct(std['flagged_clean'])}% of clean inputs, {_pct(std['flagged_adversarial'])}% of "
            f"`{suite}`'s successful adversarial inputs, and {_pct(evade['flagged_adversarial'])}% of the "
            f"detector-aware attack's successes (that attack broke {_pct(evade['success_rate'])}% of the inputs "
            "classified right).",
            "",
        ]
    return lines


def _sigma_cap(info: dict[str, Any]) -> float | None:
    """The mfdv head's sigma cap: under ``model.head`` (manifest format 2) or ``model`` (format 1)."""
    model = info.get("model") or {}
    head = model.get("head") or {}
    return head["sigma_max"] if "sigma_max" in head else model.get("sigma_max") if info["method"] == "mfdv" else None


def _costs_section(results: dict[str, Any]) -> list[str]:
    infos = results["checkpoints"]
    lines = [
        "## What it cost",
        "",
        "| checkpoint | training (min) | epochs | adversarial epoch / clean epoch | adversarial training |",
        "|---|---|---|---|---|",
    ]
    for name, info in infos.items():
        adv = info.get("adversarial_training") or {}
        lines.append(
            f"| {name} | {_minutes(info.get('train_seconds'))} | {len(info.get('train_epochs') or []) or '-'} | "
            f"{adv.get('epoch_time_vs_clean') or '-'} | {_adv_text(info)} |"
        )
    by_kind: dict[str, float] = {}
    for c in results["cells"].values():
        by_kind[c["kind"]] = by_kind.get(c["kind"], 0.0) + c["cpu_seconds"]
    lines += [
        "",
        "Report cells, CPU time: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in sorted(by_kind.items()))
        + f"; total {results['cpu_seconds'] / 60:.1f} CPU-minutes (torch {results['torch']}).",
        "",
        "Commands (every checkpoint; `python -m reports run` trains the missing ones):",
        "",
        "<!-- not run: training and evaluation runs, too long for CI -->",  # tests/integration/test_docs_examples.py
        "```bash",
    ]
    for _name, cmd in results["commands"].items():
        lines.append(cmd["train"])
        if cmd["evaluate"]:
            lines.append(cmd["evaluate"])
    lines += ["```", ""]
    return lines


README_BEGIN = "<!-- report:begin (generated by python -m reports render; do not edit) -->"
README_END = "<!-- report:end -->"


def readme_block(results: dict[str, Any], docs_prefix: str = "docs/") -> str:
    """The headline for the README: the served checkpoint against its baseline, and the eps curve."""
    lines = _main_section(results)[2:]  # the table and the verdict, without the section heading
    cut = next((i for i, line in enumerate(lines) if line.startswith("Per attack")), len(lines))
    lines = lines[:cut]
    lines += [
        f"![robust accuracy vs eps for every head, with and without adversarial training]"
        f"({docs_prefix}figures/robust_vs_eps.png)",
        "",
        f"Every figure, with its settings and the commands that produced it: [{docs_prefix}robustness.md]"
        f"({docs_prefix}robustness.md).",
    ]
    return "\n".join(lines).rstrip()


def update_readme(readme: Path, results: dict[str, Any]) -> bool:
    """Replace the README's generated block (between ``README_BEGIN`` and ``README_END``); False if it has none."""
    text = readme.read_text()
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[: start + len(README_BEGIN)] + "\n" + readme_block(results) + "\n" + text[end:]
    readme.write_text(new)
    return True


def render(results: dict[str, Any], docs: Path, results_path: Path | None = None, readme: Path | None = None) -> Path:
    """Write ``docs/robustness.md`` and ``docs/figures/*.png`` from ``results``; returns the page's path."""
    figures = docs / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    figure_eps(results, figures / "robust_vs_eps.png")
    figure_curve(results, "eot", "eot", figures / "robust_vs_eot.png", "EOT draws per gradient")
    figure_curve(results, "steps", "steps", figures / "robust_vs_steps.png", "APGD steps")
    figure_sigma(results, figures / "sigma_per_dim.png")
    det = _cells(results, "detection", results["plan"]["default"])
    if det:
        figure_histograms(det[0]["result"], figures / "detection_hist.png")
    source = results_path.as_posix() if results_path is not None else "docs/results/robustness.json"
    lines = [
        "# Robustness report",
        "",
        f"Generated by `python -m reports render` from `{source}` (computed by "
        f"`python -m reports run --plan {results['plan']['name']}`); do not edit by hand. "
        "Accuracy in %; attacks are L-inf in pixel space; every stochastic prediction is judged with fresh noise draws.",
        "",
    ]
    if results.get("missing"):
        lines += [f"**Incomplete**: {len(results['missing'])} cells not computed yet.", ""]
    lines += _main_section(results)
    lines += _methods_section(results)
    lines += _sigma_section(results)
    lines += _plateau_section(results)
    lines += _detection_section(results)
    lines += _costs_section(results)
    page = docs / "robustness.md"
    page.write_text("\n".join(lines).rstrip() + "\n")
    if readme is not None and not update_readme(readme, results):
        raise ValueError(f"{readme} has no generated block ({README_BEGIN} ... {README_END})")
    return page


__all__ = ["render"]
