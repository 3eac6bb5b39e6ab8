"""Distributed ETVA training on Ray Train, fed by Ray Data, tracked in MLflow.

    ray job submit --working-dir . -- python -m ray_jobs.train --config ray_jobs/configs/shapes.yaml \
        data.root=/abs/path/data/shapes train.epochs=4

Re-running with the same ``--run-name`` (``ray.run_name``) resumes that run from its last checkpoint and
continues the same MLflow run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from etva.config import Config, config_to_dict, load_config

logger = logging.getLogger("etva.train")
REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m ray_jobs.train")
    p.add_argument("--config", default=str(REPO / "ray_jobs/configs/shapes.yaml"), help="YAML config file")
    p.add_argument(
        "--run-name", default=None, help="stable run name (resumes when it exists); default: ray.run_name"
    )
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_clusters=32")
    return p.parse_args(argv)


def storage_path(cfg: Config) -> str:
    path = cfg.ray.storage_path or os.environ.get("ETVA_STORAGE_PATH") or str(Path.home() / "etva-runs")
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def default_run_name(cfg: Config) -> str:
    return f"{Path(cfg.data.root).name or cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_trainer(
    cfg: Config,
    run_name: str,
    *,
    callbacks=None,
    extra_config: dict | None = None,
    mlflow_run: tuple[str, str] = ("", ""),
):
    """Prepare data and return (TorchTrainer, prepared splits). Shared by training and Tune trials."""
    import yaml
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.prepare import build_datasets, ensure_dataset, prepare_splits, tokenizer_files
    from ray_jobs.worker import train_loop_per_worker

    storage = storage_path(cfg)
    ensure_dataset(cfg.data)
    tok_dir = (
        Path(storage) / run_name / "tokenizer"
        if "://" not in storage
        else Path("/tmp") / run_name / "tokenizer"
    )
    tok, prepared = prepare_splits(cfg, tok_dir, {"train": cfg.data.train_split, "val": cfg.data.val_split})
    datasets = build_datasets(cfg, prepared)
    loop_config = {
        "cfg": config_to_dict(cfg),
        "config_yaml": yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        "vocab_size": len(tok),
        "tokenizer_files": tokenizer_files(tok_dir),
        "num_train_videos": len(prepared["train"].records),
        "train_video_ids": prepared["train"].video_ids,
        "val_video_ids": prepared["val"].video_ids,
        "val_captions": prepared["val"].caption_arrays(),
        "mlflow_uri": mlflow_run[0],
        "mlflow_run_id": mlflow_run[1],
        **(extra_config or {}),
    }
    resources = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        resources["GPU"] = cfg.ray.gpus_per_worker
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.ray.num_to_keep,
                checkpoint_score_attribute="val/t2v_R1",
                checkpoint_score_order="max",
            ),
            callbacks=callbacks,
        ),
        datasets=datasets,
    )
    return trainer, prepared


def format_table(metrics: dict[str, float], prefix: str = "val/") -> str:
    """Paper-style table: R@1, R@5, R@10, MdR, MnR for both directions."""
    cols = ("R1", "R5", "R10", "MdR", "MnR")
    lines = [f"{'direction':<12}" + "".join(f"{c:>9}" for c in ("R@1", "R@5", "R@10", "MdR", "MnR"))]
    for d, name in (("t2v", "text->video"), ("v2t", "video->text")):
        vals = [metrics.get(f"{prefix}{d}_{c}", float("nan")) for c in cols]
        lines.append(f"{name:<12}" + "".join(f"{v:>9.1f}" for v in vals))
    return "\n".join(lines)


def best_of(result) -> tuple[dict, str | None]:
    """Best reported metrics and checkpoint path by val/t2v_R1 (ties: lower MdR)."""
    best = getattr(result, "best_checkpoints", None) or []
    if not best:
        return (result.metrics or {}), (result.checkpoint.path if result.checkpoint else None)
    ckpt, metrics = max(best, key=lambda cm: (cm[1].get("val/t2v_R1", -1), -cm[1].get("val/t2v_MdR", 1e9)))
    return metrics, ckpt.path


def main(argv: list[str] | None = None) -> int:
    import ray

    from ray_jobs.prepare import resolve_paths
    from ray_jobs.tracking import (
        finish_run,
        git_commit,
        job_submission_id,
        log_dict,
        log_text,
        start_or_resume_run,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = resolve_paths(load_config(args.config, args.overrides))
    run_name = args.run_name or cfg.ray.run_name or default_run_name(cfg)
    cfg.ray.run_name = run_name
    ray.init(address=None if cfg.ray.address in ("", "local") else cfg.ray.address, log_to_driver=True)
    tags = {
        "git_commit": git_commit(),
        "ray_job_submission_id": job_submission_id(),
        "dataset": cfg.data.dataset,
        "split": f"{cfg.data.subset}:{cfg.data.train_split}->{cfg.data.val_split}",
        "config_file": str(args.config),
    }
    client, run_id = start_or_resume_run(cfg, run_name, tags)
    from ray_jobs.tracking import tracking_uri

    status = "FAILED"
    try:
        trainer, prepared = build_trainer(
            cfg, run_name, mlflow_run=(tracking_uri(cfg) if client else "", run_id)
        )
        summary = {
            name: {**s.summary.to_dict(), "videos": len(s.records), "captions": len(s.captions)}
            for name, s in prepared.items()
        }
        logger.info("data summary: %s", summary)
        if client is not None:
            import yaml

            log_text(client, run_id, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "config.yaml")
            log_dict(client, run_id, summary, "data_summary.json")
        result = trainer.fit()
        best, best_path = best_of(result)
        if best_path and client is not None:
            from etva.checkpoint import load_checkpoint

            meta = load_checkpoint(best_path, load_optimizer=False)["meta"]
            log_dict(client, run_id, meta.get("skipped_clips", {}), "data_skipped_clips.json")
            from ray_jobs.pictures import log_pictures_safely  # never raises: a warning on failure

            log_pictures_safely(client, run_id, best_path, prepared["val"].records)
        status = "FINISHED"
        print(
            f"\nrun {run_name}: best epoch {int(best.get('epoch', -1)) + 1} of {cfg.train.epochs} "
            f"(validation split '{cfg.data.val_split}', ties=average)"
        )
        print(format_table(best))
        print(f"best checkpoint: {best_path}")
        if client is not None:
            print(
                f"MLflow run: {tracking_uri(cfg)}/#/experiments/{client.get_run(run_id).info.experiment_id}"
                f"/runs/{run_id}"
            )
        finish_run(client, run_id, best, best_path, status)
    except BaseException:
        if client is not None:
            client.set_terminated(run_id, status="FAILED")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
