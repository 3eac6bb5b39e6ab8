"""Throughput of the synthetic shapes generator at the default clip size (SynthConfig defaults).

Measures, in one run: clips/s with all cores and with one worker (end to end, MSRVTT layout, including
the annotation files and pool start-up), the ratio to the 10 clips/s target, the parallel speedup, and a
per-clip breakdown (frame drawing, audio, H.264/AAC encoding) in this process.

Usage: python -m benchmarks.bench_synth [--num-videos 200] [--workers N]
       python -m benchmarks.bench_synth --quick   # 40 videos
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from etva.config import SynthConfig
from etva.data.synth import generate_dataset
from etva.data.synth.layouts import plan_msrvtt
from etva.data.synth.render import _encode, render_audio, render_frames

TARGET = 10.0  # clips/s


def end_to_end(n: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        generate_dataset(d, n, seed=0, workers=workers, progress=False)
        return n / (time.perf_counter() - t)


def breakdown(n: int) -> dict[str, float]:
    """Milliseconds per clip of each stage, single process."""
    jobs = plan_msrvtt(n, 0, SynthConfig()).jobs
    times = {"frames": 0.0, "audio": 0.0, "encode": 0.0}
    with tempfile.TemporaryDirectory() as d:
        for i, job in enumerate(jobs):
            rng = np.random.default_rng(job.seed)
            t0 = time.perf_counter()
            frames = render_frames(job, rng)
            t1 = time.perf_counter()
            audio = render_audio(job, rng)
            t2 = time.perf_counter()
            _encode(os.path.join(d, f"{i}.mp4"), frames, audio, job.fps)
            t3 = time.perf_counter()
            times["frames"] += t1 - t0
            times["audio"] += t2 - t1
            times["encode"] += t3 - t2
    return {k: 1000 * v / n for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-videos", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--quick", action="store_true", help="40 videos")
    args = p.parse_args()
    if args.quick:
        args.num_videos = 40
    cfg = SynthConfig()
    print(
        f"synthetic generator: {args.num_videos} clips of {cfg.duration_s} s, {cfg.width}x{cfg.height} "
        f"@ {cfg.fps} fps, MSRVTT layout, {os.cpu_count()} cores"
    )
    end_to_end(8, args.workers)  # warm the page cache / codec libraries
    par = end_to_end(args.num_videos, args.workers)
    one = end_to_end(args.num_videos, 1)
    print(
        f"workers={args.workers}: {par:.1f} clips/s   ratio to the {TARGET:.0f} clips/s target: {par / TARGET:.2f}x"
    )
    print(f"workers=1: {one:.1f} clips/s   ratio to target: {one / TARGET:.2f}x")
    print(f"parallel speedup ({args.workers} workers / 1): {par / one:.2f}x")
    b = breakdown(min(args.num_videos, 50))
    total = sum(b.values())
    print(
        "per clip, one process: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in b.items())
        + f" (total {total:.1f} ms)"
    )


if __name__ == "__main__":
    main()
