"""Evaluate an ETVA checkpoint on any split, distributed over the Ray cluster; log the table to MLflow.

    python -m ray_jobs.evaluate --checkpoint runs/ray/<run>/epoch_0007 [--split test] [a.b=c ...]
    python -m ray_jobs.evaluate --checkpoint models:/etva-shapes@champion --split test

The checkpoint carries its resolved config and tokenizer; overrides change e.g. ``data.root`` or
``data.subset``. Prints the paper-style table (R@1, R@5, R@10, MdR, MnR, both directions).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ray
from ray.train import RunConfig
from ray.train.torch import TorchTrainer

from etva.config import settings
from etva.eval.metrics import format_table
from etva.eval.reweight import format_row
from etva.inference import read_trained
from ray_jobs.driver import add_overrides, init_ray, resolve_paths, setup_logging, storage_path
from ray_jobs.prepare import build_datasets, dataset_config, prepare_splits, scaling_config
from ray_jobs.profiling import process_started_at
from ray_jobs.recipe import EvalInputs, eval_loop_per_worker, run_eval
from ray_jobs.sessions import LocalSession
from ray_jobs.tracking import (
    download_checkpoint,
    job_submission_id,
    log_dict,
    log_metrics,
    run_url,
    start_or_resume_run,
    tracking_uri,
)

logger = logging.getLogger("etva.evaluate")
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m ray_jobs.evaluate")
    p.add_argument(
        "--checkpoint", required=True, help="checkpoint directory, runs:/… or models:/<name>@<alias>"
    )
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the result to MLflow")
    add_overrides(p)
    return p.parse_args(argv)


def fetch_checkpoint(uri: str, dst: Path) -> Path:
    """A local checkpoint directory for a path, ``runs:/…`` or ``models:/…`` URI."""
    if uri.startswith(MLFLOW_SCHEMES):
        return download_checkpoint(uri, dst, settings.tracking_uri())
    path = Path(uri).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"--checkpoint {uri}: no such checkpoint directory")
    return path


def run_evaluation(
    ckpt_dir: Path, split: str | None, overrides: list[str], per_query: dict | None = None
) -> tuple[dict, object, list[str]]:
    """Evaluate one checkpoint: in this process when the split has at most
    ``eval.in_process_max_videos`` videos (no Train workers to start), else on ``ray.num_workers`` Train
    workers. Ray Data decodes the clips either way.

    Returns (metrics incl. ``<split>/num_videos`` and ``num_queries`` as scored, resolved config, ids of
    the split's videos that were not scored: file missing while preparing or failed to decode).
    ``per_query`` (if given) receives the per-caption text->video rank counts (``caption_index``,
    ``t2v_h``, ``t2v_e``: ``etva.eval.scoring.score_streams``).
    """
    trained = read_trained(ckpt_dir, overrides)
    cfg = resolve_paths(trained.cfg)
    split = split or cfg.data.val_split
    _, prepared = prepare_splits(cfg, trained.tokenizer_dir, {"eval": split})
    ev = prepared["eval"]
    in_process = len(ev.records) <= cfg.eval.in_process_max_videos
    cfg = copy.deepcopy(cfg)
    if cfg.data.cache == "memory":  # one pass: decode straight into the encoder, not into the object store first
        cfg.data.cache = "none"
    if in_process:  # one exact shard: the whole split
        cfg.ray.num_workers = 1
    inputs = EvalInputs(
        cfg=cfg,
        vocab_size=trained.vocab_size,
        weights_ref=ray.put(trained.weights),
        split=split,
        video_ids=ev.video_ids,
        captions=ev.caption_arrays(),
        per_query=per_query is not None,
        torch_threads=_threads() if in_process else 1,
    )
    datasets = build_datasets(cfg, {"eval": ev})
    if in_process:
        out = run_eval(inputs, LocalSession(Path(storage_path(cfg)), datasets, use_gpu=cfg.ray.use_gpu))
    else:
        trainer = TorchTrainer(
            eval_loop_per_worker,
            train_loop_config=inputs.loop_config(),
            scaling_config=scaling_config(cfg.ray),
            # a fresh name every time: re-using a Train run name would resume that run
            run_config=RunConfig(name=f"eval-{split}-{uuid.uuid4().hex[:12]}", storage_path=storage_path(cfg)),
            datasets=datasets,
            dataset_config=dataset_config(),
        )
        out = trainer.fit().return_value
    # the counts are the engine's: what was actually scored, never the annotation file's
    metrics = dict(out["metrics"])
    unscored = sorted(set(ev.dropped) | set(out["skipped"]))
    metrics[f"{split}/num_unscored_videos"] = float(len(unscored))
    if per_query is not None:
        per_query.update(out.get("per_query") or {})
    return metrics, cfg, unscored


def _threads() -> int:
    """Torch threads for scoring in this process: what Ray gave it (a Tune trial's CPUs), else 1."""
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:  # not a Ray worker (a job's driver): one thread, leaving the rest to decoding
        cpus = 0.0
    return max(1, int(cpus))


def _log_to_mlflow(cfg, split: str, checkpoint: str, metrics: dict, marks: dict[str, float]) -> None:
    tags = {
        "etva.kind": "evaluation",
        "etva.train.checkpoint": checkpoint,
        "git_commit": settings.git_commit(),
        "ray_job_submission_id": job_submission_id(),
        "dataset": cfg.data.dataset,
        "split": f"{cfg.data.subset}:{split}",
    }
    client, run_id = start_or_resume_run(cfg, f"eval-{split}-{time.strftime('%Y%m%d-%H%M%S')}", tags)
    log_metrics(client, run_id, {**metrics, **{f"timing/{k}": v for k, v in marks.items()}})
    log_dict(client, run_id, metrics, "eval_metrics.json")
    client.set_terminated(run_id)
    print(f"MLflow run: {run_url(tracking_uri(cfg), client.get_run(run_id).info.experiment_id, run_id)}")


def main(argv: list[str] | None = None) -> int:
    marks = {"process_start": process_started_at(), "main": time.time()}  # where the job's time goes
    setup_logging()
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = fetch_checkpoint(args.checkpoint, Path(tmp))
        marks["checkpoint_ready"] = time.time()
        init_ray("local" if _local(args.overrides) else "auto")
        marks["ray_ready"] = time.time()
        metrics, cfg, unscored = run_evaluation(ckpt_dir, args.split, args.overrides)
        marks["scored"] = time.time()
    split = args.split or cfg.data.val_split
    print(scored_header(cfg, split, metrics, unscored) + f"\ncheckpoint: {args.checkpoint}")
    print(format_table(metrics, prefix=f"{split}/"))
    if row := format_row(metrics, f"{split}/", cfg.eval.reweight):
        print(row)
    logger.info("time: %s", time_split(marks))
    if not args.no_mlflow and tracking_uri(cfg):
        _log_to_mlflow(cfg, split, args.checkpoint, metrics, marks)
    return 0


def time_split(marks: dict[str, float]) -> str:
    """``process start -> main 3.1 s, -> checkpoint_ready 0.4 s, ...``: seconds between consecutive marks."""
    names = list(marks)
    return ", ".join(f"{a} -> {b} {marks[b] - marks[a]:.1f} s" for a, b in zip(names, names[1:]))


def scored_header(cfg, split: str, metrics: dict, unscored: list[str]) -> str:
    """The table's header: what was actually scored, and what was not."""
    head = (
        f"\n{cfg.data.dataset} {cfg.data.subset} split '{split}': {int(metrics[f'{split}/num_queries'])} queries x "
        f"{int(metrics[f'{split}/num_videos'])} videos scored (ties=average)"
    )
    if unscored:
        listed = ", ".join(unscored[:10]) + (", ..." if len(unscored) > 10 else "")
        head += f"\nnot scored: {len(unscored)} videos (missing, unreadable or undecodable): {listed}"
    return head


def _local(overrides: list[str]) -> bool:
    return any(o.replace(" ", "") in ("ray.address=local", "ray.address=") for o in overrides)


if __name__ == "__main__":
    sys.exit(main())
