"""``python -m service``: serve a checkpoint with uvicorn.

Settings come from ``MFDV_*`` environment variables; flags override them::

    python -m service --host 0.0.0.0 --port 8000 --model-dir checkpoints/fashion_mnist_mfdv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from models import CheckpointError, read_manifest

from .config import Settings
from .metrics import MULTIPROC_ENV
from .server import ConnectionLimits, http_protocol

logger = logging.getLogger("service")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="interface to bind (MFDV_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to bind (MFDV_PORT, default 8000)")
    p.add_argument("--model-dir", help="checkpoint directory (MFDV_MODEL_DIR)")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (MFDV_WORKERS)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="MFDV_DEVICE")
    p.add_argument("--backend", choices=["auto", "torch", "onnx"], help="MFDV_BACKEND")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], help="MFDV_LOG_LEVEL")
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Start uvicorn; returns the exit status (2 for bad settings or a missing checkpoint)."""
    args = parse_args(argv)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "model_dir": args.model_dir,
            "workers": args.workers,
            "device": args.device,
            "backend": args.backend,
            "log_level": args.log_level,
        }.items()
        if v is not None
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        logger.error("invalid settings:\n%s", e)
        return 2
    logging.getLogger().setLevel(settings.log_level.upper())
    try:
        read_manifest(settings.model_dir, verify=False)  # fail fast; full sha256 check at load
    except CheckpointError as e:
        logger.error("%s (set MFDV_MODEL_DIR or --model-dir)", e)
        return 2
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": not args.no_access_log,
        "timeout_graceful_shutdown": settings.graceful_seconds,
        # asyncio's loop, not uvloop: asyncio accepts every queued connection when the listener is ready, while
        # uvloop left 1,400 of 2,000 connecting clients in the kernel's accept queue for seconds as it served the
        # accepted ones (hey, 2,000 clients: 7% of answers over 1 s, the slowest 5 s, vs 2.4 s with asyncio,
        # at the same req/s at 32 clients; benchmarks/bench_overload.py, docs/service.md).
        "loop": "asyncio",
        # uvicorn's parser with the connection guards: JSON 400s, header timeout, connection cap, lingering close
        "http": http_protocol(
            ConnectionLimits(header_timeout_s=settings.header_timeout_seconds, max_connections=settings.max_connections)
        ),
    }
    if settings.workers == 1:
        from .app import create_app

        uvicorn.run(create_app(settings), **common)
    else:
        # Worker processes build their own app from the environment: pass the flags on.
        for key, value in overrides.items():
            os.environ[f"MFDV_{key.upper()}"] = str(value)
        with multiprocess_metrics_dir():
            uvicorn.run("service.app:app_from_env", factory=True, workers=settings.workers, **common)
    return 0


@contextlib.contextmanager
def multiprocess_metrics_dir() -> Iterator[Path]:
    """prometheus_client's multiprocess mode for the worker processes started inside the block.

    ``PROMETHEUS_MULTIPROC_DIR`` names the directory where every worker writes its values and
    from which ``/metrics`` adds them up; the workers read it when they import prometheus_client.
    Unset: a fresh temporary directory, removed afterwards. Set: that directory, emptied of the
    value files of an earlier run first (stale files would be added up too).
    """
    given = os.environ.get(MULTIPROC_ENV)
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="mfdv-metrics-"))
    if given:
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    logger.info("metrics of all workers are added up from %s (prometheus_client multiprocess mode)", path)
    try:
        yield path
    finally:
        if not given:
            shutil.rmtree(path, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)


if __name__ == "__main__":
    sys.exit(main())
