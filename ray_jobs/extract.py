"""Extract frozen pretrained-encoder features into a Parquet feature store (Ray Data batch inference).

    python -m ray_jobs.extract --config ray_jobs/configs/msrvtt_1k_a_features.yaml extract.num_actors=2
    ray job submit --working-dir . -- python -m ray_jobs.extract --config ... data.root=/data/msrvtt

Flow: records of ``extract.splits`` (``etva.data.load_records``) -> index rows of the clips some expert
still lacks -> ``map_batches`` decode tasks (PyAV, the training decode) -> per expert a ``map_batches``
actor pool (``ActorPoolStrategy``), one loaded encoder per actor, GPU actors (``extract.gpus_per_actor``,
fractional allowed) when the cluster has GPUs, CPU otherwise -> the driver writes one Parquet shard per
``extract.shard_size`` clips to each expert's store. Re-running skips clips already in finished shards,
so a killed job continues where it stopped; failed clips are listed in each store's manifest.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import ray
import ray.data
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from etva.config import Config
from etva.data import load_records
from etva.features.extractor import (
    BatchEncoder,
    ExpertJob,
    StoreSink,
    decode_extract_batch,
    decode_settings,
    index_rows,
    plan_experts,
)
from ray_jobs.driver import add_overrides, init_ray, job_parser, load_job_config, setup_logging

logger = logging.getLogger(__name__)

__all__ = ["parse_args", "main", "run_extract", "build_extract_dataset"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = job_parser("python -m ray_jobs.extract", __doc__.split("\n\n")[0])
    p.add_argument("--summary", default="", help="write the run summary (JSON) to this file")
    add_overrides(p)
    return p.parse_args(argv)


def extraction_rows(cfg: Config) -> list[dict]:
    """Index rows of every clip of ``extract.splits`` (deduplicated by video_id)."""
    records = []
    for split in cfg.extract.splits:
        records += load_records(
            cfg.data.dataset,
            cfg.data.root,
            split,
            cfg.data.subset,
            max_caption_chars=cfg.data.max_caption_chars,
        )
    return index_rows(records)


def build_extract_dataset(cfg: Config, rows: list[dict], jobs: list[ExpertJob]):
    """The Ray Dataset: index rows -> decode tasks -> one actor pool per expert."""
    ex = cfg.extract
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    blocks = max(1, min(200, math.ceil(len(rows) / ex.batch_size)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    ds = ds.map_batches(
        decode_extract_batch,
        fn_kwargs={"settings": decode_settings(cfg, jobs)},
        batch_size=ex.batch_size,
        batch_format="numpy",
        num_cpus=ex.decode_cpus,
        compute=TaskPoolStrategy(size=max(1, ex.decode_concurrency)),
    )
    for job in jobs:  # the last encoder drops the decoded inputs (no extra select stage: see below)
        ds = ds.map_batches(
            BatchEncoder,
            fn_constructor_kwargs={
                "job": job,
                "num_frames": ex.num_frames,
                "audio_rate": ex.audio_rate,
                "torch_threads": ex.torch_threads,
                "drop_inputs": job is jobs[-1],
            },
            batch_size=ex.batch_size,
            batch_format="numpy",
            num_cpus=ex.cpus_per_actor,
            num_gpus=ex.gpus_per_actor if has_gpu else 0,
            compute=ActorPoolStrategy(size=max(1, ex.num_actors)),
        )
    # no select_columns stage: it would be one more task needing a whole CPU, which on a small node
    # waits until decoding has finished, holding back every shard (and so what a killed job keeps)
    return ds


def run_extract(cfg: Config) -> dict:
    """Extract every clip some expert's store still lacks (Ray must be initialised). Returns a summary."""
    jobs = plan_experts(cfg)
    sink = StoreSink(jobs, cfg.extract.dtype, cfg.extract.output_dir)
    rows = extraction_rows(cfg)
    todo = set(sink.todo(r["video_id"] for r in rows))
    work = [r for r in rows if r["video_id"] in todo]
    logger.info("extract: %d clips, %d already done, %d to do", len(rows), len(rows) - len(work), len(work))
    t0 = time.perf_counter()
    if work:
        ds = build_extract_dataset(cfg, work, jobs)
        for batch in ds.iter_batches(batch_size=cfg.extract.shard_size, batch_format="numpy"):
            sink.write(batch)
    seconds = time.perf_counter() - t0
    summary = {
        "clips": len(rows),
        "skipped_done": len(rows) - len(work),
        "processed": len(work),
        "failed": sink.failed,
        "seconds": round(seconds, 3),
        "clips_per_s": round(len(work) / seconds, 3) if work and seconds > 0 else None,
        "first_shard_s": sink.first_shard_s(t0),
        "stores": sink.finish(),
    }
    logger.info("extract summary: %s", json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    cfg = load_job_config(args.config, args.overrides)
    started = not ray.is_initialized()
    if started:
        init_ray(cfg.ray.address, log_to_driver=True)
    try:
        summary = run_extract(cfg)
    finally:
        if started:
            ray.shutdown()
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
