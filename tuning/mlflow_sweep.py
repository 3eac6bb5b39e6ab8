"""MLflow side of a sweep: one parent run per sweep, one nested child run per trial, the summary.

Runs are found again by tags, so a resumed sweep continues its parent run and a restarted trial its
child run: ``etva.sweep_name`` on both, ``etva.trial_id`` on children, ``mlflow.parentRunId`` nests them.
Every process talks to the tracking server over HTTP.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from pyarrow.fs import FileSelector, FileSystem, FileType
from ray.train import Checkpoint

from etva.config import Config
from etva.config.settings import git_commit
from etva.eval.metrics import HEADLINE_METRICS, selection_key
from ray_jobs.checkpoints import is_retired
from ray_jobs.run_record import source_tags
from ray_jobs.tracking import (
    RUN_NAME_TAG,
    config_params,
    find_run,
    finish_run,
    log_metrics,
    log_params,
    log_text,
    resume_run,
)

logger = logging.getLogger(__name__)

SWEEP_TAG = "etva.sweep_name"
TRIAL_TAG = "etva.trial_id"
PARENT_TAG = "mlflow.parentRunId"
EARLY_TAG = "etva.early_stopped"
REASON_TAG = "etva.stop_reason"  # completed | asha | interrupted | error
SAMPLED_PREFIX = "sampled/"


def start_or_resume_parent(
    client, exp_id: str, sweep_name: str, cfg: Config, settings: dict[str, Any], tags: dict[str, str]
) -> tuple[str, bool]:
    """The sweep's parent run (created, or found by its sweep-name tag). Returns (run_id, resumed)."""
    run = find_run(client, exp_id, f"tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`etva.role` = 'sweep'")
    if run is not None:
        resume_run(client, run.info.run_id)
        run_id, resumed = run.info.run_id, True
    else:
        run = client.create_run(
            exp_id, run_name=sweep_name, tags={SWEEP_TAG: sweep_name, "etva.role": "sweep"}
        )
        run_id, resumed = run.info.run_id, False
        log_params(client, run_id, {**config_params(cfg), **settings})
    for k, v in tags.items():
        client.set_tag(run_id, k, v)
    return run_id, resumed


def find_child(client, exp_id: str, sweep_name: str, trial_id: str):
    return find_run(
        client, exp_id, f"tags.`{SWEEP_TAG}` = '{sweep_name}' and tags.`{TRIAL_TAG}` = '{trial_id}'"
    )


# metrics a trial's record adds besides its epochs' reports; not part of what it reported to Tune
_RECORD_PREFIXES = ("best/", "trial/", "test/")


def ended_trial_result(client, exp_id: str, sweep_name: str, trial_id: str) -> dict[str, Any] | None:
    """The last result a trial reported to Tune, rebuilt from its MLflow child run, when that run is
    closed with its record (it completed, or the scheduler stopped it); None otherwise.

    Tune snapshots the sweep's state every few seconds: a sweep driver killed between a trial's end and
    the next snapshot leaves the trial RUNNING in the saved state, and the resumed sweep starts it again.
    Such a trial must not train again; it hands Tune the result it ended with (``done``: Tune stops it
    without consulting the scheduler), so Tune's view matches the record.
    """
    run = find_child(client, exp_id, sweep_name, trial_id)
    if run is None or run.info.status not in ("FINISHED", "KILLED") or "etva.epochs_run" not in run.data.tags:
        return None
    epochs = int(run.data.tags["etva.epochs_run"])
    if epochs < 1:
        return None
    last = epochs - 1
    result: dict[str, Any] = {}
    for key, latest in run.data.metrics.items():
        if key.startswith(_RECORD_PREFIXES):
            continue
        at_last = [m.value for m in client.get_metric_history(run.info.run_id, key) if m.step == last]
        result[key] = at_last[-1] if at_last else latest
    return {**result, "epoch": last, "done": True}


