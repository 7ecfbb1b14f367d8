"""A long-running process for tests and benchmarks: started, polled until ready, stopped with SIGTERM.

``ManagedProcess`` holds what ``ServerProcess`` (``python -m service``) and ``PrometheusProcess``
share: the readiness loop (failing early with the log tail if the process exits), the stop
(SIGTERM, as ``docker stop`` sends; SIGKILL after a timeout) and the context manager.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

logger = logging.getLogger(__name__)


class ManagedProcess:
    """A subprocess with a readiness probe.

    Subclasses set ``name``, ``ready_timeout`` and ``proc`` (in ``start``), and implement ``log_tail``.
    """

    name = "process"
    ready_timeout = 60.0
    proc: subprocess.Popen[bytes] | None = None

    def log_tail(self, chars: int = 4000) -> str:
        raise NotImplementedError

    def wait_ready(self, probe: Callable[[], int | None], what: str) -> None:
        """Poll ``probe`` (an HTTP status, or None when nothing answered) until it gives 200.

        Raises:
            RuntimeError: the process exited, or ``what`` was not 200 within ``ready_timeout``.
        """
        assert self.proc is not None
        deadline = time.monotonic() + self.ready_timeout
        status = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            status = probe()
            if status == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{what} not 200 within {self.ready_timeout}s (last {status}):\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait for a graceful exit (SIGKILL after ``timeout``); returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM for %.0f s; killing it", self.name, timeout)
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        """Release what ``start`` took besides the process (after ``stop``; the context manager does both)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        self.close()


def proc_status(pid: int, field: str) -> int:
    """A memory figure of ``/proc/<pid>/status`` in bytes: ``VmRSS`` (resident now) or ``VmHWM`` (the
    resident high-water mark since the process started)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")
