"""The Ray head goes away mid-training: its own private head (not the suite's shared one) is killed with
its whole process group (SIGKILL), started again with the same settings (ports, token, temp dir), and the
same ``--run-name`` is submitted again. The run resumes from its last checkpoint (Train's storage outlives
the head) into the same MLflow run (the tracking server is not the head's): every epoch logged exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import local
from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EPOCHS = 8
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


def _submit(cluster, data: Path, storage: Path, run_name: str, wait: bool) -> subprocess.CompletedProcess:
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
        *([] if wait else ["--no-wait"]),
        "--", "python", "-m", "ray_jobs.train", "--config", "ray_jobs/configs/tiny.yaml", "--run-name", run_name,
        f"data.root={data}", f"ray.storage_path={storage}", f"mlflow.tracking_uri={cluster.mlflow_uri}",
        f"train.epochs={EPOCHS}", "train.batch_size=4",
    ]  # fmt: skip
    return subprocess.run(cmd, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=900)


def _run(cluster, run_name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp = client.get_experiment_by_name("etva-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.run_name` = '{run_name}'")
    assert len(runs) == 1, f"expected exactly one MLflow run for {run_name}, found {len(runs)}"
    return client, runs[0]


def _steps(client, run_id: str, key: str = "val/t2v_R1") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_head_killed_mid_training_then_restarted_and_resubmitted(local_cluster_factory, tmp_path):
    data, storage, run_name = tmp_path / "data", tmp_path / "ray", "head-loss"
    generate_dataset(data, 24, 0, cfg=load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth, workers=2,
                     progress=False)  # fmt: skip
    with local_cluster_factory(4) as cluster:
        proc = _submit(cluster, data, storage, run_name, wait=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deadline = time.time() + 600
        while not (storage / run_name / "epoch_0001").exists():  # two epochs committed
            assert time.time() < deadline, "no epoch-1 checkpoint within 600 s"
            time.sleep(0.2)
        os.killpg(cluster.pgids["ray"], signal.SIGKILL)  # the head and everything in its process group
        t_kill = time.time()
        client, run = _run(cluster, run_name)
        before = _steps(client, run.info.run_id)
        assert len(before) < EPOCHS, "the job ended before the head was killed"
        survivors = local.stop_ray_head(cluster.settings)  # anything of the head outside its group
        assert not survivors, survivors
        restarted = local.start_ray_head(cluster.settings)  # same ports, token and temp dir
        assert restarted.dashboard_url == cluster.dashboard_url
        head_back_s = time.time() - t_kill

        t0 = time.time()
        proc = _submit(cluster, data, storage, run_name, wait=True)
        resubmit_s = time.time() - t0
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        client, run2 = _run(cluster, run_name)
        rid = run.info.run_id
        assert run2.info.run_id == rid and run2.data.tags.get("etva.resumed") == "true"
        assert run2.info.status == "FINISHED"
        assert _steps(client, rid) == list(range(EPOCHS)), "an epoch logged twice or missing"
        resumes = client.get_metric_history(rid, "train/resumed_from_epoch")
        assert len(resumes) == 1 and resumes[0].step >= 2, [(m.step, m.value) for m in resumes]
        redone = max(before, default=-1) + 1 - resumes[0].step  # epochs logged before but trained again
        print(
            "head loss:",
            json.dumps({
                "epochs_logged_before_kill": len(before), "resumed_at_epoch": resumes[0].step,
                "epochs_redone": redone, "head_back_s": round(head_back_s, 1),
                "resubmitted_job_s": round(resubmit_s, 1),
            }),
        )  # fmt: skip