def start_or_resume_child(
    client,
    exp_id: str,
    parent_id: str,
    sweep_name: str,
    trial: tuple[str, str],
    cfg: Config,
    sampled: dict[str, Any],
) -> str:
    """The trial's child run with the resolved config and sampled values as params; ``trial`` = (id, name)."""
    trial_id, trial_name = trial
    run = find_child(client, exp_id, sweep_name, trial_id)
    if run is not None:
        resume_run(client, run.info.run_id)
        return run.info.run_id
    tags = {
        PARENT_TAG: parent_id,
        SWEEP_TAG: sweep_name,
        TRIAL_TAG: trial_id,
        RUN_NAME_TAG: cfg.ray.run_name,
        "etva.role": "trial",
        "etva.sampled": json.dumps(sampled, sort_keys=True),
        **source_tags("tuning.sweep", git_commit()),
    }
    run_id = client.create_run(exp_id, run_name=trial_name, tags=tags).info.run_id
    params = config_params(cfg)
    params.update({f"{SAMPLED_PREFIX}{k}": v for k, v in sampled.items()})
    log_params(client, run_id, params)
    return run_id


def mark_stopped(client, run_id: str, *, early: bool, reason: str, epochs: int) -> None:
    """Tags why the trial stopped, and the same two ``trial/`` metrics on every child (compare view)."""
    client.set_tag(run_id, EARLY_TAG, "true" if early else "false")
    client.set_tag(run_id, REASON_TAG, reason)
    client.set_tag(run_id, "etva.epochs_run", str(epochs))
    log_metrics(client, run_id, {"trial/epochs": epochs, "trial/stopped_early": int(early)})


