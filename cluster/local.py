"""Start, stop and inspect a local Ray head (token auth on) and a local MLflow tracking server.

    python -m cluster.local start [--ray] [--mlflow] [--num-cpus N]   # idempotent; prints addresses
    python -m cluster.local stop  [--ray] [--mlflow]                  # kills by process group
    python -m cluster.local status
    source runs/local/env.sh      # then `ray job submit -- python ...`, `ray status`, ray.init(), mlflow

env.sh exports RAY_API_SERVER_ADDRESS (Jobs API, http://127.0.0.1:8265), RAY_ADDRESS (the GCS address:
`ray.init()` rejects an http:// RAY_ADDRESS), RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH and
MLFLOW_TRACKING_URI. The Python API (start_ray_head, start_mlflow, start_all, stop_all, status) returns
the same addresses as a LocalCluster.

Everything lives in one state directory ($ETVA_STATE_DIR, default <repo>/runs/local): `ray.json` and
`mlflow.json` (pid/pgid records), logs, `env.sh`, the Ray auth token `ray_auth_token` (mode 0600,
never committed: runs/ is gitignored; $ETVA_RAY_TOKEN_PATH points elsewhere), `mlflow.db` and
`mlartifacts/`. Ports: $ETVA_RAY_PORT (6380), $ETVA_DASHBOARD_PORT (8265), $ETVA_MLFLOW_PORT (5000).

Upstream quirks met here (Ray 2.60, MLflow 3.17) and what this module does about them:
- `ray start --head` turns token auth on only with RAY_AUTH_MODE=token in its environment and a readable
  token (RAY_AUTH_TOKEN > RAY_AUTH_TOKEN_PATH > ~/.ray/auth_token); every client needs the same two
  variables. Even /api/version needs the token; /api/gcs_healthz and /api/authentication_mode do not.
- `--node-ip-address=127.0.0.1` is rewritten to the machine's routable IP and the GCS listens on all
  interfaces (the dashboard stays on 127.0.0.1): the GCS address is read from <temp>/ray_current_cluster.
- `ray stop [--force]` kills every Ray process on the machine, other users' too: `stop` kills only this
  cluster's group, descendants and processes naming its temp dir; `--all-ray` adds `ray stop --force`.
- Job entrypoints start in new sessions (outside the head's process group): stop follows descendants.
- Job entrypoints inherit the head's PATH: the venv's bin dir is put first so `python` is this one.
- Pinned ports inside Ray's worker range 10002-19999 make `ray start` fail; the temp dir must be short
  (AF_UNIX socket paths < 108 bytes), hence /tmp/etva-ray-<hash> for long state paths.
- `ray.init()` rejects an http:// RAY_ADDRESS (also for address="auto"): see env.sh above.
- Ray Train's placement-group cleaner (an actor per Train run) calls the state API without an address:
  with no RAY_API_SERVER_ADDRESS it scans the machine for GCS processes and, beside another head, dies
  with "Found multiple active Ray instances". The head's environment (inherited by every worker) names
  its own dashboard.
- `mlflow server` runs a job runner (10 processes, ~1.5 GB, a /dev/shm/tmp* folder) unless
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false; uvicorn defaults to 4 workers (7 processes, ~1.25 GB): we use 1.
  Its multi-threaded parent shows as a zombie before it can be reaped (local_procs retries waitpid).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster import local_procs
from cluster.local_state import (
    LocalCluster,
    LocalSettings,
    read_record,
    record_path,
    require_free,
    running_record,
    wait_until,
    write_record,
)
from etva.config.settings import CLI_LOG_FORMAT, setup_logging

log = logging.getLogger(__name__)

HUEY_ENV = "_MLFLOW_HUEY_STORAGE_PATH"  # MLflow's job-runner scratch dir (a /dev/shm/tmp* folder)


# ------------------------------------------------------------------------------------------- Ray
def ensure_token(s: LocalSettings) -> Path:
    """Create the Ray auth token file (0600, 256 random bits like `ray get-auth-token --generate`)."""
    path = s.token_file
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        log.info("generated Ray auth token at %s", path)
    return path


def ray_client_env(s: LocalSettings) -> dict[str, str]:
    """Variables a Ray client needs for this cluster (token auth)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(s.token_file)}


def _ray_ready(s: LocalSettings, token: str) -> str | None:
    current = s.temp_dir / "ray_current_cluster"
    if not current.exists() or local_procs.http_status(f"{s.dashboard_url}/api/jobs/", token) != 200:
        return None
    return current.read_text().strip()


def _already_running(s: LocalSettings, name: str, marker: str, what: str, address_key: str) -> dict | None:
    """The record of service ``name`` when it runs already (said on stdout: start is idempotent)."""
    record, _ = running_record(s, name, marker)
    if record is not None:
        print(f"{what} already running (pgid {record['pgid']}) at {record.get(address_key)}")
    return record


