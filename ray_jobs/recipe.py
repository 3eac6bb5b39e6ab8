"""The Ray Train worker as a recipe: ``setup`` (build + resume) -> per epoch ``train_epoch``,
``evaluate``, ``report`` -> ``cleanup`` -> return the history. Shared by training runs and Tune trials;
the evaluation job's worker (:func:`eval_loop_per_worker`) runs the same evaluation step
(:func:`evaluate_split`) on a model built by ``etva.inference``.

Inputs arrive as one frozen, typed :class:`WorkerInputs` (built by the driver in ``ray_jobs.train``) or
:class:`EvalInputs` (``ray_jobs.evaluate``);
the shards come from Ray Data (``ray_jobs.data``) and become batches in ``ray_jobs.batches``; the math is
``etva.train.engine``. Rank 0 writes the checkpoint (atomically) and logs each epoch to MLflow only after Ray
has committed that checkpoint, so a resumed run never logs an epoch twice.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch

from etva.config import Config
from etva.data.synth.groups import read_group_table
from etva.inference import build_trained_model
from etva.train import engine
from etva.train.checkpoint import save_checkpoint
from etva.train.state import build_training, start_epoch
from ray_jobs.batches import (
    EpochPrefetch,
    SkipTracker,
    check_skips,
    eval_caption_batches,
    eval_video_batches,
    gather_skips,
    train_batches,
    train_rows,
)
from ray_jobs.checkpoints import checkpoint_name, load_resume_state, prune
from ray_jobs.data import eval_shard_name
from ray_jobs.driver import setup_logging
from ray_jobs.profiling import process_started_at, profile_for_epoch
from ray_jobs.sessions import TrainSession
from ray_jobs.tracking import EpochLogger

__all__ = [
    "WorkerInputs",
    "EvalInputs",
    "TrainRecipe",
    "evaluate_split",
    "epoch_metrics",
    "note_first",
    "train_loop_per_worker",
    "eval_loop_per_worker",
    "run_eval",
]

logger = logging.getLogger("etva.worker")
INPUTS_KEY = "inputs"  # the one key of Ray Train's train_loop_config that the recipe reads
# reported once per worker process as timing/<mark> (unix times; benchmarks.bench_sweep splits start-up)
START_MARKS = ("process_start", "loop_start", "setup_done", "first_batch")
# epochs the run has done (1-based), in every report: a sweep's scheduler counts epochs by it, not by
# Tune's training_iteration (which restarts at 1 when Tune retries a trial that resumes mid-run)
EPOCHS_DONE = "epochs_done"


@dataclass(frozen=True)
class WorkerInputs:
    """Everything a training worker needs besides its dataset shards."""

    cfg: Config
    config_yaml: str  # the resolved config, saved into every checkpoint
    vocab_size: int
    tokenizer_files: dict[str, bytes]
    num_train_videos: int
    train_video_ids: list[str]
    val_video_ids: list[str]
    val_captions: dict[str, np.ndarray]  # input_ids, attention_mask, video_index of the val split
    mlflow_uri: str = ""
    mlflow_run_id: str = ""
    torch_threads: int = 1

    def loop_config(self) -> dict[str, Any]:
        """Ray Train's ``train_loop_config`` carrying these inputs."""
        return {INPUTS_KEY: self}


@dataclass(frozen=True)
class EvalInputs:
    """Everything an evaluation worker needs besides its ``eval`` dataset shard."""

    cfg: Config  # the checkpoint's config (+ overrides), data paths absolute
    vocab_size: int
    weights_ref: Any  # Ray object ref of the checkpoint's state dict (put once, read by every rank)
    split: str  # the split's name: metric prefix and error messages
    video_ids: list[str]  # of the split, in the order of the captions' video_index
    captions: dict[str, np.ndarray]  # input_ids, attention_mask, video_index of the split
    torch_threads: int = 1
    per_query: bool = False  # return the per-caption rank counts too (study trials)

    def loop_config(self) -> dict[str, Any]:
        """Ray Train's ``train_loop_config`` carrying these inputs."""
        return {INPUTS_KEY: self}