def logged_epochs(client, run_id: str) -> dict[int, dict[str, float]]:
    """The run's own per-epoch ``val/`` metrics as logged by rank 0 of its Train run (step = epoch)."""
    per_epoch: dict[int, dict[str, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        if key.startswith("val/"):
            for m in client.get_metric_history(run_id, key):
                per_epoch.setdefault(int(m.step), {})[key] = m.value
    return per_epoch


def _epoch_checkpoint(run, epoch: int) -> str | None:
    """The live checkpoint folder of ``epoch`` in the trial's Train run (its ``ray.storage_path`` param
    and run-name tag), as a local directory; None when there is none."""
    storage, name = run.data.params.get("ray.storage_path"), run.data.tags.get(RUN_NAME_TAG)
    if not storage or not name:
        return None
    fs, root = FileSystem.from_uri(storage if "://" in storage else f"file://{storage}")
    infos = fs.get_file_info(FileSelector(f"{root}/{name}", allow_not_found=True))
    prefix = f"epoch_{epoch:04d}"
    dirs = sorted(i.path for i in infos if i.type == FileType.Directory and i.base_name.startswith(prefix))
    for path in reversed(dirs):  # a redone epoch (``_redo<time>``) is newer than the first attempt
        ckpt = Checkpoint(path, filesystem=fs)
        if not is_retired(ckpt):
            return path if "://" not in storage else ckpt.to_directory()
    return None


def record_trial(
    client, run_id: str, *, status: str, reason: str, early: bool = False, epochs: int | None = None,
    best: dict | None = None, checkpoint: str | None = None,
) -> None:  # fmt: skip
    """Write the trial's record once: why it stopped and how many epochs (``mark_stopped``), ``best/...``
    with its best checkpoint as the run's model (``finish_run``), and the final status.

    Idempotent, so the trial driver, the sweep driver and a resumed sweep driver may all call it: what is
    already on the run is not logged again (an early stop is Tune's verdict and re-tags). What the caller
    does not pass comes from the run's own per-epoch history (``logged_epochs``) and Train checkpoints.
    """
    run = client.get_run(run_id)
    tags, done = run.data.tags, "best/t2v_R1" in run.data.metrics
    history = logged_epochs(client, run_id) if (epochs is None or not (best or done)) else {}
    # a trial's own verdict replaces the one an earlier sweep driver wrote when it stopped it unfinished
    stale = epochs is not None and (tags.get(REASON_TAG), tags.get("etva.epochs_run")) != (reason, str(epochs))
    if epochs is None:
        epochs = len(history)
    if "etva.epochs_run" not in tags or (early and tags.get(EARLY_TAG) != "true") or (stale and not done):
        mark_stopped(client, run_id, early=early, reason=reason, epochs=epochs)
    if done:
        if run.info.status != status:
            client.set_terminated(run_id, status=status)
        return
    if not best and history:
        e, metrics = max(history.items(), key=lambda em: selection_key(em[1]))
        best, checkpoint = {**metrics, "epoch": e}, None
    if best and checkpoint is None:
        checkpoint = _epoch_checkpoint(run, int(best.get("epoch", 0)))
    finish_run(client, run_id, best or None, checkpoint, status)


def close_unfinished(client, exp_id: str, parent_id: str) -> int:
    """After the sweep returned: child runs still RUNNING (time budget, interrupt, a killed earlier sweep
    driver: orphans) are closed as KILLED, and every closed child lacking its record gets it from its own
    history (``record_trial``). Returns the number of orphans closed."""
    n = 0
    for run in child_runs(client, exp_id, parent_id):
        status, tags = run.info.status, run.data.tags
        if status == "RUNNING":
            record_trial(client, run.info.run_id, status="KILLED", reason="interrupted")
            n += 1
        elif "etva.epochs_run" not in tags or "best/t2v_R1" not in run.data.metrics:
            reason = tags.get(REASON_TAG, "error" if status == "FAILED" else "interrupted")
            early = tags.get(EARLY_TAG) == "true"
            record_trial(client, run.info.run_id, status=status, reason=reason, early=early)
    return n


def child_runs(client, exp_id: str, parent_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [exp_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=500, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def summary_rows(runs: list, keys: list[str]) -> list[dict[str, Any]]:
    """One row per trial: its sampled values, best metrics, epochs run, whether ASHA stopped it."""
    rows = []
    for run in runs:
        sampled = json.loads(run.data.tags.get("etva.sampled", "{}"))
        m = run.data.metrics
        row: dict[str, Any] = {"trial": run.info.run_name, "status": run.info.status}
        row.update({k: sampled.get(k) for k in keys})
        row.update({k: m.get(f"best/{k}", math.nan) for k in HEADLINE_METRICS})
        row["epochs"] = int(run.data.tags.get("etva.epochs_run", "0") or 0)
        row["stopped_early"] = run.data.tags.get(EARLY_TAG, "false") == "true"
        row["run_id"] = run.info.run_id
        rows.append(row)
    return sorted(rows, key=lambda r: selection_key(r, prefix=""), reverse=True)


def _num(v: Any, default: float = -math.inf) -> float:
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def to_csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no trials)\n"
    cols = [c for c in rows[0] if c != "run_id"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def is_seed(key: str) -> bool:
    """Seeds are repeats of a configuration, not a parameter to plot R@1 against."""
    return key == "seed" or key.endswith(".seed")


def group_stats(
    rows: list[dict[str, Any]], key: str, metric: str = "t2v_R1"
) -> list[tuple[Any, float, float, int]]:
    """(value of ``key``, mean, std, n) of ``metric`` over the finished trials sharing that value
    (the repeats over seeds), in value order; std is the sample std (0 for one trial)."""
    groups: dict[Any, list[float]] = {}
    for r in rows:
        v = _num(r.get(metric), math.nan)
        if not math.isnan(v):
            groups.setdefault(r.get(key), []).append(v)
    out = []

    def order(x: Any) -> tuple:
        numeric = isinstance(x, (int, float)) and not isinstance(x, bool)
        return (0, float(x), "") if numeric else (1, 0.0, str(x))

    for value in sorted(groups, key=order):
        ys = groups[value]
        mean = sum(ys) / len(ys)
        std = math.sqrt(sum((y - mean) ** 2 for y in ys) / (len(ys) - 1)) if len(ys) > 1 else 0.0
        out.append((value, mean, std, len(ys)))
    return out


def _panel(ax, rows: list[dict[str, Any]], key: str) -> None:
    """Every trial as a dot (red: stopped early) and each value's mean +- std over seeds."""
    stats = group_stats(rows, key)
    pos = {str(v): i for i, (v, *_) in enumerate(stats)}
    done = [r for r in rows if not math.isnan(_num(r["t2v_R1"], math.nan))]
    ax.scatter(
        [pos[str(r.get(key))] for r in done], [r["t2v_R1"] for r in done], s=14, alpha=0.5,
        c=["tab:red" if r["stopped_early"] else "tab:gray" for r in done], zorder=2,
    )  # fmt: skip
    xs = range(len(stats))
    ax.errorbar(xs, [m for _, m, _, _ in stats], yerr=[sd for _, _, sd, _ in stats], fmt="o-", color="tab:blue",
                capsize=4, zorder=3, label="mean +- std over seeds")  # fmt: skip
    for x, (_, m, _, n) in zip(xs, stats):
        ax.annotate(f"n={n}", (x, m), textcoords="offset points", xytext=(6, -10), fontsize=7)
    ax.set_xticks(list(xs), [str(v) for v, *_ in stats])
    ax.set_xlabel(key)
    ax.set_ylabel("best val t2v R@1 (%)")
    ax.grid(alpha=0.3)


def plot_summary(rows: list[dict[str, Any]], keys: list[str], path: str) -> bool:
    """R@1 per value of every swept dimension (cluster count first): each value's mean and std over the
    seeds (and any other repeats), every trial as a dot. Seeds are not an axis. False if nothing to plot."""
    # lazy: matplotlib, imported only when a picture is drawn
    import matplotlib

    matplotlib.use("Agg")  # headless, before pyplot is imported
    import matplotlib.pyplot as plt

    axes_keys = sorted((k for k in keys if not is_seed(k)), key=lambda k: k != "model.num_clusters")
    rows = [r for r in rows if not math.isnan(_num(r["t2v_R1"], math.nan))]
    if not keys or not rows:
        return False
    if not axes_keys:  # only seeds swept: one group, the spread over seeds
        rows, axes_keys = [{**r, "all trials": "all"} for r in rows], ["all trials"]
    fig, axes = plt.subplots(1, len(axes_keys), figsize=(4.5 * len(axes_keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], axes_keys):
        _panel(ax, rows, key)
    axes[0][0].legend(fontsize=7, loc="lower right")
    seeds = [k for k in keys if is_seed(k)]
    over = f" over {', '.join(seeds)}" if seeds else ""
    fig.suptitle(
        f"best val t2v R@1: mean +- std{over} (dots: trials, red: stopped early by ASHA)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def log_summary(client, exp_id: str, parent_id: str, keys: list[str]) -> list[dict[str, Any]]:
    """Log the summary table (CSV + markdown) and plot to the parent run; returns the rows."""
    rows = summary_rows(child_runs(client, exp_id, parent_id), keys)
    log_text(client, parent_id, to_csv(rows), "sweep_summary.csv")
    log_text(client, parent_id, to_markdown(rows), "sweep_summary.md")
    with tempfile.TemporaryDirectory() as d:
        png = str(Path(d) / "r1_vs_params.png")
        if plot_summary(rows, keys, png):
            client.log_artifact(parent_id, png)
    finished = [r for r in rows if not math.isnan(_num(r["t2v_R1"], math.nan))]
    if finished:
        best = finished[0]
        # not "best/...": `etva best` ranks runs by best/t2v_R1 and must pick trials, not the parent
        client.log_metric(parent_id, "sweep/best_t2v_R1", float(best["t2v_R1"]))
        client.set_tag(parent_id, "etva.best_trial_run_id", best["run_id"])
    client.log_metric(parent_id, "sweep/trials", len(rows))
    client.log_metric(parent_id, "sweep/trials_stopped_early", sum(r["stopped_early"] for r in rows))
    return rows
