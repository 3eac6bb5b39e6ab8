"""Distributed ETVA training on Ray Train, fed by Ray Data, tracked in MLflow.

    ray job submit --working-dir . -- python -m ray_jobs.train --config ray_jobs/configs/shapes.yaml \
        data.root=/abs/path/data/shapes train.epochs=4

Re-running with the same ``--run-name`` (``ray.run_name``) resumes that run from its last checkpoint and
continues the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer

from etva.config import Config, config_to_dict
from etva.config.settings import git_commit
from etva.eval.metrics import format_table
from etva.eval.reweight import format_row
from etva.train.checkpoint import load_checkpoint
from ray_jobs.driver import add_overrides, init_ray, job_parser, load_job_config, setup_logging, storage_path
from ray_jobs.evaluate import run_evaluation, scored_header
from ray_jobs.pictures import log_pictures_safely  # never raises: a warning on failure
from ray_jobs.prepare import (
    build_datasets,
    dataset_config,
    ensure_dataset,
    load_splits,
    prepare_tokenizer,
    scaling_config,
    selection_split,
    selects_on_test,
    tokenize_splits,
    tokenizer_files,
    training_splits,
)
from ray_jobs.recipe import WorkerInputs, train_loop_per_worker
from ray_jobs.run_record import NOTE, captured_log, log_dataset_inputs, note, source_tags, upload_log
from ray_jobs.sessions import Reported, best_reported
from ray_jobs.tracking import (
    finish_run,
    job_submission_id,
    log_dict,
    log_metrics,
    log_text,
    run_url,
    start_or_resume_run,
    tracking_uri,
)

logger = logging.getLogger("etva.train")
SELECT_METRIC = "val/t2v_R1"  # Train keeps the best checkpoints by it; ties are broken in best_of
RANKS_ARTIFACT = "test_ranks.json"  # a study trial's per-query rank counts on the test split


def parse_args(argv: list[str] | None = None):
    p = job_parser("python -m ray_jobs.train", __doc__.split("\n\n")[0])
    p.add_argument(
        "--run-name", default=None, help="stable run name (resumes when it exists); default: ray.run_name"
    )
    add_overrides(p)
    return p.parse_args(argv)


def default_run_name(cfg: Config) -> str:
    return f"{Path(cfg.data.root).name or cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _tokenizer_dir(storage: str, run_name: str) -> Path:
    return (
        Path(storage) / run_name / "tokenizer"
        if "://" not in storage
        else Path("/tmp") / run_name / "tokenizer"
    )


@dataclass(frozen=True)
class PreparedData:
    """The driver's data preparation: tokenizer (files, size, where it came from) and the prepared splits."""

    tokenizer_files: dict[str, bytes]
    vocab_size: int
    splits: dict  # name -> ray_jobs.prepare.PreparedSplit
    tokenizer_origin: str = ""  # resumed | shared | trained | pretrained (ray_jobs.prepare.prepare_tokenizer)


def prepare_data(
    cfg: Config, run_name: str, cache_root: str | None = None, tokenizer_dir: Path | None = None
) -> PreparedData:
    """Dataset on disk, records (unusable files dropped: fails fast), tokenizer, tokenized captions.

    The tokenizer comes from the run's own folder (resume), else from the tokenizer cache under
    ``cache_root`` (default: the run's storage path) when one was trained on the same captions, else it is
    trained and shared there. Needs no Ray: runs before the cluster is contacted, so bad data fails in
    the first seconds.
    """
    ensure_dataset(cfg.data)
    storage = storage_path(cfg)
    tok_dir = tokenizer_dir or _tokenizer_dir(storage, run_name)
    loaded = load_splits(cfg, training_splits(cfg))
    root = storage if cache_root is None else cache_root
    tok, origin = prepare_tokenizer(cfg.data, loaded["train"][0], tok_dir, root)
    return PreparedData(tokenizer_files(tok_dir), len(tok), tokenize_splits(cfg, tok, loaded), origin)


