"""A local cluster's settings (ports, state directory, Ray temp dir), the addresses of its running
services, and the JSON records (pid, process group, addresses) its services leave in the state directory.
Used by :mod:`cluster.local`, which starts and stops the services.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
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
    # None = picked at start (see resolve_ports): Ray's default when free, else a free port
    ray_client_port: int | None = None  # Ray client server (ray://), Ray's default 10001
    dashboard_agent_port: int | None = None  # the agent's HTTP port: it takes submitted jobs; Ray's 52365
    dashboard_agent_grpc_port: int | None = None  # the agent's gRPC (metrics agent) port
    metrics_export_port: int | None = None  # Prometheus metrics of the node
    token_path: Path | None = None  # None = <state>/ray_auth_token
    ray_temp_dir: Path | None = None  # None = <state>/ray, or /tmp/etva-ray-<hash> if that is too long
    mlflow_workers: int = 1
    start_timeout_s: float = 300.0  # a hang guard: `ray start` took over 90 s at load 70 on 2 cores

    @classmethod
    def from_env(cls, **overrides: object) -> LocalSettings:
        """Settings from ETVA_* environment variables; keyword overrides (not None) win. The agent and
        client ports have no variable: `python -m cluster.local start --help` names their flags."""
        env = os.environ

        def opt_int(name: str) -> int | None:
            return int(env[name]) if env.get(name) else None

        values: dict[str, object] = {
            "state_dir": Path(env.get("ETVA_STATE_DIR") or REPO_ROOT / "runs" / "local"),
            "ray_port": opt_int("ETVA_RAY_PORT"),
            "dashboard_port": opt_int("ETVA_DASHBOARD_PORT"),
            "mlflow_port": opt_int("ETVA_MLFLOW_PORT"),
            "num_cpus": opt_int("ETVA_NUM_CPUS"),
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
    def agent_url(self) -> str:
        """The head's dashboard agent (it runs submitted jobs); set once resolve_ports has run."""
        return f"http://{self.host}:{self.dashboard_agent_port}"

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


def agent_listen_port(s: LocalSettings) -> int | None:
    """The HTTP port the head's dashboard agent reported in its session folder (-1: it could not listen,
    so the Jobs API takes no job); None until the agent has started."""
    session = s.temp_dir / "session_latest"
    for path in sorted(session.glob("dashboard_agent_listen_port_*")):
        text = path.read_text().strip()
        if text.lstrip("-").isdigit():
            return int(text)
    return None


def already_running(s: LocalSettings, name: str, marker: str, what: str, address_key: str) -> dict | None:
    """The record of service ``name`` when it runs already (said on stdout: start is idempotent)."""
    record, _ = running_record(s, name, marker)
    if record is not None:
        print(f"{what} already running (pgid {record['pgid']}) at {record.get(address_key)}")
    return record


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


# ------------------------------------------------------------------------------------------- ports
RAY_WORKER_PORTS = range(10002, 20000)  # Ray's default worker port range: `ray start` refuses a pin inside


class PortError(RuntimeError):
    """A port of the local cluster cannot be used (taken, or inside Ray's worker range); nothing started."""


@dataclass(frozen=True)
class PortRole:
    """One port a local service listens on: its setting, the option that names it, what listens there."""

    field: str  # LocalSettings attribute
    option: str  # how a user names it: the `python -m cluster.local start` flag (and its variable)
    what: str
    ray_default: int | None = None  # Ray's own default, taken when free and the port is not named
    pickable: bool = True  # unset -> picked at start; False: the setting always has a value
    ray: bool = True  # a Ray port: outside Ray's worker port range


RAY_PORTS = (
    PortRole("ray_port", "--ray-port (or ETVA_RAY_PORT)", "Ray GCS", pickable=False),
    PortRole("dashboard_port", "--dashboard-port (or ETVA_DASHBOARD_PORT)", "Ray Jobs API", pickable=False),
    PortRole("ray_client_port", "--ray-client-server-port", "Ray client server", ray_default=10001),
    PortRole(
        "dashboard_agent_port",
        "--dashboard-agent-listen-port",
        "dashboard agent HTTP, which takes submitted jobs",
        ray_default=52365,
    ),
    PortRole("dashboard_agent_grpc_port", "--dashboard-agent-grpc-port", "dashboard agent gRPC"),
    PortRole("metrics_export_port", "--metrics-export-port", "Prometheus metrics export"),
)
MLFLOW_PORTS = (
    PortRole(
        "mlflow_port", "--mlflow-port (or ETVA_MLFLOW_PORT)", "MLflow server", pickable=False, ray=False
    ),
)


