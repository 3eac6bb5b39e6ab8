"""The replica's micro-batcher: the next batch is everything that queued while the previous one computed.

Deterministic: the compute function blocks on an event, so the test waits on state, never on time."""

from __future__ import annotations

import asyncio
import threading

import pytest

from ray_jobs.serve_batching import MicroBatcher


class Gate:
    """A compute function that records its batches and blocks until released."""

    def __init__(self, fail_on: object = None) -> None:
        self.batches: list[list] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail_on = fail_on

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.started.set()
        self.release.wait(30)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [x * 10 for x in items]


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.001)


def test_requests_that_queue_during_a_batch_form_the_next_one_whole():
    """Serve's @serve.batch cut these into batches of one or two (ray_jobs/serve_batching.py)."""

    async def main():
        gate = Gate()
        batcher = MicroBatcher(gate, max_batch=32, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(gate.started.wait, 30)  # batch [0] is computing, blocked
        rest = [asyncio.create_task(batcher.submit(i)) for i in range(1, 41)]
        await _until(lambda: batcher._queue.qsize() == 40)
        gate.release.set()
        results = await asyncio.gather(first, *rest)
        return gate.batches, results, batcher

    batches, results, batcher = asyncio.run(main())
    assert results == [i * 10 for i in range(41)]  # each caller gets its own answer
    assert batches == [[0], list(range(1, 33)), list(range(33, 41))]  # whole, capped at max_batch
    assert (batcher.batches, batcher.items, batcher.largest) == (3, 41, 32)


def test_a_failing_batch_fails_its_requests_and_the_next_batch_still_runs():
    async def main():
        gate = Gate(fail_on=2)
        gate.release.set()
        batcher = MicroBatcher(gate, max_batch=4, wait_s=0.0)
        bad = await asyncio.gather(batcher.submit(2), return_exceptions=True)
        good = await batcher.submit(3)
        return bad, good

    bad, good = asyncio.run(main())
    assert isinstance(bad[0], ValueError) and "bad item 2" in str(bad[0])
    assert good == 30


def test_a_cancelled_request_is_not_computed():
    async def main():
        gate = Gate()
        batcher = MicroBatcher(gate, max_batch=8, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.to_thread(gate.started.wait, 30)
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await _until(lambda: batcher._queue.qsize() == 2)
        gone.cancel()
        gate.release.set()
        return gate.batches, await first, await kept

    batches, first, kept = asyncio.run(main())
    assert (first, kept) == (10, 30)
    assert batches == [[1], [3]]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(lambda xs: xs, max_batch=0, wait_s=0.0)
