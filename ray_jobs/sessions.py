"""Where a recipe runs: what it asks of its surroundings (rank, checkpoint, data, device, report).

The recipe (``ray_jobs.recipe``) is the same wherever it runs; only the launch differs:

- :class:`TrainSession`: a Ray Train worker of a ``TorchTrainer`` (DDP over several workers; a training
  job). Checkpoints go through ``ray.train.report``; Ray's checkpoint manager lists them; a worker that
  dies is restarted by the trainer (``FailureConfig``) from the last one.
- :class:`LocalSession`: the calling process itself (a warm one-worker Tune trial, a small evaluation).
  No controller, no worker actors, no process start: the process that already paid its imports trains.
  Checkpoints are written by the session into the run's folder, ``<ray.storage_path>/<run name>/``,
  laid out as Ray Train lays out a run (one ``epoch_NNNN`` folder each) plus ``reported.json``, the
  committed list with each one's metrics. A re-run with the same run name (a trial that Tune retries
  after its process died, a resumed sweep) resumes from the newest good one, as a Train run does.

Both hand the recipe the same things: ``rank``/``world``, the checkpoint to resume from, a dataset
shard (a ``ray.data.DataIterator``), the device, the model wrapped for DDP (or not), and ``report``,
which commits an epoch's checkpoint and returns every committed one (``Reported``: ``.checkpoint``,
``.metrics``), so retention (``ray_jobs.checkpoints.prune``) and selection work on either.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint

from etva.eval.metrics import selection_key
from ray_jobs.checkpoints import is_retired

__all__ = ["Reported", "TrainSession", "LocalSession", "best_reported", "REPORTED_FILE"]

REPORTED_FILE = "reported.json"  # a local run's committed checkpoints, oldest first


@dataclass(frozen=True)
class Reported:
    """One committed checkpoint and the metrics reported with it (as Ray Train's ``ReportedCheckpoint``)."""

    checkpoint: Any  # ray.train.Checkpoint
    metrics: dict


def best_reported(reported: list, fallback: tuple[dict, str | None] = ({}, None)) -> tuple[dict, str | None]:
    """(metrics, path) of the best live checkpoint by the project's selection rule
    (``etva.eval.metrics.selection_key``); ``fallback`` when none is left."""
    live = [(r.checkpoint, r.metrics) for r in reported if not is_retired(r.checkpoint)]
    if not live:
        return fallback
    ckpt, metrics = max(live, key=lambda cm: selection_key(cm[1]))
    return metrics, ckpt.path


class TrainSession:
    """Inside a Ray Train worker: every call is Ray Train's own."""

    def __init__(self) -> None:
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()

    def checkpoint(self):
        return ray.train.get_checkpoint()

    def dataset(self, name: str):
        return ray.train.get_dataset_shard(name)

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model) if self.world > 1 else model

    def report(self, metrics: dict, checkpoint_dir: Path | None, name: str) -> list:
        """Report from every rank (rank 0 with the checkpoint); return once Ray has committed it."""
        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=name if ckpt else None)
        mode = ray.train.CheckpointConsistencyMode.COMMITTED
        return ray.train.get_all_reported_checkpoints(consistency_mode=mode)

    def epoch_done(self, metrics: dict) -> None:
        """Tune hears of the epoch from the trainer's own callback (``TuneReportCallback``)."""

    def replay(self, metrics: dict) -> None:
        """Report a committed epoch's metrics again (no checkpoint): a run resumed with nothing left."""
        ray.train.report(metrics, checkpoint=None)


class LocalSession:
    """The calling process as the one worker of a run whose folder is ``run_dir``.

    Args:
        run_dir: ``<ray.storage_path>/<run name>`` (absolute, local).
        datasets: the run's Ray Datasets by name (as a ``TorchTrainer`` would get them).
        on_epoch: called with each epoch's metrics once its checkpoint is committed and logged (a Tune
            trial passes ``ray.tune.report``: Tune then decides whether the trial goes on).
        use_gpu: train on the GPU Ray assigned to this process (``ray.get_gpu_ids()``).
    """

    rank, world = 0, 1

    def __init__(
        self,
        run_dir: Path,
        datasets: dict,
        on_epoch: Callable[[dict], None] | None = None,
        use_gpu: bool = False,
    ) -> None:
        self.run_dir, self.datasets = Path(run_dir), datasets
        self.on_epoch, self.use_gpu = on_epoch, use_gpu
        self.reported: list[Reported] = self._load_reported()

    def _load_reported(self) -> list[Reported]:
        path = self.run_dir / REPORTED_FILE
        if not path.is_file():
            return []
        entries = json.loads(path.read_text())
        return [
            Reported(Checkpoint(str(self.run_dir / e["name"])), e["metrics"])
            for e in entries
            if (self.run_dir / e["name"]).is_dir()
        ]

    def checkpoint(self):
        """The newest committed checkpoint (None for a new run); ``load_resume_state`` falls back to an
        older one when it does not verify."""
        live = [r for r in self.reported if not is_retired(r.checkpoint)]
        return live[-1].checkpoint if live else None

    def dataset(self, name: str):
        if name not in self.datasets:
            raise KeyError(f"dataset {name!r} was not given to this run (it has {sorted(self.datasets)})")
        return self.datasets[name].iterator()

    def device(self) -> torch.device:
        if self.use_gpu and torch.cuda.is_available() and ray.get_gpu_ids():
            return torch.device("cuda", 0)  # Ray set CUDA_VISIBLE_DEVICES to this process's GPU
        return torch.device("cpu")

    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def report(self, metrics: dict, checkpoint_dir: Path | None, name: str) -> list:
        """Commit ``checkpoint_dir`` as ``<run_dir>/<name>``: copied beside it under a temporary name,
        renamed into place (atomic), then listed in ``reported.json`` (written atomically too). A
        process killed at any point leaves either the previous list or the new one."""
        if checkpoint_dir is None:
            return list(self.reported)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        final, partial = self.run_dir / name, self.run_dir / f".partial-{name}"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint_dir, partial)
        os.replace(partial, final)
        self.reported.append(Reported(Checkpoint(str(final)), dict(metrics)))
        entries = [{"name": Path(r.checkpoint.path).name, "metrics": r.metrics} for r in self.reported]
        tmp = self.run_dir / f".{REPORTED_FILE}.tmp"
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, self.run_dir / REPORTED_FILE)
        return list(self.reported)

    def epoch_done(self, metrics: dict) -> None:
        if self.on_epoch is not None:
            self.on_epoch(metrics)

    def replay(self, metrics: dict) -> None:
        """Pass a committed epoch's metrics on again (a run resumed with nothing left to train)."""
        self.epoch_done(metrics)

    def best(self) -> tuple[dict, str | None]:
        """(metrics, path) of the run's best committed checkpoint (the selection rule)."""
        return best_reported(self.reported)
