"""The main job end to end: `ray job submit` to a real Ray head, a real MLflow server, real video files.

Covers: a run whose worker process is killed mid-run (fault injection) resumes from its last checkpoint,
finishes, and logs everything to MLflow (params, every epoch once, best/ metrics, tags, the data summary,
the checkpoint); a stopped job re-submitted under the same run name resumes and continues the same MLflow
run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset
from ray_jobs.batches import FAIL_AT_EPOCH_ENV, FAIL_ONCE_MARKER_ENV

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(__import__("sys").executable).parent
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    s = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(root, 24, 0, cfg=s, workers=2, progress=False)
    return root


def _submit(cluster, tiny_data, storage, run_name, *overrides, wait=True, timeout=600, env=None):
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
        *([] if wait else ["--no-wait"]), *runtime_env,
        "--", "python", "-m", "ray_jobs.train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", run_name,
        f"data.root={tiny_data}", f"ray.storage_path={storage}", f"mlflow.tracking_uri={cluster.mlflow_uri}",
        *overrides,
    ]  # fmt: skip
    return subprocess.run(cmd, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=timeout)


def _run(cluster, run_name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp = client.get_experiment_by_name("etva-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.run_name` = '{run_name}'")
    assert len(runs) == 1, f"expected exactly one MLflow run for {run_name}, found {len(runs)}"
    return client, runs[0]


def _epochs_logged(client, run_id, key="val/t2v_R1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_job_submit_trains_logs_everything_and_survives_a_killed_worker(local_cluster, tiny_data, tmp_path):
    """One submitted run: a worker process dies at the start of epoch 1 (fault injection); the run resumes
    from the epoch-0 checkpoint and logs every epoch once, and the finished run holds everything."""
    marker = tmp_path / "failed-once"
    proc = _submit(
        local_cluster, tiny_data, tmp_path / "ray", "submit-ok", "train.epochs=3", "ray.max_failures=2",
        env={FAIL_AT_EPOCH_ENV: "1", FAIL_ONCE_MARKER_ENV: str(marker)},  # fault injection (ray_jobs.batches)
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "text->video" in out and "succeeded" in out
    assert marker.exists(), "the fault was not injected"
    client, run = _run(local_cluster, "submit-ok")
    resumes = client.get_metric_history(run.info.run_id, "train/resumed_from_epoch")
    assert [(m.step, m.value) for m in resumes] == [(1, 0.0)], "expected one resume from the epoch-0 checkpoint"
    assert run.info.status == "FINISHED"
    assert _epochs_logged(client, run.info.run_id) == [0, 1, 2]  # every epoch once
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    for key in ("best/t2v_R1", "best/t2v_R5", "best/t2v_MdR", "best/v2t_R1", "val/v2t_MdR", "train/loss"):
        assert key in m, key
    assert 0.0 <= m["best/t2v_R1"] <= 100.0
    assert p["model.num_clusters"] == "4" and p["train.epochs"] == "3" and p["data.root"] == str(tiny_data)
    assert t["dataset"] == "msrvtt" and t["split"] == "1k-A:train->test"
    assert t["ray_job_submission_id"].startswith("raysubmit_")
    assert len(t["git_commit"]) >= 7
    assert t["mlflow.source.name"] == "ray_jobs.train"
    assert t.get("mlflow.source.git.commit", "unknown") == t["git_commit"]  # no .git in a plain submit
    assert "best epoch" in t["mlflow.note.content"] and "t2v" in t["mlflow.note.content"]
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "data_summary.json", "logs"} <= arts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "logs")][0].startswith("logs/job-")
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"msrvtt-1k-A-train", "msrvtt-1k-A-val"}, inputs
    assert all(len(d.dataset.digest) == 16 for d in inputs.values())
    model_id = t["etva.model_id"]  # the best checkpoint, logged as the run's MLflow model
    files = {a.path for a in client.list_logged_model_artifacts(model_id, "artifacts")}
    assert len(files) == 1, files
    ckpt = {a.path.split("/")[-1] for a in client.list_logged_model_artifacts(model_id, files.pop())}
    assert {"model.pt", "MANIFEST.json", "config.yaml", "tokenizer"} <= ckpt
    summary = json.loads(
        Path(client.download_artifacts(run.info.run_id, "data_summary.json", str(tmp_path))).read_text()
    )
    assert summary["train"]["videos"] + summary["val"]["videos"] == 24


def _job_cli(cluster, *args) -> str:
    cmd = [str(VENV_BIN / "ray"), "job", *args, "--address", cluster.dashboard_url]
    proc = subprocess.run(cmd, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=600)
    return proc.stdout + proc.stderr


def test_stopped_job_resubmitted_resumes_same_run(local_cluster, tiny_data, tmp_path):
    storage = tmp_path / "ray"
    run_name = "stop-resume"
    # enough short epochs (batch of 4) that the stop lands mid-run: an epoch of the tiny set takes well
    # under a second once reports are quick (controller poll 0.1 s on the local head)
    epochs = 20
    overrides = (f"train.epochs={epochs}", "train.batch_size=4")
    proc = _submit(local_cluster, tiny_data, storage, run_name, *overrides, wait=False, timeout=600)
    assert proc.returncode == 0, proc.stderr
    job_id = next(w.strip("'\"") for w in proc.stdout.split() if "raysubmit_" in w)
    deadline = time.time() + 300
    while not (storage / run_name / "epoch_0000").exists():
        assert time.time() < deadline, _job_cli(local_cluster, "logs", job_id)[-3000:]
        time.sleep(0.5)
    _job_cli(local_cluster, "stop", job_id)  # waits until the job has stopped
    assert "was stopped" in _job_cli(local_cluster, "status", job_id)
    client, run = _run(local_cluster, run_name)
    done_before = _epochs_logged(client, run.info.run_id)
    assert len(done_before) < epochs

    proc = _submit(local_cluster, tiny_data, storage, run_name, *overrides)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    client, run2 = _run(local_cluster, run_name)
    resumes = client.get_metric_history(run.info.run_id, "train/resumed_from_epoch")
    assert len(resumes) == 1 and resumes[0].step >= 1, "expected one resume after the stop"
    assert run2.info.run_id == run.info.run_id and run2.data.tags.get("etva.resumed") == "true"
    assert _epochs_logged(client, run.info.run_id) == list(range(epochs))
    assert run2.info.status == "FINISHED"
