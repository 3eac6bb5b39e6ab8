"""A local cluster's settings (ports, state directory, Ray temp dir), the addresses of its running
services, and the JSON records (pid, process group, addresses) its services leave in the state directory.
Used by :mod:`cluster.local`, which starts and stops the services.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cluster import local_procs

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
MAX_RAY_TEMP_DIR_LEN = 40  # <temp>/session_<date>_<pid>/sockets/plasma_store must fit AF_UNIX's 107 bytes


@dataclass
class LocalSettings:
    """Where the local cluster keeps its state and which ports it uses."""

    state_dir: Path
    host: str = "127.0.0.1"
    ray_port: int = 6380  # GCS
    dashboard_port: int = 8265  # dashboard + Jobs API
    mlflow_port: int = 5000
    num_cpus: int = 4  # logical CPUs: Ray Data stages + 2 Train workers need more than 2 (docs/platform.md)
    ray_client_port: int | None = None  # None = Ray's default 10001
    dashboard_agent_port: int | None = None  # None = Ray's default 52365
    token_path: Path | None = None  # None = <state>/ray_auth_token
    ray_temp_dir: Path | None = None  # None = <state>/ray, or /tmp/etva-ray-<hash> if that is too long
    mlflow_workers: int = 1
    start_timeout_s: float = 300.0  # a hang guard: `ray start` took over 90 s at load 70 on 2 cores

    @classmethod
    def from_env(cls, **overrides: object) -> LocalSettings:
        """Settings from ETVA_* environment variables; keyword overrides (not None) win."""
        env = os.environ

        def opt_int(name: str) -> int | None:
            return int(env[name]) if env.get(name) else None

        values: dict[str, object] = {
            "state_dir": Path(env.get("ETVA_STATE_DIR") or REPO_ROOT / "runs" / "local"),
            "ray_port": opt_int("ETVA_RAY_PORT"),
            "dashboard_port": opt_int("ETVA_DASHBOARD_PORT"),
            "mlflow_port": opt_int("ETVA_MLFLOW_PORT"),
            "num_cpus": opt_int("ETVA_NUM_CPUS"),
            "ray_client_port": opt_int("ETVA_RAY_CLIENT_PORT"),
            "dashboard_agent_port": opt_int("ETVA_DASHBOARD_AGENT_PORT"),
            "token_path": Path(env["ETVA_RAY_TOKEN_PATH"]) if env.get("ETVA_RAY_TOKEN_PATH") else None,
            "ray_temp_dir": Path(env["ETVA_RAY_TEMP_DIR"]) if env.get("ETVA_RAY_TEMP_DIR") else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).expanduser().resolve()

    @property
    def token_file(self) -> Path:
        return Path(self.token_path or self.state_dir / "ray_auth_token").expanduser().resolve()

    @property
    def temp_dir(self) -> Path:
        if self.ray_temp_dir is not None:
            return Path(self.ray_temp_dir).expanduser().resolve()
        inside = self.state_dir / "ray"
        if len(str(inside)) <= MAX_RAY_TEMP_DIR_LEN:
            return inside
        digest = hashlib.sha1(str(self.state_dir).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"etva-ray-{digest}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def mlflow_db(self) -> Path:
        return self.state_dir / "mlflow.db"


@dataclass
class LocalCluster:
    """Addresses of the running local services, and the environment a client process needs."""

    state_dir: Path
    ray_address: str | None = None  # GCS host:port, for ray.init(address=...)
    dashboard_url: str | None = None  # Jobs API, for `ray job submit` / JobSubmissionClient
    mlflow_uri: str | None = None
    token_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    pgids: dict[str, int] = field(default_factory=dict)
    settings: LocalSettings | None = None

    def subprocess_env(self) -> dict[str, str]:
        """os.environ plus this cluster's client variables (for subprocesses)."""
        return {**os.environ, **self.env}


def record_path(s: LocalSettings, name: str) -> Path:
    return s.state_dir / f"{name}.json"


def read_record(s: LocalSettings, name: str) -> dict | None:
    try:
        return json.loads(record_path(s, name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_record(s: LocalSettings, name: str, record: dict) -> None:
    s.state_dir.mkdir(parents=True, exist_ok=True)
    record_path(s, name).write_text(json.dumps(record, indent=2) + "\n")


def require_free(s: LocalSettings, ports: dict[str, int | None]) -> None:
    for env_name, port in ports.items():
        if port is not None and not local_procs.port_free("0.0.0.0", port):
            raise RuntimeError(f"port {port} is already in use; choose another with {env_name}=<port>")


def running_record(s: LocalSettings, name: str, marker: str) -> tuple[dict | None, list[local_procs.Proc]]:
    """The record and live processes of service `name` (stale records are removed); ``marker`` is a
    path that the service's processes name on their command line."""
    record = read_record(s, name)
    if record is None:
        return None, []
    procs = local_procs.collect(record.get("pgid"), marker)
    if not procs:
        log.info("removing stale %s record (pgid %s is gone)", name, record.get("pgid"))
        record_path(s, name).unlink(missing_ok=True)
        return None, []
    return record, procs


def wait_until(check, timeout_s: float, what: str, proc: subprocess.Popen | None, log_file: Path):
    """``check()``'s first true result, polled until ``timeout_s`` (or ``proc`` failed): else
    RuntimeError with the tail of ``log_file``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        if proc is not None and proc.poll() not in (None, 0):
            break
        time.sleep(0.25)
    tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s; log {log_file}:\n{tail}")


RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: other ports must avoid it


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports outside Ray's worker port range (held open together while choosing,
    so they differ)."""
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < n:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("0.0.0.0", 0))
            socks.append(sock)
            if (port := sock.getsockname()[1]) not in RAY_WORKER_PORTS:
                ports.append(port)
        return ports
    finally:
        for sock in socks:
            sock.close()


def private_settings(num_cpus: int, prefix: str = "etva-it-") -> LocalSettings:
    """Settings of a throw-away cluster (tests, benchmarks): a short /tmp state dir (Ray's AF_UNIX socket
    paths must stay under 107 bytes) and free ports, so it never clashes with a user's head on the
    defaults."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    ray_port, dash, mlflow_port, client, agent = free_ports(5)
    return LocalSettings(
        state_dir=state, ray_port=ray_port, dashboard_port=dash, mlflow_port=mlflow_port,
        ray_client_port=client, dashboard_agent_port=agent, num_cpus=num_cpus,
    )  # fmt: skip
