"""Profile one training epoch: where the node's CPU time went, and where this process's loop spent it.

Set ``ETVA_PROFILE_EPOCH=<n>`` (and optionally ``ETVA_PROFILE_DIR``, default ``/tmp/etva-profile``) for a
job: rank 0 wraps the training pass of epoch ``n`` in :func:`epoch_profile`, which writes two files:

- ``<label>.json``: the pass's wall time; the CPU seconds every process on the node used during it,
  summed by role (train worker, decode tasks, Ray Data coordinator, Ray Train controller, Ray system
  daemons, other); this process's CPU by thread; the step timings the caller adds.
- ``<label>.pstats.txt``: cProfile of the calling thread (the training loop), top functions by own time;
- ``<label>.<name>.txt`` for each text the caller adds under ``notes`` (Ray Data's stats).

A process that exits before the end of the block takes its CPU time with it (Ray's task workers and
DataLoader's persistent workers outlive an epoch). The plain-PyTorch path of
``benchmarks.bench_ray_overhead`` uses the same code, so both paths are measured by one piece of code.
Reads ``/proc`` (Linux); elsewhere the CPU tables are empty.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

PROFILE_EPOCH_ENV = "ETVA_PROFILE_EPOCH"
PROFILE_DIR_ENV = "ETVA_PROFILE_DIR"
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# process role by its title (Ray names worker processes "ray::<actor or task>"); first match wins
ROLES = (
    ("ray::RayTrainWorker", "train worker"),
    ("ray::_RayTrainWorker", "train worker"),
    ("ray::SplitCoordinator", "ray data coordinator"),
    ("ray::MapBatches", "decode tasks"),
    ("ray::ReadItems", "decode tasks"),
    ("ray::TrainController", "ray train controller"),
    ("ray::IDLE", "ray idle workers"),
    ("ray::", "ray other tasks"),
    ("raylet", "ray system"),
    ("gcs_server", "ray system"),
    ("dashboard", "ray system"),
    ("log_monitor", "ray system"),
    ("runtime_env", "ray system"),
    ("ray/_private", "ray system"),
)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # the process or thread ended between listing and reading
        return ""


def _stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the parenthesised name (field 3 onwards)."""
    return stat[stat.rfind(")") + 2 :].split()


def _cpu_seconds(stat: str) -> float:
    """utime + stime of a /proc/<pid>/stat line."""
    fields = _stat_fields(stat)
    return (int(fields[11]) + int(fields[12])) / _TICK if len(fields) > 12 else 0.0


def node_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (title, CPU seconds so far)} of every process on this node."""
    out = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        title = _read(f"/proc/{entry}/cmdline").replace("\0", " ").strip()
        title = title or stat[stat.find("(") + 1 : stat.rfind(")")]
        out[int(entry)] = (title, _cpu_seconds(stat))
    return out


def thread_cpu(pid: int) -> dict[str, float]:
    """{'<tid> <name>': CPU seconds} of the threads of ``pid``."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base) if os.path.isdir(base) else []:
        stat = _read(f"{base}/{tid}/stat")
        if stat:
            out[f"{tid} {_read(f'{base}/{tid}/comm').strip()}"] = _cpu_seconds(stat)
    return out


def process_started_at(pid: int | str = "self") -> float:
    """Unix time at which process ``pid`` was created (from /proc; 0.0 where /proc is missing)."""
    stat, boot = _read(f"/proc/{pid}/stat"), _read("/proc/stat")
    btime = [line.split()[1] for line in boot.splitlines() if line.startswith("btime ")]
    fields = _stat_fields(stat)
    if not btime or len(fields) < 20:
        return 0.0
    return int(btime[0]) + int(fields[19]) / _TICK


def role(title: str, pid: int, me: int) -> str:
    if pid == me:
        return "this process"
    for needle, name in ROLES:
        if needle in title:
            return name
    return "other"


def cpu_by_role(before: dict, after: dict, me: int, children=()) -> dict:
    """CPU seconds used between two :func:`node_cpu` snapshots, summed by role (new processes count from 0)."""
    kids = set(children)
    roles: dict[str, float] = {}
    for pid, (title, cpu) in after.items():
        used = cpu - before.get(pid, (title, 0.0))[1]
        if used <= 0:
            continue
        name = "loader workers" if pid in kids else role(title, pid, me)
        roles[name] = roles.get(name, 0.0) + used
    return dict(sorted(roles.items(), key=lambda kv: -kv[1]))


def _children(pid: int) -> list[int]:
    out = []
    for tid in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        out += [int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split()]
    return out


@contextmanager
def epoch_profile(label: str, out_dir: str | Path):
    """Profile the enclosed block (one training pass). Yields a dict the caller may add figures to
    (e.g. ``clips``, ``data_wait_s``) and ``notes`` ({name: text}); written to ``out_dir`` at exit."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    extra: dict = {}
    nodes0, threads0 = node_cpu(), thread_cpu(me)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        yield extra
    finally:
        prof.disable()
        wall = time.perf_counter() - t0
        nodes1, threads1 = node_cpu(), thread_cpu(me)
        by_role = cpu_by_role(nodes0, nodes1, me, _children(me))
        threads = {t: round(c - threads0.get(t, 0.0), 3) for t, c in threads1.items()}
        report = {
            "label": label,
            "wall_s": wall,
            "cores": os.cpu_count(),
            "cpu_s_by_role": {k: round(v, 3) for k, v in by_role.items()},
            "cpu_s_total": round(sum(by_role.values()), 3),
            "idle_core_s": round(max(0.0, wall * (os.cpu_count() or 1) - sum(by_role.values())), 3),
            "this_process_threads_cpu_s": dict(sorted(threads.items(), key=lambda kv: -kv[1])[:12]),
            **{k: v for k, v in extra.items() if k != "notes"},
        }
        (out / f"{label}.json").write_text(json.dumps(report, indent=2))
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
        (out / f"{label}.pstats.txt").write_text(text.getvalue())
        for name, note in extra.get("notes", {}).items():
            (out / f"{label}.{name}.txt").write_text(str(note))


def profile_for_epoch(epoch: int, rank: int, label: str):
    """The :func:`epoch_profile` of this epoch when ``ETVA_PROFILE_EPOCH`` asks for it (rank 0 only);
    otherwise a context that yields None."""
    wanted = os.environ.get(PROFILE_EPOCH_ENV, "").strip()
    if rank != 0 or not wanted or int(wanted) != epoch:
        return nullcontext(None)
    return epoch_profile(label, os.environ.get(PROFILE_DIR_ENV) or "/tmp/etva-profile")
