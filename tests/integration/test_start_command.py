"""Run the Docker image's exact start command locally and get a ready service.

No Docker engine is needed: the Dockerfile's final stage is parsed for its
``ENV``, ``WORKDIR``, ``COPY``, ``CMD`` and ``HEALTHCHECK``; ``CMD`` runs as a
subprocess from the repository root (the image's ``/app`` holds the same
``models/``, ``service/`` and ``checkpoints/`` folders) with the image's
environment, except for a free port (``MFDV_PORT``), loopback host and the image's model
repository mapped to its local folder (``MFDV_MODEL_REPOSITORY``: ``checkpoints/``, both
committed checkpoints). The test polls ``/readyz``, runs the image's
healthcheck command against it, and stops the server with SIGTERM as
``docker stop`` does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20


def final_stage() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile's last stage, continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        op, _, args = (buf + line).partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    last_from = max(i for i, (op, _) in enumerate(out) if op == "FROM")
    return out[last_from:]


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            for tok in shlex.split(args):
                key, _, value = tok.partition("=")
                env[key] = value
    return env


def image_paths(stage: list[tuple[str, str]]) -> dict[str, Path]:
    """Absolute path in the image -> the repo path its COPY came from."""
    workdir = next(args for op, args in stage if op == "WORKDIR")
    mapping: dict[str, Path] = {}
    for op, args in stage:
        if op != "COPY" or "--from=" in args:
            continue
        *sources, dest = [a for a in shlex.split(args) if not a.startswith("--")]
        assert len(sources) == 1, f"one source per COPY expected: {args}"
        target = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest.removeprefix('./')}"
        mapping[target.rstrip("/")] = REPO / sources[0].rstrip("/")
    return mapping


def local_argv(argv: list[str], paths: dict[str, Path]) -> list[str]:
    """The image's argv with its python and its copied files replaced by the local ones."""
    assert argv[0] == "python", f"the image runs {argv[0]}; this test maps only `python`"
    return [sys.executable] + [str(paths.get(a, a)) for a in argv[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def test_image_layout_matches_repo() -> None:
    """The local run is representative: WORKDIR mirrors the repo root for the code and checkpoints."""
    stage = final_stage()
    workdir = next(args for op, args in stage if op == "WORKDIR")
    paths = image_paths(stage)
    for name in ("models", "service", "checkpoints"):
        assert paths[f"{workdir}/{name}"] == REPO / name
    env = image_env(stage)
    assert env["MFDV_MODEL_REPOSITORY"] == f"{workdir}/checkpoints" and "MFDV_MODEL_DIR" not in env


@pytest.mark.parametrize("workers", ["image", "2"])
def test_start_command_serves_ready(tmp_path: Path, workers: str) -> None:
    stage = final_stage()
    paths = image_paths(stage)
    cmd = json.loads(next(args for op, args in stage if op == "CMD"))
    healthcheck = next(args for op, args in stage if op == "HEALTHCHECK")
    hc_cmd = json.loads(healthcheck.split(" CMD ", 1)[1])

    port = free_port()
    env = {**os.environ, **{k: v for k, v in image_env(stage).items() if k != "PATH"}}
    repository = paths[env["MFDV_MODEL_REPOSITORY"]]  # the image's checkpoints/, here
    env.update(MFDV_PORT=str(port), MFDV_HOST="127.0.0.1", MFDV_MODEL_REPOSITORY=str(repository))
    if workers != "image":
        env["MFDV_WORKERS"] = workers  # env-configurable workers, as `docker run -e MFDV_WORKERS=2`
    base = f"http://127.0.0.1:{port}"

    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            local_argv(cmd, paths), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"`{shlex.join(cmd)}` exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            status = get_status(f"{base}/readyz")
            if status == 200:
                break
            time.sleep(0.25)
        else:
            pytest.fail(f"/readyz not 200 within {READY_TIMEOUT_S}s (last {status}):\n{log_path.read_text()[-4000:]}")

        assert get_status(f"{base}/healthz") == 200
        with urllib.request.urlopen(f"{base}/metrics", timeout=5) as resp:
            assert "mfdv_model_info" in resp.read().decode()
        with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
            listed = json.loads(resp.read())
        assert listed["default"] == env["MFDV_DEFAULT_MODEL"]  # both committed checkpoints, the stochastic one default
        assert [m["name"] for m in listed["models"]] == ["fashion_mnist_mfdv", "fashion_mnist_vanilla"]

        # The image's HEALTHCHECK command, run the way docker runs it (same env).
        hc = subprocess.run(local_argv(hc_cmd, paths), env=env, capture_output=True, timeout=30, check=False)
        assert hc.returncode == 0, hc.stderr.decode()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # what `docker stop` sends
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail(f"server ignored SIGTERM for {STOP_TIMEOUT_S}s:\n{log_path.read_text()[-4000:]}")
    # Clean = the lifespan shutdown ran; uvicorn then exits 0 or re-raises the SIGTERM it caught
    # (docker reports 143), depending on the uvicorn version and on workers.
    log = log_path.read_text()
    assert proc.returncode in (0, -signal.SIGTERM), f"unclean exit {proc.returncode}:\n{log[-4000:]}"
    assert "Application shutdown complete" in log or "Finished server process" in log, log[-4000:]
    # Nothing is left listening (worker processes included).
    assert get_status(f"{base}/healthz") is None
