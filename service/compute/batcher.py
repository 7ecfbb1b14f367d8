"""Micro-batcher: coalesce concurrent requests into one compute call, run off the event loop.

Requests go into a bounded ``asyncio.Queue``. One worker task takes the first waiting
item, then gathers more until ``max_batch`` images are reached or ``max_wait_s`` has
passed, and hands the batch to ``process`` in a single compute thread (so the event
loop keeps accepting requests while the model runs). A full queue is an immediate
``Overloaded`` (503 + Retry-After), never an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ..errors import ModelNotReady, Overloaded
from ..metrics import ModelMetrics

logger = logging.getLogger(__name__)


class Sized(Protocol):
    @property
    def size(self) -> int:
        """Images this item adds to a batch."""
        ...


ItemT = TypeVar("ItemT", bound=Sized)
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Batched(Generic[ResultT]):
    """One item's result and how it was computed.

    Attributes:
        result: what ``process`` returned for the item.
        queue_seconds: from ``submit`` to the start of its batch's compute.
        compute_seconds: compute time of the whole batch.
        batch_size: images in that batch (all requests together).
    """

    result: ResultT
    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[Batched[ResultT]]
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher(Generic[ItemT, ResultT]):
    """Bounded queue + one worker that batches items for ``process``.

    Args:
        process: called in the compute thread with a list of items; returns one result
            per item, in order. It must not depend on how items are grouped if answers
            are to be batch-invariant.
        max_batch: most images (sum of ``item.size``) per call; an item larger than this
            runs alone.
        max_wait_s: how long to wait for more items once the first has arrived.
        queue_size: most items waiting; beyond that ``submit`` raises ``Overloaded``.
        metrics: where queue time, compute time and batch size are observed (optional).
        initializer: run once in the compute thread before its first batch (e.g. to set its
            intra-op threads).
        executor: a one-thread compute pool shared with other batchers (one per model of a
            repository: their batches take turns on the same cores); it outlives this batcher.
            Unset: the batcher starts its own compute thread and stops it in ``stop``.
    """

    def __init__(
        self,
        process: Callable[[list[ItemT]], Sequence[ResultT]],
        *,
        max_batch: int,
        max_wait_s: float,
        queue_size: int,
        metrics: ModelMetrics | None = None,
        initializer: Callable[[], None] | None = None,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if max_batch < 1 or queue_size < 1 or max_wait_s < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_s >= 0")
        self._process = process
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self._metrics = metrics
        self._initializer = initializer
        self._queue: asyncio.Queue[_Pending[ItemT, ResultT]] | None = None
        self._carry: _Pending[ItemT, ResultT] | None = None
        self._taken: list[_Pending[ItemT, ResultT]] = []  # out of the queue, not answered yet
        self._worker: asyncio.Task[None] | None = None
        self._shared = executor
        self._executor: ThreadPoolExecutor | None = None
        self._computing: concurrent.futures.Future[Sequence[ResultT]] | None = None
        self.batches = 0

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.Queue(maxsize=self.queue_size)
        self._executor = self._shared or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mfdv-compute", initializer=self._initializer
        )
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="mfdv-batcher")

    async def stop(self) -> None:
        """Stop the worker; items still waiting fail with ``ModelNotReady``."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        waiting = [*self._taken, *([self._carry] if self._carry else [])]
        self._taken, self._carry = [], None
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for p in waiting:
            if not p.future.done():
                p.future.set_exception(ModelNotReady("the service is shutting down; retry on another replica"))
        if self._executor is not None:
            executor, self._executor = self._executor, None
            if executor is not self._shared:
                await asyncio.to_thread(
                    executor.shutdown, wait=True
                )  # the batch in compute ends; the loop keeps serving
            elif self._computing is not None:  # a shared pool outlives us: only our batch in compute must end
                await asyncio.to_thread(concurrent.futures.wait, [self._computing])
        self._computing = None

    async def submit(self, item: ItemT) -> Batched[ResultT]:
        """Queue ``item`` and wait for its result.

        Raises:
            ModelNotReady: the batcher is not running.
            Overloaded: the queue is full.
        """
        if not self.running or self._queue is None:
            raise ModelNotReady()
        pending: _Pending[ItemT, ResultT] = _Pending(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(pending)
        except asyncio.QueueFull:
            raise Overloaded(
                f"the prediction queue is full ({self.queue_size} requests waiting); retry after a second"
            ) from None
        return await pending.future

    async def _next_batch(self) -> list[_Pending[ItemT, ResultT]]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, total = self._taken, first.item.size
        batch.append(first)
        deadline = time.perf_counter() + self.max_wait_s
        while total < self.max_batch:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        nxt = await self._queue.get()
                except TimeoutError:
                    break
            if total + nxt.item.size > self.max_batch:
                self._carry = nxt  # first in line for the next batch
                break
            batch.append(nxt)
            total += nxt.item.size
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [p for p in await self._next_batch() if not p.future.done()]  # drop cancelled requests
            if not batch:
                self._taken = []
                continue
            items = [p.item for p in batch]
            size = sum(i.size for i in items)
            start = time.perf_counter()
            try:
                assert self._executor is not None
                self._computing = self._executor.submit(self._process, items)
                results = await asyncio.wrap_future(self._computing, loop=loop)
                if len(results) != len(items):
                    raise RuntimeError(f"process returned {len(results)} results for {len(items)} items")
            except Exception as exc:
                logger.exception("batch of %d items failed", len(items))
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                self._taken = []
                continue
            compute = time.perf_counter() - start
            self.batches += 1
            if self._metrics is not None:
                self._metrics.compute.observe(compute)
                self._metrics.batch_size.observe(size)
            for p, r in zip(batch, results, strict=True):
                queued = start - p.enqueued
                if self._metrics is not None:
                    self._metrics.queue.observe(queued)
                if not p.future.done():
                    p.future.set_result(Batched(r, queued, compute, size))
            self._taken = []
