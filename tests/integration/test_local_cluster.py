"""The local cluster scripts: addresses answer, start is idempotent, the Jobs API demands the token, a
second head beside the first takes a job as soon as start returns, a taken port is refused before anything
starts, stop leaves no process behind."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import local, local_procs, local_state

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_AGENT_PORT, RAY_CLIENT_PORT = 52365, 10001  # Ray's fixed defaults: a first head holds them

pytestmark = pytest.mark.integration

# Submits one job through JobSubmissionClient and prints {"status", "logs"} as JSON (or the error).
SUBMIT = """
import json, sys, time
from ray.job_submission import JobSubmissionClient
try:
    client = JobSubmissionClient(sys.argv[1])
    job = client.submit_job(entrypoint=sys.argv[2])
except Exception as err:
    print(json.dumps({"error": f"{type(err).__name__}: {err}"})); sys.exit(3)
if sys.argv[3] == "nowait":
    print(json.dumps({"job": job})); sys.exit(0)
deadline = time.time() + 60
while str(client.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.time() < deadline:
    time.sleep(0.3)
print(json.dumps({"status": str(client.get_job_status(job)), "logs": client.get_job_logs(job)}))
"""


def _submit(dashboard_url: str, entrypoint: str, env: dict[str, str], wait: bool = True) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, "-c", SUBMIT, dashboard_url, entrypoint, "wait" if wait else "nowait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr[-2000:]}"
    return proc.returncode, json.loads(lines[-1])


def _http(url: str, token: str | None = None, body: dict | None = None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def _no_token_env(tmp_path: Path) -> dict[str, str]:
    """A client environment with no token anywhere (also not in ~/.ray/auth_token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)
    return env


def test_addresses_answer(local_cluster: local.LocalCluster) -> None:
    token = local_cluster.token_path.read_text().strip()
    assert _http(f"{local_cluster.dashboard_url}/api/version", token)[0] == 200
    mode = json.loads(_http(f"{local_cluster.dashboard_url}/api/authentication_mode")[1])
    assert mode["authentication_mode"] == "token"
    assert _http(f"{local_cluster.mlflow_uri}/health")[0] == 200
    api = f"{local_cluster.mlflow_uri}/api/2.0/mlflow"
    status, body = _http(f"{api}/experiments/create", body={"name": "local-cluster-test"})
    assert status == 200, body
    exp = json.loads(body)["experiment_id"]
    status, body = _http(f"{api}/runs/create", body={"experiment_id": exp, "start_time": 0})
    run_id = json.loads(body)["run"]["info"]["run_id"]
    metric = {"run_id": run_id, "key": "val/t2v_R1", "value": 12.5, "timestamp": 0, "step": 0}
    assert _http(f"{api}/runs/log-metric", body=metric)[0] == 200
    status, body = _http(f"{api}/runs/search", body={"experiment_ids": [exp]})
    runs = json.loads(body)["runs"]
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    assert runs[0]["data"]["metrics"][0]["value"] == 12.5
    env_sh = (local_cluster.state_dir / "env.sh").read_text()
    assert f"export RAY_API_SERVER_ADDRESS={local_cluster.dashboard_url}" in env_sh
    assert f"export RAY_ADDRESS={local_cluster.ray_address}" in env_sh
    assert f"export MLFLOW_TRACKING_URI={local_cluster.mlflow_uri}" in env_sh
    assert token not in env_sh  # the file names the token's path, never the token


def test_the_heads_processes_name_their_own_dashboard(local_cluster: local.LocalCluster) -> None:
    """Ray's state API inside the cluster (Train's placement-group cleaner asks whether its controller
    lives) finds its cluster by RAY_API_SERVER_ADDRESS; without it, it scans the machine for GCS processes
    and fails beside another head ("Found multiple active Ray instances")."""
    raylets = [p for p in local.leftover_processes(local_cluster) if "/raylet " in f"{p.cmdline} "]
    assert raylets, "no raylet of the head found"
    for p in raylets:  # workers inherit the raylet's environment
        environ = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
        assert f"RAY_API_SERVER_ADDRESS={local_cluster.dashboard_url}".encode() in environ


def test_start_is_idempotent(local_cluster: local.LocalCluster, capsys) -> None:
    before = {p.pid for p in local.leftover_processes(local_cluster)}
    again = local.start_all(local_cluster.settings)
    assert "Ray head already running" in capsys.readouterr().out
    assert again.pgids == local_cluster.pgids
    assert again.ray_address == local_cluster.ray_address
    assert {p.pid for p in local.leftover_processes(local_cluster)} <= before  # nothing new was started
    state = local.status(local_cluster.settings)
    assert state["ray"]["running"] and state["ray"]["healthy"]
    assert state["mlflow"]["running"] and state["mlflow"]["healthy"]


def test_job_api_refuses_without_token(local_cluster: local.LocalCluster, tmp_path: Path) -> None:
    url = f"{local_cluster.dashboard_url}/api/jobs/"
    assert _http(url)[0] == 401
    assert _http(url, token="0" * 64)[0] == 403
    code, out = _submit(local_cluster.dashboard_url, "python -c 'print(42)'", _no_token_env(tmp_path))
    assert code == 3 and "Authentication" in out["error"], out


def test_job_with_token_succeeds(local_cluster: local.LocalCluster, local_cluster_num_cpus: int) -> None:
    entry = "python -c \"import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'], 6 * 7)\""
    code, out = _submit(local_cluster.dashboard_url, entry, local_cluster.subprocess_env())
    assert code == 0 and out["status"] == "SUCCEEDED", out
    assert f"CPUS {float(local_cluster_num_cpus)} 42" in out["logs"]


def test_stale_record_is_cleaned(tmp_path: Path) -> None:
    settings = local.LocalSettings(state_dir=tmp_path, ray_temp_dir=tmp_path / "ray")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "ray.json").write_text(json.dumps({"pid": dead.pid, "pgid": dead.pid}))
    assert local.status(settings)["ray"]["running"] is False
    assert not (tmp_path / "ray.json").exists()
    assert local.stop_all(settings) == {"mlflow": [], "ray": []}  # stopping nothing is fine


