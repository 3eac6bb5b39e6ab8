"""The Ray Train worker function, shared by training (`ray_jobs.train`), evaluation and Tune trials.

Reads its dataset shard, trains with `etva.engine`, evaluates on the whole validation split (every rank
encodes its shard, the embeddings are gathered, scored once), reports metrics and a checkpoint written by
rank 0, and resumes from the last checkpoint after a failure.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from etva.checkpoint import load_checkpoint, save_checkpoint
from etva.config import config_from_dict
from ray_jobs.data import sample_captions

logger = logging.getLogger("etva.worker")

VIDEO_KEYS = ("frames", "audio_mel", "audio_mask")


class SkipTracker:
    """Counts clips that failed to decode (by video index) on this rank."""

    def __init__(self) -> None:
        self.skipped: set[int] = set()
        self.seen = 0
        self.truncated = 0

    def filter(self, batch: dict) -> dict:
        ok = np.asarray(batch.get("ok", np.ones(len(batch["video_index"]), dtype=bool)), dtype=bool)
        self.seen += len(ok)
        if ok.all():
            return batch
        self.skipped.update(int(v) for v in np.asarray(batch["video_index"])[~ok])
        return {k: np.asarray(v)[ok] for k, v in batch.items()}


def _equalize(batch: dict, world: int) -> dict:
    """Truncate to the smallest batch over ranks (cross-rank gathers need equal sizes)."""
    if world == 1:
        return batch
    n = torch.tensor([len(batch["video_index"])])
    torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
    m = int(n)
    return batch if m == len(batch["video_index"]) else {k: v[:m] for k, v in batch.items()}


def train_batches(shard, cfg, epoch: int, rank: int, world: int, tracker: SkipTracker):
    """Model-ready training batches: one sampled caption per video, failed clips removed."""
    rng = np.random.default_rng([cfg.train.seed, epoch, rank])
    fail = cfg.train.fail_at_epoch == epoch and rank == world - 1
    for step, raw in enumerate(
        shard.iter_batches(
            batch_size=cfg.train.batch_size, batch_format="numpy", drop_last=True, prefetch_batches=2
        )
    ):
        if fail and step == 0:  # first batch of the epoch has arrived: die mid-epoch
            _inject_failure(cfg.train.fail_once_marker)
        batch = tracker.filter(raw)
        before = len(batch["video_index"])
        batch = _equalize(batch, world)
        tracker.truncated += before - len(batch["video_index"])
        if len(batch["video_index"]) < 2:
            continue
        ids, cap_index = sample_captions(batch, rng)
        out = {k: batch[k] for k in VIDEO_KEYS if k in batch}  # features-only: no frames/audio
        out.update(
            {
                "input_ids": ids,
                "attention_mask": (ids != 0).astype(np.int64),
                "video_index": batch["video_index"],
                "caption_index": cap_index,
            }
        )
        out.update({k: v for k, v in batch.items() if k.startswith("feat")})
        yield out


def _inject_failure(marker: str) -> None:
    """Fault injection for tests: kill this worker process once (marker file makes it fire once)."""
    if marker and os.path.exists(marker):
        return
    if marker:
        Path(marker).write_text(f"injected failure in pid {os.getpid()}\n")
    logger.error("fault injection: worker process exiting now")
    os._exit(1)


def eval_video_batches(shard, cfg, tracker: SkipTracker):
    for raw in shard.iter_batches(
        batch_size=cfg.train.eval_batch_size, batch_format="numpy", prefetch_batches=2
    ):
        batch = tracker.filter(raw)
        if len(batch["video_index"]):
            keys = [
                *(k for k in VIDEO_KEYS if k in batch),
                "video_index",
                *(k for k in batch if k.startswith("feat")),
            ]
            yield {k: batch[k] for k in keys}


def eval_caption_batches(captions: dict, rank: int, world: int, batch_size: int):
    """This rank's slice of the split's captions (every caption is encoded exactly once overall)."""
    idx = np.arange(rank, len(captions["video_index"]), world)
    for s in range(0, len(idx), batch_size):
        sel = idx[s : s + batch_size]
        yield {
            "input_ids": captions["input_ids"][sel],
            "attention_mask": captions["attention_mask"][sel],
            "caption_index": sel.astype(np.int64),
            "video_index": captions["video_index"][sel],
        }


def _gather_skips(tracker: SkipTracker, world: int) -> tuple[list[int], int, int]:
    from etva.distributed import gather_objects

    parts = (
        gather_objects((sorted(tracker.skipped), tracker.seen, tracker.truncated))
        if world > 1
        else [(sorted(tracker.skipped), tracker.seen, tracker.truncated)]
    )
    skipped = sorted({v for p in parts for v in p[0]})
    return skipped, sum(p[1] for p in parts), sum(p[2] for p in parts)


def _check_skips(split: str, skipped: list[int], total: int, names: list[str], limit: float) -> None:
    if total and len(skipped) / total > limit:
        listed = ", ".join(names[i] for i in skipped[:20])
        raise RuntimeError(
            f"{split}: {len(skipped)} of {total} clips failed to decode "
            f"({100 * len(skipped) / total:.1f}% > data.max_skip_fraction={100 * limit:.1f}%): {listed}"
        )


class _MlflowEpochLogger:
    """Rank 0 logs per-epoch metrics to the run created by the driver (HTTP tracking server)."""

    def __init__(self, uri: str, run_id: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri) if uri and run_id else None
        self.run_id = run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if np.isfinite(v)]
        for s in range(0, len(items), 900):
            self.client.log_batch(self.run_id, metrics=items[s : s + 900])

    def backfill(self, history: dict[str, dict]) -> None:
        """Log epochs that the checkpoint holds but MLflow lacks (the job stopped between the two)."""
        if self.client is None:
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "val/t2v_R1")}
        for epoch, metrics in sorted(history.items(), key=lambda kv: int(kv[0])):
            if int(epoch) not in logged:
                self.log({k: v for k, v in metrics.items() if k != "epoch"}, step=int(epoch))


def _build(cfg, vocab_size: int, total_steps: int):
    from etva.engine import build_optimizer, build_scheduler
    from etva.losses import build_loss
    from etva.model import build_model

    model = build_model(cfg.model, vocab_size=vocab_size)
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(torch.nn.ModuleList([model, loss_fn]), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    return model, loss_fn, optimizer, scheduler


def train_loop_per_worker(config: dict) -> dict:
    """Entry point run by every Ray Train worker."""
    import ray.train
    import ray.train.torch

    from etva.engine import evaluate, train_epoch

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)
    torch.set_num_threads(max(1, int(config.get("torch_threads", 1))))
    device = ray.train.torch.get_device()
    steps_per_epoch = max(1, config["num_train_videos"] // (cfg.train.batch_size * world))
    model, loss_fn, optimizer, scheduler = _build(
        cfg, config["vocab_size"], steps_per_epoch * cfg.train.epochs
    )

    mlf = (
        _MlflowEpochLogger(config.get("mlflow_uri", ""), config.get("mlflow_run_id", ""))
        if rank == 0
        else None
    )
    start_epoch, history = 0, {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_checkpoint(d)
        model.load_state_dict(state["model"]["model"])
        loss_fn.load_state_dict(state["model"]["loss"])
        optimizer.load_state_dict(state["optimizer"]["optimizer"])
        scheduler.load_state_dict(state["optimizer"]["scheduler"])
        start_epoch = int(state["meta"]["epoch"]) + 1
        history = state["meta"].get("history", {})
        logger.info("rank %d resumed from checkpoint at epoch %d", rank, start_epoch - 1)
        if mlf is not None:  # a visible record of every resume: after a worker failure or a resubmission
            mlf.backfill(history)
            mlf.log({"train/resumed_from_epoch": start_epoch - 1}, step=start_epoch)

    model.to(device)
    loss_fn.to(device)
    ddp_model = ray.train.torch.prepare_model(model) if world > 1 else model
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    val_names = config["val_video_ids"]
    for epoch in range(start_epoch, cfg.train.epochs):
        t0 = time.time()
        train_tracker, val_tracker = SkipTracker(), SkipTracker()
        stats = train_epoch(
            ddp_model,
            loss_fn,
            optimizer,
            scheduler,
            train_batches(train_shard, cfg, epoch, rank, world, train_tracker),
            device,
            epoch=epoch,
            log_every=cfg.train.log_every,
            grad_clip=cfg.optim.grad_clip,
        )
        skipped_train, seen_train, truncated = _gather_skips(train_tracker, world)
        _check_skips(
            "train", skipped_train, seen_train, config["train_video_ids"], cfg.data.max_skip_fraction
        )
        val = evaluate(
            model,
            eval_video_batches(val_shard, cfg, val_tracker),
            eval_caption_batches(config["val_captions"], rank, world, cfg.train.eval_batch_size),
            device,
        )
        skipped_val, seen_val, _ = _gather_skips(val_tracker, world)
        _check_skips("val", skipped_val, seen_val, val_names, cfg.data.max_skip_fraction)
        metrics = {f"val/{k}": float(v) for k, v in val.items()}
        metrics.update({f"train/{k}": float(v) for k, v in stats.items() if np.isscalar(v)})
        metrics.update(
            {
                "epoch": epoch,
                "epoch_time_s": time.time() - t0,
                "data/skipped_train": len(skipped_train),
                "data/skipped_val": len(skipped_val),
                "data/truncated_for_equal_batches": truncated,
            }
        )
        history[str(epoch)] = metrics
        _report(
            model,
            loss_fn,
            optimizer,
            scheduler,
            cfg,
            config,
            epoch,
            metrics,
            history,
            rank,
            skipped={
                "train": [config["train_video_ids"][i] for i in skipped_train],
                "val": [val_names[i] for i in skipped_val],
            },
        )
        if mlf is not None:
            mlf.log({k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)
            eta = (cfg.train.epochs - epoch - 1) * metrics["epoch_time_s"]
            logger.info(
                "epoch %d/%d  loss %.4f  val t2v R@1 %.2f R@5 %.2f MdR %.1f  (%.1fs, ETA %.0fs)",
                epoch + 1,
                cfg.train.epochs,
                metrics.get("train/loss", float("nan")),
                metrics.get("val/t2v_R1", float("nan")),
                metrics.get("val/t2v_R5", float("nan")),
                metrics.get("val/t2v_MdR", float("nan")),
                metrics["epoch_time_s"],
                eta,
            )
    return {"history": history}


def _report(
    model, loss_fn, optimizer, scheduler, cfg, config, epoch, metrics, history, rank, skipped
) -> None:
    """Report metrics from every rank; rank 0 attaches an atomically written checkpoint."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = save_checkpoint(
            Path(tmp) / "ckpt",
            {"model": model.state_dict(), "loss": loss_fn.state_dict()},
            {
                "epoch": epoch,
                "metrics": metrics,
                "history": history,
                "skipped_clips": skipped,
                "vocab_size": config["vocab_size"],
            },
            optimizer_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
            config_yaml=config["config_yaml"],
            tokenizer_files=config.get("tokenizer_files"),
        )
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(str(out)),
            checkpoint_dir_name=f"epoch_{epoch:04d}",
        )
    # MLflow gets the epoch only once its checkpoint is committed, so a resumed run never logs an epoch
    # twice; an epoch committed but not yet logged is back-filled from the checkpoint on resume
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


def eval_loop_per_worker(config: dict) -> dict:
    """Evaluate given weights on the "eval" dataset: every rank encodes its shard, rank 0 scores all pairs."""
    import ray
    import ray.train
    import ray.train.torch

    from etva.engine import evaluate
    from etva.model import build_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(config.get("torch_threads", 1))))
    device = ray.train.torch.get_device()
    model = build_model(cfg.model, vocab_size=config["vocab_size"])
    model.load_state_dict(ray.get(config["model_ref"]))
    model.to(device).eval()
    tracker = SkipTracker()
    metrics = evaluate(
        model,
        eval_video_batches(ray.train.get_dataset_shard("eval"), cfg, tracker),
        eval_caption_batches(config["captions"], rank, world, cfg.train.eval_batch_size),
        device,
    )
    skipped, seen, _ = _gather_skips(tracker, world)
    _check_skips("eval", skipped, seen, config["video_ids"], cfg.data.max_skip_fraction)
    out = {f"{config['split']}/{k}": float(v) for k, v in metrics.items()}
    out["data/skipped_eval"] = len(skipped)
    ray.train.report(out)
    return {"metrics": out, "skipped": [config["video_ids"][i] for i in skipped]}
