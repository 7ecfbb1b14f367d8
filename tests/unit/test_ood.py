"""``python -m reports.ood``: out-of-distribution AUROCs per signal, and the page rendered from the results file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reports import ood


def test_the_ood_sets_are_what_they_say() -> None:
    x = torch.rand(6, 1, 14, 14)
    sets = ood.ood_sets(x, 4)
    assert torch.equal(sets["inverted"], 1 - x[:4])
    assert torch.equal(sets["rotated"][:, :, 0, :], x[:4, :, :, -1])  # row 0 of the rotation = the last column
    assert sets["uniform_noise"].shape == (4, 1, 14, 14)
    assert "mnist" not in sets  # 28x28 digits do not fit a 14x14 model: left out, not resized


def test_a_noise_free_model_gets_no_signal_from_mutual_information(
    hand_vanilla_checkpoint: Path, hand_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ood.json"
    results = ood.run([hand_vanilla_checkpoint, hand_checkpoint], n=50, samples=8, out=out, dataset="bars")
    vanilla, mfdv = results["checkpoints"]
    for name, s in vanilla["sets"].items():
        assert s["auroc"]["mutual_information"] == 0.5, name  # MI is 0 everywhere: every pair ties
        assert s["flagged"] == 0.0
    assert set(mfdv["sets"]) == {"uniform_noise", "inverted", "rotated"}
    for s in mfdv["sets"].values():
        for sig in ood.SIGNALS:
            lo, hi = s["auroc_ci"][sig]
            assert 0.0 <= lo <= s["auroc"][sig] <= hi <= 1.0
    page_path = tmp_path / "ood.md"
    assert ood.main(["render", "--results", str(out), "--out", str(page_path)]) == 0
    page = page_path.read_text()
    assert page == ood.render(json.loads(out.read_text())) + "\n"
    assert "| inverted |" in page and "tiny_mfdv" in page and results["command"] in page


def test_the_readme_block_is_rewritten_between_its_markers_only(tmp_path: Path) -> None:
    from reports.readme import markers, replace_block

    begin, end = markers("ood", "cmd")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{begin}\nold table\n{end}\noutro\n")
    replace_block(readme, "ood", "cmd", "new table")
    assert readme.read_text() == f"intro\n{begin}\nnew table\n{end}\noutro\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no generated block named 'ood'"):
        replace_block(readme, "ood", "cmd", "x")
