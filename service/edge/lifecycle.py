"""Shutdown: drain before closing, answer what is cut, stop attacks in time.

On SIGTERM (``docker stop``, Kubernetes ending a pod) uvicorn closes its listener at once and
gives the requests in flight ``MFDV_GRACEFUL_SECONDS``; whatever is still running then is
cancelled. This module puts three things around that:

- a **drain window**: for ``MFDV_DRAIN_SECONDS`` after the first SIGTERM the process keeps
  listening and serving, but its readiness routes answer 503 and its responses carry
  ``Connection: close``, so load balancers that poll readiness stop sending before the
  listener goes away; then uvicorn's own shutdown runs (a second SIGTERM skips the rest of
  the window). ``Lifecycle.install_sigterm`` wraps uvicorn's SIGTERM handler for that; it
  works the same in every worker process;
- **answers for what is cut**: a request cancelled at the end of the grace period gets a JSON
  503 with ``Retry-After`` (``cut_response``, sent by ``service.edge.middleware.EdgeMiddleware``), not
  uvicorn's plain-text 500;
- **a deadline for attacks**: a running probe stops between steps early enough to answer
  with its partial results before the grace period ends (``Lifecycle.answers_due``), and one
  that is cancelled anyway stops at its next step (``service.compute.pool.Slot.run``'s ``cancel``);
- **the same across workers**: with ``MFDV_WORKERS`` > 1 the parent process passes every SIGTERM
  on to each worker and waits for them (``WorkerSupervisor``), so each worker drains, answers
  and stops as a single process does, and a second SIGTERM ends every drain window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from starlette.responses import Response
from uvicorn.supervisors.multiprocess import Multiprocess

from ..errors import error_response

logger = logging.getLogger(__name__)

Handler = Callable[[int, FrameType | None], Any]


ACCEPT_DRAIN_SECONDS = 0.5
"""After the drain window, how long queued connections are still accepted (and answered) before the listener closes."""


def quiet_listeners() -> int:
    """Shrink the accept queue of this process's listening TCP sockets to nothing (``listen(0)``).

    The kernel then takes no new connections for them (a client's SYN goes unanswered and is retried,
    by which time the listener is closed and the retry refused), while connections already queued can
    still be accepted. Linux only (``/proc/self/fd``); returns how many sockets were changed.
    """
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return 0
    changed = 0
    for entry in fd_dir.iterdir():
        try:
            fd = int(entry.name)
            if not os.readlink(entry).startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except (OSError, ValueError):
            continue
        with sock:
            try:
                if sock.type == socket.SOCK_STREAM and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    sock.listen(0)
                    changed += 1
            except OSError:
                continue
    return changed


class Lifecycle:
    """Where one app's process stands in its shutdown.

    Args:
        drain_s: seconds between the first SIGTERM and uvicorn's shutdown (readiness 503, still serving).
        grace_s: uvicorn's ``timeout_graceful_shutdown``: how long requests in flight get after the drain.
    """

    def __init__(self, drain_s: float, grace_s: float) -> None:
        self.drain_s = drain_s
        self.grace_s = grace_s
        self.draining = False
        self._answers_due: float | None = None
        self._restore: Handler | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """The app serves from now on (again, for an app whose lifespan runs twice): not draining;
        SIGTERM drains first (``install_sigterm``)."""
        self.draining = False
        self._answers_due = None
        self.install_sigterm(loop)

    def stop(self) -> None:
        """The app stops serving: not ready from now on; the process's SIGTERM handler is restored."""
        self.begin()
        self.uninstall()

    def begin(self) -> None:
        """Shutdown has begun: not ready from now on; answers are due before the grace period ends."""
        if not self.draining:
            self.draining = True
            margin = min(2.0, self.grace_s / 2)  # to judge, render and send what a stopped probe has
            self._answers_due = time.perf_counter() + self.drain_s + self.grace_s - margin

    def answers_due(self) -> float | None:
        """The ``perf_counter`` time by which running work should stop and answer (None: not shutting down)."""
        return self._answers_due

    def install_sigterm(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Wrap the process's SIGTERM handler (uvicorn's) with the drain window.

        Only where a handler to wrap exists and this is the main thread (signal handlers live
        there): under uvicorn, not under a test client. Returns whether it was installed.
        """
        if threading.current_thread() is not threading.main_thread():
            return False
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return False

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.draining or self.drain_s <= 0:  # no window, or a second SIGTERM: shut down now
                self.begin()
                previous(sig, frame)
                return
            self.begin()
            logger.info("SIGTERM: draining for %g s (readiness 503, still serving), then shutting down", self.drain_s)

            def drained() -> None:
                # Close the door before the listener goes: connections the kernel completed but nobody has
                # accepted yet would be reset with the listener, their requests lost. With the accept queue
                # shrunk to nothing, new handshakes wait (the client retries its SYN in a second, and is then
                # refused cleanly); those already queued are accepted and answered meanwhile.
                quiet_listeners()
                loop.call_later(ACCEPT_DRAIN_SECONDS, previous, sig, None)

            loop.call_soon_threadsafe(loop.call_later, self.drain_s, drained)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._restore = previous
        return True

    def uninstall(self) -> None:
        if self._restore is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._restore)
            self._restore = None


def cut_response() -> Response:
    """The answer to a request cut at the end of the grace period before its response started."""
    return error_response(
        503,
        "the service is shutting down and could not finish this request within its grace period "
        "(MFDV_GRACEFUL_SECONDS); retry on another replica",
        {"Retry-After": "1", "Connection": "close"},
    )


class WorkerSupervisor(Multiprocess):
    """uvicorn's worker supervisor (``Multiprocess``), with shutdown left to the workers.

    uvicorn's sends each worker one SIGTERM at the first signal and then waits for them, deaf to
    any further signal, so a worker's drain window could not be cut short. This one passes every
    SIGTERM (and SIGINT) on to the live workers: the first starts each worker's drain
    (``Lifecycle.install_sigterm``: readiness 503, still serving, then uvicorn's graceful shutdown),
    a second ends the windows early, as for a single process. It stops supervising (restarting
    dead workers) from the first signal on and returns once every worker has exited.
    """

    def run(self) -> None:
        logger.info("supervising %d worker processes (pid %d)", self.processes_num, os.getpid())
        self.init_processes()
        while not self.should_exit.wait(0.5):
            self.handle_signals()
            self.keep_subprocess_alive()
        self.signal_queue.clear()  # the signal that set should_exit: passed on now
        self._pass_on(signal.SIGTERM)
        while any(p.process.is_alive() for p in self.processes):
            time.sleep(0.1)
            while self.signal_queue:
                sig = self.signal_queue.pop(0)
                if sig in (signal.SIGTERM, signal.SIGINT):
                    self._pass_on(signal.SIGTERM)
        for p in self.processes:
            p.process.join()
        logger.info("every worker has exited")

    def _pass_on(self, sig: int) -> None:
        for p in self.processes:
            pid = p.process.pid
            if pid is not None and p.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
