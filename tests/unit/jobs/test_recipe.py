"""The worker recipe's pure parts (ray_jobs.recipe): typed inputs, the epoch report, first-batch timing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from etva.config import Config
from ray_jobs.recipe import INPUTS_KEY, EvalInputs, WorkerInputs, epoch_metrics, note_first


def test_inputs_travel_as_one_frozen_value_under_one_key():
    cfg = Config()
    train = WorkerInputs(cfg, "yaml", 100, {}, 4, ["a", "b"], ["c"], {"input_ids": np.zeros((1, 4))})
    ev = EvalInputs(cfg, 100, weights_ref=None, split="test", video_ids=["c"], captions={})
    for inputs in (train, ev):
        assert inputs.loop_config() == {INPUTS_KEY: inputs}
        with pytest.raises(dataclasses.FrozenInstanceError):
            inputs.cfg = Config()  # type: ignore[misc]
    assert "extra" not in {f.name for f in dataclasses.fields(WorkerInputs)}


def test_epoch_metrics_prefix_and_counts():
    stats = {"loss": np.float32(2.5), "clips": 12, "per_step": [1.0, 2.0]}  # lists are not metrics
    val = {"t2v_R1": np.float64(40.0), "t2v_MdR": 2}
    m = epoch_metrics(3, stats, val, ([1, 5], [2]), truncated=1, times=(100.0, 104.5))
    assert m == {
        "val/t2v_R1": 40.0, "val/t2v_MdR": 2.0, "train/loss": 2.5, "train/clips": 12.0, "epoch": 3, "epochs_done": 4,
        "epoch_time_s": 4.5, "timing/epoch_start": 100.0, "data/skipped_train": 2, "data/skipped_val": 1,
        "data/truncated_for_equal_batches": 1,
    }  # fmt: skip
    assert all(type(v) in (float, int) for v in m.values())
    marks = {"process_start": 90.0, "first_batch": 99.0, "epoch_starts": [100.0]}  # only the start marks
    first = epoch_metrics(0, {}, {}, ([], []), 0, (100.0, 101.0), marks)
    assert {k: v for k, v in first.items() if k.startswith("timing/")} == {
        "timing/process_start": 90.0, "timing/first_batch": 99.0, "timing/epoch_start": 100.0,
    }  # fmt: skip


def test_note_first_passes_items_and_times_only_the_first_arrival():
    timings: dict = {}
    assert list(note_first(iter("abc"), timings, "first_batch")) == ["a", "b", "c"]
    first = timings["first_batch"]
    assert list(note_first(iter("de"), timings, "first_batch")) == ["d", "e"]
    assert timings == {"first_batch": first}  # a later epoch does not move it
    assert list(note_first(iter(()), {}, "first_batch")) == []


def test_a_closed_read_ahead_stops_reading_without_being_waited_for():
    """A stopped warm trial closes its read-ahead: close() returns at once, and the thread ends after the
    read in progress instead of reading the whole epoch (the next trial runs in this process)."""
    import threading

    from ray_jobs.batches import EpochPrefetch

    release, reads = threading.Event(), []

    def rows():
        for i in range(1000):
            if i == 3:
                release.wait(30)  # a slow read in progress when the trial stops
            reads.append(i)
            yield {"i": i}

    pre = EpochPrefetch(rows(), epoch=1, depth=2)
    first = next(iter(pre))
    assert first == {"i": 0}
    pre.close()  # returns while the reader is still blocked in its read
    assert pre._thread.is_alive()
    release.set()
    pre._thread.join(timeout=30)
    assert not pre._thread.is_alive() and len(reads) <= 5, reads
