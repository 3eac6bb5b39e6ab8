"""Sweep-driver side of trials: an ASHA that remembers whom it stopped, and the MLflow finisher.

ASHA stops a trial by stopping its driver function, which dies inside ``TorchTrainer.fit`` and cannot
finish its own MLflow run. ``SweepMlflowCallback`` (run by Tune in the sweep driver) keeps each trial's
best report and, when a trial ends with its child run still RUNNING, logs ``best/...`` and the best
checkpoint with ``ray_jobs.tracking.finish_run`` and tags why it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.train import Checkpoint
from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from etva.eval.metrics import is_better
from ray_jobs.tracking import finish_run, get_client
from tuning.mlflow_sweep import find_child, mark_stopped

logger = logging.getLogger(__name__)

CHECKPOINT_KEY = "checkpoint_path"  # added to reports by TuneReportCallback


class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that records the trials it stopped before ``max_t`` (``stopped_early``: trial ids)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) < self._max_t:
            self.stopped_early.add(trial.trial_id)
            logger.info(
                "ASHA stops trial %s after %s=%s (%s=%s)",
                trial.trial_id,
                self._time_attr,
                result.get(self._time_attr),
                self._metric,
                result.get(self._metric),
            )
        return action


def stop_verdict(early: bool, epochs: int, max_epochs: int) -> tuple[str, str]:
    """(MLflow run status, stop reason) of a trial that Tune completed after ``epochs`` reported epochs:
    stopped by ASHA -> KILLED/asha; all epochs -> FINISHED/completed; fewer (time budget, sweep
    interrupted) -> KILLED/interrupted."""
    if early:
        return "KILLED", "asha"
    return ("FINISHED", "completed") if epochs >= max_epochs else ("KILLED", "interrupted")


class SweepMlflowCallback(Callback):
    """Finish child runs of trials that did not finish themselves (stopped by ASHA, time budget, errors)."""

    def __init__(
        self,
        mlflow_uri: str,
        exp_id: str,
        sweep_name: str,
        metric: str,
        max_epochs: int,
        scheduler: RecordingASHA | None = None,
    ) -> None:
        self.mlflow_uri, self.exp_id, self.sweep_name = mlflow_uri, exp_id, sweep_name
        self.metric, self.max_epochs, self.scheduler = metric, max_epochs, scheduler
        self.best: dict[str, dict] = {}
        self.epochs: dict[str, int] = {}
        self._client = None

    def __getstate__(self) -> dict:  # the Tuner pickles its RunConfig; a client is not picklable
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None and self.mlflow_uri:
            self._client = get_client(self.mlflow_uri)
        return self._client

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        tid = trial.trial_id
        if "epoch" in result:
            self.epochs[tid] = max(self.epochs.get(tid, 0), int(result["epoch"]) + 1)
        if "val/t2v_R1" in result and is_better(result, self.best.get(tid)):
            self.best[tid] = {k: v for k, v in result.items() if k.startswith("val/") or k == CHECKPOINT_KEY}

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        early = self.scheduler is not None and trial.trial_id in self.scheduler.stopped_early
        status, reason = stop_verdict(early, self.epochs.get(trial.trial_id, 0), self.max_epochs)
        self._finish(trial, status, early, reason)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._finish(trial, "FAILED", False, "error")

    def _finish(self, trial, status: str, early: bool, reason: str) -> None:
        if self.client is None:
            return
        try:
            run = find_child(self.client, self.exp_id, self.sweep_name, trial.trial_id)
            if run is None:
                logger.warning("trial %s: no MLflow child run found", trial.trial_id)
                return
            epochs = self.epochs.get(trial.trial_id, 0)
            if early:  # tag even when the driver got to finish its run first; Tune's verdict wins
                mark_stopped(self.client, run.info.run_id, early=True, reason=reason, epochs=epochs)
                if run.info.status == "FINISHED":
                    self.client.set_terminated(run.info.run_id, status="KILLED")
                    return
            # the dying driver may have closed it as FAILED (Tune stops the trial after this callback
            # or before it): Tune's verdict wins, but metrics and checkpoint are logged only once
            if run.info.status != "RUNNING" and not (run.info.status == "FAILED" and status != "FAILED"):
                return
            done = "best/t2v_R1" in run.data.metrics
            best = None if done else self.best.get(trial.trial_id)
            ckpt = (best or {}).get(CHECKPOINT_KEY)
            mark_stopped(self.client, run.info.run_id, early=early, reason=reason, epochs=epochs)
            metrics = {k: v for k, v in (best or {}).items() if k.startswith("val/")}
            finish_run(self.client, run.info.run_id, metrics, _local_checkpoint(ckpt), status)
            logger.info(
                "trial %s: MLflow run %s finished as %s (%s)", trial.trial_id, run.info.run_id, status, reason
            )
        except Exception:  # never let tracking trouble stop the sweep
            logger.exception("trial %s: could not finish its MLflow run", trial.trial_id)


def _local_checkpoint(path: str | None) -> str | None:
    """A local directory for the checkpoint at ``path`` (downloaded when it is a URI)."""
    if not path or "://" not in path:
        return path

    return Checkpoint(path).to_directory()
