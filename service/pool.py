"""A bounded thread pool for work beside the prediction batcher: attack probes, and decoding (parse, decode, render).

Predictions have their own queue and compute thread (``MicroBatcher``); work that takes
seconds, like running an attack, goes here so it can never starve predictions of the
batcher or grow an unbounded backlog: at most ``workers`` jobs run and ``max_pending``
wait; one more is refused at once with ``Overloaded`` (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from .errors import Overloaded

P = ParamSpec("P")
T = TypeVar("T")


class BoundedPool:
    """Run blocking callables in ``workers`` threads with at most ``max_pending`` waiting.

    Args:
        workers: threads (jobs running at once).
        max_pending: jobs allowed to wait for a thread.
        name: used in thread names and in the ``Overloaded`` message.
        retry_after: seconds a refused client is told to wait.
    """

    def __init__(self, workers: int, max_pending: int, name: str = "pool", retry_after: int = 5) -> None:
        if workers < 1 or max_pending < 0:
            raise ValueError(f"{name}: workers must be >= 1 and max_pending >= 0")
        self.workers = workers
        self.max_pending = max_pending
        self.name = name
        self.retry_after = retry_after
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mfdv-{name}")
        self._admitted = 0  # running + waiting, until the thread is done (not until the caller gives up)
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        return self.workers + self.max_pending

    @property
    def admitted(self) -> int:
        """Jobs running or waiting now."""
        return self._admitted

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in a pool thread and return its result.

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
        try:
            future = self._executor.submit(functools.partial(fn, *args, **kwargs))
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[object] | None) -> None:
        with self._lock:
            self._admitted -= 1

    def shutdown(self) -> None:
        """Stop accepting work; running jobs finish, waiting ones are cancelled."""
        self._executor.shutdown(wait=True, cancel_futures=True)
