"""A bounded thread pool for work beside the prediction batcher: attack probes, and decoding (parse, decode, render).

Predictions have their own queue and compute thread (``MicroBatcher``); work that takes
seconds, like running an attack, goes here so it can never starve predictions of the
batcher or grow an unbounded backlog: at most ``workers`` jobs run and ``max_pending``
wait; one more is refused at once with ``Overloaded`` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from ..errors import Overloaded

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def lower_thread_priority(nice: int) -> None:
    """Give the calling thread (and the threads it starts later) the nice value ``nice``, if that is lower
    priority than it has: ``setpriority`` on the thread's id, which Linux applies to that thread only.

    A thread may always lower its own priority; where the OS refuses (not Linux, a sandbox), the
    thread keeps its priority and a warning is logged.
    """
    tid = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, tid) < nice:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except (AttributeError, OSError) as e:
        logger.warning("cannot lower the priority of thread %d to nice %d: %s", tid, nice, e)


class BoundedPool:
    """Run blocking callables in ``workers`` threads with at most ``max_pending`` waiting.

    A place can be taken before the work is known (``reserve``), e.g. before a request body is
    read, so a full pool refuses a request before it costs anything.

    Args:
        workers: threads (jobs running at once).
        max_pending: jobs allowed to wait for a thread.
        name: used in thread names and in the ``Overloaded`` message.
        retry_after: seconds a refused client is told to wait.
        initializer: run once in each worker thread before its first job (e.g. to lower its priority).
    """

    def __init__(
        self,
        workers: int,
        max_pending: int,
        name: str = "pool",
        retry_after: int = 5,
        initializer: Callable[[], None] | None = None,
    ) -> None:
        if workers < 1 or max_pending < 0:
            raise ValueError(f"{name}: workers must be >= 1 and max_pending >= 0")
        self.workers = workers
        self.max_pending = max_pending
        self.name = name
        self.retry_after = retry_after
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"mfdv-{name}", initializer=initializer
        )
        self._admitted = 0  # reserved + running + waiting, until the thread is done (not until the caller gives up)
        self._cancels: set[threading.Event] = set()  # of the jobs submitted and not done
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.workers + self.max_pending

    @property
    def admitted(self) -> int:
        """Places taken now: jobs reserved, waiting or running."""
        return self._admitted

    def reserve(self) -> Slot:
        """Take a place now; ``Slot.run`` uses it, leaving the ``with`` block unused gives it back.

        Raises:
            Overloaded: ``workers`` jobs are running and ``max_pending`` are waiting.
        """
        with self._lock:
            if self._admitted >= self.capacity:
                raise Overloaded(
                    f"the {self.name} pool is busy ({self.workers} running, {self.max_pending} waiting); "
                    f"retry in {self.retry_after} s",
                    retry_after=self.retry_after,
                )
            self._admitted += 1
        return Slot(self)

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a pool thread and return its result.

        Raises:
            Overloaded: ``workers`` jobs are running and ``max_pending`` are waiting.
        """
        with self.reserve() as slot:
            return await slot.run(fn, *args, **kwargs)

    def _release(self, _: Future[object] | None = None) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Stop accepting work: waiting jobs are cancelled, running ones are asked to stop (their
        ``cancel`` events are set) and waited for."""
        with self._lock:
            cancels = list(self._cancels)
        for event in cancels:
            event.set()
        self._executor.shutdown(wait=True, cancel_futures=True)


class Slot:
    """One place in a ``BoundedPool``, taken by ``BoundedPool.reserve``; a context manager that gives
    the place back unless ``run`` used it (then the job gives it back when it ends)."""

    def __init__(self, pool: BoundedPool) -> None:
        self.pool = pool
        self._held = True

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *_: object) -> None:
        self.release()

    def release(self) -> None:
        """Give the place back (no-op once ``run`` has taken it over)."""
        if self._held:
            self._held = False
            self.pool._release()

    async def run(
        self, fn: Callable[..., T], *args: object, cancel: threading.Event | None = None, **kwargs: object
    ) -> T:
        """Run ``fn(*args, **kwargs)`` in the pool on this place and return its result.

        Args:
            cancel: set when the awaiting caller is cancelled (a client gone, the grace period over)
                or the pool shuts down; ``fn`` should check it (it is not passed to ``fn``: give
                ``fn`` the same event) and stop soon after.
        """
        if not self._held:
            raise RuntimeError("this slot was released or used already")
        pool = self.pool
        job = functools.partial(fn, *args, **kwargs)
        future = pool._executor.submit(job)  # raises RuntimeError after shutdown: the slot is given back on exit
        self._held = False
        if cancel is not None:
            with pool._lock:
                pool._cancels.add(cancel)

        def done(f: Future[object]) -> None:
            if cancel is not None:
                with pool._lock:
                    pool._cancels.discard(cancel)
            pool._release(f)

        future.add_done_callback(done)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if cancel is not None:
                cancel.set()
            raise
