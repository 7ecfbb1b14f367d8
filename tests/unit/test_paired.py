"""``python -m reports.paired``: checkpoints judged on the same inputs, compared with paired statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from reports import paired


def test_a_model_compared_with_itself_differs_by_nothing_and_a_worse_one_by_its_errors(
    hand_checkpoint: Path, hand_vanilla_checkpoint: Path, tmp_path: Path
) -> None:
    out, page = tmp_path / "paired.json", tmp_path / "paired.md"
    argv = ["run", str(hand_checkpoint), str(hand_checkpoint), str(hand_vanilla_checkpoint)]
    argv += ["--suite", "standard", "--n", "40", "--clean-n", "80", "--samples", "8", "--steps", "3", "--eot", "2"]
    argv += ["--queries", "10", "--dataset", "bars", "--cache", str(tmp_path / "cache"), "--out", str(out)]
    assert paired.main(argv) == 0
    results = json.loads(out.read_text())
    same, other = results["pairs"]
    for m in paired.MEASURES:
        assert same[m]["difference"] == 0.0 and same[m]["a_only"] == same[m]["b_only"] == 0 and same[m]["p_value"] == 1
        c = other[m]
        a = paired._unbits(results["checkpoints"][0]["outcomes"][m])
        b = paired._unbits(results["checkpoints"][2]["outcomes"][m])
        assert c["n"] == a.size == b.size
        assert (c["a_only"], c["b_only"]) == (int((a & ~b).sum()), int((~a & b).sum()))
        assert c["difference"] == np.float64(a.mean() - b.mean())
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2  # the same checkpoint twice is one cache entry
    assert paired.main(["render", "--results", str(out), "--out", str(page)]) == 0
    text = page.read_text()
    assert results["command"] in text and "| robust_or_flagged |" in text
    from reports.readme import markers

    readme = tmp_path / "README.md"
    begin, end = markers("paired", "python -m reports.paired render --readme README.md")
    readme.write_text(f"# x\n{begin}\n{end}\n")
    assert paired.main(["render", "--results", str(out), "--out", str(page), "--readme", str(readme)]) == 0
    block = readme.read_text()
    c = other["robust"]
    assert f"- robust: {100 * c['difference']:+.2f} points" in block and "| tiny_vanilla |" in block


def test_batches_cached_by_a_killed_run_give_the_same_result(hand_checkpoint: Path, tmp_path: Path) -> None:
    base = ["--suite", "standard", "--n", "30", "--clean-n", "30", "--samples", "8", "--steps", "3", "--eot", "2"]
    base += ["--queries", "10", "--dataset", "bars", "--batch", "10"]
    whole, split = tmp_path / "whole.json", tmp_path / "split.json"
    ckpts = [str(hand_checkpoint), str(hand_checkpoint)]
    assert paired.main(["run", *ckpts, *base, "--cache", str(tmp_path / "c1"), "--out", str(whole)]) == 0
    # another cache, with only its middle batch left from an earlier (killed) run: the rest is computed
    (cache,) = (tmp_path / "c1").glob("*-tiny_mfdv")
    kept = tmp_path / "c2" / cache.name
    kept.mkdir(parents=True)
    (cache / "batch000010.pt").rename(kept / "batch000010.pt")
    assert paired.main(["run", *ckpts, *base, "--cache", str(tmp_path / "c2"), "--out", str(split)]) == 0
    a, b = json.loads(whole.read_text()), json.loads(split.read_text())
    assert a["checkpoints"][0]["outcomes"] == b["checkpoints"][0]["outcomes"]
    assert sorted(p.name for p in kept.glob("*.pt")) == ["batch000000.pt", "batch000010.pt", "batch000020.pt"]


def test_a_second_suite_is_counted_on_the_same_inputs() -> None:
    """``render --against``: a run on the first n inputs beside another suite's run on more, counted input by input."""

    def entry(clean: list[bool], evaded: list[bool], robust: list[bool], suite: str) -> dict:
        bits = {
            k: paired._bits(np.array(v)) for k, v in (("suite_clean", clean), ("evaded", evaded), ("robust", robust))
        }
        return {"checkpoint": "m", "suite": suite, "outcomes": bits}

    full = {"settings": {"n": 4}, "checkpoints": [entry([1, 1, 1, 0], [1, 0, 1, 0], [0, 1, 0, 0], "full")]}
    reduced = {
        "settings": {"n": 6},
        "checkpoints": [entry([1, 1, 1, 0, 1, 1], [1, 1, 0, 0, 1, 1], [0, 0, 1, 0, 0, 0], "red")],
    }
    lines = paired.against_lines(full, reduced, "r.json")
    assert lines[0] == "The same first 4 inputs under `red` (r.json):"
    assert "| m | 3 / 3 | 2 / 2 | 1 / 1 | 1 / 1 |" in lines
    assert paired.against_lines(reduced, full, "f.json") == []  # the other run covers fewer inputs


def test_a_cached_batch_from_other_settings_is_refused(hand_checkpoint: Path, tmp_path: Path) -> None:
    """A resumed run never mixes batches made with another flag or attack set into its figures."""
    import pytest
    import torch

    base = ["--suite", "standard", "--n", "10", "--clean-n", "10", "--samples", "8", "--steps", "2", "--eot", "2"]
    base += ["--queries", "5", "--dataset", "bars", "--batch", "10", "--cache", str(tmp_path / "c")]
    ckpts = [str(hand_checkpoint), str(hand_checkpoint)]
    assert paired.main(["run", *ckpts, *base, "--out", str(tmp_path / "a.json")]) == 0
    (entry,) = (tmp_path / "c").glob("*-tiny_mfdv.json")
    part_file = entry.with_suffix("") / "batch000000.pt"
    part = torch.load(part_file, weights_only=False)
    part.settings = {**part.settings, "judge_samples": part.settings["judge_samples"] + 1}
    torch.save(part, part_file)
    entry.unlink()  # the checkpoint's result is recomputed from its batches
    with pytest.raises(SystemExit, match="other suite settings"):
        paired.main(["run", *ckpts, *base, "--out", str(tmp_path / "b.json")])
