"""Training pass streamed from a Parquet feature store by Ray Data vs a plain loop over the same
features already in memory (the floor), both with the ETVA model's own training step.

A synthetic store at MSRVTT size (default 10,000 clips x 3 experts x 16 tokens x 768, float16, shards of
256 clips) is written under a temporary folder and deleted afterwards. Both sides run the recipe's step
(``etva.train.engine.train_epoch`` on a model from ``etva.train.state.build_training``: three features
experts, a paper-sized head, d=512, K=32 clusters, batch 128; a small ALBERT text encoder) over every clip:

  plain   one process, every clip's features in memory (float16 numpy), the step on 1 torch thread
  ray     the jobs' builder (``ray_jobs.data.build_video_dataset``, ``data.decode_clips=false``) streams
          the store into a 1-worker Ray Train job (1 CPU, 1 torch thread); its batches come from the
          recipe's own ``ray_jobs.batches.train_batches``; the pass is timed in the worker from its first
          batch request to its last step (evaluation and start-up excluded)

The other core reads the store on the Ray side (the plain side has nothing to read). Printed: both pass
times and their ratios (first pass, with Ray Data's start-up, and steady state), Ray Data's own
iterator stats for the steady pass, rows/s, peak memory of the Train worker next to the store's size.

    python -m benchmarks.bench_store_stream                 # 10,000 clips
    python -m benchmarks.bench_store_stream --quick         # 1,000 clips
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

EXPERTS, TOKENS, DIM, BATCH, VOCAB, TEXT_LEN = ("appearance", "motion", "audio"), 16, 768, 128, 1000, 16


def write_store(root: Path, n: int, shard: int = 256) -> None:
    from etva.data.feature_store import FeatureStoreWriter, register_store, store_dir

    rng = np.random.default_rng(0)
    for name in EXPERTS:
        ident = {"bench": name}
        folder = store_dir(root, name, ident)
        w = FeatureStoreWriter(folder, ident, DIM, dtype="float16", expert=name)
        for s in range(0, n, shard):
            ids = [f"video{i}" for i in range(s, min(n, s + shard))]
            w.write_shard(
                ids, list(rng.standard_normal((len(ids), TOKENS, DIM), np.float32).astype(np.float16))
            )
        register_store(root, name, folder)


def bench_config():
    """The recipe's config for the step: three features experts, d=512, K=32, batch 128, fp32."""
    from etva.config import Config, ExpertConfig

    cfg = Config()
    cfg.model.d, cfg.model.num_clusters, cfg.model.fusion_heads = 512, 32, 8
    cfg.model.experts = {e: ExpertConfig(kind="features", dim=DIM) for e in EXPERTS}
    cfg.model.text.max_position = TEXT_LEN
    cfg.train.batch_size = BATCH
    cfg.data.decode_clips, cfg.data.max_feature_tokens, cfg.data.max_text_len = False, TOKENS, TEXT_LEN
    return cfg


