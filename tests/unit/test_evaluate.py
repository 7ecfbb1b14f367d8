"""Evaluation: robust accuracy is judged like clean accuracy and recorded with its settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.evaluate import attack_key, clean_accuracy, main, robust_accuracy, standard_suite

from ..fixtures import make_tiny_checkpoint, make_tiny_dataset, train_tiny


def test_zero_eps_attack_leaves_accuracy_unchanged_and_large_eps_destroys_it() -> None:
    model, _ = train_tiny("vanilla", steps=60)
    test = make_tiny_dataset(n=80, seed=5)
    clean = clean_accuracy(model, test, samples=4)["accuracy"]
    assert clean > 0.9
    zero = robust_accuracy(model, test, {"name": "pgd", "eps": 0.0, "steps": 3}, samples=4)
    assert zero["accuracy"] == clean
    big = robust_accuracy(model, test, {"name": "pgd", "eps": 0.5, "steps": 10}, samples=4)
    assert big["accuracy"] < 0.2
    assert big["attack"] == {"name": "pgd", "eps": 0.5, "steps": 10} and big["n"] == 80


def test_standard_suite_keys() -> None:
    keys = [attack_key(s) for s in standard_suite(0.1, 16)]
    assert keys == [
        "fgsm_eot1_eps0.1",
        "fgsm_eot16_eps0.1",
        "pgd20_eot1_eps0.1",
        "pgd20_eot16_eps0.1",
        "surrogate20_eps0.1",
    ]


def test_cli_prints_one_json_line_per_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ck = make_tiny_checkpoint(tmp_path / "ck", "mfdv", steps=30)
    ds = make_tiny_dataset(n=100, seed=9)
    npz = tmp_path / "t.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), x_test=ds.x.numpy()[:12], y_test=ds.y.numpy()[:12])
    main(
        [
            str(ck),
            "--dataset",
            str(npz),
            "--eps",
            "0.05",
            "0.1",
            "--eot",
            "2",
            "--samples",
            "4",
            "--attack-n",
            "6",
            "--extra",
            "apgd",
        ]
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 1
    assert out[0]["clean"]["n"] == 12
    robust = out[0]["robust"]
    assert {"pgd20_eot2_eps0.05", "pgd20_eot2_eps0.1", "apgd_eot2_eps0.1"} <= set(robust)
    assert all(r["n"] == 6 for r in robust.values())
