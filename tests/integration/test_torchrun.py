"""training.train and training.evaluate under torchrun: two CPU processes with the gloo backend."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from models import load_checkpoint
from training.evaluate import clean_accuracy

from ..fixtures import make_tiny_dataset

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    ds = make_tiny_dataset(n=400)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=ds.x.numpy(), y=ds.y.numpy(), class_names=np.array(ds.class_names))
    out = tmp_path / "ck"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "training.train",
        "--dataset",
        str(npz),
        "--arch",
        "tiny_cnn",
        "--feature-dim",
        "8",
        "--batch-size",
        "16",
        "--max-steps",
        "40",
        "--lr",
        "5e-3",
        "--no-attacks",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stderr
    ck = load_checkpoint(out)
    acc = clean_accuracy(ck.model, make_tiny_dataset(n=100, seed=7), samples=8)["accuracy"]
    assert acc > 0.5, acc  # 4 classes: chance is 0.25
    assert torch.isfinite(ck.model.head.sigma()).all()


def test_evaluate_under_torchrun_gives_the_single_process_result(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Batches are dealt round-robin to the ranks and draw their randomness from their position:
    two ranks must give exactly what one process gives."""
    ds = make_tiny_dataset(n=60, seed=3)
    npz = tmp_path / "t.npz"
    np.savez(npz, x=ds.x.numpy()[:40], y=ds.y.numpy()[:40], x_test=ds.x.numpy()[40:], y_test=ds.y.numpy()[40:])
    args = ["-m", "training.evaluate", str(tiny_checkpoint), "--dataset", str(npz), "--eps", "0.2"]
    args += ["--attack-n", "20", "--batch", "4", "--steps", "3", "--eot", "2", "--queries", "15", "--samples", "8"]
    args += ["--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    two = subprocess.run(
        [*launcher, "--master_port", str(_free_port()), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = json.loads(one.stdout.splitlines()[-1]), json.loads(two.stdout.splitlines()[-1])
    assert b["evaluation"]["world"] == 2 and a["evaluation"]["world"] == 1
    for key, ra in a["robust"].items():
        rb = b["robust"][key]
        assert ra["n"] == rb["n"] == 20
        assert ra["robust"] == rb["robust"] and ra["clean_accuracy"] == rb["clean_accuracy"]
        strip = ("seconds", "stopped")
        assert [{k: v for k, v in p.items() if k not in strip} for p in ra["per_attack"]] == [
            {k: v for k, v in p.items() if k not in strip} for p in rb["per_attack"]
        ]
