"""A real Tune sweep on the private local Ray head + MLflow server: parent/child runs, an ASHA stop,
resume after the sweep driver is killed, the best pick, `etva best` and loading `models:/...@champion`.

One sweep, four sequential trials of the tiny config (2 epochs, 24 clips): optim.lr in [3e-3, 1e-9] x
train.seed in [0, 1] -> trials (lr, seed) = (3e-3, 0), (1e-9, 0), (3e-3, 1), (1e-9, 1) in this order.

Why ASHA ranks by ``train/lr`` here: with 16 training clips and one epoch, val R@1 of every trial is
exactly chance (one "hub" video tops every query), so the comparison ASHA makes at its first rung would
tie. ``train/lr`` (the learning rate at the end of the epoch) is about 1e-9 for the trials that cannot
learn (optim.lr = 1e-9) and about 1e-3 for the others, so trial 2 is below the median of trials 1-2 at the first
rung and is stopped, deterministically. (The default metric stays val/t2v_R1.)

The driver is killed (SIGKILL) once two trials are recorded (their MLflow runs closed with their record)
and Tune's saved state shows both ended; re-running the same command must resume: trials 1-2 are not run
again (no new child runs, their Tune results untouched), trials 3-4 run, and the same parent run is
continued. In the resumed run a Train worker of a trial dies mid-epoch once (fault injection:
``ETVA_FAIL_AT_EPOCH``): the trial's own trainer restarts it from its last checkpoint (``ray.max_failures``)
and every metric is still logged exactly once. Every wait is on state (MLflow, Tune's saved state, the
head's actors), never on time.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etva.config import load_config
from etva.data.synth import generate_dataset
from ray_jobs.batches import FAIL_AT_EPOCH_ENV, FAIL_ONCE_MARKER_ENV

REPO = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1800),  # a hang guard: the fixture runs two sweeps (265 s at load 1-4)
]

EXPERIMENT = "etva-tune-it"
NAME = "it-sweep"
LOW_LR = 1e-9  # the config refuses lr = 0; this rate cannot move the weights in two epochs either
SPACE = "optim.lr: {grid: [0.003, 1.0e-9]}\ntrain.seed: {grid: [0, 1]}\n"  # 1.0e-9 = LOW_LR
SWEEP_TIMEOUT_S = 600  # one run of the sweep command; a hung trial fails the test instead of CI


def _sweep_cmd(tmp: Path, cluster, space: Path, name: str = NAME) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tuning.sweep",
        "--config",
        str(REPO / "ray_jobs/configs/tiny.yaml"),
        "--space",
        str(space),
        "--name",
        name,
        f"data.root={tmp / 'data'}",
        "data.subset=full",
        "data.synth.num_videos=24",
        f"ray.storage_path={tmp / 'runs'}",
        f"ray.address={cluster.ray_address}",
        "ray.num_workers=1",
        "optim.warmup_steps=0",
        f"mlflow.experiment={EXPERIMENT}",
        "tune.search=random",
        "tune.num_samples=1",
        "tune.scheduler=asha",
        "tune.metric=train/lr",
        "tune.grace_period=1",
        "tune.max_epochs=2",
        "tune.reduction_factor=2",
        "tune.max_concurrent_trials=1",
        "ray.max_failures=1",  # a trial's Train run restarts a dead worker once
        f"tune.time_budget_s={SWEEP_TIMEOUT_S - 20}",
    ]


def _env(cluster) -> dict[str, str]:
    return {**cluster.subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _children(client, exp_id: str) -> list:
    return [r for r in client.search_runs([exp_id]) if r.data.tags.get("etva.role") == "trial"]


def _recorded(client) -> int:
    """Child runs closed with their record (epochs run, why they stopped)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = _children(client, exp.experiment_id) if exp is not None else []
    return sum(r.info.status != "RUNNING" and "etva.epochs_run" in r.data.tags for r in runs)


