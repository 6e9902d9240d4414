"""Micro-batching: concurrent requests share forward passes of one model instance.

A single asyncio task takes the first waiting request, collects more for up to ``max_wait``
seconds (or until ``max_batch``), and runs the whole batch in a dedicated worker thread so the
event loop keeps accepting and answering requests meanwhile. The queue is bounded: when it is
full, ``submit`` raises ``QueueFull`` at once instead of letting latency grow without limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence


class QueueFull(Exception):
    """The request queue is at capacity; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"server busy: request queue is full, retry in {retry_after} s")
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The batcher was shut down (server stopping) before the request ran."""


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Runs ``fn(list_of_items) -> list_of_results`` on batches collected from concurrent callers.

    ``fn`` always runs in the same single worker thread: one model instance is never used by two
    threads at once, and a slow forward pass never blocks the event loop.
    """

    def __init__(self, fn: Callable[[Sequence[Any]], Sequence[Any]], max_batch: int = 4, max_wait: float = 0.005,
                 max_queue: int = 64):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be at least 1")
        self.fn = fn
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.busy = False  # a batch is in the worker thread right now
        # statistics for /metrics and Retry-After (all updated on the event loop thread)
        self.batches = 0
        self.items = 0
        self.batch_sizes: dict[int, int] = {}
        self.run_seconds = 0.0
        self.wait_seconds = 0.0
        self._avg_batch_seconds = 0.0

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the collector task on the running loop (idempotent; called lazily by ``submit``)."""
        if self._task is not None and not self._task.done():
            return
        self._queue = asyncio.Queue(maxsize=self.max_queue)
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
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.set_exception(BatcherStopped("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._task = self._queue = self._executor = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def failed(self) -> BaseException | None:
        """The exception that ended the collector task, if it died (health check)."""
        if self._task is None or not self._task.done() or self._task.cancelled():
            return None
        return self._task.exception()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue (not counting the batch being run)."""
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained enough to take a new request (at least 1)."""
        per_batch = self._avg_batch_seconds or 1.0
        return max(1, math.ceil((self.depth / self.max_batch + 1) * per_batch))

    # ---- requests ----------------------------------------------------------------------------
    async def submit(self, item: Any) -> Any:
        """Queue one item and wait for its result; raises ``QueueFull`` when at capacity."""
        self.start()
        assert self._queue is not None
        job = _Job(item, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(self.retry_after()) from None
        return await job.future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        batch = [await self._queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:  # whatever is already waiting joins at once
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [job for job in batch if not job.future.done()]  # callers that gave up are dropped

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
