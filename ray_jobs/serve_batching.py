"""Batching of concurrent search requests on a replica: a batch forms when the compute slot frees.

Why not Serve's ``@serve.batch`` (Ray 2.60, ``ray/serve/batching.py``, ``_BatchQueue._process_batches``):
it cuts the queue into a batch every ``batch_wait_timeout_s`` and only then waits for its
``max_concurrent_batches`` slot. While one batch computes, the loop keeps cutting the requests that
arrive into more batches of one or two, which then compute one after the other: with 32 clients, a 2 ms
wait and a 60 ms product over 100k vectors, measured batch sizes were 1-4 (about 15 queries/s, the speed of
one query at a time). Here the next batch is cut only once the previous one has finished: it is everything
that queued meanwhile (up to ``max_batch``), so the batch grows with the load, and the vectors are read once
per batch. A lone request waits ``wait_s`` for company when nothing else is queued.

Pure asyncio (no Ray): :class:`MicroBatcher` runs its compute function in a worker thread, so the event
loop keeps accepting requests (which form the next batch) while a batch computes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MicroBatcher"]

log = logging.getLogger(__name__)

SUMMARY_EVERY_S = 60.0  # one log line of batch statistics at most this often


class MicroBatcher:
    """Submit items one at a time; ``compute(items) -> results`` (same length, same order) runs on batches.

    Args:
        compute: a blocking function of a list of items, run in a worker thread, one batch at a time.
        max_batch: the most items in one batch.
        wait_s: how long a lone item waits for company before it computes alone.
    """

    def __init__(self, compute: Callable[[list], list], max_batch: int, wait_s: float) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: expected >= 1, got {max_batch}")
        self.compute, self.max_batch, self.wait_s = compute, max_batch, wait_s
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0  # batches computed
        self.items = 0  # items answered
        self.largest = 0  # the largest batch so far
        self._since = (time.monotonic(), 0, 0, 0.0)  # start of the summary window, batches, items, busy s

    async def submit(self, item: Any) -> Any:
        """The result of ``item``, computed in a batch with whatever else is waiting."""
        if self._worker is None or self._worker.done():  # first use on this event loop
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self._queue.get()]
        if self._queue.empty() and self.wait_s > 0:
            await asyncio.sleep(self.wait_s)
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [(item, f) for item, f in batch if not f.done()]  # a cancelled request is not computed

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            t0 = time.monotonic()
            try:
                results = await asyncio.to_thread(self.compute, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"compute returned {len(results)} results for {len(batch)} items")
            except Exception as e:  # every request of the batch gets the error; the loop goes on
                for _, f in batch:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), result in zip(batch, results):
                if not f.done():
                    f.set_result(result)
            self._count(len(batch), time.monotonic() - t0)

    def _count(self, n: int, busy_s: float) -> None:
        self.batches += 1
        self.items += n
        self.largest = max(self.largest, n)
        start, batches, items, busy = self._since
        batches, items, busy = batches + 1, items + n, busy + busy_s
        now = time.monotonic()
        if now - start >= SUMMARY_EVERY_S:
            log.info(
                "search: %d queries in %d batches over %.0f s (%.1f per batch, %.0f ms compute per batch)",
                items,
                batches,
                now - start,
                items / batches,
                1e3 * busy / batches,
            )
            self._since = (now, 0, 0, 0.0)
        else:
            self._since = (start, batches, items, busy)