def worker_inputs(
    cfg: Config, data: PreparedData, torch_threads: int = 1, mlflow_run: tuple[str, str] = ("", "")
) -> WorkerInputs:
    """What the recipe needs besides its dataset shards, however it is launched."""
    prepared = data.splits
    return WorkerInputs(
        cfg=cfg,
        config_yaml=yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        vocab_size=data.vocab_size,
        tokenizer_files=data.tokenizer_files,
        num_train_videos=len(prepared["train"].records),
        train_video_ids=prepared["train"].video_ids,
        val_video_ids=prepared["val"].video_ids,
        val_captions=prepared["val"].caption_arrays(),
        mlflow_uri=mlflow_run[0],
        mlflow_run_id=mlflow_run[1],
        torch_threads=torch_threads,
    )


def build_trainer(
    cfg: Config,
    run_name: str,
    *,
    data: PreparedData | None = None,
    datasets: dict | None = None,
    callbacks=None,
    torch_threads: int = 1,
    mlflow_run: tuple[str, str] = ("", ""),
):
    """Return (TorchTrainer, prepared splits), preparing the data unless ``data`` is given and building
    the Ray Datasets unless ``datasets`` (built from ``data``: a sweep's shared ones) is. Shared by
    training and Tune trials of more than one worker."""
    data = data or prepare_data(cfg, run_name)
    prepared = data.splits
    inputs = worker_inputs(cfg, data, torch_threads, mlflow_run)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=inputs.loop_config(),
        scaling_config=scaling_config(cfg.ray),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage_path(cfg),
            failure_config=FailureConfig(max_failures=cfg.ray.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=None,  # retention is ours (ray.keep_recent, ray_jobs.checkpoints.prune)
                checkpoint_score_attribute=SELECT_METRIC,
                checkpoint_score_order="max",
            ),
            callbacks=callbacks,
        ),
        datasets=datasets if datasets is not None else build_datasets(cfg, prepared),
        dataset_config=dataset_config(),
    )
    return trainer, prepared


def best_of(result) -> tuple[dict, str | None]:
    """Best reported metrics and checkpoint path of a Train result (the project's selection rule,
    etva.eval.metrics); its last checkpoint when none is listed."""
    fallback = (result.metrics or {}), (result.checkpoint.path if result.checkpoint else None)
    reported = [Reported(c, m) for c, m in (getattr(result, "best_checkpoints", None) or [])]
    return best_reported(reported, fallback)


def _tags(cfg: Config, config_file: str) -> dict[str, str]:
    return {
        **source_tags("ray_jobs.train", git_commit()),
        "git_commit": git_commit(),
        "ray_job_submission_id": job_submission_id(),
        "dataset": cfg.data.dataset,
        "split": f"{cfg.data.subset}:{cfg.data.train_split}->{_val_name(cfg)}",
        "config_file": config_file,
        "etva.selected_on": _selection_line(cfg),  # the whole statement, its NOTE line included
    }


def _val_name(cfg: Config) -> str:
    if cfg.data.val_from_train > 0:
        return f"{cfg.data.val_from_train} held out of {cfg.data.train_split}"
    return cfg.data.val_split


def _log_inputs(client, run_id: str, cfg: Config, prepared: dict) -> None:
    summary = {name: s.summary_dict() for name, s in prepared.items()}
    logger.info("data summary: %s", summary)
    if client is not None:
        log_text(client, run_id, yaml.safe_dump(config_to_dict(cfg), sort_keys=False), "config.yaml")
        log_dict(client, run_id, summary, "data_summary.json")
        log_dataset_inputs(client, run_id, cfg, prepared)


def _log_outputs(client, run_id: str, best_path: str | None, prepared: dict) -> None:
    if best_path and client is not None:
        meta = load_checkpoint(best_path, load_optimizer=False)["meta"]
        log_dict(client, run_id, meta.get("skipped_clips", {}), "data_skipped_clips.json")
        log_pictures_safely(client, run_id, best_path, prepared["val"].records)


def _selection_line(cfg: Config) -> str:
    line = f"checkpoint selected on {selection_split(cfg)} by t2v R@1 (ties: lower MdR; ties=average)"
    if selects_on_test(cfg):
        line += "\nNOTE: selected on the test split itself (no validation split): an optimistic number"
    return line


