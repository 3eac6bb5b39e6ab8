"""Warm trials: one Tune trial process trains trial after trial, and a trial trained in a process that
has trained another one gives the same numbers as the same trial in a fresh process.

Two sweeps of the tiny config (one worker per trial, so each trial trains in its Tune trial process):
the first runs ``train.seed`` 0 then 1, one at a time (Tune reuses the process); the second runs seed 1
alone (a new sweep driver, a new trial process). Per-process state (torch threads, RNG, MLflow,
Ray Data) must not leak from the first trial into the second: seed 1's per-epoch loss and validation
metrics are equal in both sweeps. The training set is one block (16 videos, one decode task), so the
order of its rows depends only on the seed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset
from tuning.mlflow_sweep import SWEEP_TAG

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

EXPERIMENT = "etva-warm-it"
KEYS = ("train/loss", "val/t2v_R1", "val/t2v_MnR", "val/v2t_MnR")


def _sweep(cluster, tmp: Path, name: str, seeds: list[int]) -> list:
    space = tmp / f"{name}.yaml"
    space.write_text(f"train.seed: {{grid: {seeds}}}\n")
    cmd = [
        sys.executable, "-m", "tuning.sweep", "--config", str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--space", str(space), "--name", name, f"data.root={tmp / 'data'}", "data.subset=full",
        "data.cache=memory", "data.val_from_train=4", "ray.decode_concurrency=1",
        f"ray.storage_path={tmp / 'runs'}", f"ray.address={cluster.ray_address}", "ray.num_workers=1",
        f"mlflow.experiment={EXPERIMENT}", "tune.search=grid", "tune.scheduler=fifo", "tune.max_epochs=2",
        "tune.max_concurrent_trials=1",
    ]  # fmt: skip
    env = {**cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cluster.mlflow_uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = [r for r in client.search_runs([exp_id]) if r.data.tags.get(SWEEP_TAG) == name]
    runs = [r for r in runs if r.data.tags.get("etva.role") == "trial"]
    return [(client, r) for r in runs]


def _curve(client, run) -> dict[str, list[float]]:
    out = {}
    for key in KEYS:
        hist = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        out[key] = [m.value for m in hist]
    return out


def _seed(entry) -> int:
    return int(entry[1].data.params["train.seed"])


def test_a_trial_after_another_in_one_process_equals_it_in_a_fresh_process(local_cluster, tmp_path):
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(tmp_path / "data", 20, 0, cfg=synth, workers=2, progress=False)
    warm = sorted(_sweep(local_cluster, tmp_path, "warm-pair", [0, 1]), key=_seed)
    fresh = _sweep(local_cluster, tmp_path, "fresh-one", [1])
    assert [_seed(e) for e in warm] == [0, 1] and [_seed(e) for e in fresh] == [1]
    assert all(r.info.status == "FINISHED" for _, r in warm + fresh)

    started = [r.data.metrics["timing/trial_process_start"] for _, r in warm]
    assert started[0] == started[1], "the second trial did not run in the first trial's process"
    assert fresh[0][1].data.metrics["timing/trial_process_start"] != started[1]

    first, second, alone = (_curve(*e) for e in (*warm, *fresh))
    assert all(len(v) == 2 for v in second.values()), second
    assert second == alone, f"seed 1 after seed 0 in one process {second} != seed 1 alone {alone}"
    assert first != second  # the seeds differ: a comparison that could fail
