"""The train CLI under torchrun: two CPU processes with the gloo backend (DistributedDataParallel)."""

from __future__ import annotations

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
        "-D",
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
