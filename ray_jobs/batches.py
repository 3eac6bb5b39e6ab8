"""Rows to batches, in one place: what a Train worker does to its Ray Data shard before the engine.

Training: decoded rows -> failed clips counted and removed -> equal size over ranks (the cross-rank
gather needs it) -> one caption sampled per video -> model-ready numpy batch. Evaluation: every video of
the shard once, and this rank's slice of the split's captions. Failed clips are counted by video index on
each rank (:class:`SkipTracker`) and gathered after the epoch (:func:`gather_skips`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from etva.config import Config
from etva.distributed import gather_objects

logger = logging.getLogger(__name__)

VIDEO_KEYS = ("frames", "audio_mel", "audio_mask")
SHUFFLE_BUFFER_BATCHES = 2  # local shuffle buffer, in batches: more mixes better, delays the first batch
# fault injection for tests (never set by users): the last rank's worker process exits on the first
# batch of this epoch; with a marker file it fires only once (the file is created when it fires)
FAIL_AT_EPOCH_ENV = "ETVA_FAIL_AT_EPOCH"
FAIL_ONCE_MARKER_ENV = "ETVA_FAIL_ONCE_MARKER"


class SkipTracker:
    """Counts clips that failed to decode (by video index) on this rank."""

    def __init__(self) -> None:
        self.skipped: set[int] = set()
        self.seen = 0
        self.truncated = 0

    def filter(self, batch: dict) -> dict:
        ok = np.asarray(batch.get("ok", np.ones(len(batch["video_index"]), dtype=bool)), dtype=bool)
        self.seen += len(ok)
        if ok.all():
            return batch
        self.skipped.update(int(v) for v in np.asarray(batch["video_index"])[~ok])
        return {k: np.asarray(v)[ok] for k, v in batch.items()}


def _equalize(batch: dict, world: int) -> dict:
    """Truncate to the smallest batch over ranks (cross-rank gathers need equal sizes)."""
    if world == 1:
        return batch
    n = torch.tensor([len(batch["video_index"])])
    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
    m = int(n)
    return batch if m == len(batch["video_index"]) else {k: v[:m] for k, v in batch.items()}


def sample_captions(batch: dict, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Pick one caption per video: returns (input_ids (B, L), caption_index (B,))."""
    ids = np.asarray(batch["caption_ids"])  # (B, C, L)
    count = np.asarray(batch["caption_count"])  # (B,)
    pick = (rng.random(len(count)) * count).astype(np.int64)
    return ids[np.arange(len(count)), pick], np.asarray(batch["caption_first"]) + pick


def _writable(v):
    """Ray Data's numpy batches are zero-copy views of read-only Arrow/object-store memory; torch warns
    ("The given NumPy array is not writable") and must not wrap them. One copy here, where they leave Ray."""
    return v.copy() if isinstance(v, np.ndarray) and not v.flags.writeable else v


def _video_columns(batch: dict) -> dict:
    keys = [*VIDEO_KEYS, "video_index", *(k for k in batch if k.startswith("feat"))]
    return {k: _writable(batch[k]) for k in keys if k in batch}


def train_rows(shard, cfg: Config, epoch: int, rank: int) -> Iterator[dict]:
    """The shard's rows for one epoch, in batches (numpy, straight from Ray Data)."""
    # blocks arrive in a new random order each epoch (ray_jobs.data); rows mix within a local buffer,
    # except with train.group_batches, where each block is one batch of whole groups
    if cfg.train.group_batches:
        return iter(shard.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2))
    seed = int(np.random.SeedSequence([cfg.train.seed, epoch, rank]).generate_state(1)[0])
    return iter(
        shard.iter_batches(
            batch_size=cfg.train.batch_size,
            batch_format="numpy",
            drop_last=True,
            prefetch_batches=2,
            local_shuffle_buffer_size=SHUFFLE_BUFFER_BATCHES * cfg.train.batch_size,
            local_shuffle_seed=seed,
        )
    )


