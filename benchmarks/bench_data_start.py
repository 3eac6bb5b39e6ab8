"""Ray Data's start-up cost per execution: what a training epoch waits for before its first batch.

Every epoch of a dataset that is not materialised is a new Ray Data execution. This measures, per epoch:

  pipeline  the training set's real pipeline (`ray_jobs.data.build_video_dataset`, `data.cache=none`,
            shuffled) read through `streaming_split(1)` as a Train worker reads it
            (`ray_jobs.batches.train_rows`), the consumer sleeping `--step-s` per batch like a
            training step: seconds to the first batch, and the epoch's total;
  probe     9 blocks of 16 rows through a map stage of 2 concurrent tasks (the decode stage's
            settings) whose task sleeps 0.1 s per 8 rows and records when it started: with 2 tasks
            at a time the 9 tasks end by 1.0 s; printed are the task start times and the time the
            last block arrived.

    python -m benchmarks.bench_data_start
    python -m benchmarks.bench_data_start --quick   # 2 epochs

Starts a local Ray instance itself (``ray.init(num_cpus=4)``) and shuts it down at the end.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as Ray sets for its tasks

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _probe_task(batch: dict) -> dict:
    start = time.time()
    time.sleep(0.1)
    batch["started"] = np.full(len(batch["i"]), start)
    return batch


def probe(epochs: int) -> list[dict]:
    import ray.data
    from ray.data import TaskPoolStrategy

    rows = [{"i": i, "x": np.zeros(1000)} for i in range(144)]
    ds = ray.data.from_items(rows, override_num_blocks=9).map_batches(
        _probe_task, batch_size=8, batch_format="numpy", num_cpus=0.25, compute=TaskPoolStrategy(size=2)
    )
    out = []
    for _ in range(epochs):
        t0, starts, last = time.time(), set(), 0.0
        for bundle in ds.iter_batches(batch_size=None, batch_format="numpy"):
            starts.update(round(float(s) - t0, 2) for s in bundle["started"])
            last = time.time() - t0
        out.append({"batch_starts_s": sorted(starts), "last_block_s": round(last, 2)})
    return out


def pipeline(num_videos: int, epochs: int, step_s: float, tmp: Path) -> list[dict]:
    from etva.config import load_config
    from etva.data.synth import generate_dataset
    from ray_jobs.batches import train_rows
    from ray_jobs.data import build_video_dataset
    from ray_jobs.prepare import prepare_splits

    root = tmp / "shapes"
    cfg = load_config(REPO / "ray_jobs/configs/shapes.yaml", [f"data.root={root}", "data.cache=none"])
    generate_dataset(root, num_videos, 0, cfg=cfg.data.synth, progress=False)
    _, prepared = prepare_splits(cfg, tmp / "tok", {"train": "train"})
    tr = prepared["train"]
    ds = build_video_dataset(tr.records, cfg.data, cfg.ray, captions=tr.captions, shuffle=True)
    shard = ds.streaming_split(1, equal=True)[0]
    out = []
    for epoch in range(epochs):
        t0, first, n = time.perf_counter(), None, 0
        for _ in train_rows(shard, cfg, epoch, 0):
            first = time.perf_counter() - t0 if first is None else first
            n += 1
            time.sleep(step_s)
        out.append(
            {"first_batch_s": round(first, 2), "epoch_s": round(time.perf_counter() - t0, 2), "batches": n}
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-videos", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--step-s", type=float, default=0.3, help="the consumer's time per batch")
    ap.add_argument("--quick", action="store_true", help="2 epochs")
    args = ap.parse_args()
    if args.quick:
        args.epochs = 2
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars, ctx.print_on_execution_start = False, False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            res = {"pipeline": pipeline(args.num_videos, args.epochs, args.step_s, Path(tmp))}
        res["probe"] = probe(args.epochs)
    finally:
        ray.shutdown()
    print(json.dumps(res, indent=1))
    steady = res["pipeline"][1:] or res["pipeline"]
    print(
        f"\npipeline: first batch of epochs 2+ after {np.mean([e['first_batch_s'] for e in steady]):.2f} s "
        f"(consumer {args.step_s} s per batch)"
    )
    for e, p in enumerate(res["probe"]):
        early = sum(1 for s in p["batch_starts_s"] if s < 1.0)
        print(
            f"probe epoch {e + 1}: {early} of 18 batches (0.1 s each, 2 tasks at a time) started in the "
            f"first second (all 18 could), last block at {p['last_block_s']:.2f} s (0.9 s possible)"
        )


if __name__ == "__main__":
    main()
