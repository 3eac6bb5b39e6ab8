"""Render and encode one synthetic clip: numpy-drawn frames + numpy audio -> H.264/AAC ``.mp4``.

Objects live inside the central ``min(W, H)`` square of the frame, so a centre square crop keeps
them whole. Encoding uses single-threaded x264 (``preset=ultrafast``) and AAC (``aac_coder=fast``),
which makes the output bit-identical for the same job.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import av
import numpy as np

from etva.data.synth.content import BACKGROUNDS, COLOURS, ClipSpec

__all__ = [
    "AUDIO_RATE", "SOUND_GRID", "SOUND_MARGIN_S", "SHORTEST_ALIGNED_SEGMENT_S", "ClipJob", "sound_span",
    "render_frames", "render_audio", "write_clip", "write_clips",
]

AUDIO_RATE = 16000  # Hz, mono
_TONE_HZ = {"low": 220.0, "high": 1760.0}
_AMPLITUDE = 0.3
_MARGIN = 2  # pixels between an object and its region's edge
SOUND_MARGIN_S = 0.1  # aligned sounds: seconds of silence at least at both ends of the segment
SOUND_GRID = 5120  # aligned sounds: samples (0.32 s), 5 AAC frames of 1,024 and 32 mel hops of 160
# aligned sounds: the shortest segment that holds one grid step inside the margins (:func:`sound_span`)
SHORTEST_ALIGNED_SEGMENT_S = 2 * SOUND_MARGIN_S + 2 * SOUND_GRID / AUDIO_RATE


@dataclass(frozen=True)
class ClipJob:
    """One clip file to write: its events (spec, start_s, end_s) cover ``[0, duration_s]``."""

    path: str  # relative to the dataset root
    segments: tuple[tuple[ClipSpec, float, float], ...]
    duration_s: float
    width: int
    height: int
    fps: int
    seed: int  # positions and noise
    # one seed per segment for its positions (the compositional mode: an event looks the same wherever it
    # plays and in every clip of its group, and two events last as many frames: with an odd frame count
    # the middle frame shows the background alone); empty: positions come from ``seed``
    segment_seeds: tuple[int, ...] = ()
    # the compositional mode: each sound sits on the grid, inside silent margins (:func:`sound_span`)
    aligned_sound: bool = False


@lru_cache(maxsize=64)
def _mask(shape: str, r: int) -> np.ndarray:
    """Boolean mask (2r+1, 2r+1) of a shape of 'radius' r centred in the array."""
    y, x = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return (np.abs(x) <= 0.82 * r) & (np.abs(y) <= 0.82 * r)
    if shape == "triangle":  # apex up, base at the bottom
        return (y <= 0.85 * r) & (np.abs(x) <= (y + r) / (1.85 * r) * r)
    if shape == "cross":
        arm = r / 3.0
        return ((np.abs(x) <= arm) & (np.abs(y) <= r)) | ((np.abs(y) <= arm) & (np.abs(x) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def _regions(spec: ClipSpec, side: int) -> list[tuple[float, float, float, float]]:
    """(x0, x1, y0, y1) per object inside the central square: bands for horizontal motion."""
    if len(spec.objects) == 1:
        return [(0.0, side, 0.0, side)]
    half = side / 2
    if any(o.motion in ("left", "right") for o in spec.objects):
        return [(0.0, side, 0.0, half), (0.0, side, half, side)]
    return [(0.0, half, 0.0, side), (half, side, 0.0, side)]


def _span(lo: float, hi: float, r: int) -> tuple[float, float]:
    a, b = lo + r + _MARGIN, hi - r - _MARGIN
    return (a, b) if a <= b else ((lo + hi) / 2, (lo + hi) / 2)


def _trajectories(spec: ClipSpec, side: int, r: int, rng: np.random.Generator) -> list[tuple]:
    """Start and end centre (x, y) per object, in central-square coordinates."""
    out = []
    for obj, (x0, x1, y0, y1) in zip(spec.objects, _regions(spec, side)):
        (xa, xb), (ya, yb) = _span(x0, x1, r), _span(y0, y1, r)
        x, y = rng.uniform(xa, xb), rng.uniform(ya, yb)
        start, end = {
            "left": ((xb, y), (xa, y)),
            "right": ((xa, y), (xb, y)),
            "up": ((x, yb), (x, ya)),
            "down": ((x, ya), (x, yb)),
            "static": ((x, y), (x, y)),
        }[obj.motion]
        out.append((start, end))
    return out


def _paste(frame: np.ndarray, mask: np.ndarray, cx: int, cy: int, colour: np.ndarray) -> None:
    h, w = frame.shape[:2]
    r = mask.shape[0] // 2
    fy0, fx0 = max(cy - r, 0), max(cx - r, 0)
    fy1, fx1 = min(cy + r + 1, h), min(cx + r + 1, w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    m = mask[fy0 - (cy - r) : fy1 - (cy - r), fx0 - (cx - r) : fx1 - (cx - r)]
    frame[fy0:fy1, fx0:fx1][m] = colour


def render_frames(job: ClipJob, rng: np.random.Generator) -> np.ndarray:
    """All frames of the clip, uint8 (T, H, W, 3) RGB."""
    w, h = job.width, job.height
    n = max(1, round(job.duration_s * job.fps))
    side = min(w, h)
    ox, oy = (w - side) // 2, (h - side) // 2
    r = max(2, round(side / 6))
    frames = np.zeros((n, h, w, 3), np.uint8)  # (T, H, W, 3)
    times = np.arange(n) / job.fps
    for k, (spec, s, e) in enumerate(job.segments):
        idx = np.nonzero((times >= s) & (times < e))[0]
        if len(idx) == 0:
            continue
        frames[idx] = np.array(BACKGROUNDS[spec.background], np.uint8)
        if job.segment_seeds and n % 2:  # equal halves: the odd middle frame is a cut (no object)
            idx = idx[idx != n // 2]
        seg_rng = np.random.default_rng(job.segment_seeds[k]) if job.segment_seeds else rng
        paths = _trajectories(spec, side, r, seg_rng)
        for j, fi in enumerate(idx):
            p = j / max(1, len(idx) - 1)  # progress through the segment, 0..1
            for obj, ((xs, ys), (xe, ye)) in zip(spec.objects, paths):
                cx = ox + round(xs + (xe - xs) * p)
                cy = oy + round(ys + (ye - ys) * p)
                colour = np.array(COLOURS[obj.colour], np.uint8)
                _paste(frames[fi], _mask(obj.shape, r), cx, cy, colour)
    return frames


def sound_span(start_s: float, end_s: float, num_samples: int, aligned: bool) -> tuple[int, int]:
    """Samples [a, b) of a segment's sound in a clip of ``num_samples``: the whole segment, or (``aligned``)
    a span that starts on the first SOUND_GRID step at least SOUND_MARGIN_S into the segment and lasts as
    many grid steps as every segment of that length allows with the margin at its end too.

    Aligned sounds never touch the file's ends or a cut, where the AAC encoder's start-up and pre-echo mark
    where a sound is, and two equally long segments hold sounds that are exact shifts of each other on the
    AAC frame grid and on the 10 ms mel hop grid: their decoded log-mel frames are shifts of each other too.
    """
    a, b = round(start_s * AUDIO_RATE), min(num_samples, round(end_s * AUDIO_RATE))
    if not aligned:
        return a, b
    margin = round(SOUND_MARGIN_S * AUDIO_RATE)
    first = -(-(a + margin) // SOUND_GRID) * SOUND_GRID
    steps = max(0, (b - a - 2 * margin - SOUND_GRID) // SOUND_GRID)
    return first, first + steps * SOUND_GRID


def render_audio(job: ClipJob, rng: np.random.Generator) -> np.ndarray:
    """Mono float32 (S,) at AUDIO_RATE: a tone, noise or silence per segment (over its :func:`sound_span`),
    with 10 ms fades."""
    n = max(1, round(job.duration_s * AUDIO_RATE))
    audio = np.zeros(n, np.float32)
    fade = int(0.01 * AUDIO_RATE)
    for spec, s, e in job.segments:
        a, b = sound_span(s, e, n, job.aligned_sound)
        if b <= a or spec.sound == "silence":
            continue
        t = np.arange(b - a) / AUDIO_RATE
        if spec.sound == "noise":
            seg = np.clip(rng.normal(0.0, 0.12, b - a), -0.5, 0.5)
        else:
            seg = _AMPLITUDE * np.sin(2 * np.pi * _TONE_HZ[spec.sound] * t)
        env = np.ones(b - a)
        k = min(fade, (b - a) // 2)
        if k > 0:
            env[:k] = np.linspace(0, 1, k)
            env[-k:] = np.linspace(1, 0, k)
        audio[a:b] = (seg * env).astype(np.float32)
    return audio


def _encode(path: Path, frames: np.ndarray, audio: np.ndarray, fps: int) -> None:
    with av.open(str(path), "w", format="mp4") as out:
        v = out.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "threads": "1"})
        v.width, v.height, v.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        v.codec_context.thread_count = 1
        a = out.add_stream("aac", rate=AUDIO_RATE, layout="mono", options={"aac_coder": "fast"})
        for f in frames:
            out.mux(v.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(v.encode())
        af = av.AudioFrame.from_ndarray(audio[None, :], format="fltp", layout="mono")
        af.sample_rate = AUDIO_RATE
        out.mux(a.encode(af))
        out.mux(a.encode())


def write_clip(root: str, job: ClipJob) -> str:
    """Render and write one clip atomically (temp file + rename); returns its relative path."""
    final = Path(root) / job.path
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    rng = np.random.default_rng(job.seed)
    frames = render_frames(job, rng)
    audio = render_audio(job, rng)
    _encode(tmp, frames, audio, job.fps)
    os.replace(tmp, final)
    return job.path


def write_clips(root: str, jobs: list[ClipJob]) -> list[str]:
    """Worker entry point: write a batch of clips (one task per batch keeps IPC small)."""
    return [write_clip(root, job) for job in jobs]
