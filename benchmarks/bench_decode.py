"""Sampled clip decoding vs a naive baseline and the bare-decode floor, plus single-machine throughput.

In one run, for two H.264 clips (the synthetic default: 4 s 160x120 15 fps; and 15 s 320x240 30 fps),
12 frames at 112x112, video only:
  (a) ``decode_clip`` (sampled frames converted only; stops after the last target),
  (b) naive: decode every frame, convert each to full-size RGB, then sample,
  (c) bare decode of every frame with no conversion (the floor).
Prints medians and the ratios b/a (goal >= 3x) and a/c (goal <= 1.3x). Then the per-row transform
(decode + audio + log-mel) over N records: one thread, two threads, a 2-process pool (clips/s).

Usage: python -m benchmarks.bench_decode [--repeats 15] [--records 64] [--rounds 3]
       python -m benchmarks.bench_decode --quick   # --repeats 5 --records 16 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.decode_baselines import (
    bare_decode,
    make_clip,
    naive_decode,
    throughput_process_pool,
    throughput_threaded,
)
from etva.config import DataConfig
from etva.data.decode import decode_clip

CLIPS = {"synthetic 4s 160x120 15fps": (160, 120, 15, 4.0), "15s 320x240 30fps": (320, 240, 30, 15.0)}


def side_by_side(path: Path, repeats: int) -> dict[str, float]:
    """Median ms per method; methods interleaved round by round so load changes hit all alike."""
    fns = {
        "a": lambda: decode_clip(path, 12, 112, audio_rate=None, threads=1),
        "a+audio": lambda: decode_clip(path, 12, 112, threads=1),
        "a threads=2": lambda: decode_clip(path, 12, 112, audio_rate=None, threads=2),
        "b": lambda: naive_decode(path, 12, 112),
        "c": lambda: bare_decode(path),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    for round_ in range(repeats + 1):
        for key, fn in fns.items():
            t = time.perf_counter()
            fn()
            if round_:  # round 0 is a warm-up
                times[key].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="--repeats 5 --records 16 --rounds 1")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.records, args.rounds = 5, 16, 1
    with tempfile.TemporaryDirectory() as tmp:
        print("## sampled decode, 12 frames at 112x112, medians (ms)")
        print("| clip | (a) decode_clip | (a) + audio | (a) threads=2 | (b) naive | (c) bare | b/a | a/c |")
        print("|---|---|---|---|---|---|---|---|")
        paths = {}
        for name, (w, h, fps, secs) in CLIPS.items():
            paths[name] = make_clip(Path(tmp) / f"{w}x{h}_{fps}.mp4", w, h, fps, secs)
            r = side_by_side(paths[name], args.repeats)
            print(
                f"| {name} | {r['a']:.2f} | {r['a+audio']:.2f} | {r['a threads=2']:.2f} | {r['b']:.2f} | "
                f"{r['c']:.2f} | {r['b'] / r['a']:.2f}x | {r['a'] / r['c']:.2f}x |"
            )
        # N records of the synthetic default clip (8 distinct files, cycled), full per-row transform
        files = [str(make_clip(Path(tmp) / f"rec{i}.mp4", 160, 120, 15, 4.0)) for i in range(8)]
        records = [files[i % len(files)] for i in range(args.records)]
        cfg = DataConfig(num_frames=12, frame_size=112, num_mel_bins=40, max_audio_s=4.0)
        print(f"\n## per-row transform throughput over {len(records)} records (decode + audio + log-mel)")
        print("| mode | clips/s, median of rounds |")
        print("|---|---|")
        modes = {
            "1 thread, decode threads=1": lambda: throughput_threaded(records, cfg, 1),
            "1 thread, decode threads=2": lambda: throughput_threaded(records, cfg, 1, decode_threads=2),
            "2 threads, decode threads=1": lambda: throughput_threaded(records, cfg, 2),
            "2-process pool": lambda: throughput_process_pool(records, cfg, 2),
        }
        runs: dict[str, list[float]] = {k: [] for k in modes}
        for _ in range(args.rounds):  # interleaved rounds: load changes hit every mode alike
            for mode, fn in modes.items():
                runs[mode].append(fn())
        rates = {k: statistics.median(v) for k, v in runs.items()}
        for mode, rate in rates.items():
            print(f"| {mode} | {rate:.1f} (runs: {', '.join(f'{r:.1f}' for r in runs[mode])}) |")
        best = max(rates, key=rates.get)
        print(f"\nbest single-machine baseline: {best} = {rates[best]:.1f} clips/s")


if __name__ == "__main__":
    main()
