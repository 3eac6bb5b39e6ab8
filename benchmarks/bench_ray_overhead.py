"""Ray overhead: the same `etva.train.engine` loop fed by Ray Data in a TorchTrainer vs a plain PyTorch DataLoader.

Measured side by side in one run, on the shapes benchmark at the default clip settings; every epoch is a
training pass and an evaluation of the val split, in both paths:

  A  plain process: `etva.train.engine.train_epoch` / `evaluate` over `torch.utils.data.DataLoader`s whose
     `num_workers` decode processes call the same per-row transform (`etva.data.example.make_video_example`);
  B  a 1-worker `TorchTrainer` fed by the Ray Data pipeline (`ray_jobs.data`, same number of decode tasks),
     decoding every epoch (`data.cache=none`);
  B' the same with the decoded-example cache (`--cache memory|disk`): clips decoded once;
  C  B' with 2 workers (training-pass time, for the scaling report).

Figures are the steady state (epochs 2..N): training-pass clips/s and data-stall share, training-pass time,
training pass + evaluation, and the whole epoch (start of one epoch to the start of the next: training,
evaluation and the checkpoint, which the plain path writes too with `etva.train.checkpoint.save_checkpoint`). Start-up is split by marks the
worker returns (`ray_jobs.recipe.TrainRecipe.run`): fit() -> worker process created -> training loop
entered -> setup done -> first training batch.

Both paths decode with one BLAS thread per decode process (`OMP_NUM_THREADS=1`, set here before numpy is
imported): Ray sets it for its tasks, and without it the plain path's loader workers spend 2.3x the CPU per
clip (OpenBLAS threads in the log-mel product, on 2 cores; docs/platform.md).

    python -m benchmarks.bench_ray_overhead --num-videos 160 --epochs 3
    python -m benchmarks.bench_ray_overhead --quick   # 64 videos, 2 epochs (too few for a 2-worker batch: 0)
    python -m benchmarks.bench_ray_overhead --profile /tmp/prof   # + one profiled epoch per run

`--profile` adds an epoch after the measured ones, profiled by `ray_jobs.profiling` in both paths (CPU
seconds by process role, cProfile of the training loop, Ray Data's own stats). Starts a local Ray instance
itself as a job driver does (``ray_jobs.driver.init_ray``, 4 logical CPUs) and shuts it down at the end.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch: see the docstring


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
        if self.ids is None:  # evaluation: the video only
            ex["video_index"] = np.int64(i)
            return ex
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


def _loader(ds, batch_size: int, decode_procs: int, train: bool):
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=decode_procs,
        persistent_workers=decode_procs > 0,
        prefetch_factor=2 if decode_procs else None,
    )


def run_plain(cfg, prepared, epochs: int, decode_procs: int, label: str = "plain") -> list[dict]:
    """Path A: per epoch, a training pass, an evaluation of the val split and a checkpoint, as the Ray
    worker does; returns per-epoch figures under the Ray history's key names (``epoch_period_s``: the
    whole epoch, checkpoint included)."""
    from etva.train.checkpoint import save_checkpoint
    from etva.train.engine import evaluate, train_epoch
    from etva.train.state import build_training
    from ray_jobs.batches import eval_caption_batches
    from ray_jobs.profiling import profile_for_epoch

    tr, val = prepared["train"], prepared["val"]
    ds = _ClipDataset(
        tr.records, tr.captions.per_video(32), tr.captions.first, tr.captions.count, cfg.data, cfg.train.seed
    )
    loader = _loader(ds, cfg.train.batch_size, decode_procs, train=True)
    val_loader = _loader(
        _ClipDataset(val.records, None, None, None, cfg.data, 0),
        cfg.train.eval_batch_size,
        decode_procs,
        False,
    )
    ts = build_training(cfg, prepared["vocab"], epochs * len(loader), "cpu")
    out = []
    with tempfile.TemporaryDirectory() as ckpt_dir:
        for epoch in range(epochs):
            ds.epoch = epoch
            t0 = time.perf_counter()
            with profile_for_epoch(epoch, 0, f"{label}-epoch{epoch}") as profile:
                stats = train_epoch(
                    ts.model, ts.loss_fn, ts.optimizer, ts.scheduler, loader, "cpu", epoch=epoch
                )
                if profile is not None:
                    profile.update(stats)
            captions = eval_caption_batches(val.caption_arrays(), 0, 1, cfg.train.eval_batch_size)
            metrics = evaluate(ts.model, val_loader, captions, "cpu")
            hist = {f"train/{k}": v for k, v in stats.items()}
            hist.update({f"val/{k}": v for k, v in metrics.items()}, epoch_time_s=time.perf_counter() - t0)
            meta = {"epoch": epoch, "metrics": hist}
            save_checkpoint(
                Path(ckpt_dir) / f"epoch_{epoch:04d}",
                ts.model_state(),
                meta,
                optimizer_state=ts.optimizer_state(),
            )
            hist["epoch_period_s"] = time.perf_counter() - t0
            out.append(hist)
    return out


def run_ray(cfg, run_name: str, storage: str) -> tuple[list[dict], dict]:
    """Paths B/C: ``ray_jobs.train.build_trainer`` + ``fit()``. Returns the per-epoch history and the
    start-up split (seconds from the ``fit()`` call to each of the worker's marks)."""
    from ray_jobs.train import build_trainer

    cfg.ray.storage_path = storage
    trainer, _ = build_trainer(cfg, run_name)
    t0, c0 = time.time(), time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - c0
    hist = result.return_value["history"]
    hist = [hist[k] for k in sorted(hist, key=int)]
    marks = result.return_value.get("timings")
    starts = (marks or {}).get("epoch_starts", []) + [(marks or {}).get("end", 0.0)]
    for h, (a, b) in zip(hist, zip(starts, starts[1:])):  # epoch start to the next: checkpoint included
        h["epoch_period_s"] = b - a
    if "first_batch" not in (marks or {}):  # code from before the worker returned its start-up marks
        return hist, {"fit_wall_minus_epochs_s": wall - sum(h["epoch_time_s"] for h in hist)}
    startup = {
        "fit_to_worker_process_s": marks["process_start"] - t0,
        "worker_process_to_train_loop_s": marks["loop_start"] - marks["process_start"],
        "setup_s": marks["setup_done"] - marks["loop_start"],
        "setup_to_first_batch_s": marks["first_batch"] - marks["setup_done"],
        "fit_to_first_batch_s": marks["first_batch"] - t0,
        "fit_wall_s": wall,
        "fit_wall_minus_epochs_s": wall - sum(h["epoch_time_s"] for h in hist),
    }
    return hist, startup


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-videos", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--decode-procs", type=int, default=2)
    ap.add_argument("--out", default="", help="also write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="64 videos, 2 epochs")
    ap.add_argument(
        "--cache", default="memory", choices=("memory", "disk"), help="data.cache of the cached runs"
    )
    ap.add_argument(
        "--profile",
        default="",
        help="also profile one extra epoch (after the measured ones) of every run into this folder "
        "(ray_jobs.profiling: CPU seconds by process role, cProfile of the training loop)",
    )
    args = ap.parse_args()
    if args.quick:
        args.num_videos, args.epochs = 64, 2
    return args


def main() -> None:
    args = parse_args()
    run_epochs = args.epochs
    if args.profile:  # the profiled epoch runs after the measured ones and is not in the figures
        from ray_jobs.profiling import PROFILE_DIR_ENV, PROFILE_EPOCH_ENV

        run_epochs = args.epochs + 1
        os.environ[PROFILE_EPOCH_ENV] = str(args.epochs)
        os.environ[PROFILE_DIR_ENV] = str(Path(args.profile).resolve())
    import ray

    from ray_jobs.driver import init_ray
    from ray_jobs.prepare import prepare_splits

    torch.set_num_threads(1)
    runs: dict[str, list[dict]] = {}
    startup: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "shapes"
        cfg = load_config(
            REPO / "ray_jobs/configs/shapes.yaml",
            [
                f"data.root={root}",
                f"train.epochs={run_epochs}",
                "ray.num_workers=1",
                f"ray.decode_concurrency={args.decode_procs}",
                "ray.address=local",
                "data.cache=none",  # shapes.yaml turns the cache on; A/B are the decode-every-epoch path
                # both paths train on the whole train split and evaluate the test split (the plain path's
                # prepare_splits below): no validation carved from train on the Ray side only
                "data.val_from_train=0",
            ],
        )
        generate_dataset(root, args.num_videos, 0, cfg=cfg.data.synth, progress=False)
        tok, prepared = prepare_splits(cfg, Path(tmp) / "tok", {"train": "train", "val": "test"})
        prepared["vocab"] = len(tok)
        # the job driver's own ray.init (ray_jobs.driver.init_ray): Train's controller polls every 0.1 s
        init_ray("local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        cached = copy.deepcopy(cfg)
        cached.data.cache = args.cache
        two = copy.deepcopy(cached)
        two.ray.num_workers = 2
        storage = str(Path(tmp) / "ray")
        # interleaved: plain, Ray cache off, Ray cached, plain again (drift), Ray 2 workers cached
        runs["plain"] = run_plain(cfg, prepared, run_epochs, args.decode_procs)
        runs["ray_1w"], startup["ray_1w"] = run_ray(cfg, "bench-1w", storage)
        runs["ray_1w_cached"], startup["ray_1w_cached"] = run_ray(cached, "bench-1w-cache", storage)
        runs["plain2"] = run_plain(cfg, prepared, run_epochs, args.decode_procs, "plain2")
        runs["ray_2w_cached"], startup["ray_2w_cached"] = run_ray(two, "bench-2w-cache", storage)
        ray.shutdown()
    res = summarize(runs, startup, args)
    print(json.dumps(res, indent=2))
    print(report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))


def summarize(runs: dict, startup: dict, args) -> dict:
    """Steady state (epochs 2..N) of every run, and the ratios the issue tracks."""

    def steady(name: str, key: str) -> float:
        return float(np.mean([h[key] for h in runs[name][1 : args.epochs]]))

    per_run = {
        name: {
            "train_clips_per_s": steady(name, "train/global_clips_per_s"),
            "data_stall_share": steady(name, "train/data_stall_share"),
            "train_pass_s": steady(name, "train/epoch_time_s"),
            "epoch_s": steady(name, "epoch_time_s"),
            "epoch_period_s": steady(name, "epoch_period_s"),
        }
        for name in runs
    }
    plain = {k: (per_run["plain"][k] + per_run["plain2"][k]) / 2 for k in per_run["plain"]}
    return {
        "num_videos": args.num_videos,
        "epochs": args.epochs,
        "decode_procs": args.decode_procs,
        "cache": args.cache,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "runs": per_run,
        "startup": startup,
        "ray_1w_train_pass_slowdown": plain["train_clips_per_s"] / per_run["ray_1w"]["train_clips_per_s"],
        "ray_1w_epoch_slowdown": per_run["ray_1w"]["epoch_period_s"] / plain["epoch_period_s"],
        "ray_1w_cached_epoch_slowdown": per_run["ray_1w_cached"]["epoch_period_s"] / plain["epoch_period_s"],
        "epoch_2w_over_1w_cached": per_run["ray_2w_cached"]["train_pass_s"]
        / per_run["ray_1w_cached"]["train_pass_s"],
    }


def report(res: dict) -> str:
    r = res["runs"]
    lines = [
        "",
        "| run | train clips/s | data stall | train pass s | train + eval s | whole epoch s (+ checkpoint) |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in r.items():
        lines.append(
            f"| {name} | {v['train_clips_per_s']:.1f} | {100 * v['data_stall_share']:.1f}% | "
            f"{v['train_pass_s']:.2f} | {v['epoch_s']:.2f} | {v['epoch_period_s']:.2f} |"
        )
    lines += [
        "",
        f"Ray 1 worker, cache off, vs plain: train pass {res['ray_1w_train_pass_slowdown']:.2f}x slower, "
        f"whole epoch {res['ray_1w_epoch_slowdown']:.2f}x (goal <= 1.10x)",
        f"Ray 1 worker, data.cache={res['cache']}, vs plain: whole epoch {res['ray_1w_cached_epoch_slowdown']:.2f}x",
        f"2 workers vs 1 worker training pass (both cached): {res['epoch_2w_over_1w_cached']:.2f}x",
        "start-up, seconds from fit():",
    ]
    for name, s in res["startup"].items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
