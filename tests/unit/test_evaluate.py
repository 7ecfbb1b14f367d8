"""Evaluation: suites over batches and ranks, clean accuracy, and the CLI's JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models import load_checkpoint
from models.attacks import SUITES
from training.evaluate import clean_accuracy, evaluate_suite, main, parse_args

from ..fixtures import make_tiny_checkpoint, make_tiny_dataset, train_tiny

SMALL = SUITES["standard"].reduced(steps=5, eot=2, queries=20, judge_samples=8)


def test_zero_eps_leaves_accuracy_unchanged_and_large_eps_destroys_it() -> None:
    model, _ = train_tiny("vanilla", steps=60)
    test = make_tiny_dataset(n=80, seed=5)
    clean = clean_accuracy(model, test, samples=4)["accuracy"]
    assert clean > 0.9
    zero = evaluate_suite(model, test, SMALL, eps=0.0, batch=32).summary()
    assert zero["robust_accuracy"] == zero["clean_accuracy"] == clean  # vanilla: every judge agrees
    big = evaluate_suite(model, test, SMALL, eps=0.5, batch=32).summary()
    assert big["robust_accuracy"] < 0.2 and big["n"] == 80 and big["eps"] == 0.5


def test_batch_size_does_not_change_the_result() -> None:
    model, _ = train_tiny("mfdv", steps=60)
    test = make_tiny_dataset(n=48, seed=6)
    a = evaluate_suite(model, test, SMALL, eps=0.1, batch=16)
    b = evaluate_suite(model, test, SMALL, eps=0.1, batch=16, rank=0, world=1)
    assert a.robust.tolist() == b.robust.tolist()
    halves = [evaluate_suite(model, test, SMALL, eps=0.1, batch=16, rank=r, world=2) for r in (0, 1)]
    # without torch.distributed each rank returns its own batches: together they are the whole run
    assert sorted(h.n for h in halves) == [16, 32] and sum(int(h.robust.sum()) for h in halves) == int(a.robust.sum())


def test_cli_prints_one_json_line_and_updates_the_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = make_tiny_checkpoint(tmp_path / "ck", "mfdv", steps=30)
    before = load_checkpoint(ck).model_id
    ds = make_tiny_dataset(n=100, seed=9)
    npz = tmp_path / "t.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), x_test=ds.x.numpy()[:12], y_test=ds.y.numpy()[:12])
    argv = [str(ck), "--dataset", str(npz), "--eps", "0.05", "0.1", "--samples", "4", "--attack-n", "6"]
    main([*argv, "--steps", "3", "--eot", "2", "--queries", "10", "--update-manifest"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 1
    assert out[0]["clean"]["n"] == 12
    robust = out[0]["robust"]
    keys = {"standard-reduced_eps0.05", "standard-reduced_eps0.1", "published_eps0.05", "published_eps0.1"}
    assert set(robust) == keys
    assert all(r["n"] == 6 for r in robust.values())
    assert robust["standard-reduced_eps0.1"]["suite"] == "standard-reduced(steps=3,eot=2,queries=10)"
    assert robust["published_eps0.1"]["suite"] == "published"  # the papers' protocol is never reduced
    reloaded = load_checkpoint(ck)  # still verifies: weights and graph untouched
    assert reloaded.model_id != before
    assert reloaded.manifest["metrics"]["robust"] == robust
    assert reloaded.manifest["evaluation"]["command"].startswith("python -m training.evaluate ")


def test_the_command_line_is_generated_from_its_config(capsys: pytest.CaptureFixture[str]) -> None:
    """Same flags and defaults as the argparse CLI it replaced; --help gives each default and bound."""
    a = parse_args(["ck1", "ck2"])
    assert a.checkpoints == ["ck1", "ck2"] and a.suite == ["standard", "published"]
    assert (a.dataset, a.eps, a.samples, a.attack_n, a.batch, a.seed, a.threads) == (None, None, 32, 1000, 500, 0, None)
    assert (a.steps, a.eot, a.queries, a.flag_rate, a.flag_signal, a.flag_threshold) == (
        None,
        None,
        None,
        0.05,
        "auto",
        None,
    )
    assert a.update_manifest is False
    b = parse_args(
        [
            *("ck", "--suite", "adaptive", "published", "--eps", "0.05", "0.1", "--flag-threshold", "manifest"),
            *("--flag-signal", "max_prob", "--update-manifest", "--queries", "0"),
        ]
    )
    assert (b.suite, b.eps, b.flag_threshold, b.flag_signal) == (
        ["adaptive", "published"],
        [0.05, 0.1],
        "manifest",
        "max_prob",
    )
    assert b.update_manifest is True and b.queries == 0
    for bad in (["ck", "--flag-rate", "1"], ["ck", "--suite", "bogus"], ["ck", "--samples", "0"], []):
        with pytest.raises(SystemExit):
            parse_args(bad)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--flag-rate float" in text and "[>= 0, < 1] (default: 0.05)" in text
    assert "--attack-n int test inputs to attack (0: all) [>= 0] (default: 1000)" in text
