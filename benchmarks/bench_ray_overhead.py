"""Ray overhead: the same `etva.engine` loop fed by Ray Data in a TorchTrainer vs a plain PyTorch DataLoader.

Measured side by side in one run, on the shapes benchmark at the default clip settings:

  A  plain process: `etva.engine.train_epoch` over a `torch.utils.data.DataLoader` whose `num_workers`
     decode processes call the same per-row transform (`etva.data.example.make_video_example`);
  B  a 1-worker `TorchTrainer` fed by the Ray Data pipeline (`ray_jobs.data`, same number of decode tasks),
     decoding every epoch (`data.cache=none`, the behaviour before the cache);
  B' the same with the decoded-example cache (`--cache memory|disk`): clips decoded once;
  C  B' with 2 workers (epoch time, for the scaling report).

Steady-state throughput = clips/s of the training pass after the first epoch (start-up excluded); start-up
= `trainer.fit()` call to the end of the first training step's epoch minus its time. Prints ratios.

    python -m benchmarks.bench_ray_overhead --num-videos 160 --epochs 3
    python -m benchmarks.bench_ray_overhead --quick   # 64 videos, 2 epochs

Starts a local Ray instance itself (``ray.init(num_cpus=4)``) and shuts it down at the end.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from etva.config import DataConfig, load_config
from etva.data.example import make_video_example
from etva.data.synth import generate_dataset

REPO = Path(__file__).resolve().parents[1]


class _ClipDataset(torch.utils.data.Dataset):
    def __init__(self, records, caption_ids, caption_first, caption_count, data_cfg: DataConfig, seed: int):
        self.records, self.ids, self.first, self.count = records, caption_ids, caption_first, caption_count
        self.cfg, self.seed, self.epoch = data_cfg, seed, 0

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        ex = make_video_example(self.records[i], self.cfg)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        pick = int(rng.integers(self.count[i]))
        ids = self.ids[i, pick]
        ex.update(
            input_ids=ids,
            attention_mask=(ids != 0).astype(np.int64),
            video_index=np.int64(i),
            caption_index=np.int64(self.first[i] + pick),
        )
        return ex


def run_plain(cfg, prepared, epochs: int, decode_procs: int) -> list[dict]:
    from etva.engine import build_optimizer, build_scheduler, train_epoch
    from etva.losses import build_loss
    from etva.model import build_model

    torch.manual_seed(cfg.train.seed)
    tr = prepared["train"]
    ds = _ClipDataset(
        tr.records, tr.captions.per_video(32), tr.captions.first, tr.captions.count, cfg.data, cfg.train.seed
    )
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=decode_procs,
        persistent_workers=decode_procs > 0,
        prefetch_factor=2 if decode_procs else None,
    )
    model = build_model(cfg.model, vocab_size=prepared["vocab"])
    loss_fn = build_loss(cfg.loss)
    opt = build_optimizer(torch.nn.ModuleList([model, loss_fn]), cfg.optim)
    sched = build_scheduler(opt, cfg.optim, epochs * len(loader))
    out = []
    for epoch in range(epochs):
        ds.epoch = epoch
        out.append(train_epoch(model, loss_fn, opt, sched, loader, "cpu", epoch=epoch, log_every=0))
    return out


def run_ray(cfg, run_name: str, storage: str) -> tuple[list[dict], float]:
    from ray_jobs.train import build_trainer

    cfg.ray.storage_path = storage
    trainer, _ = build_trainer(cfg, run_name)
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    hist = result.return_value["history"]
    return [hist[k] for k in sorted(hist, key=int)], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-videos", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--decode-procs", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="64 videos, 2 epochs")
    ap.add_argument(
        "--cache", default="memory", choices=("memory", "disk"), help="data.cache of the cached runs"
    )
    args = ap.parse_args()
    if args.quick:
        args.num_videos, args.epochs = 64, 2
    import ray

    from ray_jobs.prepare import prepare_splits

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        cfg = load_config(
            REPO / "ray_jobs/configs/shapes.yaml",
            [
                f"data.root={root}",
                f"train.epochs={args.epochs}",
                "ray.num_workers=1",
                f"ray.decode_concurrency={args.decode_procs}",
                "ray.address=local",
            ],
        )
        generate_dataset(root, args.num_videos, 0, cfg=cfg.data.synth, progress=False)
        tok, prepared = prepare_splits(cfg, Path(tmp) / "tok", {"train": "train", "val": "test"})
        prepared["vocab"] = len(tok)
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        # interleave: plain, ray-1 (decode every epoch), ray-1 cached, plain again (drift), ray-2 cached
        plain = run_plain(cfg, prepared, args.epochs, args.decode_procs)
        ray1, wall1 = run_ray(cfg, "bench-1w", str(Path(tmp) / "ray"))
        cached = copy.deepcopy(cfg)
        cached.data.cache = args.cache
        ray1c, wall1c = run_ray(cached, "bench-1w-cache", str(Path(tmp) / "ray"))
        plain2 = run_plain(cfg, prepared, args.epochs, args.decode_procs)
        cfg2 = copy.deepcopy(cached)
        cfg2.ray.num_workers = 2
        ray2, wall2 = run_ray(cfg2, "bench-2w-cache", str(Path(tmp) / "ray"))
        ray.shutdown()

    def steady(hist, key):
        return float(np.mean([h[key] for h in hist[1:]]))

    plain_cps = (steady(plain, "clips_per_s") + steady(plain2, "clips_per_s")) / 2
    ray1_cps = steady(ray1, "train/global_clips_per_s")
    ray1c_cps = steady(ray1c, "train/global_clips_per_s")
    ray2_cps = steady(ray2, "train/global_clips_per_s")
    res = {
        "num_videos": args.num_videos,
        "epochs": args.epochs,
        "decode_procs": args.decode_procs,
        "plain_clips_per_s": [steady(plain, "clips_per_s"), steady(plain2, "clips_per_s")],
        "ray_1w_clips_per_s": ray1_cps,
        "ray_2w_clips_per_s": ray2_cps,
        "ray_1w_slowdown": plain_cps / ray1_cps,
        "ray_1w_data_stall_share": steady(ray1, "train/data_stall_share"),
        "plain_data_stall_share": steady(plain, "data_stall_share"),
        "cache": args.cache,
        "ray_1w_cached_clips_per_s": ray1c_cps,
        "ray_1w_cached_slowdown": plain_cps / ray1c_cps,
        "ray_1w_cached_data_stall_share": steady(ray1c, "train/data_stall_share"),
        "ray_1w_cached_startup_s": wall1c - sum(h["epoch_time_s"] for h in ray1c),
        "ray_1w_startup_s": wall1 - sum(h["epoch_time_s"] for h in ray1),
        "ray_2w_startup_s": wall2 - sum(h["epoch_time_s"] for h in ray2),
        "epoch_time_1w_s": steady(ray1c, "train/epoch_time_s"),
        "epoch_time_2w_s": steady(ray2, "train/epoch_time_s"),
    }
    res["epoch_time_2w_over_1w"] = res["epoch_time_2w_s"] / res["epoch_time_1w_s"]
    print(json.dumps(res, indent=2))
    print(
        f"\nRay (1 worker, cache off) vs plain DataLoader: {res['ray_1w_slowdown']:.2f}x slower (goal <= 1.10x)"
    )
    print(f"Ray (1 worker, data.cache={args.cache}) vs plain: {res['ray_1w_cached_slowdown']:.2f}x slower")
    print(
        f"data stall share, epochs 2+, Ray 1 worker: cache off {100 * res['ray_1w_data_stall_share']:.1f}%, "
        f"cache {args.cache} {100 * res['ray_1w_cached_data_stall_share']:.1f}% (goal < 10%); "
        f"plain {100 * res['plain_data_stall_share']:.1f}%"
    )
    print(f"2 workers vs 1 worker epoch time (both cached): {res['epoch_time_2w_over_1w']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
