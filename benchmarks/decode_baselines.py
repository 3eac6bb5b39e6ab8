"""Decoding baselines shared by the decode benchmark and the Ray Data benchmark.

- :func:`make_clip`: an H.264 (+ AAC) test clip written with PyAV.
- :func:`naive_decode`: decode every frame, convert each to full-size RGB, then sample (baseline b).
- :func:`bare_decode`: decode every frame, no conversion (the floor, c).
- :func:`throughput_threaded` / :func:`throughput_process_pool`: single-machine clips/s over N records
  with the full per-row transform (:func:`etva.data.example.make_video_example`).
"""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from etva.config import DataConfig
from etva.data.decode import sample_times
from etva.data.example import make_video_example
from etva.data.records import ClipRecord


def make_clip(
    path: str | Path, width: int, height: int, fps: int, seconds: float, audio: bool = True
) -> Path:
    """A moving-gradient H.264 clip (x264 ultrafast, GOP 2 s) with a 440 Hz AAC tone."""
    path = Path(path)
    n = round(fps * seconds)
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast", "g": str(2 * fps)}
        if audio:
            aus = c.add_stream("aac", rate=16000)
            aus.layout, aus.options = "mono", {"aac_coder": "fast"}
        for i in range(n):
            img = np.stack([(xx + 3 * i) % 256, (yy + 2 * i) % 256, (xx + yy + i) % 256], -1)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(round(16000 * seconds)) / 16000)).astype(
                np.float32
            )
            for j in range(0, len(wave), 1024):
                af = av.AudioFrame.from_ndarray(wave[None, j : j + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = 16000, j
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


def naive_decode(path: str | Path, num_frames: int, size: int) -> np.ndarray:
    """Baseline (b): every frame decoded and converted to full-size RGB, then T sampled and resized."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        duration = float(vs.duration * vs.time_base)
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(vs)]
    out = []
    for t in sample_times(0.0, duration, num_frames):
        img = [a for ft, a in frames if ft <= t][-1]
        h, w = img.shape[:2]
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        small = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(rw, rh, "rgb24").to_ndarray()
        y, x = (rh - size) // 2, (rw - size) // 2
        out.append(small[y : y + size, x : x + size])
    return np.stack(out)


def bare_decode(path: str | Path) -> int:
    """Floor (c): decode every video frame, convert nothing. Returns the frame count."""
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def _example(args: tuple[str, DataConfig]) -> int:
    path, cfg = args
    ex = make_video_example(ClipRecord(Path(path).stem, path, [], ""), cfg)
    return int(ex["frames"].shape[0])


def throughput_threaded(paths: list[str], cfg: DataConfig, workers: int, decode_threads: int = 1) -> float:
    """Clips/s of the per-row transform over ``paths`` in one process with ``workers`` threads."""
    cfg = replace(cfg, decode_threads=decode_threads)
    _example((paths[0], cfg))  # warm caches (filter banks, imports)
    start = time.perf_counter()
    if workers == 1:
        for p in paths:
            _example((p, cfg))
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(_example, [(p, cfg) for p in paths]))
    return len(paths) / (time.perf_counter() - start)


def _warm(args: tuple[str, DataConfig]) -> int:
    time.sleep(0.3)  # long enough that every worker gets one warm-up task
    return _example(args)


def throughput_process_pool(paths: list[str], cfg: DataConfig, workers: int) -> float:
    """Clips/s of the per-row transform over ``paths`` with a started, warm ``workers``-process pool."""
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_warm, [(paths[0], cfg)] * workers))
        start = time.perf_counter()
        list(pool.map(_example, [(p, cfg) for p in paths], chunksize=max(1, len(paths) // (4 * workers))))
        return len(paths) / (time.perf_counter() - start)
