"""The same sweep against the team tracking server (PostgreSQL + basic-auth) and the local SQLite server.

    .venv/bin/python -m benchmarks.bench_team_server [--trials 8] [--epochs 1] [--concurrent 2] [--out f.json]

Needs PostgreSQL (`sudo bash cluster/install_postgres.sh`) and the `server` extra (psycopg2). Starts, on
free ports of 127.0.0.1, a private Ray head with its own SQLite MLflow server (`cluster.local.start_all`,
the baseline) and a private team server (`cluster.team_server.running_team_server`: PostgreSQL and
`cluster/mlflow/mlflow-server.sh` with basic-auth). Then runs, once against each server, one after the
other on the same head, the same sweep of the tiny config over ``--clips`` generated clips:
``python -m tuning.sweep --space <train.seed: {grid: [0..trials-1]}> tune.max_epochs=<epochs>
tune.max_concurrent_trials=<concurrent> ray.num_workers=1`` (against the team server as a user created for
it, its login in a mode-0600 credentials file named by ``$ETVA_MLFLOW_CREDENTIALS``). One table:

- wall time of the sweep command and its exit code;
- trials finished / errored (child runs not FINISHED) / missing (no child run), from MLflow;
- per-epoch metric values logged vs expected (every epoch metric of every trial exactly once, read back
  with ``MlflowClient.get_metric_history``), duplicates and missing values;
- the server's HTTP requests during the sweep and how many answered 4xx / 5xx (its access log);
- the client's retries seen in the sweep's output (urllib3 ``Retrying (...)``, our metric buffer's
  ``MLflow unreachable``) and requests it gave up on;
- the load average before and after each sweep.

Everything it starts (head, both servers, the sweeps) runs in process groups of its own and is stopped by
group at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "etva-bench-team"
# what ray_jobs/recipe.py epoch_metrics reports once per epoch (val/* and train/* are prefixes)
EPOCH_PREFIXES = ("val/", "train/")
EPOCH_KEYS = ("epoch", "epoch_time_s", "timing/epoch_start", "data/skipped_train", "data/skipped_val",
              "data/truncated_for_equal_batches")  # fmt: skip
REQUIRED_KEYS = ("val/t2v_R1", "train/loss", "epoch_time_s")  # expected even when a trial logged none
ACCESS = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD) [^"]*" (\d{3})\b')
RETRY = re.compile(r"Retrying \(|MLflow unreachable \(")
GAVE_UP = re.compile(r"Max retries \(\d+\) exceeded|Retry timeout \([^)]*\) exceeded|MaxRetryError")
CLIENT_5XX = re.compile(r"error code 5\d\d|status code 5\d\d|HTTP(?:Error)? 5\d\d")


# ------------------------------------------------------------------------------- pure parts
def is_epoch_key(key: str) -> bool:
    return key.startswith(EPOCH_PREFIXES) or key in EPOCH_KEYS


def server_counts(log_text: str) -> dict[str, int]:
    """HTTP requests in an MLflow server's access log (uvicorn's format) and how many answered 4xx/5xx."""
    codes = [int(c) for c in ACCESS.findall(log_text)]
    return {"requests": len(codes), "4xx": sum(400 <= c < 500 for c in codes),
            "5xx": sum(c >= 500 for c in codes)}  # fmt: skip


def client_counts(output: str) -> dict[str, int]:
    """Retries, given-up requests and 5xx answers named in a sweep's output (driver + forwarded workers)."""
    return {"retries": len(RETRY.findall(output)), "gave_up": len(GAVE_UP.findall(output)),
            "5xx": len(CLIENT_5XX.findall(output))}  # fmt: skip


def metric_counts(histories: dict[str, dict[str, list[int]]], trials: int, epochs: int) -> dict[str, int]:
    """Per-epoch metric values logged vs expected. ``histories``: trial -> metric key -> logged steps.

    The expected keys are :data:`REQUIRED_KEYS` plus every per-epoch key any trial logged; each of
    ``trials`` trials should log each key once for every epoch 0..epochs-1. A trial with no child run
    counts all its values as missing."""
    keys = set(REQUIRED_KEYS) | {k for h in histories.values() for k in h if is_epoch_key(k)}
    logged = duplicates = missing = 0
    for hist in histories.values():
        for key in keys:
            steps = hist.get(key, [])
            logged += len(steps)
            duplicates += len(steps) - len(set(steps))
            missing += len(set(range(epochs)) - set(steps))
    missing += (trials - len(histories)) * len(keys) * epochs
    return {"logged": logged, "expected": trials * len(keys) * epochs, "keys": len(keys),
            "duplicates": duplicates, "missing": missing}  # fmt: skip