def evaluate_split(
    model: torch.nn.Module,
    shard,
    captions: dict[str, np.ndarray],
    video_ids: list[str],
    split: str,
    cfg: Config,
    device: torch.device,
    session,
    **engine_options: Any,
) -> tuple[dict[str, float], list[int]]:
    """Score one split over all ranks: every rank encodes its ``shard`` of videos and its share of the
    captions, ``etva.train.engine.evaluate`` gathers and scores, then the ranks agree on the skipped clips and
    fail when too many were skipped (``data.max_skip_fraction``). ``session`` (``ray_jobs.sessions``)
    gives the rank and world size. ``engine_options`` go to
    ``etva.train.engine.evaluate`` (re-weighting, per-query counts). Returns (metrics, skipped indices
    into ``video_ids``)."""
    rank, world = session.rank, session.world
    tracker = SkipTracker()
    batch_size = cfg.train.eval_batch_size
    metrics = engine.evaluate(
        model,
        eval_video_batches(shard, batch_size, tracker),
        eval_caption_batches(captions, rank, world, batch_size),
        device,
        precision=cfg.train.precision,
        **engine_options,
    )
    skipped, seen, _ = gather_skips(tracker, world)
    check_skips(split, skipped, seen, video_ids, cfg.data.max_skip_fraction)
    return metrics, skipped


