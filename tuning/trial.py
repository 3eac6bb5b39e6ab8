"""One Tune trial: the training recipe (``ray_jobs.recipe.TrainRecipe``) on one set of sampled values.

A trial of one worker (``ray.num_workers: 1``, the laptop and one-GPU-per-trial shape) trains *in its
Tune trial process* (``ray_jobs.sessions.LocalSession``): Tune reuses that process for the next trial
(``reuse_actors``), so imports, compiled code and the sweep's prepared data are paid once per process,
not per trial. The recipe reports each epoch to Tune itself (``tune.report``) after its checkpoint is
committed to the trial's run folder and logged to MLflow.

A trial of several workers builds and fits the training job's TorchTrainer
(``ray_jobs.train.build_trainer``, DDP); ``TuneReportCallback`` forwards every epoch's report.

Either way: the same recipe, the same MLflow child run (per-epoch metrics from rank 0, the record at the
end), the best epoch by the selection rule, and the same run folder
``<storage>/<sweep>/train/<sweep>-<trial id>/``: re-running a trial (sweep resume, Tune's retry after
its process died) resumes from its last good checkpoint there.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from etva.config import Config, config_from_dict
from ray_jobs.driver import disable_mlflow_telemetry, setup_logging
from ray_jobs.profiling import process_started_at
from ray_jobs.recipe import TrainRecipe
from ray_jobs.run_record import log_dataset_inputs
from ray_jobs.sessions import LocalSession
from ray_jobs.tracking import get_client
from ray_jobs.train import RANKS_ARTIFACT, best_of, build_trainer, report_test_split, worker_inputs
from tuning.mlflow_sweep import EARLY_TAG, ended_trial_result, record_trial, start_or_resume_child
from tuning.shared_data import log_preparation, trial_data
from tuning.space import SearchSpace, apply_params, trial_params

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepContext:
    """What every trial needs besides its sampled values (passed with ``tune.with_parameters``)."""

    base: dict  # resolved base config (absolute data paths)
    space: SearchSpace
    sweep_name: str
    train_storage: str  # storage_path of the trials' Train runs
    mlflow_uri: str  # "" = no tracking
    exp_id: str
    parent_id: str
    max_epochs: int
    torch_threads: int = 1
    shared: Any = None  # tuning.shared_data.SharedData: the data the sweep driver prepared once
    cache_root: str = ""  # where tokenizers and data.cache=disk clips are shared (the sweep's storage)


def trial_config(ctx: SweepContext, params: dict[str, Any], trial_id: str) -> Config:
    """The trial's resolved config: base + sampled values, epochs = max_epochs, its own Train run."""
    source = f"{ctx.space.source} (trial {trial_id})"
    cfg = apply_params(config_from_dict(ctx.base), ctx.space.resolve(params), source)
    cfg.train.epochs = ctx.max_epochs
    cfg.ray.storage_path = ctx.train_storage
    cfg.ray.run_name = f"{ctx.sweep_name}-{trial_id}"
    return cfg


def in_process(cfg: Config) -> bool:
    """Does this trial train in its own Tune trial process (one worker) rather than a TorchTrainer?"""
    return cfg.ray.num_workers == 1


def _shared(ctx: SweepContext, cfg: Config, client, run_id: str, marks: dict[str, float]):
    """The trial's data (the sweep's shared data, or its own for other data settings); its child run
    gets the data inputs, what preparing did and the start-up marks so far."""
    shared = trial_data(ctx.shared, cfg, cfg.ray.run_name, ctx.cache_root)
    marks["data_ready"] = time.time()
    if client is not None:
        log_dataset_inputs(client, run_id, cfg, shared.data.splits)  # the run page's Datasets
        log_preparation(client, run_id, shared.outcome, {**marks, "fit_start": time.time()})
    return shared