def _tune_ended(exp_dir: Path) -> int:
    """Trials Tune's saved sweep state (what a resumed driver restores) shows as ended."""
    states = sorted(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (ValueError, KeyError, OSError):  # being written: read it on the next poll
        return 0
    return sum(json.loads(t)["status"] in ("TERMINATED", "ERROR") for t, _ in trials)


def _wait_for_ended_trials(proc, client, exp_dir: Path, n: int, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        assert proc.poll() is None, f"sweep exited early ({proc.returncode}):\n{log.read_text()[-4000:]}"
        if _recorded(client) >= n and _tune_ended(exp_dir) >= n:
            return
        time.sleep(1.0)
    proc.kill()
    raise AssertionError(f"fewer than {n} trials ended in {timeout_s} s:\n{log.read_text()[-4000:]}")


ALIVE_ACTORS = (  # a job's own actors; detached ones (Ray Data's stats actor) outlive every job
    "import sys; from ray.util.state import list_actors; "
    "print(' '.join(f'{a.actor_id}:{a.class_name}' for a in list_actors(address=sys.argv[1], "
    "filters=[('state', '=', 'ALIVE')], limit=10000, detail=True) if not a.is_detached))"
)


def _alive_actors(cluster, env) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", ALIVE_ACTORS, cluster.dashboard_url],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return set(out.stdout.split())


def _wait_for_actors_gone(cluster, env, baseline: set[str], timeout_s: float) -> None:
    """The killed driver's trial and Train actors are gone (the head released their resources)."""
    deadline = time.time() + timeout_s
    while (left := _alive_actors(cluster, env) - baseline) and time.time() < deadline:
        time.sleep(1.0)
    assert not left, f"actors of the killed sweep driver still alive after {timeout_s} s: {left}"


def _unsnapshot_an_ended_trial(exp_dir: Path) -> str:
    """Fault injection: the driver died after a trial ended but before Tune's next snapshot of the sweep
    (it snapshots every few seconds), so the saved state still shows the trial RUNNING. Whether the kill
    lands in that window is timing; this makes it certain for the ASHA-stopped trial. Returns its id."""
    state = max(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    data = json.loads(state.read_text())
    for entry in data["trial_data"]:
        trial = json.loads(entry[0])
        if trial["status"] == "TERMINATED" and trial["config"]["optim.lr"] == LOW_LR:
            trial["status"] = "RUNNING"
            entry[0] = json.dumps(trial)
            state.write_text(json.dumps(data))
            return trial["trial_id"]
    raise AssertionError(f"no ended ASHA-stopped trial in {state}")


def _trial_results(exp_dir: Path) -> dict[str, int]:
    """Tune trial folder name -> number of results it recorded."""
    return {p.parent.name: len(p.read_text().splitlines()) for p in exp_dir.glob("*/result.json")}


@pytest.fixture(scope="module")
def sweep(local_cluster, tmp_path_factory):
    """Run the sweep, kill its driver after two trials, resume it; returns what the tests inspect."""
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("tune")
    synth = load_config(REPO / "ray_jobs/configs/tiny.yaml").data.synth
    generate_dataset(tmp / "data", 24, 0, cfg=synth, workers=2, progress=False)
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    client = MlflowClient(local_cluster.mlflow_uri)
    cmd, env = _sweep_cmd(tmp, local_cluster, space), _env(local_cluster)
    baseline = _alive_actors(local_cluster, env)

    t0 = time.time()
    log1 = tmp / "sweep1.log"
    with open(log1, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_for_ended_trials(proc, client, tmp / "runs" / NAME, 2, log1, SWEEP_TIMEOUT_S)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    first_s = time.time() - t0
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    before = {r.data.tags["etva.trial_id"]: r for r in _children(client, exp_id)}
    results_before = _trial_results(tmp / "runs" / NAME)
    _wait_for_actors_gone(local_cluster, env, baseline, 120)
    replayed = _unsnapshot_an_ended_trial(tmp / "runs" / NAME)

    t0 = time.time()
    log2 = tmp / "sweep2.log"
    marker = tmp / "worker-killed"  # fault injection: the first Train worker to start epoch 1 dies once
    env2 = {**env, FAIL_AT_EPOCH_ENV: "1", FAIL_ONCE_MARKER_ENV: str(marker)}
    with open(log2, "w") as out:
        second = subprocess.run(
            cmd, cwd=REPO, env=env2, stdout=out, stderr=subprocess.STDOUT, timeout=SWEEP_TIMEOUT_S
        )
    assert second.returncode == 0, log2.read_text()[-6000:]
    print(f"sweep: first run (killed after 2 trials) {first_s:.0f} s, resumed run {time.time() - t0:.0f} s")
    return {
        "tmp": tmp,
        "client": client,
        "exp_id": exp_id,
        "before": before,
        "results_before": results_before,
        "log2": log2.read_text(),
        "worker_killed": marker.exists(),
        "replayed": replayed,
        "cmd": cmd,
        "env": env,
    }


def test_parent_and_child_runs(sweep):
    client, exp_id = sweep["client"], sweep["exp_id"]
    parents = [r for r in client.search_runs([exp_id]) if r.data.tags.get("etva.role") == "sweep"]
    assert len(parents) == 1, "the resumed sweep continues its parent run"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags.get("etva.resumed") == "true"
    children = _children(client, exp_id)
    assert len(children) == 4
    seen = set()
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        p = run.data.params
        seen.add((float(p["sampled/optim.lr"]), int(p["sampled/train.seed"])))
        assert float(p["optim.lr"]) == float(p["sampled/optim.lr"])  # resolved config carries the sample
        assert p["train.epochs"] == "2" and p["model.num_clusters"] == "4"
        assert run.info.status in ("FINISHED", "KILLED")
        # per-epoch metrics logged by rank 0 of the trial's Train run
        hist = client.get_metric_history(run.info.run_id, "val/t2v_R1")
        # (an ASHA-stopped trial may log one more epoch before its driver is gone)
        assert len(hist) >= int(run.data.tags["etva.epochs_run"]) >= 1
        assert "best/t2v_R1" in run.data.metrics
        assert run.data.tags["etva.model_id"]  # the trial's best checkpoint as an MLflow model
        assert {"trial/epochs", "trial/stopped_early", "best/t2v_R1"} <= set(run.data.metrics)
    assert len({frozenset(r.data.params) for r in children}) == 1  # the compare view lines them up
    assert seen == {(0.003, 0), (LOW_LR, 0), (0.003, 1), (LOW_LR, 1)}
    names = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.md", "r1_vs_params.png", "search_space.yaml"} <= names
    local = Path(client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(sweep["tmp"])))
    rows = local.read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,status,optim.lr,train.seed,t2v_R1")


def test_asha_stopped_the_trial_that_cannot_learn(sweep):
    children = _children(sweep["client"], sweep["exp_id"])
    stopped = [r for r in children if r.data.tags.get("etva.early_stopped") == "true"]
    assert stopped, [(r.info.run_name, r.data.tags) for r in children]
    for run in stopped:
        assert float(run.data.params["optim.lr"]) == LOW_LR
        assert run.info.status == "KILLED" and run.data.tags["etva.stop_reason"] == "asha"
        assert int(run.data.tags["etva.epochs_run"]) == 1
    full = [r for r in children if float(r.data.params["optim.lr"]) > LOW_LR]
    assert all(r.data.tags["etva.early_stopped"] == "false" for r in full)
    assert all(int(r.data.tags["etva.epochs_run"]) == 2 for r in full)


def test_resume_did_not_rerun_finished_trials(sweep):
    client, exp_id, before = sweep["client"], sweep["exp_id"], sweep["before"]
    after = {r.data.tags["etva.trial_id"]: r for r in _children(client, exp_id)}
    closed = {t for t, r in before.items() if r.info.status != "RUNNING"}
    assert len(closed) >= 2
    for trial_id in closed:  # same MLflow run, not touched again
        assert after[trial_id].info.run_id == before[trial_id].info.run_id
        assert "etva.resumed" not in after[trial_id].data.tags
        assert after[trial_id].data.metrics == before[trial_id].data.metrics
        # Tune restarts a trial that ended after its last snapshot of the sweep (timing): the trial then
        # hands back the result it ended with and does not train
        assert f"trial {trial_id}: {{" not in sweep["log2"], "a finished trial ran again"
    # the trial Tune's state showed RUNNING was started again and handed back its recorded result
    assert f"trial {sweep['replayed']}: already ended (1 epochs, recorded in MLflow)" in sweep["log2"]
    results_after = _trial_results(sweep["tmp"] / "runs" / NAME)
    for folder, n in sweep["results_before"].items():
        if any(t in folder for t in closed):
            lines = (sweep["tmp"] / "runs" / NAME / folder / "result.json").read_text().splitlines()
            assert results_after[folder] - n <= 1, f"{folder} recorded new results after the resume"
            assert all(json.loads(x)["done"] for x in lines[n:]), f"{folder} reported a new epoch"
    assert len(after) == 4 and all(r.info.status != "RUNNING" for r in after.values())


def test_best_pick_registers_and_loads_the_champion(sweep, tmp_path):
    from etva.train.checkpoint import load_checkpoint
    from ray_jobs.tracking import download_checkpoint
    from tuning.best import pick_best

    client, exp_id = sweep["client"], sweep["exp_id"]
    children = _children(client, exp_id)
    best = max(children, key=lambda r: (r.data.metrics["best/t2v_R1"], -r.data.metrics["best/t2v_MdR"]))
    uri = sweep["env"]["MLFLOW_TRACKING_URI"]
    pick = pick_best(EXPERIMENT, "tune-it-model", uri)
    top = pick.ranked[0]
    assert (top.data.metrics["best/t2v_R1"], top.data.metrics["best/t2v_MdR"]) == (
        best.data.metrics["best/t2v_R1"],
        best.data.metrics["best/t2v_MdR"],
    )
    assert len(pick.ranked) == 4  # the parent run has no best/ metrics and is never picked
    mv = client.get_model_version_by_alias("tune-it-model", "champion")
    assert mv.run_id == top.info.run_id and mv.version == pick.version

    ckpt = download_checkpoint(pick.uri, tmp_path / "champion", uri)
    state = load_checkpoint(ckpt, load_optimizer=False)
    assert state["meta"]["metrics"]["val/t2v_R1"] == top.data.metrics["best/t2v_R1"]
    # a plain mlflow download with $MLFLOW_TRACKING_URI set (what a user may do by hand)
    code = (
        "import sys, mlflow.artifacts; "
        "print(mlflow.artifacts.download_artifacts('models:/tune-it-model@champion', dst_path=sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "plain")],
        env=sweep["env"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # a registered version is an MLflow model: the checkpoint folder sits inside its artifacts
    assert len(list(Path(out.stdout.strip().splitlines()[-1]).rglob("MANIFEST.json"))) == 1


def test_etva_best_command(sweep):
    env = sweep["env"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "etva",
            "best",
            "--experiment",
            EXPERIMENT,
            "--model-name",
            "cli-model",
            "--top",
            "3",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[1].split()[:2] == ["rank", "run"] and len([x for x in lines if x[:1].isdigit()]) == 3
    assert "models:/cli-model@champion" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "etva", "best", "--experiment", "no-such-experiment"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 2 and "no-such-experiment" in bad.stderr


def test_bad_space_key_fails_fast_naming_the_file(sweep, tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text("model.num_clustrs: {grid: [8, 16]}\n")
    cmd = _sweep_cmd(sweep["tmp"], type("C", (), {"ray_address": "127.0.0.1:1"})(), space, name="bad")
    out = subprocess.run(cmd, cwd=REPO, env=sweep["env"], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    assert "unknown key 'model.num_clustrs'" in out.stderr and str(space) in out.stderr
    assert not (sweep["tmp"] / "runs" / "bad").exists()


def test_the_resumed_sweep_reused_the_tokenizer(sweep):
    """The sweep driver trains the tokenizer once; the resumed driver loads it (counted on the parent)."""
    client, exp_id = sweep["client"], sweep["exp_id"]
    parent = next(r for r in client.search_runs([exp_id]) if r.data.tags.get("etva.role") == "sweep")
    history = sorted(client.get_metric_history(parent.info.run_id, "prep/tokenizer_trained"), key=lambda m: m.timestamp)
    assert [m.value for m in history] == [1.0, 0.0]
    assert all(r.data.tags["etva.data.prepared_by"] == "sweep" for r in _children(client, exp_id))


def test_killed_train_worker_retried_and_every_metric_logged_once(sweep):
    """The resumed sweep lost a Train worker mid-epoch: its trial's trainer restarted it from the last
    checkpoint; no child run is RUNNING or duplicated and each metric of each trial is logged once."""
    client, exp_id = sweep["client"], sweep["exp_id"]
    assert sweep["worker_killed"], "the fault was not injected"
    children = _children(client, exp_id)
    assert len({r.data.tags["etva.trial_id"] for r in children}) == len(children) == 4
    resumed = 0
    for run in children:
        rid = run.info.run_id
        assert run.info.status in ("FINISHED", "KILLED"), (run.info.run_name, run.info.status)
        steps = [m.step for m in client.get_metric_history(rid, "val/t2v_R1")]
        assert sorted(steps) == list(range(len(steps))), (run.info.run_name, steps)  # each epoch once
        for key in ("best/t2v_R1", "trial/epochs", "trial/stopped_early"):
            assert len(client.get_metric_history(rid, key)) == 1, (run.info.run_name, key)
        restarts = client.get_metric_history(rid, "train/resumed_from_epoch")
        resumed += bool(restarts)
        stamps = sorted((m.step, m.timestamp) for m in client.get_metric_history(rid, "val/t2v_R1"))
        gaps = [round((b - a) / 1000, 1) for (_, a), (_, b) in zip(stamps, stamps[1:])]
        print(f"trial {run.info.run_name}: resumed at {[m.step for m in restarts]}, s between epochs {gaps}")
    assert resumed >= 1, "no trial's Train run resumed from a checkpoint"
