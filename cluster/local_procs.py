"""Process-group (and small HTTP/port) helpers for the local cluster scripts (Linux, read from /proc; no psutil needed).

A server is started in its own session (`start_new_session=True`), so its process-group id equals the
pid of the process we spawned. Stopping collects the group, every descendant (Ray's job supervisor and
MLflow's job runner start children in new sessions, which leave the group) and every process whose
command line names a marker string unique to this cluster (the Ray temp dir), then SIGTERM, a grace
period, SIGKILL.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Proc:
    """One live process as seen in /proc."""

    pid: int
    ppid: int
    pgid: int
    state: str  # one letter from /proc/<pid>/stat: R, S, D, Z, ...
    cmdline: str


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rfind(")") + 2 :].split()  # after "pid (comm) "
    return fields[0], int(fields[1]), int(fields[2])  # state, ppid, pgrp


def _read_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def read_environ(pid: int) -> dict[str, str]:
    """Environment of a process (empty when unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def list_procs() -> list[Proc]:
    """Every live (non-zombie) process on the machine."""
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        procs.append(Proc(int(entry), stat[1], stat[2], stat[0], _read_cmdline(int(entry))))
    return procs


def mentions(proc: Proc, marker: str) -> bool:
    """True when the marker appears in the process's command line or environment values."""
    return marker in proc.cmdline or any(marker in v for v in read_environ(proc.pid).values())


def collect(pgid: int | None, marker: str) -> list[Proc]:
    """Processes that belong to a server: its group (if the group mentions the marker), the group's
    descendants, and any process whose command line names the marker."""
    procs = list_procs()
    group = [p for p in procs if pgid is not None and p.pgid == pgid]
    if group and not any(mentions(p, marker) for p in group):
        log.warning("process group %s does not mention %s: not ours, left alone", pgid, marker)
        group = []
    owned = {p.pid: p for p in group}
    children: dict[int, list[Proc]] = {}
    for p in procs:
        children.setdefault(p.ppid, []).append(p)
    frontier = list(owned)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child.pid not in owned:
                owned[child.pid] = child
                frontier.append(child.pid)
    for p in procs:
        if marker in p.cmdline and p.pid != os.getpid():
            owned.setdefault(p.pid, p)
    owned.pop(os.getpid(), None)
    return sorted(owned.values(), key=lambda p: p.pid)


def alive(pids: list[int]) -> list[int]:
    """The pids among `pids` that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        stat = _read_stat(pid)
        if stat is not None and stat[0] not in ("Z", "X"):
            out.append(pid)
    return out


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(pids: list[int], timeout_s: float = 0.0) -> None:
    """Collect exit statuses of our own children (a server spawned by this process would otherwise
    stay a zombie and keep its process group alive). A multi-threaded leader shows as a zombie before
    it can be reaped, hence the retry until `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] != 0:
                    break
            except ChildProcessError:  # not our child, or already reaped
                break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.02)


def _wait_gone(pids: list[int], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        _reap(left)
        left = alive(left)
    if not left:
        _reap(pids, timeout_s=2.0)
    return left


def terminate(procs: list[Proc], grace_s: float) -> list[int]:
    """SIGTERM, wait up to `grace_s`, SIGKILL the rest; returns pids still alive after that (none
    expected)."""
    pids = [p.pid for p in procs]
    _signal_all(pids, signal.SIGTERM)
    left = _wait_gone(pids, grace_s)
    if left:
        log.info("SIGKILL to %d process(es) still alive after %.1f s", len(left), grace_s)
        _signal_all(left, signal.SIGKILL)
        left = _wait_gone(left, 5.0)
    return left


def rss_mb(procs: list[Proc]) -> float:
    """Summed resident memory of `procs` in MiB (shared pages counted per process: an upper bound)."""
    total_kb = 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024.0


def spawn_detached(cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start `cmd` in a new session (pgid = its pid) with stdout/stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def http_status(url: str, token: str | None = None, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET (None when nothing answers)."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code
    except (urllib.error.URLError, OSError):
        return None


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
