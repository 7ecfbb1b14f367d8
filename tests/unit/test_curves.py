"""``python -m reports.curves``: every checkpoint at every eps on the same inputs, cached per batch, and the
page and figure rendered from the results file."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_checkpoint
from models.attacks import run_suite
from reports import curves, paired
from training.data import as_float, load_dataset

SMALL = ["--n", "16", "--steps", "2", "--eot", "2", "--queries", "5", "--batch", "8", "--dataset", "bars"]


def _with_held_out(src: Path, dst: Path) -> Path:
    """A copy of a hand-set checkpoint whose manifest names held-out training images (the generated
    ``bars`` set, so the adaptive suite's flag can be calibrated) and a training radius of 0.1."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    m["training"]["args"].update(dataset="bars", val_size=200, seed=0)
    m["adversarial_training"] = {"kind": "fgsm", "eps": 0.1}
    (dst / "manifest.json").write_text(json.dumps(m, indent=1))
    return dst


@pytest.fixture(scope="module")
def pair(hand_checkpoint: Path, hand_vanilla_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("curves-ckpts")
    return [
        _with_held_out(hand_checkpoint, root / "tiny_mfdv"),
        _with_held_out(hand_vanilla_checkpoint, root / "tiny_vanilla"),
    ]


def _bits(cell: dict, measure: str) -> np.ndarray:
    return paired._unbits(cell["outcomes"][measure])


def test_cells_run_at_the_first_eps_for_every_checkpoint_then_ascending() -> None:
    order = curves.cell_order([0, 0.05, 0.1, 0.2, 0.3], [0.2], ["a", "b"])
    assert order == [(0.2, "a"), (0.2, "b"), (0.05, "a"), (0.05, "b"), (0.1, "a"), (0.1, "b"), (0.3, "a"), (0.3, "b")]
    assert curves.cell_order([0.1, 0.3], [0.2], ["a"]) == [(0.1, "a"), (0.3, "a")]  # a first eps not asked for


def test_run_then_render_every_number_from_the_results_file(pair: list[Path], tmp_path: Path) -> None:
    out, page, fig = tmp_path / "curves.json", tmp_path / "curves.md", tmp_path / "figures" / "curves.png"
    argv = ["run", *map(str, pair), *SMALL, "--eps", "0", "0.2", "0.3", "--cache", str(tmp_path / "c")]
    assert curves.main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["complete"] and results["settings"]["suite_name"] == "adaptive-reduced(steps=2,eot=2,queries=5)"
    for ck in results["checkpoints"]:
        assert [c["eps"] for c in ck["cells"]] == [0.0, 0.2, 0.3]
        assert ck["flag"] is not None and ck["adversarial_training"]["eps"] == 0.1
        zero, *attacked = ck["cells"]
        clean = _bits(zero, "suite_clean")
        assert clean.size == 16
        for c in attacked:  # the same inputs and draws judge the clean inputs in every cell
            assert (_bits(c, "suite_clean") == clean).all(), c["eps"]
            assert c["n"] == 16 and c["per_attack"] and c["attacked"]
        # eps 0: robust accuracy is the clean accuracy on those inputs
        assert _bits(zero, "robust").mean() == _bits(zero, "robust_or_flagged").mean() == clean.mean()
        assert not _bits(zero, "evaded").any()

    assert curves.main(["render", "--results", str(out), "--out", str(page), "--figure", str(fig)]) == 0
    text = page.read_text()
    assert text == curves.render(results, "figures/curves.png", str(out))
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "](figures/curves.png)" in text
    assert results["command"] in text and "adaptive-reduced(steps=2,eot=2,queries=5)" in text and "n = 16" in text
    vanilla = results["checkpoints"][1]
    rob, rof = (_bits(vanilla["cells"][1], m) for m in ("robust", "robust_or_flagged"))
    shares = [paired._share(int(b.sum()), 16, count=True) for b in (rob, rof)]
    assert f"| 0.2 | {shares[0]} | {shares[1]} |" in text
    assert "- tiny_vanilla: robust-or-flagged" in text and "The run is not finished" not in text
    upto = curves.worst_so_far(vanilla["cells"])[1]
    assert f"- tiny_vanilla: robust-or-flagged up to this eps {curves._rate(upto, 'robust_or_flagged')[0]:.1%}" in text

    # the page follows the file: another outcome in the file, another number on the page
    vanilla["cells"][1]["outcomes"]["robust_or_flagged"] = "1" * 8 + "0" * 8
    out.write_text(json.dumps(results))
    assert curves.main(["render", "--results", str(out), "--out", str(page), "--figure", str(fig)]) == 0
    assert "- tiny_vanilla: robust-or-flagged 50.0% [28.0%, 72.0%] (8 of 16) meets the goal (40%) by 10.0 points" in (
        page.read_text()
    )


def test_a_killed_run_resumes_from_its_batches_with_identical_results(pair: list[Path], tmp_path: Path) -> None:
    base = ["run", str(pair[0]), *SMALL, "--eps", "0", "0.2", "--n", "24"]
    whole, split = tmp_path / "whole.json", tmp_path / "split.json"
    assert curves.main([*base, "--cache", str(tmp_path / "c1"), "--out", str(whole)]) == 0
    # another cache holding only the middle batch of the eps 0.2 cell, as a killed run leaves it
    (cell,) = (tmp_path / "c1").glob("curves-*-tiny_mfdv")
    kept = tmp_path / "c2" / cell.name
    kept.mkdir(parents=True)
    shutil.copy(cell / "batch000008.pt", kept / "batch000008.pt")
    assert curves.main([*base, "--cache", str(tmp_path / "c2"), "--out", str(split)]) == 0
    a, b = json.loads(whole.read_text()), json.loads(split.read_text())
    assert [c["outcomes"] for c in a["checkpoints"][0]["cells"]] == [
        c["outcomes"] for c in b["checkpoints"][0]["cells"]
    ]
    assert sorted(p.name for p in kept.glob("*.pt")) == ["batch000000.pt", "batch000008.pt", "batch000016.pt"]
    # a batch made under another flag threshold is refused, not mixed in
    part = torch.load(kept / "batch000008.pt", weights_only=False)
    part.settings["flag"]["threshold"] *= 2
    torch.save(part, kept / "batch000008.pt")
    with pytest.raises(SystemExit, match="other suite settings"):
        curves.main([*base, "--cache", str(tmp_path / "c2"), "--out", str(split)])


def paired_run_then_no_attacks(
    ckpt: Path, n: int, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    """A ``reports.paired run`` of ``ckpt`` at eps 0.1 on ``n`` inputs into ``cache`` (its robust outcomes returned),
    then any further suite run raises "not reused"."""
    common = [
        "--suite",
        "adaptive",
        "--steps",
        "2",
        "--eot",
        "2",
        "--queries",
        "5",
        "--batch",
        "8",
        "--dataset",
        "bars",
    ]
    argv = ["run", str(ckpt), str(ckpt), *common, "--n", str(n), "--clean-n", str(n), "--samples", "8"]
    assert paired.main([*argv, "--eps", "0.1", "--cache", str(cache), "--out", str(tmp_path / "p.json")]) == 0

    def no_attacks(*a: object, **k: object) -> None:
        raise AssertionError("the suite ran: a cached batch was not reused")

    monkeypatch.setattr(paired, "run_suite", no_attacks)
    return paired._unbits(json.loads((tmp_path / "p.json").read_text())["checkpoints"][0]["outcomes"]["robust"])


def test_batches_of_a_paired_run_with_the_same_settings_are_reused(
    pair: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    robust = paired_run_then_no_attacks(pair[0], 32, cache, tmp_path, monkeypatch)
    # the same settings at eps 0.1 and a smaller n: nothing to compute
    out = tmp_path / "c.json"
    argv = ["run", str(pair[0]), *SMALL[2:], "--eps", "0.1", "--cache", str(cache), "--out", str(out)]
    assert curves.main([*argv, "--n", "16"]) == 0
    (cell,) = json.loads(out.read_text())["checkpoints"][0]["cells"]
    assert (_bits(cell, "robust") == robust[:16]).all()
    # other settings (more steps, another eps, another seed) are not the paired run's: the suite runs
    for other in (["--steps", "3"], ["--eps", "0.05"], ["--seed", "1"]):
        with pytest.raises(AssertionError, match="not reused"):
            curves.main([*argv, "--n", "16", *other])


def test_the_eps_0_cell_is_what_the_suite_gives_where_nothing_can_move(pair: list[Path], tmp_path: Path) -> None:
    """For the noise-free model (its judgement has no draws to differ) the whole suite at eps 0 agrees
    with the clean judgement the eps 0 cell takes without running it."""
    out = tmp_path / "c.json"
    argv = ["run", str(pair[1]), *SMALL, "--eps", "0", "0.3", "--cache", str(tmp_path / "c"), "--out", str(out)]
    assert curves.main(argv) == 0
    ck = json.loads(out.read_text())["checkpoints"][0]
    ckpt = load_checkpoint(pair[1])
    args = argparse.Namespace(suite="adaptive", steps=2, eot=2, queries=5, flag_signal="auto", flag_rate=0.05, seed=0)
    suite = paired.make_suite(args)
    flag = paired.calibrate(pair[1], ckpt, suite, args)
    assert flag.describe() == ck["flag"]
    test = load_dataset("bars", "test")
    res = run_suite(ckpt.model, as_float(test.x[:8]), test.y[:8], suite, eps=0.0, seed=0, offset=0, flag=flag)
    zero = ck["cells"][0]
    assert zero["eps"] == 0.0 and not zero["attacked"]
    assert paired._bits(res.robust) == zero["outcomes"]["robust"][:8]
    assert paired._bits(res.robust_or_flagged) == zero["outcomes"]["robust_or_flagged"][:8]


def test_the_verdict_says_by_how_much_a_goal_is_missed() -> None:
    v = {"eps": 0.2, "goal": 0.4, "aim": 0.6}
    cell = {"outcomes": {"robust": "0" * 100, "robust_or_flagged": "1" * 35 + "0" * 65}}
    text = curves.verdict("m", cell, v)
    assert "robust-or-flagged 35.0% [26.4%, 44.7%] (35 of 100)" in text
    assert "misses the goal (40%) by 5.0 points (the interval reaches 44.7%)" in text
    assert "misses the aim (60%) by 25.0 points (the whole 95% interval is below it)" in text
    assert "robust 0.0% [0.0%, 3.7%]" in text
    cell["outcomes"]["robust_or_flagged"] = "1" * 700 + "0" * 300
    text = curves.verdict("m", cell, v)
    assert "meets the goal (40%) by 30.0 points (the whole 95% interval is above it)" in text
    assert "meets the aim (60%) by 10.0 points" in text
    assert curves.verdict("m", None, v) == "- m: eps 0.2 not measured yet."
    short = {"outcomes": {"robust_or_flagged": "1" * 30 + "0" * 70}}
    assert curves.summary({"a": short, "b": None}, v) == (
        "No checkpoint measured reaches the goal: the best, a, is 10.0 points short of 40% and 30.0 short of the aim."
    )
    assert curves.summary({"a": short, "b": cell}, v) == "Reach the goal (40%): b. Reach the aim (60%): b."


def test_up_to_an_eps_an_input_lost_at_a_smaller_eps_stays_lost() -> None:
    """The ball of a smaller eps lies inside a larger one's: what an attack found there counts here too."""

    def cell(eps: float, robust: str, evaded: str) -> dict:
        return {"eps": eps, "outcomes": {"suite_clean": "1110", "robust": robust, "evaded": evaded}}

    cells = [cell(0.2, "0000", "0010"), cell(0.05, "1100", "1000"), cell(0.1, "0110", "0000")]
    worst = curves.worst_so_far(cells)
    assert [w["eps"] for w in worst] == [0.05, 0.1, 0.2]
    assert [w["outcomes"]["robust"] for w in worst] == ["1100", "0100", "0000"]
    assert [w["outcomes"]["evaded"] for w in worst] == ["1000", "1000", "1010"]
    assert [w["outcomes"]["robust_or_flagged"] for w in worst] == ["0110", "0110", "0100"]  # input 3: wrong when clean


def test_a_run_without_an_attacked_eps_is_refused(pair: list[Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="at least one eps > 0"):
        curves.main(["run", str(pair[0]), *SMALL, "--eps", "0", "--out", str(tmp_path / "c.json")])


def test_a_paired_run_with_another_seed_is_not_reused(
    pair: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A noise-free model's flag does not depend on the seed, so its suite settings match across seeds; the seed
    the paired run recorded keeps its batches out of another seed's curve."""
    cache = tmp_path / "cache"
    paired_run_then_no_attacks(pair[1], 16, cache, tmp_path, monkeypatch)
    argv = ["run", str(pair[1]), *SMALL, "--eps", "0.1", "--cache", str(cache), "--out", str(tmp_path / "c.json")]
    assert curves.main(argv) == 0  # the same seed: reused
    with pytest.raises(AssertionError, match="not reused"):
        curves.main([*argv, "--seed", "1"])
