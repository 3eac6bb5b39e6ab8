"""Start and stop the local MLflow tracking server (SQLite backend, artifacts in the state directory,
127.0.0.1); `cluster.local` starts it beside the Ray head.

Upstream quirks (MLflow 3.17): `mlflow server` runs a job runner (10 processes, ~1.5 GB, a /dev/shm/tmp*
folder) unless MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false; uvicorn defaults to 4 workers (7 processes,
~1.25 GB): we use 1. Its multi-threaded parent shows as a zombie before it can be reaped (local_procs
retries waitpid).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from cluster import local_procs
from cluster.local_state import (
    MLFLOW_PORTS,
    LocalCluster,
    LocalSettings,
    already_running,
    read_record,
    record_path,
    resolve_ports,
    wait_until,
    write_record,
)

HUEY_ENV = "_MLFLOW_HUEY_STORAGE_PATH"  # MLflow's job-runner scratch dir (a /dev/shm/tmp* folder)


def start_mlflow(s: LocalSettings | None = None) -> LocalCluster:
    """Start the MLflow tracking server (idempotent) and return its URI."""
    s = s or LocalSettings.from_env()
    if (record := already_running(s, "mlflow", str(s.mlflow_db), "MLflow", "uri")) is not None:
        return _mlflow_cluster(s, record)
    s = resolve_ports(s, MLFLOW_PORTS)
    s.state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # 2 processes/~490 MB, not 10/~1.5 GB
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{s.mlflow_db}",
        "--artifacts-destination",
        str(s.state_dir / "mlartifacts"),
        "--host",
        s.host,
        "--port",
        str(s.mlflow_port),
        "--workers",
        str(s.mlflow_workers),
    ]
    log_file = s.state_dir / "mlflow.log"
    t0 = time.monotonic()
    proc = local_procs.spawn_detached(cmd, env, log_file)
    record = {"pid": proc.pid, "pgid": proc.pid, "uri": s.mlflow_uri, "cmd": cmd}
    write_record(s, "mlflow", record)
    try:
        wait_until(
            lambda: local_procs.http_status(f"{s.mlflow_uri}/health") == 200,
            s.start_timeout_s,
            "MLflow",
            proc,
            log_file,
        )
    except RuntimeError:
        stop_mlflow(s)
        raise
    record["start_s"] = round(time.monotonic() - t0, 2)
    write_record(s, "mlflow", record)
    print(f"MLflow started in {record['start_s']} s (pgid {proc.pid}): {s.mlflow_uri}")
    return _mlflow_cluster(s, record)


def _mlflow_cluster(s: LocalSettings, record: dict) -> LocalCluster:
    env = {"MLFLOW_TRACKING_URI": record["uri"]}
    return LocalCluster(
        s.state_dir, mlflow_uri=record["uri"], env=env, pgids={"mlflow": record["pgid"]}, settings=s
    )


def stop_mlflow(s: LocalSettings | None = None, grace_s: float = 5.0) -> list[int]:
    """Stop the MLflow server's process group; remove its /dev/shm job-runner folder if it made one."""
    s = s or LocalSettings.from_env()
    record = read_record(s, "mlflow")
    procs = local_procs.collect(record["pgid"] if record else None, str(s.mlflow_db))
    scratch = {local_procs.read_environ(p.pid).get(HUEY_ENV) for p in procs} - {None, ""}
    left = local_procs.terminate(procs, grace_s) if procs else []
    for path in map(Path, scratch):  # only folders named in our own processes' environment
        if path.name.startswith("tmp") and path.parent in (Path("/dev/shm"), Path(tempfile.gettempdir())):
            shutil.rmtree(path, ignore_errors=True)
    if not left:
        record_path(s, "mlflow").unlink(missing_ok=True)
    print(f"MLflow stopped ({len(procs)} process(es))" if procs else "MLflow was not running")
    return left