def _training(cfg, n: int):
    """(model, loss, optimizer, scheduler) as the recipe builds them, on the CPU, 1 torch thread."""
    import torch

    from etva.train.state import build_training

    torch.set_num_threads(1)
    return build_training(cfg, VOCAB, max(1, n // BATCH) * 2, "cpu")


def _epoch(ts, batches, epoch: int) -> dict:
    from etva.train import engine

    return engine.train_epoch(
        ts.model, ts.loss_fn, ts.optimizer, ts.scheduler, batches, "cpu", epoch=epoch, log_every=0
    )


def _captions(n: int) -> np.ndarray:
    """Random caption token ids (one caption per clip), the same on both sides."""
    ids = np.random.default_rng(1).integers(3, VOCAB, (n, TEXT_LEN), dtype=np.int64)
    ids[:, TEXT_LEN // 2 :] = 0  # padding
    return ids


def plain_pass(root: Path, n: int) -> float:
    """Seconds of one pass of the recipe's step over features already in memory (loading excluded)."""
    from etva.data.feature_store import open_stores

    stores = open_stores(root)
    ids = [f"video{i}" for i in range(n)]
    mem = {e: stores[e].read_tokens(ids, TOKENS) for e in EXPERTS}  # every shard once: (feats, mask)
    captions = _captions(n)
    ts = _training(bench_config(), n)

    def batches():
        for s in range(0, n - BATCH + 1, BATCH):
            sel = slice(s, s + BATCH)
            ids_b = captions[sel]
            batch = {"video_index": np.arange(s, s + BATCH), "caption_index": np.arange(s, s + BATCH),
                     "input_ids": ids_b, "attention_mask": (ids_b != 0).astype(np.int64)}  # fmt: skip
            for e in EXPERTS:
                batch[f"feat/{e}"], batch[f"feat_mask/{e}"] = mem[e][0][sel], mem[e][1][sel]
            yield batch

    t0 = time.perf_counter()
    _epoch(ts, batches(), 0)
    return time.perf_counter() - t0


class _MemorySampler:
    """Peak private (RssAnon) and shared (RssShmem + RssFile: Ray's object store pages mapped by a
    zero-copy read) resident memory of this process, sampled from /proc/self/status every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak = {"RssAnon": 0, "RssShmem": 0, "RssFile": 0, "shared": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            kb = {}
            for line in Path("/proc/self/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in self.peak:
                    kb[key] = int(value.split()[0])
            kb["shared"] = kb.get("RssShmem", 0) + kb.get("RssFile", 0)
            for k, v in kb.items():
                self.peak[k] = max(self.peak[k], v)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {k: v / 1024 for k, v in self.peak.items()}  # MiB


def _worker(config: dict) -> None:
    import resource

    import ray.train

    from ray_jobs.batches import SkipTracker, train_batches
    from ray_jobs.recipe import note_first

    shard = ray.train.get_dataset_shard("train")
    cfg = bench_config()
    ts = _training(cfg, config["n"])
    memory = _MemorySampler()
    passes = []
    for epoch in range(config["passes"]):  # the recipe's own batches (local shuffle, caption sampling)
        marks = {"start": time.time()}
        batches = note_first(train_batches(shard, cfg, epoch, 0, 1, SkipTracker()), marks, "first_batch")
        stats = _epoch(ts, batches, epoch)
        passes.append({"rows": int(stats["clips"]), "seconds": time.time() - marks["start"],
                       "first_batch_s": marks["first_batch"] - marks["start"],
                       "data_wait_s": stats["data_wait_s"], "ray_data_stats": shard.stats()})  # fmt: skip
    out = {
        "passes": passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_mb": memory.stop(),
    }
    Path(config["out"], "worker0.json").write_text(json.dumps(out))


def ray_pass(root: Path, n: int, out: Path, passes: int) -> dict:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from etva.config import RayConfig
    from etva.data.records import ClipRecord
    from ray_jobs.data import CaptionTable, build_video_dataset

    records = [ClipRecord(f"video{i}", "", ["a caption"], "train") for i in range(n)]
    ids = _captions(n)
    captions = CaptionTable(records, lambda texts, L: (ids, (ids != 0).astype(np.int64)), TEXT_LEN)
    data = bench_config().data
    data.feature_store, data.cache = str(root), "none"
    ray_cfg = RayConfig(num_workers=1, cpus_per_worker=1.0, decode_cpus=0.25, decode_concurrency=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = build_video_dataset(records, data, ray_cfg, captions=captions, shuffle=True)
        TorchTrainer(
            _worker,
            train_loop_config={"out": str(out), "passes": passes, "n": n},
            scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1.0}),
            run_config=RunConfig(name=f"bench-store-{time.time_ns()}", storage_path=str(out / "runs")),
            datasets={"train": ds},
        ).fit()
    finally:
        ray.shutdown()
    return json.loads((out / "worker0.json").read_text())


def report(n: int, plain: list[float], worker: dict) -> None:
    print(f"plain loop over in-memory features, recipe step: passes {', '.join(f'{p:.2f}' for p in plain)} s "
          f"({n / plain[-1]:.0f} rows/s)")  # fmt: skip
    goals = (1.3, 1.10)
    for k, p in enumerate(worker["passes"]):
        floor = plain[min(k, len(plain) - 1)]
        label = "first pass, Ray Data start-up included" if k == 0 else "steady state"
        goal = goals[min(k, 1)]
        print(f"ray pass {k + 1} ({label}): {p['seconds']:.2f} s   ratio ray/plain {p['seconds'] / floor:.2f}x "
              f"(goal <= {goal}x); {p['rows']} rows, {p['rows'] / p['seconds']:.0f} rows/s, first batch after "
              f"{p['first_batch_s']:.2f} s, waiting for data {p['data_wait_s']:.2f} s")  # fmt: skip
    print("Ray Data's iterator stats, last pass:\n" + worker["passes"][-1]["ray_data_stats"])
    m = worker["peak_mb"]
    print(f"Train worker: peak RSS {worker['peak_rss_mb']:.0f} MiB; peaks while streaming: private "
          f"(RssAnon) {m['RssAnon']:.0f} MiB, shared (object store and file pages) {m['shared']:.0f} MiB")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-videos", type=int, default=10000)
    p.add_argument("--quick", action="store_true", help="1,000 clips")
    p.add_argument(
        "--passes", type=int, default=2, help="training passes (the first includes Ray Data's start-up)"
    )
    args = p.parse_args(argv)
    n = 1000 if args.quick else args.num_videos
    tmp = Path(tempfile.mkdtemp(prefix="etva-store-bench-", dir="/tmp"))
    try:
        t0 = time.perf_counter()
        write_store(tmp / "store", n)
        size = sum(f.stat().st_size for f in (tmp / "store").rglob("*.parquet")) / 2**20
        print(f"store: {n} clips x {len(EXPERTS)} experts x {TOKENS} x {DIM} float16, {size:.0f} MiB on disk, "
              f"written in {time.perf_counter() - t0:.1f} s; load average {os.getloadavg()}")  # fmt: skip
        plain = [plain_pass(tmp / "store", n) for _ in range(min(2, args.passes))]
        worker = ray_pass(tmp / "store", n, tmp, args.passes)
        report(n, plain, worker)
        print(f"load average at the end {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
