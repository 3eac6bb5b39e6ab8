"""Sweep-driver side of trials: an ASHA that remembers whom it stopped, and the MLflow finisher.

A trial that runs all its epochs ends by itself and its driver writes its record from its own result
(``tuning.trial``); ASHA therefore never stops a trial at ``max_t`` (that would kill the driver between
its last report and its record). A trial ASHA stops early dies inside ``TorchTrainer.fit`` and cannot
record itself: ``SweepMlflowCallback`` (run by Tune in the sweep driver) writes its record with
``tuning.mlflow_sweep.record_trial`` from the child run's own per-epoch history, and tags why it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from ray_jobs.tracking import get_client
from tuning.mlflow_sweep import find_child, record_trial

logger = logging.getLogger(__name__)

class RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that records the trials it stopped before ``max_t`` (``stopped_early``: trial ids)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_early: set[str] = set()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) >= self._max_t:
            return TrialScheduler.CONTINUE  # its last epoch: the trial ends and records itself
        if action == TrialScheduler.STOP:
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
    """Write the record of trials that did not finish themselves (stopped by ASHA, errors).

    Holds no per-trial state: Tune's verdict comes from the trial (``last_result`` is restored with a
    resumed sweep) and the scheduler, the metrics from the child run's own per-epoch history, so a
    restored callback in a resumed sweep driver writes the same record (``mlflow_sweep.record_trial``).
    """

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
        self._client = None

    def __getstate__(self) -> dict:  # the Tuner pickles its RunConfig; a client is not picklable
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None and self.mlflow_uri:
            self._client = get_client(self.mlflow_uri)
        return self._client

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        early = self.scheduler is not None and trial.trial_id in self.scheduler.stopped_early
        status, reason = stop_verdict(early, _epochs_reported(trial), self.max_epochs)
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
            # the trial driver records a trial that ends by itself (it finished, with its own result);
            # Tune's verdict (ASHA, error) wins over a record the dying driver may have written first
            if not early and run.info.status == "FINISHED":
                return
            epochs = _epochs_reported(trial) if early else None
            record_trial(self.client, run.info.run_id, status=status, reason=reason, early=early, epochs=epochs)
            logger.info(
                "trial %s: MLflow run %s finished as %s (%s)", trial.trial_id, run.info.run_id, status, reason
            )
        except Exception:  # never let tracking trouble stop the sweep
            logger.exception("trial %s: could not finish its MLflow run", trial.trial_id)


def _epochs_reported(trial) -> int:
    """Epochs the trial reported to Tune (its last result survives a sweep driver's restart)."""
    last = trial.last_result or {}
    return int(last["epoch"]) + 1 if "epoch" in last else 0
