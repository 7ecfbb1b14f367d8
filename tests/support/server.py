"""Run a real ``python -m service`` process on a free port (integration tests, benchmarks).

    with ServerProcess(model_dir, env={"MFDV_MAX_BATCH": "16"}) as server:
        httpx.get(f"{server.url}/readyz")

The process starts from the repository root, is polled until ``/readyz`` answers 200
(failing early with the log tail if it exits), and gets SIGTERM on exit, as
``docker stop`` sends. It has no drain window (``MFDV_DRAIN_SECONDS=0``) and one worker
(``MFDV_WORKERS=1``, so a test looks at one process) unless ``env`` says otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn

from .process import ManagedProcess

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess(ManagedProcess):
    """``python -m service`` in a subprocess, ready when the context is entered.

    Args:
        model_dir: checkpoint to serve (``--model-dir``), or with ``repository`` a model repository
            (``--model-repository``).
        env: extra ``MFDV_*`` variables.
        args: extra command-line flags.
        ready_timeout: seconds to wait for ``/readyz``.
        port: the port to listen on (default: a free one).
    """

    name = "server"

    def __init__(
        self,
        model_dir: str | Path,
        *,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        ready_timeout: float = 90.0,
        port: int | None = None,
        repository: bool = False,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port(self.host) if port is None else port
        self.url = f"http://{self.host}:{self.port}"
        self.model_dir = Path(model_dir)
        self.repository = repository
        self.env = dict(env or {})
        self.args = list(args or [])
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="mfdv-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.log_path = Path(self._log.name)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "service", "--host", self.host, "--port", str(self.port)]
        cmd += ["--model-repository" if self.repository else "--model-dir", str(self.model_dir), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "MFDV_DRAIN_SECONDS": "0", "MFDV_WORKERS": "1", **self.env}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready(self._ready_status, "/readyz")
        return self

    def _ready_status(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code
        except httpx.HTTPError:
            return None

    def stop(self, timeout: float = 20.0) -> int:
        code = super().stop(timeout)
        self._log.flush()
        return code

    def close(self) -> None:
        """Remove the log file (call after ``stop``; the context manager does both)."""
        self._log.close()
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def uvicorn_thread(config: uvicorn.Config, start_timeout: float = 60.0) -> Iterator[uvicorn.Server]:
    """A uvicorn server for ``config`` in a daemon thread of this process, started (asserted) and asked to exit
    (joined) when the block ends: for tests that patch the app's internals a subprocess cannot see."""
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        stop = threading.Event()
        for _ in range(int(start_timeout / 0.05)):
            if server.started or not thread.is_alive():
                break
            stop.wait(0.05)
        assert server.started, "uvicorn did not start"
        yield server
    finally:
        server.should_exit = True
        thread.join(30)
