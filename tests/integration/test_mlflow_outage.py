"""MLflow outages survived: the real tracking server is stopped and restarted while metrics are logged.

1. ``EpochLogger`` alone (no Ray): logging while the server is down returns at once and buffers; after
   the restart everything is written, each step exactly once.
2. A real training job (`ray job submit`): the server is stopped after the first epoch is logged and
   restarted two epochs later; the job finishes, and the run's metrics are complete, each epoch once,
   with the model logged at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import local
from etva.config import load_config
from etva.data.synth import generate_dataset
from ray_jobs.tracking import EpochLogger, experiment_id, get_client

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EPOCHS = 20  # tiny epochs take a second or two: enough of them that the outage lands mid-run


def _steps(client, run_id: str, key: str = "val/t2v_R1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_epoch_logger_buffers_while_the_server_is_down(local_cluster_factory):
    with local_cluster_factory(1, ray=False, mlflow=True) as cluster:
        client = get_client(cluster.mlflow_uri)
        run_id = client.create_run(experiment_id(client, "etva-outage-unit")).info.run_id
        logger = EpochLogger(cluster.mlflow_uri, run_id, retry_s=0.0)
        logger.log({"val/t2v_R1": 1.0}, step=0)
        assert logger.pending == []
        local.stop_mlflow(cluster.settings)
        t0 = time.monotonic()
        logger.log({"val/t2v_R1": 2.0, "train/loss": 0.5}, step=1)
        logger.log({"val/t2v_R1": 3.0}, step=2)
        # fail fast: MLflow's own backoff takes about 4 min per call; a loaded machine is slower, not that slow
        assert time.monotonic() - t0 < 120, "logging to a dead server must fail fast"
        assert len(logger.pending) == 3 and logger.outages == 2
        local.start_mlflow(cluster.settings)
        logger.log({"val/t2v_R1": 4.0}, step=3)  # the next log flushes the buffer first
        assert logger.pending == [] and logger.close()
        assert _steps(client, run_id) == [0, 1, 2, 3]
        assert [m.value for m in sorted(client.get_metric_history(run_id, "val/t2v_R1"), key=lambda m: m.step)] == [
            1.0, 2.0, 3.0, 4.0,
        ]  # fmt: skip
        assert _steps(client, run_id, "train/loss") == [1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    s = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(root, 24, 0, cfg=s, workers=2, progress=False)
    return root


def _job(cluster, sub: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / "ray"), "job", sub, "--address", cluster.dashboard_url, *args]
    return subprocess.run(cmd, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _wait(cond, what: str, timeout: float, job, every: float = 0.5) -> None:
    """Poll ``cond`` every ``every`` s; fail on timeout or when the job has ended (checked every 10 s)."""
    deadline = time.time() + timeout
    checked = time.time()
    while not cond():
        if time.time() > deadline:
            raise AssertionError(f"no {what} (timeout)\n{job.logs()[-4000:]}")
        if time.time() - checked > 10 and cond != job.ended:
            if job.ended():
                raise AssertionError(f"no {what} (the job ended)\n{job.logs()[-4000:]}")
            checked = time.time()
        time.sleep(every)


def _last_epoch(run_dir: Path) -> int:
    """The newest epoch checkpoint Ray Train kept (older ones are deleted: ray.num_to_keep)."""
    return max((int(p.name.split("_")[1]) for p in run_dir.glob("epoch_*")), default=-1)


class _Job:
    def __init__(self, cluster, job_id: str) -> None:
        self.cluster, self.id = cluster, job_id

    def status(self) -> str:
        return _job(self.cluster, "status", self.id).stdout

    def ended(self) -> bool:
        status = self.status().lower()  # "Job '...' succeeded" / "failed" / "was stopped"
        return any(w in status for w in ("succeeded", "failed", "stopped"))

    def logs(self) -> str:
        return _job(self.cluster, "logs", self.id).stdout


def test_training_survives_an_mlflow_outage(local_cluster, tiny_data, tmp_path):
    storage, run_name = tmp_path / "ray", "outage"
    submit = _job(
        local_cluster, "submit", "--no-wait", "--working-dir", str(REPO),
        "--runtime-env-json", json.dumps({"env_vars": {"PYTHONUNBUFFERED": "1"}}),
        "--", "python", "-m", "ray_jobs.train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", run_name,
        f"data.root={tiny_data}", f"ray.storage_path={storage}", f"mlflow.tracking_uri={local_cluster.mlflow_uri}",
        f"train.epochs={EPOCHS}", "train.batch_size=4",
    )  # fmt: skip
    assert submit.returncode == 0, submit.stderr
    job = _Job(local_cluster, next(w.strip("'\"") for w in submit.stdout.split() if "raysubmit_" in w))
    client = get_client(local_cluster.mlflow_uri)

    def run_id() -> str:
        exp = client.get_experiment_by_name("etva-tiny")  # made by the job
        if exp is None:
            return ""
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.run_name` = '{run_name}'")
        return runs[0].info.run_id if runs else ""

    _wait(lambda: run_id() != "", "the run in MLflow", 400, job)
    rid = run_id()  # then only the one cheap call per poll, so the outage begins right after epoch 0
    _wait(lambda: 0 in _steps(client, rid), "epoch 0 in MLflow", 400, job, every=0.1)
    local.stop_mlflow(local_cluster.settings)  # the server is gone for the next two epochs
    try:  # whatever happens, the session's server comes back for the tests after this one
        last = max(int(p.name.split("_")[1]) for p in (storage / run_name).glob("epoch_*"))
        assert last + 2 < EPOCHS, f"the job ran too far ({last}) before the outage began"
        _wait(
            lambda: (storage / run_name / f"epoch_{last + 2:04d}").exists(),
            "two epochs in the outage",
            400,
            job,
        )
    finally:
        local.start_mlflow(local_cluster.settings)
    _wait(job.ended, "end of the job", 400, job)
    out = job.logs()
    assert "succeeded" in job.status(), out[-5000:]
    assert "MLflow unreachable" in out  # the outage was seen and survived
    assert "not writable" not in out  # no NumPy/torch warning per epoch
    run = client.get_run(rid)
    assert run.info.status == "FINISHED"
    for key in ("val/t2v_R1", "train/loss", "epoch_time_s"):
        assert _steps(client, rid, key) == list(range(EPOCHS)), key  # complete, each epoch once
    assert "best/t2v_R1" in run.data.metrics and run.data.tags["etva.model_id"]