def start_ray_head(s: LocalSettings | None = None) -> LocalCluster:
    """Start the Ray head (idempotent) and return its addresses."""
    s = s or LocalSettings.from_env()
    if (record := _already_running(s, "ray", str(s.temp_dir), "Ray head", "gcs_address")) is not None:
        return _ray_cluster(s, record)
    require_free(
        s,
        {
            "ETVA_RAY_PORT": s.ray_port,
            "ETVA_DASHBOARD_PORT": s.dashboard_port,
            "ETVA_RAY_CLIENT_PORT": s.ray_client_port,
            "ETVA_DASHBOARD_AGENT_PORT": s.dashboard_agent_port,
        },
    )
    token = ensure_token(s).read_text().strip()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(ray_client_env(s))
    # job entrypoints inherit this environment: `python` must be this interpreter, not the system one
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # submitted jobs too: Train's controller polls every 0.1 s, not 2 s (each report waits for a poll)
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    # Ray's state API inside the cluster (Train's placement-group cleaner asks whether its controller
    # lives) finds its cluster by this, else scans the machine and fails beside another head
    env["RAY_API_SERVER_ADDRESS"] = s.dashboard_url
    cmd = [
        str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={s.ray_port}",
        f"--dashboard-host={s.host}", f"--dashboard-port={s.dashboard_port}", f"--num-cpus={s.num_cpus}",
        f"--node-ip-address={s.host}", "--include-dashboard=true", "--disable-usage-stats",
        f"--temp-dir={s.temp_dir}",
    ]  # fmt: skip
    if s.ray_client_port is not None:
        cmd.append(f"--ray-client-server-port={s.ray_client_port}")
    if s.dashboard_agent_port is not None:
        cmd.append(f"--dashboard-agent-listen-port={s.dashboard_agent_port}")
    s.temp_dir.mkdir(parents=True, exist_ok=True)
    (s.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
    log_file = s.state_dir / "ray_start.log"
    t0 = time.monotonic()
    proc = local_procs.spawn_detached(cmd, env, log_file)
    record = {"pid": proc.pid, "pgid": proc.pid, "temp_dir": str(s.temp_dir), "cmd": cmd}
    write_record(s, "ray", record)  # written before waiting: a failed start can still be stopped
    if proc.wait(timeout=s.start_timeout_s) != 0:
        stop_ray_head(s)
        tail = log_file.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"`ray start` failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    gcs = wait_until(lambda: _ray_ready(s, token), s.start_timeout_s, "Ray Jobs API", None, log_file)
    record.update(gcs_address=gcs, dashboard_url=s.dashboard_url, start_s=round(time.monotonic() - t0, 2))
    write_record(s, "ray", record)
    print(
        f"Ray head started in {record['start_s']} s (pgid {proc.pid}): GCS {gcs}, Jobs API {s.dashboard_url}"
    )
    return _ray_cluster(s, record)


def _ray_cluster(s: LocalSettings, record: dict) -> LocalCluster:
    env = client_env(s, record.get("gcs_address"))
    env.pop("MLFLOW_TRACKING_URI")
    return LocalCluster(
        s.state_dir,
        record.get("gcs_address"),
        record.get("dashboard_url", s.dashboard_url),
        None,
        s.token_file,
        env,
        {"ray": record["pgid"]},
        s,
    )


def stop_ray_head(s: LocalSettings | None = None, all_ray: bool = False, grace_s: float = 1.0) -> list[int]:
    """Stop this cluster's Ray processes; returns pids left alive (expected: none)."""
    s = s or LocalSettings.from_env()
    record = read_record(s, "ray")
    procs = local_procs.collect(record["pgid"] if record else None, str(s.temp_dir))
    left = local_procs.terminate(procs, grace_s) if procs else []
    if all_ray:  # machine-wide: kills other users' Ray processes too
        subprocess.run([str(Path(sys.executable).parent / "ray"), "stop", "--force"], check=False)
    if not left:
        record_path(s, "ray").unlink(missing_ok=True)
    print(f"Ray head stopped ({len(procs)} process(es))" if procs else "Ray head was not running")
    return left


# ---------------------------------------------------------------------------------------- MLflow
def start_mlflow(s: LocalSettings | None = None) -> LocalCluster:
    """Start the MLflow tracking server (idempotent) and return its URI."""
    s = s or LocalSettings.from_env()
    if (record := _already_running(s, "mlflow", str(s.mlflow_db), "MLflow", "uri")) is not None:
        return _mlflow_cluster(s, record)
    require_free(s, {"ETVA_MLFLOW_PORT": s.mlflow_port})
    s.state_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # 2 processes/~490 MB, not 10/~1.5 GB
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{s.mlflow_db}",
        "--artifacts-destination", str(s.state_dir / "mlartifacts"),
        "--host", s.host, "--port", str(s.mlflow_port), "--workers", str(s.mlflow_workers),
    ]  # fmt: skip
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


def leftover_processes(cluster: LocalCluster) -> list[local_procs.Proc]:
    """Live processes still in the cluster's recorded groups or naming its Ray temp dir."""
    marker = str(cluster.settings.temp_dir) if cluster.settings else "\0"
    pgids = set(cluster.pgids.values())
    return [p for p in local_procs.list_procs() if p.pgid in pgids or marker in p.cmdline]


