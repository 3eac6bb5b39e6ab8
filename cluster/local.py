"""Start, stop and inspect a local Ray head (token auth on) and a local MLflow tracking server.

    python -m cluster.local start [--ray] [--mlflow] [--num-cpus N] [--<port flag> N]   # idempotent
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
`mlartifacts/`. Ports: --ray-port / $ETVA_RAY_PORT (6380), --dashboard-port / $ETVA_DASHBOARD_PORT (8265),
--mlflow-port / $ETVA_MLFLOW_PORT (5000); --ray-client-server-port, --dashboard-agent-listen-port,
--dashboard-agent-grpc-port and --metrics-export-port are picked when not named (PORT_FLAGS; `ray.json`
records them). `start` returns once a job can be submitted, and refuses a taken port before starting.

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
- The dashboard agent runs every submitted job. When its HTTP port (Ray's default 52365) is taken, e.g.
  by another head, the agent stays up without HTTP and the Jobs API answers every submission with "No
  available agent to submit job" while `/api/jobs/` lists fine: `start` names every agent and client port
  (Ray's default when free, else a free one), checks them all before starting anything, and returns only
  once the agent listens. MLflow's quirks: cluster/local_mlflow.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster import local_procs
from cluster.local_mlflow import start_mlflow, stop_mlflow
from cluster.local_state import (
    MLFLOW_PORTS,
    RAY_PORTS,
    LocalCluster,
    LocalSettings,
    PortError,
    agent_listen_port,
    already_running,
    read_record,
    record_path,
    resolve_ports,
    running_record,
    wait_until,
    write_record,
)
from etva.config.settings import CLI_LOG_FORMAT, setup_logging

log = logging.getLogger(__name__)


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
    """The GCS address once a job can be submitted: the Jobs API answers and the head's dashboard agent,
    which runs every submitted job, listens (a Jobs API without its agent answers "No available agent to
    submit job" to every submission); PortError when the agent could not listen."""
    current = s.temp_dir / "ray_current_cluster"
    agent_port = agent_listen_port(s)
    if agent_port == -1:
        raise PortError(
            f"the head's dashboard agent could not listen on port {s.dashboard_agent_port} (taken since the "
            "check before `ray start`), so no job could be submitted; the head was stopped. Start again, or "
            "choose another port with --dashboard-agent-listen-port"
        )
    if not current.exists() or agent_port is None:
        return None
    if local_procs.http_status(f"{s.dashboard_url}/api/jobs/", token) != 200:
        return None
    if local_procs.http_status(f"{s.agent_url}/api/local_raylet_healthz") != 200:
        return None
    return current.read_text().strip()


def _ray_env(s: LocalSettings) -> dict[str, str]:
    """The head's environment, inherited by every Ray process and job entrypoint."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(ray_client_env(s))
    # job entrypoints inherit this environment: `python` must be this interpreter, not the system one
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # submitted jobs too: Train's controller polls every 0.1 s, not 2 s (each report waits for a poll)
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    # Ray's state API inside the cluster (Train's placement-group cleaner asks whether its controller
    # lives) finds its cluster by this, else scans the machine and fails beside another head
    env["RAY_API_SERVER_ADDRESS"] = s.dashboard_url
    return env


def _ray_command(s: LocalSettings) -> list[str]:
    """`ray start --head` with every port named (resolve_ports has set them all)."""
    return [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--port={s.ray_port}",
        f"--dashboard-host={s.host}",
        f"--dashboard-port={s.dashboard_port}",
        f"--num-cpus={s.num_cpus}",
        f"--node-ip-address={s.host}",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--temp-dir={s.temp_dir}",
        f"--ray-client-server-port={s.ray_client_port}",
        f"--dashboard-agent-listen-port={s.dashboard_agent_port}",
        f"--dashboard-agent-grpc-port={s.dashboard_agent_grpc_port}",
        f"--metrics-export-port={s.metrics_export_port}",
    ]


def start_ray_head(s: LocalSettings | None = None) -> LocalCluster:
    """Start the Ray head (idempotent); return its addresses once it takes jobs. PortError (nothing
    started) when a named port is taken; unnamed agent and client ports are picked (resolve_ports)."""
    s = s or LocalSettings.from_env()
    if (record := already_running(s, "ray", str(s.temp_dir), "Ray head", "gcs_address")) is not None:
        return _ray_cluster(s, record)
    s = resolve_ports(s, RAY_PORTS)
    token = ensure_token(s).read_text().strip()
    cmd = _ray_command(s)
    s.temp_dir.mkdir(parents=True, exist_ok=True)
    (s.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
    log_file = s.state_dir / "ray_start.log"
    t0 = time.monotonic()
    proc = local_procs.spawn_detached(cmd, _ray_env(s), log_file)
    ports = {role.field: getattr(s, role.field) for role in RAY_PORTS}
    record = {"pid": proc.pid, "pgid": proc.pid, "temp_dir": str(s.temp_dir), "cmd": cmd, "ports": ports}
    write_record(s, "ray", record)  # written before waiting: a failed start can still be stopped
    try:
        if proc.wait(timeout=s.start_timeout_s) != 0:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"`ray start` failed (exit {proc.returncode}); log {log_file}:\n{tail}")
        agent_log = s.temp_dir / "session_latest" / "logs" / "dashboard_agent.log"
        what = f"Ray Jobs API with its dashboard agent (agent log {agent_log})"
        gcs = wait_until(lambda: _ray_ready(s, token), s.start_timeout_s, what, None, log_file)
    except (RuntimeError, subprocess.TimeoutExpired):
        stop_ray_head(s)
        raise
    record.update(gcs_address=gcs, dashboard_url=s.dashboard_url, start_s=round(time.monotonic() - t0, 2))
    write_record(s, "ray", record)
    print(
        f"Ray head started in {record['start_s']} s (pgid {proc.pid}): GCS {gcs}, Jobs API {s.dashboard_url}"
        f" (its agent takes jobs); ports {_port_list(ports)}"
    )
    return _ray_cluster(s, record)


def _port_list(ports: dict[str, int]) -> str:
    return ", ".join(f"{name.removesuffix('_port')} {port}" for name, port in ports.items())


def _ray_cluster(s: LocalSettings, record: dict) -> LocalCluster:
    s = dataclasses.replace(s, **record.get("ports", {}))  # a restart reuses the running head's ports
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
    roles = (RAY_PORTS if ray and running_record(s, "ray", str(s.temp_dir))[0] is None else ()) + (
        MLFLOW_PORTS if mlflow and running_record(s, "mlflow", str(s.mlflow_db))[0] is None else ()
    )
    s = resolve_ports(s, roles)  # every port of both services checked before either starts
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
            keep = ("pgid", "gcs_address", "dashboard_url", "uri", "start_s", "ports")
            out[name].update({k: record[k] for k in keep if k in record})
            out[name].update(processes=len(procs), rss_mb=round(local_procs.rss_mb(procs), 1))
    return out


_PICKED = "default: Ray's {} when free, else a free port outside Ray's worker range 10002-19999"
PORT_FLAGS = (  # flag, help; every port is checked before anything starts
    ("--ray-port", "Ray GCS (default $ETVA_RAY_PORT or 6380)"),
    ("--dashboard-port", "Jobs API and dashboard (default $ETVA_DASHBOARD_PORT or 8265)"),
    ("--mlflow-port", "MLflow server (default $ETVA_MLFLOW_PORT or 5000)"),
    ("--ray-client-server-port", f"Ray client server (ray://); {_PICKED.format(10001)}"),
    ("--dashboard-agent-listen-port", f"the agent that runs submitted jobs; {_PICKED.format(52365)}"),
    ("--dashboard-agent-grpc-port", "the agent's gRPC port; default: a free port"),
    ("--metrics-export-port", "Prometheus metrics; default: a free port"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cluster.local", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--ray", action="store_true", help="only the Ray head")
    parser.add_argument("--mlflow", action="store_true", help="only the MLflow server")
    parser.add_argument("--num-cpus", type=int, help="logical CPUs of the Ray head (default 4)")
    parser.add_argument("--state-dir", type=Path, help="default $ETVA_STATE_DIR or <repo>/runs/local")
    for flag, text in PORT_FLAGS:
        parser.add_argument(flag, type=int, metavar="PORT", help=text)
    parser.add_argument("--all-ray", action="store_true", help="stop: also `ray stop --force` (machine-wide)")
    return parser


def settings_from_args(args: argparse.Namespace) -> LocalSettings:
    """The settings the command line names, over the ETVA_* environment variables and the defaults."""
    return LocalSettings.from_env(
        state_dir=args.state_dir,
        num_cpus=args.num_cpus,
        ray_port=args.ray_port,
        dashboard_port=args.dashboard_port,
        mlflow_port=args.mlflow_port,
        ray_client_port=args.ray_client_server_port,
        dashboard_agent_port=args.dashboard_agent_listen_port,
        dashboard_agent_grpc_port=args.dashboard_agent_grpc_port,
        metrics_export_port=args.metrics_export_port,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO, CLI_LOG_FORMAT)
    s = settings_from_args(args)
    ray, mlflow = (args.ray or not args.mlflow), (args.mlflow or not args.ray)
    if args.action == "start":
        try:
            cluster = start_all(s, ray=ray, mlflow=mlflow)
        except RuntimeError as err:  # a taken port, a server that did not come up: said plainly
            print(f"error: {err}", file=sys.stderr)
            return 1
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
