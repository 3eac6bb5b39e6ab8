"""A sweep prepares its data once: trials with the sweep's data settings decode no clip and train no
tokenizer; a trial that changes a data setting decodes its own clips (counted in MLflow, not timed).

One sweep of two concurrent 1-epoch trials of the tiny config with ``data.cache=memory``:
``data.num_frames`` in [4, 5] (4 is the config's own value), so one trial uses the driver's data and one
prepares its own. (The study's trials in test_study, a sweep too, check the same reuse for every trial.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(720)]

EXPERIMENT = "etva-sweep-data-it"
SPACE = "data.num_frames: {grid: [4, 5]}\n"


@pytest.fixture(scope="module")
def sweep(local_cluster, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("sweep-data")
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(tmp / "data", 24, 0, cfg=synth, workers=2, progress=False)
    (tmp / "space.yaml").write_text(SPACE)
    cmd = [
        sys.executable, "-m", "tuning.sweep", "--config", str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--space", str(tmp / "space.yaml"), "--name", "data-once",
        f"data.root={tmp / 'data'}", "data.subset=full", "data.cache=memory",
        f"ray.storage_path={tmp / 'runs'}", f"ray.address={local_cluster.ray_address}", "ray.num_workers=1",
        f"mlflow.experiment={EXPERIMENT}", "tune.search=grid", "tune.scheduler=fifo", "tune.max_epochs=1",
        "tune.max_concurrent_trials=2",
    ]  # fmt: skip
    env = {**local_cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    client = MlflowClient(local_cluster.mlflow_uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id])
    parent = next(r for r in runs if r.data.tags.get("etva.role") == "sweep")
    children = [r for r in runs if r.data.tags.get("etva.role") == "trial"]
    return {"tmp": tmp, "parent": parent, "children": children, "stdout": done.stdout}


def test_trials_with_the_sweeps_data_settings_decode_and_tokenize_nothing(sweep):
    parent, children = sweep["parent"], sweep["children"]
    outcome = json.loads(parent.data.tags["etva.sweep.prepared"])
    assert outcome["clips_decoded"] == outcome["clips"] > 0, outcome  # the driver decoded each clip once
    assert parent.data.metrics["prep/tokenizer_trained"] == 1.0  # fresh storage: trained once, by the driver
    same = [r for r in children if r.data.params["data.num_frames"] == "4"]
    assert len(same) == 1 and len(children) == 2
    for run in same:
        assert run.info.status == "FINISHED"
        assert run.data.tags["etva.data.prepared_by"] == "sweep"
        assert run.data.metrics["prep/clips_decoded"] == 0.0
        assert run.data.metrics["prep/tokenizer_trained"] == 0.0
    tokenizers = list((sweep["tmp"] / "runs" / "tokenizer-cache").iterdir())
    assert len(tokenizers) == 1, tokenizers  # one tokenizer for the whole sweep
    assert "1 of 2 trials used it" in parent.data.tags["mlflow.note.content"]


def test_a_trial_with_other_data_settings_decodes_its_own_clips(sweep):
    other = [r for r in sweep["children"] if r.data.params["data.num_frames"] == "5"]
    assert len(other) == 1
    run = other[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["etva.data.prepared_by"] == "trial"
    clips = json.loads(sweep["parent"].data.tags["etva.sweep.prepared"])["clips"]
    assert run.data.metrics["prep/clips_decoded"] == clips  # other frames: decoded again
    assert run.data.metrics["prep/tokenizer_trained"] == 0.0  # the same captions: the sweep's tokenizer
    assert "1 prepared their own" in sweep["parent"].data.tags["mlflow.note.content"]
