"""Evaluate an ETVA checkpoint on any split, distributed over the Ray cluster; log the table to MLflow.

    python -m ray_jobs.evaluate --checkpoint runs/ray/<run>/epoch_0007 [--split test] [a.b=c ...]
    python -m ray_jobs.evaluate --checkpoint models:/etva-shapes@champion --split test

The checkpoint carries its resolved config and tokenizer; overrides change e.g. ``data.root`` or
``data.subset``. Prints the paper-style table (R@1, R@5, R@10, MdR, MnR, both directions).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

from etva.checkpoint import load_checkpoint
from etva.config import apply_overrides, config_from_dict, config_to_dict

logger = logging.getLogger("etva.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m ray_jobs.evaluate")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint directory, runs:/… or models:/<name>@<alias>"
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")
    p.add_argument(
        "overrides", nargs="*", help="config overrides, e.g. data.root=/data/msrvtt data.subset=1k-B"
    )
    return p.parse_args(argv)


def fetch_checkpoint(uri: str, dst: Path) -> Path:
    """A local checkpoint directory for a path, ``runs:/…`` or ``models:/…`` URI."""
    if uri.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        import mlflow.artifacts

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        return local / "checkpoint" if (local / "checkpoint" / "MANIFEST.json").exists() else local
    path = Path(uri).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {uri}: no such checkpoint directory")
    return path


def run_evaluation(ckpt_dir: Path, split: str | None, overrides: list[str]) -> tuple[dict, object]:
    """Distributed evaluation of one checkpoint. Returns (metrics, resolved config)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ray_jobs.prepare import build_datasets, prepare_splits, resolve_paths
    from ray_jobs.train import storage_path
    from ray_jobs.worker import eval_loop_per_worker

    state = load_checkpoint(ckpt_dir, load_optimizer=False)
    data = yaml.safe_load(state["config_yaml"] or "{}")
    cfg = resolve_paths(
        config_from_dict(apply_overrides(data, overrides), f"{ckpt_dir}/config.yaml + overrides")
    )
    split = split or cfg.data.val_split
    if state["tokenizer_dir"] is None:
        raise FileNotFoundError(f"{ckpt_dir}: checkpoint has no tokenizer/ folder")
    _, prepared = prepare_splits(cfg, state["tokenizer_dir"], {"eval": split})
    ev = prepared["eval"]
    resources = {
        "CPU": cfg.ray.cpus_per_worker,
        **({"GPU": cfg.ray.gpus_per_worker} if cfg.ray.use_gpu else {}),
    }
    trainer = TorchTrainer(
        eval_loop_per_worker,
        train_loop_config={
            "cfg": config_to_dict(cfg),
            "vocab_size": int(state["meta"]["vocab_size"]),
            "model_ref": ray.put(state["model"]["model"]),
            "captions": ev.caption_arrays(),
            "video_ids": ev.video_ids,
            "split": split,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.ray.num_workers, use_gpu=cfg.ray.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=f"eval-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage_path(cfg)),
        datasets=build_datasets(cfg, {"eval": ev}),
    )
    result = trainer.fit()
    metrics = dict(result.return_value["metrics"])
    metrics[f"{split}/num_queries"] = float(len(ev.captions))
    metrics[f"{split}/num_videos"] = float(len(ev.records))
    return metrics, cfg


def main(argv: list[str] | None = None) -> int:
    import ray

    from ray_jobs.tracking import git_commit, job_submission_id, log_dict, start_or_resume_run, tracking_uri
    from ray_jobs.train import format_table

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = fetch_checkpoint(args.checkpoint, Path(tmp))
        ray.init(address=None if _local(args.overrides) else "auto")
        metrics, cfg = run_evaluation(ckpt_dir, args.split, args.overrides)
    split = args.split or cfg.data.val_split
    print(
        f"\n{cfg.data.dataset} {cfg.data.subset} split '{split}': {int(metrics[f'{split}/num_queries'])} queries x "
        f"{int(metrics[f'{split}/num_videos'])} videos (ties=average)\ncheckpoint: {args.checkpoint}"
    )
    print(format_table(metrics, prefix=f"{split}/"))
    if not args.no_mlflow and tracking_uri(cfg):
        run_name = f"eval-{split}-{time.strftime('%Y%m%d-%H%M%S')}"
        client, run_id = start_or_resume_run(
            cfg,
            run_name,
            {
                "etva.kind": "evaluation",
                "etva.checkpoint": args.checkpoint,
                "git_commit": git_commit(),
                "ray_job_submission_id": job_submission_id(),
                "dataset": cfg.data.dataset,
                "split": f"{cfg.data.subset}:{split}",
            },
        )
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()])
        log_dict(client, run_id, metrics, "eval_metrics.json")
        client.set_terminated(run_id)
        print(
            f"MLflow run: {tracking_uri(cfg)}/#/experiments/{client.get_run(run_id).info.experiment_id}/runs/{run_id}"
        )
    return 0


def _local(overrides: list[str]) -> bool:
    return any(o.replace(" ", "") in ("ray.address=local", "ray.address=") for o in overrides)


if __name__ == "__main__":
    sys.exit(main())
