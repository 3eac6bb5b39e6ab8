"""The README's sweep step, timed: how much of a sweep's wall time is training, and where the rest goes.

    bash cluster/quickstart.sh                  # once: local Ray head + MLflow server, data/shapes
    source runs/local/env.sh
    .venv/bin/python -m benchmarks.bench_sweep --out /tmp/sweep.json

Runs the README's step 2 as written (``etva tune --space tuning/spaces/clusters_laptop.yaml ...
data.root=$PWD/data/shapes ray.storage_path=$PWD/runs/ray ray.num_workers=1 tune.search=grid
tune.num_samples=1 tune.max_epochs=4``: one worker per trial, so every trial trains in its warm Tune trial
process) under a fresh sweep name, then prints, from what the sweep recorded in MLflow and Ray:

- the sweep's wall time (the command, from start to exit);
- the epochs' wall time: the union of every trial's epoch intervals (``timing/epoch_start`` to
  ``+ epoch_time_s``, reported by rank 0 of each trial), so epochs that run side by side count once, and
  the ratio of the two (goal <= 1.3);
- per trial, its start-up split into parts (``timing/<mark>`` of the trial's driver function and of its
  rank-0 Train worker, unix times): queued (sweep start to the trial's process), trial process start to
  its function, imports, its MLflow child run, data (the sweep's shared data, or its own preparation),
  trainer build (imports Ray Train and torch; logs the run's inputs), fit() to
  the worker process, worker process to the training loop, setup (model build, resume), first batch, and
  the first epoch; and ``trial_start_to_first_batch``, whether the trial ran in a process that an earlier
  trial had used (``reused_process``). Parts that do not apply are left out: a warm trial trains in its
  own process (no fit(), no worker process), so its "worker process" is the trial process itself;
- the number of Python worker processes Ray started during the sweep (Ray's state API);
- the sweep driver's preparation (``etva.sweep.prepared``: tokenizer, clips decoded) and the load average.

``--` passes further overrides to the sweep (e.g. ``-- data.cache=disk``). Nothing else runs during it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPLIT = (  # (part, from mark, to mark): consecutive marks of one trial
    ("queued", "sweep_start", "trial_process_start"),
    ("trial_process", "trial_process_start", "trial_start"),
    ("imports", "trial_start", "imports_done"),
    ("mlflow_child_run", "imports_done", "child_run_ready"),
    ("data", "child_run_ready", "data_ready"),
    ("trainer_build", "data_ready", "fit_start"),
    ("fit_to_worker", "fit_start", "process_start"),
    ("worker_to_loop", "process_start", "loop_start"),
    ("setup", "loop_start", "setup_done"),
    ("first_batch", "setup_done", "first_batch"),
)


def sweep_command(args: argparse.Namespace, name: str) -> list[str]:
    """The README's step 2, with a fresh name (and the extra overrides)."""
    return [
        str(REPO / ".venv/bin/etva"), "tune", "--space", "tuning/spaces/clusters_laptop.yaml", "--name", name,
        f"data.root={args.data}", f"ray.storage_path={args.storage}", "ray.num_workers=1",
        "tune.search=grid", "tune.num_samples=1", f"tune.max_epochs={args.max_epochs}", *args.overrides,
    ]  # fmt: skip


