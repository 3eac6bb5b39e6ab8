"""Checkpoint faults through the main job (`ray job submit` to a real head, real MLflow server):

1. a run of two epochs: a full disk while rank 0 writes the epoch-1 checkpoint (a real ENOSPC: the
   first file of epoch_0001 goes to /dev/full, once) fails that attempt with a clear message; Ray Train
   restarts the workers, which resume from the intact epoch-0 checkpoint;
2. the same run, its latest checkpoint then truncated on disk, resubmitted under its run name for one more
   epoch: the resume warns naming the bad checkpoint, falls back to the newest good one, sets the bad one
   aside, redoes the lost epoch without logging it twice; retention keeps the best + ray.keep_recent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset
from etva.train.checkpoint import FULL_DISK_FAULT_AT_ENV, FULL_DISK_FAULT_ENV
from ray_jobs.checkpoints import RETIRED

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(__import__("sys").executable).parent
RUN = "ckpt-faults"
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    s = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(root, 16, 0, cfg=s, workers=2, progress=False)
    return root


def _submit(cluster, data, storage, *overrides, env=None):
    runtime_env = ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    cmd = [
        str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(REPO),
        *runtime_env, "--", "python", "-m", "ray_jobs.train", "--config", "ray_jobs/configs/tiny.yaml",
        "--run-name", RUN, f"data.root={data}", f"ray.storage_path={storage}",
        f"mlflow.tracking_uri={cluster.mlflow_uri}", "train.batch_size=4", "ray.keep_recent=1", *overrides,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=cluster.subprocess_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


def _history(cluster, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp = client.get_experiment_by_name("etva-tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.run_name` = '{RUN}'")
    assert len(runs) == 1, f"expected one MLflow run, found {len(runs)}"
    return sorted((m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, key))


def _live(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.glob("epoch_*") if not (p / RETIRED).exists())


def test_full_disk_then_corrupt_latest_checkpoint(local_cluster, tiny_data, tmp_path):
    storage, marker = tmp_path / "ray", tmp_path / "disk-full-fired"
    run_dir = storage / RUN
    out = _submit(  # epoch_0000 is written; the epoch_0001 checkpoint write hits a full disk once
        local_cluster, tiny_data, storage, "train.epochs=2", "ray.max_failures=1",
        env={FULL_DISK_FAULT_ENV: str(marker), FULL_DISK_FAULT_AT_ENV: "epoch_0001"},
    )  # fmt: skip
    assert marker.exists(), "the full disk was not injected"
    assert "epoch_0001" in marker.read_text(), marker.read_text()
    assert "no space left on the device" in out and "earlier checkpoints are intact" in out, out[-5000:]
    # Ray Train restarted the workers after the failed write: they resumed from epoch 0
    assert _history(local_cluster, "train/resumed_from_epoch") == [(1, 0.0)]
    assert [s for s, _ in _history(local_cluster, "val/t2v_R1")] == [0, 1]
    assert _live(run_dir) == ["epoch_0000", "epoch_0001"]

    latest = run_dir / "epoch_0001"
    weights = latest / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated write / a bad sector
    out = _submit(local_cluster, tiny_data, storage, "train.epochs=3")
    assert f"checkpoint {latest} is unusable" in out, out[-5000:]
    assert json.loads((latest / RETIRED).read_text())["reason"].startswith("unusable")
    assert list((run_dir / "quarantine").glob("epoch_0001-*/model.pt")), "the bad files were not kept"
    assert _history(local_cluster, "train/resumed_from_epoch")[-1] == (1, 0.0)  # fell back to epoch 0
    assert [s for s, _ in _history(local_cluster, "val/t2v_R1")] == [0, 1, 2]  # each epoch once
    assert len(_live(run_dir)) <= 2  # the best + the most recent (ray.keep_recent=1)
