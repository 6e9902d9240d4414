"""Micro-batching: concurrent requests share forward passes of one model instance.

A single asyncio task takes the most urgent waiting request, collects more for up to ``max_wait``
seconds (until ``max_batch`` items or ``max_batch_cost`` pixels), and runs the batch in a dedicated
worker thread so the event loop keeps accepting and answering requests meanwhile.

Urgency is the time a request would finish if run alone: its arrival plus its cost (pixels) at the
measured throughput. A small image that arrives while large ones wait therefore runs next, and a
large one is never starved: each later arrival's deadline lies later. The queue is bounded: when it
is full, ``submit`` raises ``QueueFull`` at once instead of letting latency grow without limit. A
caller that stops waiting (its client disconnected) cancels its future and its item is never run.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Sequence

# Assumed model throughput before the first batch has been timed (pixels per second).
INITIAL_PIXELS_PER_SECOND = 1_000_000.0


class QueueFull(Exception):
    """The request queue is at capacity; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy: request queue is full, retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The batcher was shut down (server stopping) before the request ran."""


@dataclass(order=True)
class _Job:
    deadline: float
    seq: int
    item: Any = field(compare=False)
    cost: float = field(compare=False)
    future: asyncio.Future = field(compare=False)
    enqueued: float = field(compare=False, default_factory=time.perf_counter)


class MicroBatcher:
    """Runs ``fn(list_of_items) -> list_of_results`` on batches collected from concurrent callers.

    ``fn`` always runs in the same single worker thread: one model instance is never used by two
    threads at once, and a slow forward pass never blocks the event loop. ``max_batch_cost`` bounds
    the summed cost (pixels) of one batch, so equal-sized large images do not share a forward pass
    whose activations would be several times larger than one image's. Only items with the same
    ``group(item)`` share a batch (the server groups by image size: a small image batched with a
    large one would gain nothing and wait for the large one's forward pass).
    """

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 4, max_wait: float = 0.005,
                 max_queue: int = 64, max_batch_cost: float = math.inf,
                 group: Callable[[Any], Hashable] = lambda item: None):
        if max_batch < 1 or max_queue < 1 or max_batch_cost <= 0:
            raise ValueError("max_batch, max_queue and max_batch_cost must be positive")
        self.fn = fn
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.max_batch_cost, self.group = max_batch_cost, group
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.busy = False  # a batch is in the worker thread right now
        # statistics for /metrics and Retry-After (all updated on the event loop thread)
        self.batches = 0
        self.items = 0
        self.cancelled = 0  # items whose caller left before they ran
        self.batch_sizes: dict[int, int] = {}
        self.run_seconds = 0.0
        self.wait_seconds = 0.0
        self.run_cost = 0.0
        self._avg_batch_seconds = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the collector task on the running loop (idempotent; called lazily by ``submit``)."""
        if self._task is not None and not self._task.done():
            return
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pspnet-model")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="pspnet-batcher")

    async def stop(self) -> None:
        """Cancel the collector, fail waiting requests, release the worker thread."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for job in self._heap:
            if not job.future.done():
                job.future.set_exception(BatcherStopped("server is shutting down"))
        self._heap.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._arrived = self._executor = None

    @property
    def failed(self) -> BaseException | None:
        """The exception that ended the collector task, if it died (health check)."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not counting the batch being run or callers that left)."""
        return sum(not job.future.done() for job in self._heap)

    @property
    def pixels_per_second(self) -> float:
        return self.run_cost / self.run_seconds if self.run_seconds > 0 and self.run_cost > 0 \
            else INITIAL_PIXELS_PER_SECOND

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a new request (at least 1)."""
        per_batch = self._avg_batch_seconds or 1.0
        return max(1, math.ceil((self.depth / self.max_batch + 1) * per_batch))

    # ---- requests ----------------------------------------------------------------------------
    async def submit(self, item: Any, cost: float = 1.0) -> Any:
        """Queue one item of ``cost`` (pixels) and wait for its result; raises ``QueueFull`` when at capacity.

        Cancelling the awaiting task cancels the item: it is dropped unless it is already running.
        """
        self.start()
        assert self._arrived is not None
        if self.depth >= self.max_queue:
            raise QueueFull(self.retry_after())
        now = time.perf_counter()
        job = _Job(now + cost / self.pixels_per_second, next(self._seq), item, cost,
                   asyncio.get_running_loop().create_future(), now)
        heapq.heappush(self._heap, job)
        self._arrived.set()
        return await job.future  # a cancelled caller cancels this future too

    def _pop_live(self) -> _Job | None:
        while self._heap:
            job = heapq.heappop(self._heap)
            if not job.future.done():
                return job
            self.cancelled += 1
        return None

    async def _collect(self) -> list[_Job]:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        first = self._pop_live()
        while first is None:
            self._arrived.clear()
            await self._arrived.wait()
            first = self._pop_live()
        batch, cost, key = [first], first.cost, self.group(first.item)
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            fits = [job for job in self._heap if not job.future.done() and self.group(job.item) == key]
            if fits:
                job = min(fits)
                if cost + job.cost > self.max_batch_cost:
                    break  # runs in a later batch
                self._heap.remove(job)
                heapq.heapify(self._heap)
                batch.append(job)
                cost += job.cost
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        live = [job for job in batch if not job.future.done()]  # callers that gave up meanwhile are dropped
        self.cancelled += len(batch) - len(live)
        return live

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            start = time.perf_counter()
            self.busy = True
            try:
                results = await loop.run_in_executor(self._executor, self._call, [job.item for job in batch])
            finally:
                self.busy = False
            elapsed = time.perf_counter() - start
            self.batches += 1
            self.items += len(batch)
            self.batch_sizes[len(batch)] = self.batch_sizes.get(len(batch), 0) + 1
            self.run_seconds += elapsed
            self.run_cost += sum(job.cost for job in batch)
            self.wait_seconds += sum(start - job.enqueued for job in batch)
            self._avg_batch_seconds = elapsed if self.batches == 1 else 0.8 * self._avg_batch_seconds + 0.2 * elapsed
            for job, result in zip(batch, results):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _call(self, items: list[Any]) -> list[Any]:
        """Worker thread: the batch at once; if it fails, each item alone so one bad input fails only itself."""
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
            return results
        except Exception as err:  # noqa: BLE001 - handed to the waiting request
            if len(items) == 1:
                return [err]
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.fn([item])[0])
            except Exception as err:  # noqa: BLE001
                out.append(err)
        return out