def _train(ctx: SweepContext, cfg: Config, client, run_id: str, marks: dict) -> tuple[dict, str | None, int]:
    """Train the trial; returns (best metrics, best checkpoint path, epochs in the run's history)."""
    shared = _shared(ctx, cfg, client, run_id, marks)
    mlflow_run = (ctx.mlflow_uri, run_id)
    if in_process(cfg):
        run_dir = Path(cfg.ray.storage_path) / cfg.ray.run_name
        session = LocalSession(run_dir, shared.datasets, on_epoch=tune.report, use_gpu=cfg.ray.use_gpu)
        out = TrainRecipe(worker_inputs(cfg, shared.data, ctx.torch_threads, mlflow_run), session).run()
        best, best_path = session.best()
        return best, best_path, len(out["history"]) or int(best.get("epoch", -1)) + 1
    trainer, _ = build_trainer(
        cfg, cfg.ray.run_name, data=shared.data, datasets=shared.datasets,
        callbacks=[TuneReportCallback()], torch_threads=ctx.torch_threads, mlflow_run=mlflow_run,
    )  # fmt: skip
    result = trainer.fit()
    best, best_path = best_of(result)
    # the history holds every epoch of the Train run, also those run before a restart (restored)
    history = (result.return_value or {}).get("history", {}) if hasattr(result, "return_value") else {}
    return best, best_path, len(history) or int(best.get("epoch", -1)) + 1


def _replayed(client, ctx: SweepContext, trial_id: str) -> bool:
    """A trial that ended before the sweep driver was killed, after Tune's last snapshot of the sweep, is
    not trained again and logs nothing again: Tune gets the result it ended with (marked done). True then."""
    ended = ended_trial_result(client, ctx.exp_id, ctx.sweep_name, trial_id)
    if ended is None:
        return False
    logger.info(
        "trial %s: already ended (%d epochs, recorded in MLflow); reporting that result to Tune",
        trial_id, int(ended["epoch"]) + 1,
    )  # fmt: skip
    tune.report(ended)
    return True


def run_trial(config: dict[str, Any], ctx: SweepContext) -> None:
    """Tune trainable: fit one TorchTrainer; write the trial's record when it completes.

    A trial that ASHA stops is killed inside ``fit``; ``tuning.callbacks.SweepMlflowCallback`` (in the
    sweep driver) records its child run instead. A Train worker that dies is restarted by the trial's
    own trainer (``ray.max_failures``), from the trial's last checkpoint.
    """
    entered = time.time()
    # a reused trial process waits this long for the previous trial's thread to end (Tune's default, 2 s,
    # is short on a loaded machine: a late end fails the next trial); read by Tune in this process
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")

    marks = {"trial_process_start": process_started_at(), "trial_start": entered, "imports_done": time.time()}
    setup_logging()
    disable_mlflow_telemetry()
    tctx = tune.get_context()
    trial_id = tctx.get_trial_id()
    params = trial_params(config, ctx.space)
    cfg = trial_config(ctx, params, trial_id)
    client = get_client(ctx.mlflow_uri) if ctx.mlflow_uri else None
    run_id = ""
    if client is not None and _replayed(client, ctx, trial_id):
        return
    if client is not None:
        trial = (trial_id, tctx.get_trial_name())
        run_id = start_or_resume_child(client, ctx.exp_id, ctx.parent_id, ctx.sweep_name, trial, cfg, params)
    marks["child_run_ready"] = time.time()
    logger.info("trial %s: %s (MLflow run %s)", trial_id, params, run_id or "-")
    try:
        best, best_path, epochs = _train(ctx, cfg, client, run_id, marks)
    except Exception:
        # also reached when Tune stops a TorchTrainer trial (ASHA): the sweep driver's SweepMlflowCallback
        # has recorded it already (before stopping it), and record_trial leaves that record alone. (A
        # warm trial that Tune stops leaves by SystemExit from tune.report: nothing to record here.)
        if client is not None and client.get_run(run_id).info.status == "RUNNING":
            record_trial(client, run_id, status="FAILED", reason="error")
        raise
    if client is None:
        return
    run = client.get_run(run_id)
    if run.data.tags.get(EARLY_TAG) == "true":
        # Tune stopped this trial (ASHA) while its last epoch still ran: its verdict is recorded. (A
        # trial rerun after a sweep resume reopened the run: it is closed again with that verdict.)
        if run.info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
        logger.info("trial %s: stopped by the scheduler; its MLflow run is already finished", trial_id)
        return
    if cfg.data.test_split and best_path:  # the selected epoch on the test split (+ per-query ranks)
        report_test_split(cfg, best, best_path, client, run_id, ranks_artifact=RANKS_ARTIFACT)
    record_trial(
        client, run_id, status="FINISHED", reason="completed", epochs=epochs, best=best, checkpoint=best_path
    )