# ------------------------------------------------------------------------------------ together
def client_env(s: LocalSettings, gcs_address: str | None = None) -> dict[str, str]:
    """Everything a client process needs: Jobs API address, GCS address, token auth, MLflow URI.

    `ray job submit` and JobSubmissionClient read RAY_API_SERVER_ADDRESS first (then RAY_ADDRESS);
    `ray.init()` and `ray status` read RAY_ADDRESS and reject an http:// address, so RAY_ADDRESS
    carries the GCS address."""
    env = {
        "RAY_API_SERVER_ADDRESS": s.dashboard_url,
        **ray_client_env(s),
        "MLFLOW_TRACKING_URI": s.mlflow_uri,
    }
    gcs_address = gcs_address or (read_record(s, "ray") or {}).get("gcs_address")
    if gcs_address:
        env["RAY_ADDRESS"] = gcs_address
    return env


def write_env_file(s: LocalSettings, cluster: LocalCluster) -> Path:
    """Write <state>/env.sh exporting what `ray job submit` and MLflow clients need."""
    lines = ["# source this file: addresses of the local Ray head and MLflow server"]
    lines += [f"export {k}={v}" for k, v in sorted(cluster.env.items())]
    path = s.state_dir / "env.sh"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_all(s: LocalSettings | None = None, ray: bool = True, mlflow: bool = True) -> LocalCluster:
    """Start the selected services and return one LocalCluster with the merged environment."""
    s = s or LocalSettings.from_env()
    out = LocalCluster(s.state_dir, token_path=s.token_file, env=client_env(s), settings=s)
    starters = [start for wanted, start in ((ray, start_ray_head), (mlflow, start_mlflow)) if wanted]
    with ThreadPoolExecutor(max_workers=2) as pool:  # both mostly wait on subprocesses: start together
        futures = [pool.submit(start, s) for start in starters]
    for part in (f.result() for f in futures):  # re-raises a start failure (the other one still ran)
        out.ray_address = part.ray_address or out.ray_address
        out.dashboard_url = part.dashboard_url or out.dashboard_url
        out.mlflow_uri = part.mlflow_uri or out.mlflow_uri
        out.pgids.update(part.pgids)
    out.env = client_env(s, out.ray_address)
    write_env_file(s, out)
    return out


def stop_all(s: LocalSettings | None = None, ray: bool = True, mlflow: bool = True, all_ray: bool = False):
    """Stop the selected services; returns {service: pids left alive}."""
    s = s or LocalSettings.from_env()
    left = {}
    if mlflow:
        left["mlflow"] = stop_mlflow(s)
    if ray:
        left["ray"] = stop_ray_head(s, all_ray=all_ray)
    return left


def status(s: LocalSettings | None = None) -> dict:
    """Running state, addresses, pgids and RSS (MiB) of both services."""
    s = s or LocalSettings.from_env()
    out: dict = {"state_dir": str(s.state_dir), "token_path": str(s.token_file)}
    for name, marker, url in (
        ("ray", str(s.temp_dir), f"{s.dashboard_url}/api/gcs_healthz"),
        ("mlflow", str(s.mlflow_db), f"{s.mlflow_uri}/health"),
    ):
        record, procs = running_record(s, name, marker)
        out[name] = {"running": record is not None, "healthy": local_procs.http_status(url) == 200}
        if record is not None:
            keep = ("pgid", "gcs_address", "dashboard_url", "uri", "start_s")
            out[name].update({k: record[k] for k in keep if k in record})
            out[name].update(processes=len(procs), rss_mb=round(local_procs.rss_mb(procs), 1))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--ray", action="store_true", help="only the Ray head")
    parser.add_argument("--mlflow", action="store_true", help="only the MLflow server")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the Ray head (default 4)")
    parser.add_argument("--state-dir", type=Path, help="default $ETVA_STATE_DIR or <repo>/runs/local")
    parser.add_argument("--ray-port", type=int)
    parser.add_argument("--dashboard-port", type=int)
    parser.add_argument("--mlflow-port", type=int)
    parser.add_argument("--all-ray", action="store_true", help="stop: also `ray stop --force` (machine-wide)")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO, CLI_LOG_FORMAT)
    s = LocalSettings.from_env(
        state_dir=args.state_dir, num_cpus=args.num_cpus, ray_port=args.ray_port,
        dashboard_port=args.dashboard_port, mlflow_port=args.mlflow_port,
    )  # fmt: skip
    ray, mlflow = (args.ray or not args.mlflow), (args.mlflow or not args.ray)
    if args.action == "start":
        cluster = start_all(s, ray=ray, mlflow=mlflow)
        print(f"\nsource {s.state_dir / 'env.sh'}")
        for key, value in sorted(cluster.env.items()):
            print(f"  {key}={value}")
        return 0
    if args.action == "stop":
        left = stop_all(s, ray=ray, mlflow=mlflow, all_ray=args.all_ray)
        if any(left.values()):
            print(f"still alive: {left}", file=sys.stderr)
            return 1
        return 0
    print(json.dumps(status(s), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
