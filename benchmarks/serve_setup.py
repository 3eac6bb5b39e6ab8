"""What ``bench_serve`` starts and stops: a private local Ray head on free ports (no MLflow), checked for
survivors on exit, and a command's process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["private_head", "stop_group"]

REPO = Path(__file__).resolve().parents[1]


def _stop_head(local, settings, cluster) -> None:
    import shutil

    left = local.stop_all(settings, ray=True, mlflow=False)
    survivors = local.leftover_processes(cluster)
    for p in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pgid, signal.SIGKILL)
    shutil.rmtree(settings.state_dir, ignore_errors=True)
    if any(left.values()) or survivors:
        print(f"warning: killed processes left by the head: {left} {[p.pid for p in survivors]}")


@contextlib.contextmanager
def private_head(num_cpus: int = 4, attempts: int = 3):
    """A private local Ray head on free ports (no MLflow); stopped and checked for survivors on exit.

    A start that fails (on a loaded machine `ray start` can miss its GCS deadline) is cleaned up and
    retried on new ports, ``attempts`` times in all."""
    sys.path.insert(0, str(REPO))
    from cluster import local
    from cluster.local_state import private_settings as make_settings

    for attempt in range(1, attempts + 1):
        settings = make_settings(num_cpus)
        settings.start_timeout_s = 600.0  # a loaded machine
        cluster = local.LocalCluster(settings.state_dir, settings=settings)
        try:
            cluster = local.start_all(settings, ray=True, mlflow=False)
            break
        except RuntimeError as e:
            _stop_head(local, settings, cluster)
            print(f"head start {attempt}/{attempts} failed: {str(e).splitlines()[0]}", flush=True)
            if attempt == attempts:
                raise
    try:
        yield cluster
    finally:
        _stop_head(local, settings, cluster)


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a command started in its own session: SIGINT to its group, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