def union_s(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``(start, end)`` intervals (overlaps count once)."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def trial_timings(client, run) -> dict:
    """One child run's marks, its epochs' (start, end) intervals and its start-up split."""
    rid = run.info.run_id
    marks = {k.removeprefix("timing/"): v for k, v in run.data.metrics.items() if k.startswith("timing/")}
    starts = {m.step: m.value for m in client.get_metric_history(rid, "timing/epoch_start")}
    lengths = {m.step: m.value for m in client.get_metric_history(rid, "epoch_time_s")}
    epochs = [(starts[e], starts[e] + lengths[e]) for e in sorted(starts) if e in lengths]
    return {"name": run.info.run_name, "status": run.info.status, "marks": marks, "epochs": epochs}


def startup_split(trial: dict, sweep_start: float) -> dict[str, float]:
    """Seconds of each start-up part (:data:`SPLIT`) plus the first epoch; parts whose marks are missing
    (a trial stopped before its first epoch) are left out."""
    marks = {**trial["marks"], "sweep_start": sweep_start}
    out = {part: marks[b] - marks[a] for part, a, b in SPLIT if a in marks and b in marks}
    if marks.get("process_start", float("inf")) <= marks.get("trial_start", float("-inf")):
        # trained in the trial process itself (its "worker process" is that process): no fit(), no worker
        out = {part: s for part, s in out.items() if part not in ("fit_to_worker", "worker_to_loop")}
    if "trial_start" in marks and "first_batch" in marks:
        out["trial_start_to_first_batch"] = marks["first_batch"] - marks["trial_start"]
    if "fit_start" in marks and "first_batch" in marks and marks["process_start"] >= marks["fit_start"]:
        out["fit_to_first_batch"] = marks["first_batch"] - marks["fit_start"]
    if trial["epochs"]:
        out["first_epoch"] = trial["epochs"][0][1] - trial["epochs"][0][0]
        out["start_to_first_epoch_end"] = trial["epochs"][0][1] - marks.get("trial_start", sweep_start)
    return out


def workers_started(since: float) -> int | None:
    """Python worker processes Ray started since ``since`` (unix time), from Ray's state API; None when
    the state API cannot be reached."""
    try:
        from ray.util.state import list_workers

        workers = list_workers(
            address=os.environ.get("RAY_API_SERVER_ADDRESS"),
            filters=[("worker_type", "=", "WORKER")],
            detail=True,
            limit=10_000,  # the API server refuses more
            raise_on_missing_output=False,
        )
    except Exception as err:  # noqa: BLE001  (a figure is left out, with the reason)
        print(f"(worker processes: state API not reachable: {err})", file=sys.stderr)
        return None
    return sum(1 for w in workers if (w.worker_launch_time_ms or 0) / 1000 >= since)


def collect(uri: str, experiment: str, name: str) -> tuple[dict, list[dict]]:
    """(parent run's preparation record, per-trial timings) of the sweep ``name``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`etva.sweep_name` = '{name}'")
    parent = next(r for r in runs if r.data.tags.get("etva.role") == "sweep")
    prepared = json.loads(parent.data.tags.get("etva.sweep.prepared", "{}"))
    trials = [trial_timings(client, r) for r in runs if r.data.tags.get("etva.role") == "trial"]
    return prepared, sorted(trials, key=lambda t: t["marks"].get("trial_start", 0.0))


def reused(trials: list[dict]) -> list[bool]:
    """Per trial (in start order): did an earlier trial run in the same process? (Same process start
    time, and that trial had ended before this one started: two processes Ray starts together can share
    a start time at /proc's 10 ms resolution, but they run side by side.)"""
    out = []
    for i, t in enumerate(trials):
        start, began = t["marks"].get("trial_process_start"), t["marks"].get("trial_start", 0.0)
        out.append(
            any(
                e["marks"].get("trial_process_start") == start and e["epochs"] and e["epochs"][-1][1] <= began
                for e in trials[:i]
            )
        )
    return out


def summarize(wall: float, t0: float, prepared: dict, trials: list[dict], workers, load) -> dict:
    epochs = union_s([iv for t in trials for iv in t["epochs"]])
    warm = dict(zip([t["name"] for t in trials], reused(trials)))
    return {
        "sweep_wall_s": wall,
        "epochs_wall_s": epochs,
        "ratio": wall / epochs if epochs else float("inf"),
        "trials": {
            t["name"]: {
                "status": t["status"], "epochs": len(t["epochs"]), "reused_process": warm[t["name"]],
                **startup_split(t, t0),
            }
            for t in trials
        },
        "worker_processes_started": workers,
        "prepared": prepared,
        "load_average": load,
    }


def report(res: dict) -> str:
    lines = [
        f"sweep wall time {res['sweep_wall_s']:.1f} s; epochs' wall time (union over trials) "
        f"{res['epochs_wall_s']:.1f} s; ratio {res['ratio']:.2f} (goal <= 1.3)",
        f"worker processes started: {res['worker_processes_started']}",
        f"prepared by the sweep driver: {res['prepared']}",
        f"load average (1/5/15 min) at start {res['load_average']['start']}, at end {res['load_average']['end']}",
        "per-trial start-up, seconds:",
    ]
    for name, t in res["trials"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in t.items() if isinstance(v, float))
        how = "reused process" if t["reused_process"] else "new process"
        lines.append(f"  {name} ({t['status']}, {t['epochs']} epochs, {how}): {parts}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(REPO / "data/shapes"), help="data.root (the quickstart's)")
    ap.add_argument("--storage", default=str(REPO / "runs/ray"), help="ray.storage_path (the README's)")
    ap.add_argument("--max-epochs", type=int, default=4)
    ap.add_argument("--experiment", default="etva-shapes", help="the config's mlflow.experiment")
    ap.add_argument("--out", default="", help="also write the figures as JSON here")
    ap.add_argument("overrides", nargs="*", help="further sweep overrides, after --")
    args = ap.parse_args(argv)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not (uri and os.environ.get("RAY_ADDRESS")):
        ap.error("no RAY_ADDRESS / MLFLOW_TRACKING_URI: start the local cluster and `source runs/local/env.sh`")
    name = f"bench-sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    load = {"start": os.getloadavg()}
    t0 = time.time()
    done = subprocess.run(sweep_command(args, name), cwd=REPO)
    wall = time.time() - t0
    load["end"] = os.getloadavg()
    if done.returncode != 0:
        print(f"the sweep exited with {done.returncode}: figures of an incomplete sweep", file=sys.stderr)
    prepared, trials = collect(uri, args.experiment, name)
    res = summarize(wall, t0, prepared, trials, workers_started(t0), load)
    print(json.dumps(res, indent=2))
    print(report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