def trial_counts(statuses: list[str], trials: int) -> dict[str, int]:
    """Child runs FINISHED, the rest (FAILED, KILLED, RUNNING) as errored, and trials with no run."""
    finished = sum(s == "FINISHED" for s in statuses)
    return {"finished": finished, "errored": len(statuses) - finished, "missing": max(trials - len(statuses), 0)}


def space_yaml(trials: int) -> str:
    """The search space: a grid of ``trials`` seeds (one trial per point, the rest of the config fixed)."""
    return f"train.seed: {{grid: {list(range(trials))}}}\n"


def _load(values) -> str:
    return "/".join(f"{v:.1f}" for v in values)


def table(rows: list[dict]) -> str:
    """One markdown row per server (the dicts :func:`run_one` returns)."""
    head = ["server", "sweep wall s", "exit", "trials ok/err/missing", "metric values logged/expected",
            "dup/missing", "server requests", "4xx", "5xx", "client retries/gave up/5xx", "load before",
            "load after"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        t, m, s, c = r["trials"], r["metrics"], r["server"], r["client"]
        cells = [r["name"], f"{r['wall_s']:.1f}", str(r["exit"]), f"{t['finished']}/{t['errored']}/{t['missing']}",
                 f"{m['logged']}/{m['expected']} ({m['keys']} keys)", f"{m['duplicates']}/{m['missing']}",
                 str(s["requests"]), str(s["4xx"]), str(s["5xx"]),
                 f"{c['retries']}/{c['gave_up']}/{c['5xx']}", _load(r["load_before"]), _load(r["load_after"])]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- what it runs
def sweep_command(args: argparse.Namespace, space: Path, data: Path, storage: Path, name: str, ray: str):
    return [
        sys.executable, "-m", "tuning.sweep", "--config", str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--space", str(space), "--name", name, f"data.root={data}", f"ray.storage_path={storage}",
        f"ray.address={ray}", "ray.num_workers=1", f"train.batch_size={args.batch_size}",
        f"mlflow.experiment={EXPERIMENT}", "tune.num_samples=1", f"tune.max_epochs={args.epochs}",
        f"tune.max_concurrent_trials={args.concurrent}", *args.overrides,
    ]  # fmt: skip


def _stop_group(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
            return


def run_sweep(cmd: list[str], env: dict[str, str], log: Path, timeout_s: float) -> tuple[int, float]:
    """(exit code, wall seconds) of the sweep, its output in ``log``; its process group is stopped after."""
    t0 = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = 124
        finally:
            _stop_group(proc)  # the sweep's leftovers too (it has exited when the wait returned)
    return code, time.monotonic() - t0


def read_back(uri: str, name: str, epochs: int) -> tuple[list[str], dict[str, dict[str, list[int]]]]:
    """(trial child runs' statuses, their per-epoch metric histories) of sweep ``name``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`etva.sweep_name` = '{name}'") if exp else []
    trials = [r for r in runs if r.data.tags.get("etva.role") == "trial"]
    histories = {}
    for run in trials:
        keys = set(REQUIRED_KEYS) | {k for k in run.data.metrics if is_epoch_key(k)}
        histories[run.info.run_id] = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)]
                                      for k in sorted(keys)}  # fmt: skip
    return [r.info.status for r in trials], histories


@contextlib.contextmanager
def login(user: str | None, password: str | None) -> Iterator[None]:
    """MLflow's client reads the login from the environment on every request."""
    saved = {k: os.environ.pop(k, None) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    if user:
        os.environ.update(MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password or "")
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


@contextlib.contextmanager
def servers(work: Path, num_cpus: int) -> Iterator[tuple]:
    """(LocalCluster: private head + SQLite MLflow server, TeamServer), all stopped by group on exit."""
    from cluster import local
    from cluster.team_server import free_ports, running_team_server

    ray_port, dash, mlflow_port, client, agent, pg_port, team_port = free_ports(7)
    settings = local.LocalSettings(work / "head", ray_port=ray_port, dashboard_port=dash, mlflow_port=mlflow_port,
                                   ray_client_port=client, dashboard_agent_port=agent, num_cpus=num_cpus,
                                   start_timeout_s=900)  # fmt: skip
    try:
        cluster = local.start_all(settings)
        t0 = time.monotonic()
        with running_team_server(pg_port, team_port) as team:
            print(f"team server up in {time.monotonic() - t0:.1f} s: {team.uri}", flush=True)
            yield cluster, team
    finally:
        left = local.stop_all(settings)
        shutil.rmtree(settings.temp_dir, ignore_errors=True)
        if any(left.values()):
            print(f"processes left running: {left}", file=sys.stderr)


def team_login(team) -> tuple[str, str]:
    """A user for the sweeps, created by the admin (passwords need 12 characters or more)."""
    from mlflow.server.auth.client import AuthServiceClient

    user = "etva-bench"
    password = secrets.token_hex(8)
    with login("admin", team.admin_password):
        AuthServiceClient(team.uri).create_user(user, password)
    return user, password


def targets(cluster, team, work: Path) -> dict[str, dict]:
    user, password = team_login(team)
    creds = work / "mlflow-credentials"
    fd = os.open(creds, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"[mlflow]\nmlflow_tracking_username = {user}\nmlflow_tracking_password = {password}\n")
    return {
        "sqlite": {"uri": cluster.mlflow_uri, "log": cluster.settings.state_dir / "mlflow.log", "env": {},
                   "login": (None, None)},
        "postgresql": {"uri": team.uri, "log": team.root / "mlflow.log",
                       "env": {"ETVA_MLFLOW_CREDENTIALS": str(creds)}, "login": (user, password)},
    }  # fmt: skip


def run_one(args: argparse.Namespace, server: str, target: dict, paths: dict[str, Path], env: dict) -> dict:
    """One sweep against one server, and what it left there."""
    name = f"bench-team-{server}-{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = sweep_command(args, paths["space"], paths["data"], paths["work"] / f"runs-{server}", name, env["RAY_ADDRESS"])
    offset = target["log"].stat().st_size if target["log"].exists() else 0
    out = paths["work"] / f"sweep-{server}.log"
    load_before = os.getloadavg()
    print(f"[{server}] {' '.join(cmd)}\n  output: {out}", flush=True)
    code, wall = run_sweep(cmd, {**env, "MLFLOW_TRACKING_URI": target["uri"], **target["env"]}, out, args.timeout_s)
    load_after = os.getloadavg()
    with open(target["log"], "rb") as f:
        f.seek(offset)
        server_log = f.read().decode(errors="replace")
    with login(*target["login"]):
        statuses, histories = read_back(target["uri"], name, args.epochs)
    row = {"name": server, "sweep": name, "wall_s": wall, "exit": code, "load_before": load_before,
           "load_after": load_after, "trials": trial_counts(statuses, args.trials),
           "metrics": metric_counts(histories, args.trials, args.epochs), "server": server_counts(server_log),
           "client": client_counts(out.read_text(errors="replace"))}  # fmt: skip
    print(f"[{server}] {json.dumps(row)}", flush=True)
    return row


def prepare(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """The generated clips and the search space (a grid of ``--trials`` seeds)."""
    from etva.config import load_config
    from etva.data.synth import generate_dataset

    data = work / "shapes"
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(data, args.clips, 0, cfg=synth, workers=2, progress=False)
    space = work / "space.yaml"
    space.write_text(space_yaml(args.trials))
    return {"work": work, "data": data, "space": space}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=8, help="grid points (train.seed 0..trials-1)")
    ap.add_argument("--epochs", type=int, default=1, help="tune.max_epochs")
    ap.add_argument("--concurrent", type=int, default=2, help="tune.max_concurrent_trials")
    ap.add_argument("--clips", type=int, default=16, help="generated clips of the tiny config")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the private Ray head")
    ap.add_argument("--servers", default="sqlite,postgresql", help="which servers, in this order")
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="per sweep")
    ap.add_argument("--out", default="", help="also write the rows as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (sweep outputs) under /tmp")
    ap.add_argument("overrides", nargs="*", help="further sweep overrides, after --")
    args = ap.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if unknown := set(args.servers) - {"sqlite", "postgresql"}:
        ap.error(f"--servers: unknown {sorted(unknown)}; expected sqlite and/or postgresql")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop everything through the finally blocks
    work = Path(tempfile.mkdtemp(prefix="etva-bts-", dir="/tmp"))  # short: Ray's socket paths
    print(f"load average before: {_load(os.getloadavg())}; work folder {work}", flush=True)
    rows: list[dict] = []
    try:
        paths = prepare(args, work)
        with servers(work, args.num_cpus) as (cluster, team):
            tgts = targets(cluster, team, work)
            base = {k: v for k, v in cluster.subprocess_env().items() if not k.startswith("MLFLOW_TRACKING_")}
            base.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", PYTHONPATH=str(REPO),
                        HOME=str(work))  # fmt: skip  (no ~/.mlflow/credentials of the machine's user)
            for server in args.servers:
                rows.append(run_one(args, server, tgts[server], paths, base))
    finally:
        if rows:
            print("\n" + table(rows))
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=2))
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    ok = all(r["exit"] == 0 and r["metrics"]["logged"] == r["metrics"]["expected"]
             and not r["metrics"]["duplicates"] and not r["metrics"]["missing"] for r in rows)  # fmt: skip
    return 0 if ok and len(rows) == len(args.servers) else 1


if __name__ == "__main__":
    sys.exit(main())
