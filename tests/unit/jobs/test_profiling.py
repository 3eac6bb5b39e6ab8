"""Epoch profiling (ray_jobs.profiling) and the next-epoch prefetch (ray_jobs.batches.EpochPrefetch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from ray_jobs.batches import EpochPrefetch
from ray_jobs.profiling import (
    PROFILE_DIR_ENV,
    PROFILE_EPOCH_ENV,
    cpu_by_role,
    epoch_profile,
    node_cpu,
    process_started_at,
    profile_for_epoch,
    role,
)

# burn CPU, say so in a marker file, then stay alive (a process that has exited by the end of the window is
# not counted). Tests wait for the marker, not for a time: on a loaded machine the burn takes longer.
BURN = (
    "import pathlib, time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    "pathlib.Path({marker!r}).touch()\ntime.sleep(600)\n"
)
needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _burner(title: str, seconds: float, marker) -> subprocess.Popen:
    """A real process that burns ``seconds`` of CPU under the process title ``title`` (like Ray's), then
    creates ``marker``."""
    code = BURN.format(s=seconds, marker=str(marker))
    return subprocess.Popen(["bash", "-c", f'exec -a "{title}" {sys.executable} -c "$0"', code])


def _wait_for(path, proc: subprocess.Popen, limit_s: float = 300.0) -> None:
    deadline = time.monotonic() + limit_s
    while not path.exists():
        assert proc.poll() is None, "the CPU burner exited early"
        assert time.monotonic() < deadline, f"the CPU burner did not finish its burn in {limit_s} s"
        time.sleep(0.05)


def test_roles_follow_ray_process_titles():
    assert role("ray::MapBatches(decode_stage)", 5, 1) == "decode tasks"
    assert role("ray::RayTrainWorker._execute", 5, 1) == "train worker"
    assert role("ray::SplitCoordinator.get", 5, 1) == "ray data coordinator"
    assert role("/usr/bin/raylet --node", 5, 1) == "ray system"
    assert role("anything", 1, 1) == "this process"
    assert role("kworker/0:1", 5, 1) == "other"


@needs_proc
def test_cpu_of_a_busy_child_process_is_counted_as_loader_work(tmp_path):
    marker = tmp_path / "burnt"
    proc = _burner("python dataloader-worker", 0.4, marker)  # a child of this process, like DataLoader workers
    try:
        with epoch_profile("demo", tmp_path) as extra:
            _wait_for(marker, proc)
            extra.update(clips=12, notes={"ray_data_stats": "Operator 1 MapBatches"})
    finally:
        proc.kill()
        proc.wait()
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["cpu_s_by_role"]["loader workers"] >= 0.3
    assert report["clips"] == 12 and "notes" not in report
    assert (tmp_path / "demo.ray_data_stats.txt").read_text() == "Operator 1 MapBatches"
    assert report["wall_s"] >= 0.4 and report["cpu_s_total"] >= 0.3
    assert report["idle_core_s"] >= 0.0
    assert "function calls" in (tmp_path / "demo.pstats.txt").read_text()


@needs_proc
def test_snapshots_see_this_process_and_a_child_started_between_them(tmp_path):
    before = node_cpu()
    assert os.getpid() in before and before[os.getpid()][1] > 0
    marker = tmp_path / "burnt"
    live = _burner("ray::MapBatches(decode_stage)", 0.5, marker)  # started after the first snapshot: from zero
    try:
        _wait_for(marker, live)
        roles = cpu_by_role(before, node_cpu(), me=os.getpid())
        assert roles.get("decode tasks", 0.0) > 0.2
    finally:
        live.kill()
        live.wait()


@needs_proc
def test_process_start_time_is_the_creation_time():
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
    try:
        started = process_started_at(proc.pid)
        # /proc/stat's boot time is whole seconds: the creation time is exact to within 1 s + a tick
        assert t0 - 1.05 <= started <= time.time() + 1.05
    finally:
        proc.wait()


def test_profile_only_the_asked_epoch_on_rank_0(tmp_path, monkeypatch):
    monkeypatch.setenv(PROFILE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(PROFILE_EPOCH_ENV, "1")
    for epoch, rank in ((0, 0), (1, 1)):
        with profile_for_epoch(epoch, rank, f"e{epoch}r{rank}") as extra:
            assert extra is None
    assert list(tmp_path.iterdir()) == []
    with profile_for_epoch(1, 0, "e1r0") as extra:
        extra["notes"] = {"stats": "Ray Data stats text"}
    assert (tmp_path / "e1r0.stats.txt").read_text() == "Ray Data stats text"
    assert json.loads((tmp_path / "e1r0.json").read_text())["label"] == "e1r0"


def test_prefetch_yields_every_item_in_order_and_stays_bounded():
    produced = []

    def rows():
        for i in range(10):
            produced.append(i)
            yield {"i": i}

    stream = EpochPrefetch(rows(), epoch=3, depth=2)
    time.sleep(0.3)  # the reader runs ahead only as far as the queue allows
    assert len(produced) <= 4
    assert [b["i"] for b in stream] == list(range(10)) and stream.epoch == 3


def test_prefetch_reraises_the_reader_error_in_the_consumer():
    def rows():
        yield {"i": 0}
        raise ValueError("decode stage failed: clip7.mp4")

    stream = iter(EpochPrefetch(rows(), epoch=0))
    assert next(stream) == {"i": 0}
    with pytest.raises(ValueError, match="clip7.mp4"):
        next(stream)


def test_prefetch_reads_in_a_daemon_thread():
    seen = {}

    def rows():
        seen["thread"] = threading.current_thread()
        yield {}

    list(EpochPrefetch(rows(), epoch=0))
    assert seen["thread"] is not threading.main_thread() and seen["thread"].daemon
