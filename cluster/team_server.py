"""A private team tracking server on one machine: PostgreSQL from the Debian package
(cluster/install_postgres.sh) and `cluster/mlflow/mlflow-server.sh` (basic-auth) on it, both on 127.0.0.1.

    python -m cluster.team_server [--pg-port N] [--port N]   # until Ctrl-C; free ports by default

prints the server's URI and where the `admin` password is (a mode-0600 file in its temporary folder).
The `team_server` test fixture and benchmarks/bench_team_server.py use `running_team_server`.

`initdb` and `postgres` refuse to run as root, so under root the database runs as the package's
`postgres` system user (created when missing), in a temporary folder it owns. Both servers run in
process groups of their own and are stopped by group; nothing else on the machine is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cluster.local_procs import http_status
from cluster.local_state import free_ports

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
ADMIN = "admin"


@dataclass
class TeamServer:
    uri: str
    admin_password: str
    db_uri: str  # postgresql://... of the MLflow database (tests read it to count rows)
    root: Path
    pgids: dict[str, int] = field(default_factory=dict)


def pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql: run bash cluster/install_postgres.sh")
    return found[-1].parent


def _db_user() -> str | None:
    """The unprivileged user the database runs as (None: this process is not root, run as itself)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return "postgres"


def _spawn(cmd: list[str], env: dict[str, str], log: Path, user: str | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, user=user, cwd="/",
        )  # fmt: skip


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (rc={proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.3)


def _can_connect(**kw) -> bool:
    import psycopg2  # lazy: optional dependency (the `server` extra); only a team server needs it

    try:
        psycopg2.connect(connect_timeout=2, **kw).close()
        return True
    except psycopg2.OperationalError:
        return False


def _start_postgres(root: Path, port: int, password: str, procs: list[subprocess.Popen]) -> None:
    user = _db_user()
    data, pwfile = root / "pg", root / "pwfile"
    pwfile.write_text(password + "\n")
    if user:
        shutil.chown(root, user)
        shutil.chown(pwfile, user)
    env = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    initdb = [str(pg_bin() / "initdb"), "-D", str(data), "-U", "pgadmin", f"--pwfile={pwfile}",
              "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"]  # fmt: skip
    subprocess.run(initdb, env=env, user=user, cwd="/", check=True, capture_output=True, timeout=180)
    pwfile.unlink()
    cmd = [str(pg_bin() / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
           "-c", f"unix_socket_directories={root}", "-c", "fsync=off", "-c", "max_connections=200"]  # fmt: skip
    log = root / "postgres.log"
    if user:
        log.touch()
        shutil.chown(log, user)
    procs.append(_spawn(cmd, env, log, user))  # the caller stops it, also when the wait fails
    login = {"host": "127.0.0.1", "port": port, "user": "pgadmin", "password": password, "dbname": "postgres"}
    _wait(lambda: _can_connect(**login), "PostgreSQL", procs[-1], log)


def _create_db(port: int, admin_password: str, db_password: str) -> None:
    import psycopg2  # lazy: optional dependency (the `server` extra); only a team server needs it

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="pgadmin", password=admin_password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE ROLE mlflow LOGIN PASSWORD %s", (db_password,))
        cur.execute("CREATE DATABASE mlflow OWNER mlflow")
    conn.close()


def _start_mlflow(root: Path, ports: tuple[int, int], passwords: tuple[str, str], procs: list) -> None:
    (pg_port, port), (db_password, admin_password) = ports, passwords
    env = {
        **os.environ,
        "MLFLOW_DB_HOST": "127.0.0.1", "MLFLOW_DB_PORT": str(pg_port), "MLFLOW_DB_USER": "mlflow",
        "MLFLOW_DB_PASSWORD": db_password, "MLFLOW_DB_NAME": "mlflow",
        "MLFLOW_ARTIFACTS_DESTINATION": str(root / "artifacts"),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_AUTH_DIR": str(root),
        "MLFLOW_HOST": "127.0.0.1", "MLFLOW_PORT": str(port), "MLFLOW_WORKERS": "2",
        "MLFLOW_BIN": str(VENV_BIN / "mlflow"), "MLFLOW_PYTHON": sys.executable,
    }  # fmt: skip
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    log = root / "mlflow.log"
    procs.append(_spawn(["bash", str(REPO / "cluster/mlflow/mlflow-server.sh")], env, log))
    _wait(lambda: http_status(f"http://127.0.0.1:{port}/health") == 200, "mlflow-server.sh", procs[-1], log)


def _stop(pgid: int, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def running_team_server(pg_port: int, port: int) -> Iterator[TeamServer]:
    """PostgreSQL + the basic-auth MLflow server; both stopped (by process group) and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix="etva-team-", dir="/tmp"))
    root.chmod(0o700)
    pg_password, db_password, admin_password = (secrets.token_hex(12) for _ in range(3))
    server = TeamServer(f"http://127.0.0.1:{port}", admin_password,
                        f"postgresql+psycopg2://mlflow:{db_password}@127.0.0.1:{pg_port}/mlflow", root)  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        _start_postgres(root, pg_port, pg_password, procs)
        server.pgids["postgres"] = procs[-1].pid
        _create_db(pg_port, pg_password, db_password)
        _start_mlflow(root, (pg_port, port), (db_password, admin_password), procs)
        server.pgids["mlflow"] = procs[-1].pid
        yield server
    finally:
        for proc in reversed(procs):
            _stop(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Start a private team server, print its URI, wait for Ctrl-C (or SIGTERM), stop and remove it."""
    ap = argparse.ArgumentParser(prog="python -m cluster.team_server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--pg-port", type=int, help="PostgreSQL's port on 127.0.0.1 (default: a free one)")
    ap.add_argument("--port", type=int, help="the MLflow server's port on 127.0.0.1 (default: a free one)")
    args = ap.parse_args(argv)
    pg_port, port = free_ports(2)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop through the context manager's finally
    with running_team_server(args.pg_port or pg_port, args.port or port) as server:
        secret = server.root / "admin_password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(server.admin_password + "\n")
        print(f"team tracking server at {server.uri} (PostgreSQL on 127.0.0.1:{args.pg_port or pg_port})")
        print(f"user admin, password in {secret}; logs in {server.root}; Ctrl-C stops and removes it", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