class TrainRecipe:
    """One worker's training run. ``run()`` = ``setup()`` then, per epoch, train -> evaluate -> report."""

    def __init__(self, inputs: WorkerInputs, session=None) -> None:
        """``session``: where this recipe runs (``ray_jobs.sessions``); default: a Ray Train worker."""
        self.inputs, self.cfg = inputs, inputs.cfg
        self.session = session if session is not None else TrainSession()
        self.rank, self.world = self.session.rank, self.session.world
        self.history: dict[str, dict] = {}
        self.start_epoch = 0
        self.truncated = 0
        self.taken: set[str] = set()  # checkpoint folder names already in the run (resumed runs)
        self.prefetch: EpochPrefetch | None = None
        self.timings: dict[str, Any] = {}
        self.mlflow = EpochLogger(inputs.mlflow_uri, inputs.mlflow_run_id) if self.rank == 0 else None

    def setup(self) -> None:
        """Build model, loss, optimizer, schedule (and fp16 scaler) on the device; resume from the last
        checkpoint (``etva.train.state.build_training`` loads optimizer state after the move to the device)."""
        cfg = self.cfg
        state = None
        ckpt = self.session.checkpoint()
        if ckpt is not None:  # Ray's latest, or the newest good one when it fails verification
            state, taken = load_resume_state(ckpt, retire_bad=self.rank == 0)
            self.taken = set(taken)
        self.train_shard = self.session.dataset("train")

        self._read_ahead(start_epoch(state))  # Ray Data starts up while the model is built (2 s of imports)

        torch.set_num_threads(max(1, self.inputs.torch_threads))
        device = self.session.device()
        steps_per_epoch = max(1, self.inputs.num_train_videos // (cfg.train.batch_size * self.world))
        ts = build_training(cfg, self.inputs.vocab_size, steps_per_epoch * cfg.train.epochs, device, state)
        self.ts, self.device, self.model = ts, device, ts.model
        if state is not None:
            self._resumed(ts)
        self.ddp_model = self.session.wrap_model(self.model)
        self.val_shard = self.session.dataset(eval_shard_name("val", self.rank))
        # a compositional benchmark's groups: the binding metric (group R@1, pairwise accuracy) per epoch
        self.val_groups = read_group_table(cfg.data.root, self.inputs.val_video_ids)

    def _read_ahead(self, epoch: int) -> None:
        """Start reading ``epoch``'s training rows now (:class:`EpochPrefetch`), if the run has it."""
        if epoch < self.cfg.train.epochs:
            rows = train_rows(self.train_shard, self.cfg, epoch, self.rank)
            self.prefetch = EpochPrefetch(rows, epoch)

    def _resumed(self, ts) -> None:
        self.start_epoch, self.history = ts.start_epoch, ts.history
        logger.info("rank %d resumed from checkpoint at epoch %d", self.rank, self.start_epoch - 1)
        if self.mlflow is not None:  # a visible record of every resume: worker failure or resubmission
            self.mlflow.backfill(self.history)
            self.mlflow.log({"train/resumed_from_epoch": self.start_epoch - 1}, step=self.start_epoch)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], list[int]]:
        """One pass over the training shard. Returns (engine stats, skipped video indices); the clips
        dropped to keep batches equal over ranks are in ``self.truncated``."""
        tracker = SkipTracker()
        early, self.prefetch = self.prefetch, None
        rows = early if early is not None and early.epoch == epoch else None
        batches = train_batches(self.train_shard, self.cfg, epoch, self.rank, self.world, tracker, rows)
        batches = note_first(batches, self.timings, "first_batch")
        ts = self.ts
        label = f"ray-{self.world}w-cache-{self.cfg.data.cache}-epoch{epoch}"
        with profile_for_epoch(epoch, self.rank, label) as profile:
            stats = engine.train_epoch(
                self.ddp_model, ts.loss_fn, ts.optimizer, ts.scheduler, batches, self.device,
                epoch=epoch, log_every=self.cfg.train.log_every, grad_clip=self.cfg.optim.grad_clip,
                report=self._step_report(), precision=ts.precision, scaler=ts.scaler,
            )  # fmt: skip
            if profile is not None:  # + Ray Data's own breakdown of the shard's pipeline
                profile.update(stats, notes={"ray_data_stats": self.train_shard.stats()})
        skipped, seen, truncated = gather_skips(tracker, self.world)
        check_skips("train", skipped, seen, self.inputs.train_video_ids, self.cfg.data.max_skip_fraction)
        self.truncated = truncated
        return stats, skipped

    def _step_report(self):
        """Rank 0: running loss, lr, temperature and data-stall share to MLflow every ``log_every`` steps
        (``step/...`` keys, x = global step), so the UI shows curves within an epoch."""
        if self.mlflow is None or self.mlflow.client is None:
            return None

        def report(running: dict) -> None:
            keys = ("loss", "lr", "temperature", "data_stall_share")
            self.mlflow.log(
                {f"step/{k}": running[k] for k in keys if k in running}, step=int(running["step"])
            )

        return report

    def evaluate(self) -> tuple[dict[str, float], list[int]]:
        """Score the whole validation split. Returns (metrics, skipped video indices)."""
        i = self.inputs
        shard, ids = self.val_shard, i.val_video_ids
        return evaluate_split(
            self.model, shard, i.val_captions, ids, "val", self.cfg, self.device, self.session, groups=self.val_groups
        )

    def report(self, epoch: int, metrics: dict[str, float], skipped: tuple[list[int], list[int]]) -> None:
        """Report from every rank; rank 0 attaches an atomically written checkpoint. Every rank goes on
        only once the session has committed it (a failure in the next epoch then always resumes from this
        one, however early it comes: the next epoch's first batch is already read ahead); rank 0 then
        logs the epoch to MLflow, and only then does the session pass the epoch on (a warm Tune trial's
        ``tune.report``, after which Tune may stop the trial)."""
        self.history[str(epoch)] = metrics
        name = checkpoint_name(epoch, self.taken)
        with tempfile.TemporaryDirectory() as tmp:
            out = None
            if self.rank == 0:
                names = {
                    "train": [self.inputs.train_video_ids[i] for i in skipped[0]],
                    "val": [self.inputs.val_video_ids[i] for i in skipped[1]],
                }
                out = self._save(Path(tmp) / name, epoch, metrics, names)  # named as it will be stored
            reported = self.session.report(metrics, out, name)
        if self.rank == 0:  # an epoch committed but not yet logged is back-filled from it on resume
            prune(reported, self.cfg.ray.keep_recent)
            if epoch in self.mlflow.logged_before:  # redone after a fallback to an older checkpoint
                logger.warning("epoch %d redone after a checkpoint fallback: MLflow keeps its first values", epoch)
            else:
                self.mlflow.log({k: v for k, v in metrics.items() if k not in ("epoch", EPOCHS_DONE)}, step=epoch)
            self._log_line(epoch, metrics)
        self.session.epoch_done(metrics)

    def _save(self, out: Path, epoch: int, metrics: dict, skipped_names: dict) -> Path:
        return save_checkpoint(
            out,
            self.ts.model_state(),
            {
                "epoch": epoch,
                "metrics": metrics,
                "history": self.history,
                "skipped_clips": skipped_names,
                "vocab_size": self.inputs.vocab_size,
            },
            optimizer_state=self.ts.optimizer_state(),
            config_yaml=self.inputs.config_yaml,
            tokenizer_files=self.inputs.tokenizer_files,
        )

    def _log_line(self, epoch: int, m: dict[str, float]) -> None:
        eta = (self.cfg.train.epochs - epoch - 1) * m["epoch_time_s"]
        logger.info(
            "epoch %d/%d  loss %.4f  val t2v R@1 %.2f R@5 %.2f MdR %.1f  (%.1fs, ETA %.0fs)",
            epoch + 1, self.cfg.train.epochs, m.get("train/loss", float("nan")), m.get("val/t2v_R1", float("nan")),
            m.get("val/t2v_R5", float("nan")), m.get("val/t2v_MdR", float("nan")), m["epoch_time_s"], eta,
        )  # fmt: skip

    def run(self) -> dict:
        """Train every remaining epoch. Returns the history and timings (unix times: worker process
        created, loop entered, setup done, first training batch in hand, each epoch's start, the end)."""
        self.timings = {"process_start": process_started_at(), "loop_start": time.time()}
        self.setup()
        self.timings["setup_done"] = time.time()
        starts = self.timings.setdefault("epoch_starts", [])
        if self.start_epoch >= self.cfg.train.epochs and self.history:
            # resumed with every epoch done (killed between its last report and its end): the run's last
            # report again, so whoever waits for one (a Tune trial) gets the metrics it ended with
            self.session.replay(self.history[max(self.history, key=int)])
        try:  # also left by SystemExit: Tune stops a warm trial inside its report (the process lives on)
            for epoch in range(self.start_epoch, self.cfg.train.epochs):
                t0 = time.time()
                starts.append(t0)
                stats, skipped_train = self.train_epoch(epoch)
                self._read_ahead(epoch + 1)  # the next epoch's data starts during eval + checkpoint
                val, skipped_val = self.evaluate()
                skipped = (skipped_train, skipped_val)
                marks = self.timings if epoch == self.start_epoch else None  # start-up marks, first epoch
                metrics = epoch_metrics(epoch, stats, val, skipped, self.truncated, (t0, time.time()), marks)
                self.report(epoch, metrics, skipped)
        finally:
            self.cleanup()
        self.timings["end"] = time.time()
        return {"history": self.history, "timings": self.timings}

    def cleanup(self) -> None:
        """Flush rank 0's MLflow logger (metrics buffered during an outage go out now); stop a read-ahead
        that no epoch will use (its thread ends: a warm process trains the next trial)."""
        if self.mlflow is not None:
            self.mlflow.close()
        if self.prefetch is not None:
            self.prefetch.close()
        self.prefetch = None


