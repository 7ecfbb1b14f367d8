"""``python -m reports.headline``: the README's first table comes from the results files, never typed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

from reports import headline
from reports.readme import markers

REPO = Path(__file__).resolve().parents[2]


def paired_results() -> dict:
    return json.loads((REPO / headline.PAIRED).read_text())


def optional(path: Path) -> dict | None:
    return json.loads((REPO / path).read_text()) if (REPO / path).is_file() else None


def test_the_readme_block_is_the_rendering_of_the_committed_results() -> None:
    extras = (optional(headline.SEED1), optional(headline.CURVES), optional(headline.OOD))
    body = headline.render(REPO / headline.SERVED, REPO / headline.BASELINE, paired_results(), *extras)
    begin, end = markers("headline", headline.COMMAND)
    text = (REPO / "README.md").read_text()
    assert text.index(begin) < text.index("| option | meaning |"), "the headline is the README's first table"
    block = text[text.index(begin) + len(begin) : text.index(end)].strip()
    assert block == body.strip(), "README is stale: run python -m reports.headline --readme README.md"


def test_every_figure_comes_from_the_results(tmp_path: Path) -> None:
    results = paired_results()
    served = next(c for c in results["checkpoints"] if c["checkpoint"] == "fashion_mnist_mfdv")
    s = served["summary"]
    body = headline.render(REPO / headline.SERVED, REPO / headline.BASELINE, results)
    lo, hi = s["robust_or_flagged_ci"]
    assert f"{100 * s['robust_or_flagged_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]" in body
    changed = copy.deepcopy(results)
    moved = next(c for c in changed["checkpoints"] if c["checkpoint"] == "fashion_mnist_mfdv")["summary"]
    moved["unflagged_error_under_attack"], moved["unflagged_error_ci"] = 0.05, [0.04, 0.06]
    other = headline.render(REPO / headline.SERVED, REPO / headline.BASELINE, changed)
    assert "| 5.0 [4.0, 6.0] |" in other and "<= 8% of correct: 5.0 [4.0, 6.0], met (by 3.0 points)" in other
    assert "<= 8% of correct: " in body
    readme = tmp_path / "README.md"
    begin, end = markers("headline", headline.COMMAND)
    readme.write_text(f"# x\n{begin}\nold\n{end}\n")
    out = tmp_path / "paired.json"
    out.write_text(json.dumps(changed))
    assert headline.main(["--paired", str(out), "--readme", str(readme)]) == 0
    assert "old" not in readme.read_text() and "5.0 [4.0, 6.0], met" in readme.read_text()


def test_each_goal_follows_its_results_file() -> None:
    """The goals list reads the curves and OOD results: a figure over its goal reads "met", under it "missed"."""
    ood, curves = optional(headline.OOD), optional(headline.CURVES)
    assert ood is not None and curves is not None
    served = next(c for c in ood["checkpoints"] if c["checkpoint"] == "fashion_mnist_mfdv")["sets"]["mnist"]
    key = "served_flag" if "served_flag" in served["auroc"] else "mutual_information"
    for auc, word in ((0.97, "met (by 0.020)"), (0.90, "**missed by 0.050**")):
        changed = copy.deepcopy(ood)
        mnist = next(c for c in changed["checkpoints"] if c["checkpoint"] == "fashion_mnist_mfdv")["sets"]["mnist"]
        mnist["auroc"][key], mnist["auroc_ci"][key] = auc, [auc - 0.01, auc + 0.01]
        body = headline.render(
            REPO / headline.SERVED, REPO / headline.BASELINE, paired_results(), None, curves, changed
        )
        assert f"AUROC of the served flag >= 0.95: {auc:.3f} [{auc - 0.01:.3f}, {auc + 0.01:.3f}], {word}" in body
    assert "robust-or-flagged at eps 0.2 >= 40% (curves, 500 inputs)" in body
