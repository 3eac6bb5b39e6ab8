"""Training pass streamed from a Parquet feature store by Ray Data vs a plain loop over the same
features already in memory (the floor).

A synthetic store at MSRVTT size (default 10,000 clips x 3 experts x 16 tokens x 768, float16, shards of
256 clips) is written under a temporary folder and deleted afterwards. Both sides run the same step per
batch of 64 (mean-pool each expert, a linear layer, backward, Adam) over every clip once:

  plain   one process, every clip's features in memory (float16 numpy), torch on all cores
  ray     the jobs' builder (``ray_jobs.data.build_video_dataset``, ``data.decode_clips=false``) streams
          the store into a 2-worker Ray Train job (0.5 CPU and 1 torch thread per worker); the pass is timed
          in each worker from its first batch request to its last step (evaluation and start-up excluded)

Printed: both pass times and their ratio, rows/s per worker, peak RSS of each Train worker process
(``ru_maxrss``) next to the store's size on disk.

    python -m benchmarks.bench_store_stream                 # 10,000 clips
    python -m benchmarks.bench_store_stream --quick         # 1,000 clips
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

EXPERTS, TOKENS, DIM, BATCH = ("appearance", "motion", "audio"), 16, 768, 64


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


def _model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(len(EXPERTS) * DIM, 256)
    return model, torch.optim.Adam(model.parameters(), 1e-3)


def _step(model, opt, feats: list) -> None:
    import torch

    x = torch.cat([torch.as_tensor(np.asarray(f, np.float32)).mean(1) for f in feats], dim=1)  # (B, 3*D)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def plain_pass(root: Path, n: int) -> float:
    """Seconds of one pass over features already in memory (loading excluded)."""
    import torch

    from etva.data.feature_store import open_stores

    stores = open_stores(root)
    ids = [f"video{i}" for i in range(n)]
    mem = {}
    for e in EXPERTS:
        mem[e] = stores[e].read_tokens(ids, TOKENS)[0]  # (N, T, D) float16, every shard once
    torch.set_num_threads(2)
    model, opt = _model()
    t0 = time.perf_counter()
    for s in range(0, n - BATCH + 1, BATCH):
        _step(model, opt, [mem[e][s : s + BATCH] for e in EXPERTS])
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
    import torch

    from etva.config import Config
    from ray_jobs.batches import train_rows

    torch.set_num_threads(1)
    shard = ray.train.get_dataset_shard("train")
    cfg = Config()
    cfg.train.batch_size = BATCH
    rank = ray.train.get_context().get_world_rank()
    model, opt = _model()
    memory = _MemorySampler()
    passes = []
    for epoch in range(config["passes"]):  # the jobs' own row reader (local shuffle buffer included)
        rows, t0 = 0, time.perf_counter()
        first = None
        for batch in train_rows(shard, cfg, epoch, rank):
            first = time.perf_counter() - t0 if first is None else first
            _step(model, opt, [batch[f"feat/{e}"] for e in EXPERTS])
            rows += len(batch["video_index"])
        passes.append({"rows": rows, "seconds": time.perf_counter() - t0, "first_batch_s": first})
    out = {
        "rank": rank,
        "passes": passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_mb": memory.stop(),
    }
    Path(config["out"], f"worker{rank}.json").write_text(json.dumps(out))


def ray_pass(root: Path, n: int, out: Path, passes: int) -> list[dict]:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from etva.config import DataConfig, RayConfig
    from etva.data.records import ClipRecord
    from ray_jobs.data import CaptionTable, build_video_dataset

    records = [ClipRecord(f"video{i}", "", ["a caption"], "train") for i in range(n)]
    captions = CaptionTable(records, lambda texts, L: (np.ones((len(texts), L), np.int64),) * 2, 8)
    data = DataConfig(decode_clips=False, feature_store=str(root), max_feature_tokens=TOKENS, cache="none")
    ray_cfg = RayConfig(num_workers=2, cpus_per_worker=0.5, decode_cpus=0.25, decode_concurrency=2)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = build_video_dataset(records, data, ray_cfg, captions=captions, shuffle=True)
        TorchTrainer(
            _worker,
            train_loop_config={"out": str(out), "passes": passes},
            scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
            run_config=RunConfig(name=f"bench-store-{time.time_ns()}", storage_path=str(out / "runs")),
            datasets={"train": ds},
        ).fit()
    finally:
        ray.shutdown()
    return [json.loads(p.read_text()) for p in sorted(out.glob("worker*.json"))]


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
              f"written in {time.perf_counter() - t0:.1f} s")  # fmt: skip
        plain = plain_pass(tmp / "store", n)
        workers = ray_pass(tmp / "store", n, tmp, args.passes)
        print(f"plain loop over in-memory features: {plain:.2f} s ({n / plain:.0f} rows/s)")
        for k in range(args.passes):
            ray_s = max(w["passes"][k]["seconds"] for w in workers)
            label = "first pass, Ray Data start-up included" if k == 0 else "steady state"
            print(f"ray pass {k + 1} ({label}): {ray_s:.2f} s   ratio ray/plain {ray_s / plain:.2f}x")
            for w in workers:
                p = w["passes"][k]
                print(f"  worker {w['rank']}: {p['rows']} rows in {p['seconds']:.2f} s = "
                      f"{p['rows'] / p['seconds']:.0f} rows/s (first batch after {p['first_batch_s']:.2f} s)")  # fmt: skip
        for w in workers:
            m = w["peak_mb"]
            print(f"  worker {w['rank']}: peak RSS {w['peak_rss_mb']:.0f} MiB; peaks while streaming: private "
                  f"(RssAnon) {m['RssAnon']:.0f} MiB, shared (object store and file pages) {m['shared']:.0f} MiB")  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
