"""A 2-variant x 2-seed ablation study at a tiny budget on the suite's local Ray head + MLflow server,
two trials at a time.

``python -m tuning.study`` (what ``etva study`` runs) with the shipped Tables 4-5 space cut to two variants
and two seeds, on the compositional synthetic data: four trials, each selecting its epoch on a split
carved from training and reporting the test split. Checked: the nested runs, each trial's variant config,
test metrics and per-query rank counts (which reproduce its logged R@1), the parent's table, paired
comparison and picture, and that ``etva best`` skips study trials unless asked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset
from etva.eval.stats import hits_at_k

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]  # a hang guard: the study fixture took 252 s at load ~4

EXPERIMENT = "etva-study-it"
NAME = "it-study"
VARIANTS = ("global_only", "shared_centres")


@pytest.fixture(scope="module")
def study(local_cluster, tmp_path_factory):
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("study")
    # captions as study.yaml; 2 s clips: the shortest whose sounds fit their grid with silent margins
    as_study = ["data.synth.mode=compositional", "data.synth.object_words=fused", "data.synth.duration_s=2.0"]
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml", as_study).data.synth
    generate_dataset(tmp / "data", 24, 0, cfg=synth, workers=2, progress=False)
    cmd = [
        sys.executable, "-m", "tuning.study", "--config", str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--space", str(REPO / "tuning/spaces/ablations.yaml"), "--name", NAME, "--seeds", "2",
        "--variants", ",".join(VARIANTS), f"data.root={tmp / 'data'}", *as_study,
        "data.synth.num_videos=24", "data.subset=full", "data.val_from_train=4", "data.test_split=test",
        "train.epochs=1", "optim.warmup_steps=0", f"ray.storage_path={tmp / 'runs'}",
        f"ray.address={local_cluster.ray_address}", "ray.num_workers=1", f"mlflow.experiment={EXPERIMENT}",
        "tune.max_concurrent_trials=2",  # two at a time, as the README's sweep step runs
        "model.experts.appearance.grid=3", "model.experts.motion.grid=3",  # region tokens, as study.yaml
    ]  # fmt: skip
    env = {**local_cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    log = tmp / "study.log"
    with open(log, "w") as f:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=540).returncode
    assert code == 0, log.read_text()[-6000:]
    client = MlflowClient(local_cluster.mlflow_uri)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp_id])
    parent = next(r for r in runs if r.data.tags.get("etva.study") == NAME)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return {"tmp": tmp, "client": client, "parent": parent, "children": children, "stdout": log.read_text(),
            "uri": local_cluster.mlflow_uri}  # fmt: skip


def test_every_trial_runs_its_variant_and_reports_the_test_split(study):
    client, children = study["client"], study["children"]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    seen = set()
    for run in children:
        sampled = json.loads(run.data.tags["etva.sampled"])
        variant, seed = sampled["study.variant"], sampled["train.seed"]
        seen.add((variant, seed))
        assert run.data.params["model.alignment"] == ("global" if variant == "global_only" else "both")
        assert run.data.params["train.seed"] == str(seed)
        ranks = json.loads(Path(client.download_artifacts(run.info.run_id, "test_ranks.json", str(study["tmp"]))).read_text())
        assert ranks["split"] == "test" and len(ranks["t2v_h"]) == run.data.metrics["test/num_queries"] > 0
        r1 = hits_at_k(ranks["t2v_h"], ranks["t2v_e"], 1).mean()
        assert r1 == pytest.approx(run.data.metrics["test/t2v_R1"], abs=1e-6)
    assert seen == {(v, s) for v in VARIANTS for s in (0, 1)}
    # a study is a sweep over model settings and seeds: every trial trains on the data the study driver
    # prepared once (one tokenizer), none prepares its own
    assert study["parent"].data.metrics["prep/tokenizer_trained"] == 1.0
    for run in children:
        assert run.data.tags["etva.data.prepared_by"] == "sweep", run.info.run_name
        assert run.data.metrics["prep/tokenizer_trained"] == 0.0 and run.data.metrics["prep/clips_decoded"] == 0.0
    assert len(list((study["tmp"] / "runs" / "tokenizer-cache").iterdir())) == 1


def test_parent_holds_the_table_the_paired_comparison_and_the_picture(study):
    client, parent = study["client"], study["parent"]
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"study_table.md", "study_summary.json", "study_r1.png"} <= files
    d = str(study["tmp"])
    summary = json.loads(Path(client.download_artifacts(parent.info.run_id, "study_summary.json", d)).read_text())
    assert summary["reference"] == "shared_centres" and set(summary["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        r1 = summary["variants"][v]["t2v_R1"]
        assert r1["n"] == 2 and r1["low"] <= r1["mean"] <= r1["high"]
    paired = summary["paired"]["global_only"]
    queries = int(study["children"][0].data.metrics["test/num_queries"])
    assert paired["num_seeds"] == 2 and paired["num_queries"] == queries and 0 < paired["p_value"] <= 1
    means = [summary["variants"][v]["t2v_R1"]["mean"] for v in VARIANTS]
    assert paired["diff"] == pytest.approx(means[0] - means[1], abs=1e-6)  # paired mean = difference of means
    assert "paired vs shared_centres" in parent.data.tags["mlflow.note.content"]
    assert "paired vs shared_centres" in study["stdout"]


def test_etva_best_skips_study_trials_unless_asked(study):
    from tuning.best import BestError, pick_best

    with pytest.raises(BestError, match="no run has a logged model"):
        pick_best(EXPERIMENT, tracking_uri=study["uri"], dry_run=True)
    assert len(pick_best(EXPERIMENT, tracking_uri=study["uri"], dry_run=True, include_studies=True).ranked) == 4
    assert np.isfinite(study["parent"].data.metrics["study/global_only/t2v_R1_diff_vs_reference"])