def test_a_taken_port_is_refused_before_anything_starts(
    local_cluster: local.LocalCluster, tmp_path: Path
) -> None:
    """The session head's agent port named for a new head: a clear error, and no process, record or log."""
    taken = local_cluster.settings.dashboard_agent_port
    ray_port, dash, mlflow_port = local_state.free_ports(3)
    ports = ["--ray-port", str(ray_port), "--dashboard-port", str(dash), "--mlflow-port", str(mlflow_port)]
    out = _cli(
        "start", "--state-dir", str(tmp_path / "state"), *ports, "--dashboard-agent-listen-port", str(taken)
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert (
        f"error: port {taken} (dashboard agent HTTP, which takes submitted jobs) is already in use"
        in out.stderr
    )
    assert "--dashboard-agent-listen-port" in out.stderr.splitlines()[-1]
    assert not (tmp_path / "state").exists()
    assert [p for p in local_procs.list_procs() if str(tmp_path) in p.cmdline] == []


def test_a_second_head_takes_a_job_at_once_and_stop_leaves_nothing(
    local_cluster: local.LocalCluster, tmp_path: Path
) -> None:
    """`python -m cluster.local start --ray-port .. --dashboard-port .. --mlflow-port ..` beside the session
    head, with Ray's fixed agent and client ports taken (by that head, another one, or this test): start
    picks others and returns when a job can be submitted; the first submission is taken. Then stop."""
    ray_port, dash, mlflow_port = local_state.free_ports(3)
    state = Path(tempfile.mkdtemp(prefix="etva-it-", dir="/tmp"))
    settings = local.LocalSettings(state, ray_port=ray_port, dashboard_port=dash, mlflow_port=mlflow_port)
    ports = ["--ray-port", str(ray_port), "--dashboard-port", str(dash), "--mlflow-port", str(mlflow_port)]
    try:
        t_start = time.monotonic()
        with _taken(RAY_AGENT_PORT, RAY_CLIENT_PORT):
            out = _cli("start", "--state-dir", str(state), "--num-cpus", "1", *ports)
        assert out.returncode == 0, out.stdout + out.stderr
        print(f"[timing] start {time.monotonic() - t_start:.2f} s")
        picked = json.loads((state / "ray.json").read_text())["ports"]
        assert (
            picked["dashboard_agent_port"] != RAY_AGENT_PORT and picked["ray_client_port"] != RAY_CLIENT_PORT
        )
        cluster = local.start_all(settings)  # idempotent: the running head's addresses, nothing started
        _submit_then_stop(cluster, tmp_path / "job.pid", t_start)
    finally:
        local.stop_all(settings)
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(settings.temp_dir, ignore_errors=True)


def _submit_then_stop(cluster: local.LocalCluster, pid_file: Path, t_start: float) -> None:
    # a running job: its entrypoint runs in a new session, outside the head's process group
    entry = f"python -c \"import os, time; open('{pid_file}', 'w').write(str(os.getpid())); time.sleep(600)\""
    code, out = _submit(cluster.dashboard_url, entry, cluster.subprocess_env(), wait=False)
    assert code == 0, out  # no retry: the head's agent took the job at the first try
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.2)
    job_pid = int(pid_file.read_text())
    print(f"[timing] job running {time.monotonic() - t_start:.2f} s")
    assert local_procs.alive([job_pid]) == [job_pid]
    assert os.getpgid(job_pid) != cluster.pgids["ray"]
    group_pids = [p.pid for p in local.leftover_processes(cluster)]
    t0 = time.monotonic()
    left = local.stop_all(cluster.settings)
    stop_s = time.monotonic() - t0
    assert left == {"mlflow": [], "ray": []}
    assert local_procs.alive(group_pids + [job_pid]) == []
    for pgid in cluster.pgids.values():  # zombies may linger until pid 1 reaps them
        deadline = time.monotonic() + 5
        while _group_exists(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_exists(pgid), (pgid, cluster.pgids, _group_dump(pgid))
    assert not (cluster.state_dir / "ray.json").exists() and not (cluster.state_dir / "mlflow.json").exists()
    assert _http_down(f"{cluster.dashboard_url}/api/gcs_healthz")
    assert _http_down(f"{cluster.mlflow_uri}/health")
    host, port = cluster.ray_address.rsplit(":", 1)
    with pytest.raises(ConnectionRefusedError):  # the GCS port is closed
        socket.create_connection((host, int(port)), timeout=2).close()
    status = subprocess.run(
        [str(Path(sys.executable).parent / "ray"), "status", f"--address={cluster.ray_address}"],
        env={  # fail after ~7 s instead of ~40 s
            **cluster.subprocess_env(),
            "RAY_gcs_rpc_server_connect_timeout_s": "2",
            "RAY_gcs_rpc_server_reconnect_timeout_s": "2",
        },
        capture_output=True,
        timeout=600,
    )
    assert status.returncode != 0
    print(f"[timing] stop {stop_s:.2f} s; ray status done {time.monotonic() - t_start:.2f} s")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m cluster.local ...` as a user runs it (no ETVA_* settings from this process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETVA_")}
    cmd = [sys.executable, "-m", "cluster.local", *args]
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def _taken(*ports: int) -> Iterator[None]:
    """Each port taken while the block runs: by whoever holds it already, else by a socket of this test."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            if local_procs.port_free("0.0.0.0", port):
                sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                with contextlib.suppress(OSError):  # taken since the check: taken all the same
                    sock.bind(("0.0.0.0", port))
                    sock.listen()
        yield


def _group_dump(pgid: int) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rfind(")") + 2 :].split()
            if int(fields[2]) == pgid:
                out.append(f"{entry} {raw[: raw.rfind(')') + 1]} state={fields[0]} ppid={fields[1]}")
    return out


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _http_down(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False
    except (urllib.error.URLError, OSError):
        return True
    return False