def _print_result(cfg: Config, run_name: str, best: dict, best_path: str | None, url: str) -> None:
    print(f"\nrun {run_name}: best epoch {int(best.get('epoch', -1)) + 1} of {cfg.train.epochs}")
    print(_selection_line(cfg))
    print(format_table(best))
    print(f"best checkpoint: {best_path}")
    if url:
        print(f"MLflow run: {url}")


def report_test_split(
    cfg: Config, best: dict, best_path: str | None, client, run_id: str, ranks_artifact: str = ""
) -> dict:
    """Evaluate the selected checkpoint on ``data.test_split`` (when set); print and log ``<split>/...``
    at the selected epoch. ``ranks_artifact``: also log the per-query rank counts under that name
    (a study trial's ``test_ranks.json``, read by ``tuning.study_report``). Returns the metrics."""
    if not (cfg.data.test_split and best_path):
        return {}
    if "://" in best_path:  # a checkpoint in remote storage: a local copy
        best_path = Checkpoint(best_path).to_directory()
    split = cfg.data.test_split
    per_query: dict | None = {} if ranks_artifact else None
    metrics, _, unscored = run_evaluation(Path(best_path), split, [], per_query)
    print(
        scored_header(cfg, split, metrics, unscored)
        + f" at the selected epoch {int(best.get('epoch', -1)) + 1}"
    )
    print(format_table(metrics, prefix=f"{split}/"))
    if row := format_row(metrics, f"{split}/", cfg.eval.reweight):
        print(row)
    if client is not None:
        log_metrics(client, run_id, metrics, step=int(best.get("epoch", 0)))
        if ranks_artifact:
            ranks = {k: [int(x) for x in v] for k, v in (per_query or {}).items()}
            ranks.update(split=split, selected_epoch=int(best.get("epoch", -1)), unscored=unscored)
            log_text(client, run_id, json.dumps(ranks), ranks_artifact)
    return metrics


def _set_note(
    client, run_id: str, cfg: Config, run_name: str, best: dict, test: dict, prepared: dict
) -> None:
    """The run's description: the result table(s), where the checkpoint was selected, the data."""
    if client is None:
        return
    table = format_table(best)
    if test:
        table += f"\n\n{cfg.data.test_split}:\n" + format_table(test, prefix=f"{cfg.data.test_split}/")
    title = f"{run_name}: best epoch {int(best.get('epoch', -1)) + 1} of {cfg.train.epochs}"
    summary = {name: s.summary_dict() for name, s in prepared.items()}
    client.set_tag(run_id, NOTE, note(title, table, _selection_line(cfg), summary))


def _train(cfg: Config, run_name: str, data: PreparedData, client, run_id: str) -> None:
    """Fit, then log the result to the MLflow run (pictures, test split, note, model) and print it."""
    uri = tracking_uri(cfg) if client is not None else ""
    trainer, prepared = build_trainer(cfg, run_name, data=data, mlflow_run=(uri, run_id))
    _log_inputs(client, run_id, cfg, prepared)
    best, best_path = best_of(trainer.fit())
    _log_outputs(client, run_id, best_path, prepared)
    url = run_url(uri, client.get_run(run_id).info.experiment_id, run_id) if client is not None else ""
    _print_result(cfg, run_name, best, best_path, url)
    test = report_test_split(cfg, best, best_path, client, run_id)
    _set_note(client, run_id, cfg, run_name, best, test, prepared)
    finish_run(client, run_id, best, best_path, "FINISHED")


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    run_name = cfg.ray.run_name = args.run_name or cfg.ray.run_name or default_run_name(cfg)
    with (
        tempfile.TemporaryDirectory() as tmp,
        captured_log(Path(tmp) / f"job-{time.strftime('%Y%m%d-%H%M%S')}.log") as log,
    ):
        data = prepare_data(cfg, run_name)  # before Ray: bad data fails in the first seconds
        init_ray(cfg.ray.address, log_to_driver=True)
        client, run_id = start_or_resume_run(cfg, run_name, _tags(cfg, str(args.config)))
        try:
            _train(cfg, run_name, data, client, run_id)
        except BaseException:
            if client is not None:
                client.set_terminated(run_id, status="FAILED")
            raise
        finally:
            upload_log(client, run_id, log)  # at the end and on failure: logs/job-<time>.log
    return 0


if __name__ == "__main__":
    sys.exit(main())
