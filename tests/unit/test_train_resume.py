"""Resumable training: a run interrupted after an epoch continues from its saved state when the
same command runs again, and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training.train as tt
from models.checkpoint import MANIFEST, WEIGHTS
from training.train import STATE_FILE, STATE_VERSION, main

from ..fixtures import make_tiny_dataset


class KilledError(Exception):
    """Stands for the process being killed right after a state was written."""


def _argv(tmp_path: Path, out: Path) -> list[str]:
    npz = tmp_path / "tiny.npz"
    if not npz.exists():
        ds = make_tiny_dataset(n=200)
        np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), class_names=np.array(ds.class_names))
    return [
        *("--dataset", str(npz), "--arch", "tiny_cnn", "--method", "mfdv", "--feature-dim", "8"),
        *("--epochs", "3", "--batch-size", "32", "--lr", "0.005", "--seed", "5"),
        *("--adv", "fgsm", "--adv-eot", "2", "--adv-val-n", "36", "--adv-keep", "best"),
        *("--no-attacks", "--eval-samples", "4", "--out", str(out)),
    ]


def _kill_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    real = tt.save_training_state

    def save_then_die(path: Path, state: dict[str, Any]) -> None:
        real(path, state)
        if state["epoch"] == epoch:
            raise KilledError

    monkeypatch.setattr(tt, "save_training_state", save_then_die)


def _without_seconds(epochs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k != "seconds"} for e in epochs]


def test_an_interrupted_run_resumes_and_ends_as_an_uninterrupted_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training")
    whole = tmp_path / "whole"
    main(_argv(tmp_path, whole))
    assert not (whole / STATE_FILE).exists()  # the export replaced the folder: no state left behind

    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 1)
        with pytest.raises(KilledError):
            main(_argv(tmp_path, out))
    assert sorted(p.name for p in out.iterdir()) == [STATE_FILE]  # the state alone, no temporary file
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 4)
    torch.rand(1000)  # another process would start from another global RNG state

    # Other settings are refused; evaluation-only settings may differ.
    with pytest.raises(SystemExit, match=re.escape("--lr 0.005 there, 0.001 here")):
        main([*_argv(tmp_path, out), "--lr", "0.001"])
    caplog.clear()
    main([*_argv(tmp_path, out), "--suite", "published"])
    assert "resuming the run in" in caplog.text and "after epoch 1 (step 4)" in caplog.text

    a, b = load_file(whole / WEIGHTS), load_file(out / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / MANIFEST).read_text()) for d in (whole, out))
    ta, tb = ma["adversarial_training"], mb["adversarial_training"]
    assert len(ta["epochs"]) == 3 and _without_seconds(ta["epochs"]) == _without_seconds(tb["epochs"])
    assert (ta["kept_epoch"], ta["rolled_back"]) == (tb["kept_epoch"], tb["rolled_back"])
    assert ma["mi_threshold"] == mb["mi_threshold"]
    assert ma["metrics"]["clean"] == mb["metrics"]["clean"]
    assert mb["metrics"]["train"]["resumed_after_epochs"] == [1]
    assert "resumed_after_epochs" not in ma["metrics"]["train"]
    assert mb["metrics"]["train"]["loss"] == ma["metrics"]["train"]["loss"]


def test_a_state_saved_before_a_setting_existed_resumes_while_that_setting_is_at_its_default(
    tmp_path: Path,
) -> None:
    from training.config import TrainConfig
    from training.train import load_training_state, save_training_state, training_fingerprint

    args = TrainConfig(method="mfdv", arch="tiny_cnn")
    old = training_fingerprint(args)
    del old["adv_clean_share"]  # as written by a run before --adv-clean-share existed
    path = tmp_path / STATE_FILE
    save_training_state(path, {"version": STATE_VERSION, "config": old})
    assert load_training_state(path, args)["config"] == old
    with pytest.raises(ValueError, match=re.escape("--adv-clean-share None there, 0.25 here")):
        load_training_state(path, TrainConfig(method="mfdv", arch="tiny_cnn", adv_clean_share=0.25))


def test_overwrite_starts_afresh_and_foreign_folders_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="training")
    out = tmp_path / "run"
    argv = [*_argv(tmp_path, out), "--epochs", "2", "--adv-val-n", "0"]
    with monkeypatch.context() as m:
        _kill_after_epoch(m, 1)
        with pytest.raises(KilledError):
            main(argv)
        with pytest.raises(KilledError):  # --overwrite does not resume: it is killed after its own epoch 1 again
            main([*argv, "--overwrite"])
    caplog.clear()
    main([*argv, "--overwrite"])
    assert "resuming" not in caplog.text
    assert json.loads((out / MANIFEST).read_text())["metrics"]["train"].get("resumed_after_epochs") is None

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="already exists"):
        main(_argv(tmp_path, foreign))
    assert (foreign / "notes.txt").read_text() == "mine"
