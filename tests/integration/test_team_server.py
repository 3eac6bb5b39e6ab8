"""The team tracking server for real: PostgreSQL + `cluster/mlflow/mlflow-server.sh` with basic-auth
(session fixture `team_server`), and the shared local Ray head.

- users and permissions: an experiment is private to its creator by default (NO_PERMISSIONS); a second
  user cannot read it until given READ, and READ does not let it write;
- `etva train` without a login refuses before submitting and names the variables to set; a
  credentials file that others can read is refused;
- `etva tune` with the job user's credentials file (mode 0600; only its path travels in the job's
  runtime environment) submits a 4-trial x 1-epoch sweep, 2 trials at a time: every trial's Train run
  logs every epoch into PostgreSQL, each metric exactly once.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
EXPERIMENT = "etva-team"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    s = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(root, 16, 0, cfg=s, workers=2, progress=False)
    return root


def _as(monkeypatch, user: str, password: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)


def _create_user(monkeypatch, server, user: str, password: str) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    _as(monkeypatch, "admin", server.admin_password)
    AuthServiceClient(server.uri).create_user(user, password)


def test_an_experiment_is_private_until_shared(team_server, monkeypatch):
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    _create_user(monkeypatch, team_server, "alice", "alice-password-1")
    _create_user(monkeypatch, team_server, "bob", "bob-password-1")
    client = MlflowClient(team_server.uri)  # reads the login from the environment on every request
    _as(monkeypatch, "alice", "alice-password-1")
    exp_id = client.create_experiment("alice-private")
    client.create_run(exp_id)
    _as(monkeypatch, "bob", "bob-password-1")
    with pytest.raises(MlflowException, match="403|Permission denied"):
        client.get_experiment(exp_id)
    assert client.search_runs([exp_id]) == []  # its runs are filtered out of searches, not leaked
    _as(monkeypatch, "alice", "alice-password-1")  # MANAGE as the creator: may share it
    AuthServiceClient(team_server.uri).grant_user_permission("bob", "experiment", exp_id, "READ")
    _as(monkeypatch, "bob", "bob-password-1")
    assert client.get_experiment(exp_id).name == "alice-private"
    assert len(client.search_runs([exp_id])) == 1
    with pytest.raises(MlflowException, match="403|Permission denied"):
        client.create_run(exp_id)  # READ does not let bob write


def etva(cluster, server, *args: str, env: dict[str, str], timeout: float = 900):
    base = {k: v for k, v in cluster.subprocess_env().items() if not k.startswith("MLFLOW_TRACKING_")}
    full = {**base, "MLFLOW_TRACKING_URI": server.uri, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **env}
    cmd = [sys.executable, "-m", "etva", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=full, cwd=REPO, timeout=timeout)


JOB_INFO = (
    "import sys; from ray.job_submission import JobSubmissionClient; "
    "i = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2]); "
    "print('entrypoint', i.entrypoint); print('runtime_env', i.runtime_env)"
)


def _train_args(data: Path, storage: Path, run_name: str) -> list[str]:
    return ["train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", run_name, f"data.root={data}",
            f"ray.storage_path={storage}", f"mlflow.experiment={EXPERIMENT}", "train.batch_size=4"]  # fmt: skip


def test_jobs_log_in_from_a_credentials_file_only(local_cluster, team_server, tiny_data, tmp_path, monkeypatch):
    """Without a login `etva train` refuses before submitting; a credentials file others can read is
    refused; with the job user's 0600 file, `etva tune` submits a 4-trial x 1-epoch sweep (2 trials at a
    time, each a Train run logging every epoch into PostgreSQL through the basic-auth server): every metric
    is logged exactly once, and the password is nowhere in what the Ray dashboard keeps of the job."""
    from mlflow.tracking import MlflowClient

    home = tmp_path / "home"  # no ~/.mlflow/credentials of the machine's user
    home.mkdir()
    args = _train_args(tiny_data, tmp_path / "runs", "team-login")
    proc = etva(local_cluster, team_server, *args, env={"HOME": str(home)})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in proc.stderr, proc.stderr[-3000:]
    assert "running:" not in proc.stderr  # refused before anything was submitted

    password = secrets.token_hex(8)  # 16 characters: the server wants at least 12
    _create_user(monkeypatch, team_server, "etva-jobs", password)
    creds = tmp_path / "mlflow-credentials"
    creds.write_text(f"[mlflow]\nmlflow_tracking_username = etva-jobs\nmlflow_tracking_password = {password}\n")
    creds.chmod(0o644)
    env = {"HOME": str(home), "ETVA_MLFLOW_CREDENTIALS": str(creds)}
    proc = etva(local_cluster, team_server, *args, env=env)
    assert proc.returncode == 2 and "chmod 600" in proc.stderr, proc.stderr[-3000:]

    creds.chmod(0o600)
    space = tmp_path / "space.yaml"
    space.write_text("train.seed: {grid: [0, 1, 2, 3]}\n")
    proc = etva(local_cluster, team_server, "tune", "--config", "ray_jobs/configs/tiny.yaml", "--space",
                str(space), "--name", "team-sweep", f"data.root={tiny_data}", f"ray.storage_path={tmp_path / 'runs'}",
                "ray.num_workers=1", "train.batch_size=4", f"mlflow.experiment={EXPERIMENT}-sweep",
                "tune.num_samples=1", "tune.max_epochs=1", "tune.max_concurrent_trials=2", env=env)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    job_id = re.search(r"raysubmit_\w+", out).group(0)
    # what the dashboard shows of the job, read in a process with the head's token (Ray loads its auth
    # token once per process: this test process may have loaded "none" before)
    shown = subprocess.run(
        [sys.executable, "-c", JOB_INFO, local_cluster.dashboard_url, job_id],
        env=local_cluster.subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert shown.returncode == 0 and "entrypoint" in shown.stdout, shown.stderr[-3000:]
    assert password not in shown.stdout and str(creds) in shown.stdout  # the file's path travels, not the login

    _as(monkeypatch, "etva-jobs", password)
    client = MlflowClient(team_server.uri)
    exp = client.get_experiment_by_name(f"{EXPERIMENT}-sweep")
    runs = client.search_runs([exp.experiment_id])
    trials = [r for r in runs if r.data.tags.get("etva.role") == "trial"]
    assert len(trials) == 4 and len(runs) == 5, [r.data.tags.get("etva.role") for r in runs]
    for run in trials:
        assert run.info.status == "FINISHED", run.info.run_id
        for key in ("val/t2v_R1", "train/loss", "epoch_time_s"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0], key
        assert len(client.get_metric_history(run.info.run_id, "best/t2v_R1")) == 1