def check_port(role: PortRole, port: int) -> None:
    """PortError naming ``port``, what it is for and how to choose another, unless it can be used."""
    if role.ray and port in RAY_WORKER_PORTS:
        raise PortError(
            f"port {port} ({role.what}) is inside Ray's worker port range {RAY_WORKER_PORTS.start}-"
            f"{RAY_WORKER_PORTS.stop - 1}, which `ray start` refuses; choose another with {role.option}"
        )
    if not local_procs.port_free("0.0.0.0", port):
        hint = "; or leave it unset and a free one is picked" if role.pickable else ""
        raise PortError(
            f"port {port} ({role.what}) is already in use by another process: nothing was started. "
            f"Stop what listens there or choose another port with {role.option}{hint}"
        )


def pick_port(preferred: int | None, taken: set[int]) -> int:
    """``preferred`` when it is free and not in ``taken``, else a free port outside Ray's worker range."""
    if preferred is not None and preferred not in taken and local_procs.port_free("0.0.0.0", preferred):
        return preferred
    while (port := free_ports(1)[0]) in taken:
        pass
    return port


def resolve_ports(s: LocalSettings, roles: tuple[PortRole, ...]) -> LocalSettings:
    """A copy of ``s`` with every port of ``roles`` set: the named ones checked (free, distinct, Ray's
    outside its worker range), the unnamed ones picked. Raises PortError before anything starts."""
    named = {r.field: getattr(s, r.field) for r in roles if getattr(s, r.field) is not None}
    by_port: dict[int, list[str]] = {}
    for role in roles:
        if role.field in named:
            by_port.setdefault(named[role.field], []).append(role.option)
    for port, options in by_port.items():
        if len(options) > 1:
            raise PortError(f"port {port} is named twice ({' and '.join(options)}): each needs its own port")
    for role in roles:
        if role.field in named:
            check_port(role, named[role.field])
    taken = set(named.values())
    for role in roles:
        if role.field not in named:
            named[role.field] = pick_port(role.ray_default, taken)
            taken.add(named[role.field])
    return dataclasses.replace(s, **named)


def ephemeral_ports() -> range:
    """The kernel's ephemeral port range (``ip_local_port_range``): ports it hands to outgoing connections."""
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports outside Ray's worker port range and outside the kernel's ephemeral
    range, held open together while choosing so they differ. Outside the ephemeral range, no outgoing
    connection of another process can take a port while its service is down: a head killed and started
    again on the same ports (``etva``'s restart after a head loss) finds them free. Falls back to any free
    port when the ephemeral range leaves no room."""
    eph, rng = ephemeral_ports(), random.SystemRandom()
    pool = [p for p in range(20000, 65536) if p not in eph and p not in RAY_WORKER_PORTS]
    socks: list[socket.socket] = []
    try:
        ports: list[int] = []
        for _ in range(200 * n):
            if len(ports) == n:
                break
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            try:
                sock.bind(("0.0.0.0", rng.choice(pool) if pool else 0))
            except OSError:
                continue
            if (port := sock.getsockname()[1]) not in RAY_WORKER_PORTS:
                ports.append(port)
        if len(ports) < n:
            raise PortError(f"found {len(ports)} of {n} free TCP ports to start local services on")
        return ports
    finally:
        for sock in socks:
            sock.close()


def private_settings(num_cpus: int, prefix: str = "etva-it-") -> LocalSettings:
    """Settings of a throw-away cluster (tests, benchmarks): a short /tmp state dir (Ray's AF_UNIX socket
    paths must stay under 107 bytes) and free GCS, dashboard and MLflow ports, so it never clashes with a
    user's head on the defaults; the agent and client ports are picked at start, as for a user's head."""
    state = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    ray_port, dash, mlflow_port = free_ports(3)
    return LocalSettings(
        state_dir=state, ray_port=ray_port, dashboard_port=dash, mlflow_port=mlflow_port, num_cpus=num_cpus
    )