def epoch_metrics(
    epoch: int,
    stats: dict,
    val: dict,
    skipped: tuple[list, list],
    truncated: int,
    times: tuple[float, float],
    marks: dict | None = None,
) -> dict[str, float]:
    """One epoch's report: ``val/...`` metrics, the scalar ``train/...`` stats of the engine, the epoch,
    its start and wall time (``times`` = (start, end), unix), the clips skipped (train, val) or dropped to
    keep batches equal over ranks, and, with the first epoch of a process, its start-up ``marks``
    (:data:`START_MARKS` only) as ``timing/<mark>``."""
    metrics = {f"val/{k}": float(v) for k, v in val.items()}
    metrics.update({f"train/{k}": float(v) for k, v in stats.items() if np.isscalar(v)})
    metrics.update({f"timing/{k}": float(v) for k, v in (marks or {}).items() if k in START_MARKS})
    metrics.update(
        {
            "epoch": epoch,
            EPOCHS_DONE: epoch + 1,
            "epoch_time_s": times[1] - times[0],
            "timing/epoch_start": times[0],
            "data/skipped_train": len(skipped[0]),
            "data/skipped_val": len(skipped[1]),
            "data/truncated_for_equal_batches": truncated,
        }
    )
    return metrics


def note_first(items, timings: dict, key: str):
    """``items`` unchanged; the arrival time of the first one goes into ``timings[key]`` (once per run)."""
    for i, item in enumerate(items):
        if i == 0:
            timings.setdefault(key, time.time())
        yield item


def train_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point on every worker: ``config[INPUTS_KEY]`` is a :class:`WorkerInputs`."""
    setup_logging()
    return TrainRecipe(config[INPUTS_KEY]).run()


def eval_loop_per_worker(config: dict) -> dict:
    """Ray Train's entry point of the evaluation job: ``config[INPUTS_KEY]`` is an :class:`EvalInputs`."""
    setup_logging()
    out = run_eval(config[INPUTS_KEY], TrainSession())
    ray.train.report(out["metrics"])
    return out


def run_eval(inputs: EvalInputs, session) -> dict:
    """Score one split with a trained model, in a Train worker or in the calling process (``session``,
    ``ray_jobs.sessions``). Every rank encodes its shard of the "eval" dataset; the scores are over all
    pairs of the split, with the configured test-time re-weighting as a separate ``reweighted/`` row
    (never used for selection). Returns the metrics, the skipped video ids and the per-query counts."""
    cfg = inputs.cfg
    torch.set_num_threads(max(1, inputs.torch_threads))
    device = session.device()
    model = build_trained_model(cfg, inputs.vocab_size, ray.get(inputs.weights_ref)).to(device)
    shard = session.dataset(eval_shard_name("eval", session.rank))
    per_query = {} if inputs.per_query else None  # rank counts per caption (study trials)
    groups = read_group_table(cfg.data.root, inputs.video_ids)  # None unless a compositional benchmark
    metrics, skipped = evaluate_split(
        model, shard, inputs.captions, inputs.video_ids, "eval", cfg, device, session,
        reweight=cfg.eval.reweight, reweight_scale=cfg.eval.reweight_scale, per_query=per_query, groups=groups,
    )  # fmt: skip
    out = {f"{inputs.split}/{k}": float(v) for k, v in metrics.items()}
    out["data/skipped_eval"] = len(skipped)
    return {"metrics": out, "skipped": [inputs.video_ids[i] for i in skipped], "per_query": per_query}
