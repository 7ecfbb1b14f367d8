"""``python -m reports render`` re-renders every generated page and README block from the results files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from reports.__main__ import render_pages

REPO = Path(__file__).resolve().parents[2]


def _copy_docs(tmp: Path) -> Path:
    docs = tmp / "docs"
    shutil.copytree(REPO / "docs" / "results", docs / "results")
    (docs / "figures").mkdir()
    return docs


def test_the_committed_pages_are_what_the_results_render(tmp_path: Path) -> None:
    docs = _copy_docs(tmp_path)
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    written = render_pages(docs, readme)
    assert {"paired.md", "curves.md", "ood.md", "README.md (headline)"} <= set(written)
    for page in written:
        if page.endswith(".md"):
            assert (docs / page).read_text() == (REPO / "docs" / page).read_text(), f"docs/{page} is stale"
    assert readme.read_text() == (REPO / "README.md").read_text(), "README.md is stale: run python -m reports render"
    assert (docs / "figures" / "curves.png").stat().st_size > 0


def test_a_changed_result_reaches_the_page_and_the_readme(tmp_path: Path) -> None:
    docs = _copy_docs(tmp_path)
    path = docs / "results" / "paired.json"
    results = json.loads(path.read_text())
    served = next(c for c in results["checkpoints"] if c["checkpoint"] == "fashion_mnist_mfdv")
    served["summary"]["unflagged_error_under_attack"], served["summary"]["unflagged_error_ci"] = 0.05, [0.04, 0.06]
    path.write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    render_pages(docs, readme)
    assert "5.0 [4.0, 6.0], met" in readme.read_text()
    assert readme.read_text() != (REPO / "README.md").read_text()


def test_a_missing_results_file_is_skipped(tmp_path: Path) -> None:
    docs = _copy_docs(tmp_path)
    (docs / "results" / "curves.json").unlink()
    assert "curves.md" not in render_pages(docs, None)
    assert not (docs / "curves.md").exists()
