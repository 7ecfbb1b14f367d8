"""``python -m service``: serve a checkpoint with uvicorn.

Settings come from ``MFDV_*`` environment variables; flags override them (one per setting,
``--max-batch 32`` for ``MFDV_MAX_BATCH``; ``--help`` lists them with their defaults)::

    python -m service --host 0.0.0.0 --port 8000 --model-dir checkpoints/fashion_mnist_mfdv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError
from pydantic_settings import CliSettingsSource

from models import CheckpointError

from .app import configure_logging
from .compute.control import CONTROL_ENV
from .compute.repository import read_source, scan
from .config import Settings, default_workers
from .edge.lifecycle import WorkerSupervisor
from .edge.server import ConnectionLimits, http_protocol
from .metrics import MULTIPROC_ENV

logger = logging.getLogger("service")

WORKER_HEALTHCHECK_SECONDS = 60
"""How long uvicorn's supervisor waits for a worker to answer its health ping before it kills and replaces it
(uvicorn's default is 5 s). A worker answers once it has imported the service (torch, onnxruntime, FastAPI):
on a busy 2-core machine that took over 5 s, and uvicorn then killed every worker as it started, in a loop."""


def attribute_docs(doc: str) -> dict[str, str]:
    """The ``Attributes:`` section of a Google-style docstring: each name's text, on one line."""
    docs: dict[str, str] = {}
    section = doc.split("Attributes:", 1)[-1]
    name = None
    for line in section.splitlines():
        entry = re.match(r"^ {8}(\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            docs[name] = entry.group(2)
        elif name and line.startswith(" " * 12):
            docs[name] += " " + line.strip()
        elif line.strip():
            name = None
    return {k: v.replace("``", "") for k, v in docs.items()}


def _documented(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> Any:
    """``add_argument`` with each flag's help from ``Settings``' docstring and its ``MFDV_*`` variable."""
    field = kwargs.get("dest", "")
    if field in Settings.model_fields:
        default = kwargs.get("help", "")
        if field == "workers":
            default = f"(default: {default_workers()} here)"
        elif field == "access_log":
            default = "(default: on)"
        kwargs["help"] = f"{SETTING_DOCS.get(field, '')} [MFDV_{field.upper()}] {default}".replace("%", "%%")
    return parser.add_argument(*names, **kwargs)


SETTING_DOCS = attribute_docs(Settings.__doc__ or "")


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    """The settings given on the command line (unparsed text, as in the environment); other settings come from
    ``MFDV_*`` variables or the defaults. One flag per ``Settings`` field (``--max-batch``, ``--no-ui``...),
    generated from the model as ``training.train``'s; ``--help`` lists them with their defaults.
    """
    source = CliSettingsSource(
        Settings,
        cli_prog_name="python -m service",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_avoid_json=True,
        cli_hide_none_type=True,
        cli_exit_on_error=True,
        add_argument_method=_documented,
    )
    source.root_parser.description = (
        "Serve a checkpoint with uvicorn. Every setting is an MFDV_* environment variable; a flag overrides it."
    )
    given = source(args=sys.argv[1:] if argv is None else argv)
    assert isinstance(given, CliSettingsSource)
    return dict(given())


def main(argv: list[str] | None = None) -> int:
    """Start uvicorn; returns the exit status (2 for bad settings or a missing checkpoint)."""
    overrides = parse_args(argv)
    configure_logging("info")
    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        logger.error("invalid settings:\n%s", e)
        return 2
    configure_logging(settings.log_level)
    problem = check_repository(settings)  # fail fast; each model's sha256s are checked as it loads
    if problem:
        logger.error("%s", problem)
        return 2
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
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
        # Worker processes build their own app from the environment: pass the flags on, and the worker
        # count (each worker's default threads are its share of the cores).
        for key, value in {**overrides, "workers": settings.workers}.items():
            os.environ[f"MFDV_{key.upper()}"] = str(value)
        logger.info("%d worker processes (MFDV_WORKERS), each loading the models", settings.workers)
        with multiprocess_metrics_dir(), repository_control_dir():
            config = uvicorn.Config(
                "service.app:app_from_env",
                factory=True,
                workers=settings.workers,
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
                **common,
            )
            WorkerSupervisor(config, sockets=[config.bind_socket()]).run()  # each SIGTERM reaches every worker
    return 0


def check_repository(settings: Settings) -> str | None:
    """Why ``settings`` name nothing to serve (None: something to serve, and the default model among it)."""
    root, folders = settings.repository()
    if settings.model_dir is not None:
        try:
            read_source(settings.model_dir)
        except CheckpointError as e:
            return f"{e} (set MFDV_MODEL_DIR or --model-dir to a checkpoint)"
    sources, skipped = scan(folders)
    if not sources:
        why = "; ".join(skipped) or "it is empty or missing"
        return f"the model repository {root} has no model: {why} (set MFDV_MODEL_REPOSITORY or --model-repository)"
    default = settings.default_model_name(sorted(sources))
    if default not in sources:
        return f"the default model {default!r} is not in the repository {root}; it has {sorted(sources)} (MFDV_DEFAULT_MODEL)"
    return None


@contextlib.contextmanager
def repository_control_dir() -> Iterator[Path]:
    """A directory the worker processes share to keep their model repositories in step
    (``service.compute.control``), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mfdv-repository-"))
    os.environ[CONTROL_ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(CONTROL_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


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