class EpochPrefetch:
    """Start reading an epoch's rows early, in a thread, into a small bounded queue.

    The recipe starts epoch ``e + 1`` when the training pass of epoch ``e`` ends, so that Ray Data's
    start-up for the new epoch (a fresh execution each epoch, about 1 s on a 2-core machine before its
    first block: docs/platform.md) runs during evaluation and checkpointing instead of stalling the
    next training pass. Only Ray Data is touched in the thread; collectives stay in the training thread.
    """

    _END = object()

    def __init__(self, rows: Iterator[dict], epoch: int, depth: int = 2) -> None:
        self.epoch = epoch
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(rows,), name=f"etva-prefetch-{epoch}")
        self._thread.daemon = True  # a failed run must not wait for it
        self._thread.start()

    def _put(self, item) -> bool:
        """Queue ``item``, waiting for room until it is taken or the prefetch is closed (False)."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, rows: Iterator[dict]) -> None:
        try:
            for batch in rows:
                if not self._put(batch):
                    return  # closed: stop reading (the iterator's Ray Data execution ends with it)
            self._put(self._END)
        except BaseException as e:  # re-raised in the training thread
            self._put(e)

    def close(self) -> None:
        """Stop reading ahead: the thread ends once its current read returns (it puts nothing more). Not
        waited for: a warm Tune trial process must end its trial's thread within seconds (Tune's reset)."""
        self._closed.set()

    def __iter__(self) -> Iterator[dict]:
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


def train_batches(
    shard, cfg: Config, epoch: int, rank: int, world: int, tracker: SkipTracker, rows=None
) -> Iterator[dict]:
    """Model-ready training batches: one sampled caption per video, failed clips removed. ``rows``: the
    epoch's rows already being read (an :class:`EpochPrefetch`); default: read ``shard`` now."""
    rng = np.random.default_rng([cfg.train.seed, epoch, rank])
    fail = _fail_at_epoch() == epoch and rank == world - 1
    rows = train_rows(shard, cfg, epoch, rank) if rows is None else rows
    for step, raw in enumerate(rows):
        if fail and step == 0:  # first batch of the epoch has arrived: die mid-epoch
            _inject_failure(os.environ.get(FAIL_ONCE_MARKER_ENV, ""))
        batch = tracker.filter(raw)
        before = len(batch["video_index"])
        batch = _equalize(batch, world)
        tracker.truncated += before - len(batch["video_index"])
        if len(batch["video_index"]) < 2:
            continue
        ids, cap_index = sample_captions(batch, rng)
        out = _video_columns(batch)
        out.update(input_ids=ids, attention_mask=(ids != 0).astype(np.int64), caption_index=cap_index)
        yield out


def _fail_at_epoch() -> int:
    value = os.environ.get(FAIL_AT_EPOCH_ENV, "")
    return int(value) if value.strip() else -1


def _inject_failure(marker: str) -> None:
    """Fault injection for tests: kill this worker process once (marker file makes it fire once)."""
    if marker and os.path.exists(marker):
        return
    if marker:
        Path(marker).write_text(f"injected failure in pid {os.getpid()}\n")
    logger.error("fault injection: worker process exiting now")
    os._exit(1)


def eval_video_batches(shard, batch_size: int, tracker: SkipTracker) -> Iterator[dict]:
    """Every video of the shard once (failed clips counted and removed)."""
    for raw in shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
        batch = tracker.filter(raw)
        if len(batch["video_index"]):
            yield _video_columns(batch)


def eval_caption_batches(captions: dict, rank: int, world: int, batch_size: int) -> Iterator[dict]:
    """This rank's slice of the split's captions (every caption is encoded exactly once overall)."""
    idx = np.arange(rank, len(captions["video_index"]), world)
    for s in range(0, len(idx), batch_size):
        sel = idx[s : s + batch_size]
        yield {
            "input_ids": captions["input_ids"][sel],
            "attention_mask": captions["attention_mask"][sel],
            "caption_index": sel.astype(np.int64),
            "video_index": captions["video_index"][sel],
        }


def gather_skips(tracker: SkipTracker, world: int) -> tuple[list[int], int, int]:
    """(skipped video indices, clips seen, clips truncated) summed over every rank."""
    mine = (sorted(tracker.skipped), tracker.seen, tracker.truncated)
    parts = gather_objects(mine) if world > 1 else [mine]
    skipped = sorted({v for p in parts for v in p[0]})
    return skipped, sum(p[1] for p in parts), sum(p[2] for p in parts)


def check_skips(split: str, skipped: list[int], total: int, names: list[str], limit: float) -> None:
    """Abort (naming the first clips) when more than ``limit`` of ``total`` clips failed."""
    if total and len(skipped) / total > limit:
        listed = ", ".join(names[i] for i in skipped[:20])
        raise RuntimeError(
            f"{split}: {len(skipped)} of {total} clips failed to decode "
            f"({100 * len(skipped) / total:.1f}% > data.max_skip_fraction={100 * limit:.1f}%): {listed}"
        )
