"""Sweep summary rows, table and plot from MLflow runs (tuning.mlflow_sweep)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def test_summary_rows_table_and_plot(tmp_path, make_run):
    from tuning.mlflow_sweep import plot_summary, summary_rows, to_csv, to_markdown

    keys = ["model.num_clusters", "model.experts.audio.enabled"]
    runs = [
        make_run("a", 40.0, 2.0, {"model.num_clusters": 8, "model.experts.audio.enabled": True}),
        make_run("b", 60.0, 1.5, {"model.num_clusters": 32, "model.experts.audio.enabled": False}),
        make_run("c", 60.0, 1.0, {"model.num_clusters": 16, "model.experts.audio.enabled": True}),
        make_run(
            "d",
            10.0,
            9.0,
            {"model.num_clusters": 64, "model.experts.audio.enabled": False},
            early=True,
            epochs=1,
        ),
        make_run(
            "e", None, None, {"model.num_clusters": 8, "model.experts.audio.enabled": True}, status="FAILED"
        ),
    ]
    rows = summary_rows(runs, keys)
    assert [r["trial"] for r in rows] == ["c", "b", "a", "d", "e"]  # R@1 desc, ties by MdR, no result last
    assert rows[3]["stopped_early"] is True and rows[3]["epochs"] == 1
    assert rows[0]["model.num_clusters"] == 16
    md = to_markdown(rows)
    assert md.count("\n") == 2 + len(rows) and "| c | FINISHED | 16 | True | 60 |" in md
    assert to_csv(rows).splitlines()[0].startswith("trial,status,model.num_clusters")
    png = tmp_path / "plot.png"
    assert plot_summary(rows, keys, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_summary(rows[-1:], keys, str(tmp_path / "none.png"))  # nothing finished


def test_sweep_picture_groups_seeds_into_mean_and_spread(tmp_path, make_run):
    from tuning.mlflow_sweep import group_stats, is_seed, plot_summary, summary_rows

    keys = ["model.num_clusters", "train.seed"]
    r1 = {(8, 0): 40.0, (8, 1): 44.0, (32, 0): 60.0, (32, 1): 50.0, (16, 0): 70.0}
    runs = [
        make_run(f"t{c}-{s}", v, 2.0, {"model.num_clusters": c, "train.seed": s}) for (c, s), v in r1.items()
    ]
    runs.append(make_run("failed", None, None, {"model.num_clusters": 64, "train.seed": 0}, status="FAILED"))
    rows = summary_rows(runs, keys)
    stats = group_stats(rows, "model.num_clusters")
    assert [(v, n) for v, _, _, n in stats] == [
        (8, 2),
        (16, 1),
        (32, 2),
    ]  # numeric order; no result: left out
    (_, m8, sd8, _), (_, m16, sd16, _), (_, m32, sd32, _) = stats
    assert (m8, m16, m32) == (42.0, 70.0, 55.0)
    assert (
        sd8 == pytest.approx(2.8284271, abs=1e-6)
        and sd16 == 0.0
        and sd32 == pytest.approx(7.0710678, abs=1e-6)
    )
    assert is_seed("train.seed") and not is_seed("model.num_clusters")
    assert plot_summary(rows, keys, str(tmp_path / "p.png"))
    assert plot_summary(rows, ["train.seed"], str(tmp_path / "seeds.png"))  # only seeds: one spread


def test_record_trial_from_the_runs_own_history_once(tmp_path):
    """A trial's record comes from its own per-epoch history when nobody holds it; writing it again (a
    resumed sweep driver, a second writer) changes nothing; an orphan RUNNING child is closed with it."""
    from mlflow.tracking import MlflowClient

    from tuning.mlflow_sweep import PARENT_TAG, close_unfinished, record_trial

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "art"))
    parent = client.create_run(exp).info.run_id
    runs = [client.create_run(exp, tags={PARENT_TAG: parent, "etva.role": "trial"}).info.run_id for _ in "ab"]
    for run_id in runs:
        for epoch, (r1, mdr) in enumerate([(10.0, 5.0), (30.0, 2.0), (30.0, 3.0)]):
            client.log_metric(run_id, "val/t2v_R1", r1, step=epoch)
            client.log_metric(run_id, "val/t2v_MdR", mdr, step=epoch)
    for _ in range(2):
        record_trial(client, runs[0], status="KILLED", reason="asha", early=True, epochs=1)
    assert close_unfinished(client, exp, parent) == 1  # runs[1]: the orphan
    assert close_unfinished(client, exp, parent) == 0
    for run_id, status, reason, epochs in [(runs[0], "KILLED", "asha", "1"), (runs[1], "KILLED", "interrupted", "3")]:
        run = client.get_run(run_id)
        assert run.info.status == status
        t = run.data.tags
        assert (t["etva.stop_reason"], t["etva.epochs_run"]) == (reason, epochs)
        assert t["etva.early_stopped"] == ("true" if reason == "asha" else "false")
        assert [m.value for m in client.get_metric_history(run_id, "best/t2v_R1")] == [30.0]  # once
        assert run.data.metrics["best/t2v_MdR"] == 2.0  # the selection rule's epoch: R@1, then MdR
        assert len(client.get_metric_history(run_id, "trial/epochs")) == 1


def test_an_ended_trial_hands_tune_the_result_it_ended_with(tmp_path):
    """A trial restarted by a resumed sweep after it ended (Tune's snapshot predates its end) gets the
    result of its last reported epoch back from its child run, marked done; one still running gets None."""
    from mlflow.tracking import MlflowClient

    from tuning.mlflow_sweep import SWEEP_TAG, TRIAL_TAG, ended_trial_result, record_trial

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("t", artifact_location=str(tmp_path / "art"))
    ids = {}
    for trial in ("t1", "t2"):
        run_id = client.create_run(exp, tags={SWEEP_TAG: "s", TRIAL_TAG: trial, "etva.role": "trial"}).info.run_id
        for epoch, (r1, lr) in enumerate([(10.0, 1e-3), (30.0, 5e-4)]):
            client.log_metric(run_id, "val/t2v_R1", r1, step=epoch)
            client.log_metric(run_id, "train/lr", lr, step=epoch)
        ids[trial] = run_id
    assert ended_trial_result(client, exp, "s", "t1") is None  # still RUNNING, no record
    # stopped by the scheduler after its first epoch (its Train run went on to log a second one)
    record_trial(client, ids["t1"], status="KILLED", reason="asha", early=True, epochs=1)
    result = ended_trial_result(client, exp, "s", "t1")
    assert result == {"val/t2v_R1": 10.0, "train/lr": 1e-3, "epoch": 0, "done": True}
    assert ended_trial_result(client, exp, "s", "nope") is None
    record_trial(client, ids["t2"], status="FAILED", reason="error")
    assert ended_trial_result(client, exp, "s", "t2") is None  # an error is resumed, not replayed
