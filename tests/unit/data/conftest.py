"""Fixtures made in code: tiny real H.264/AAC clips written with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest


def write_video(
    path: str | Path,
    *,
    width: int = 64,
    height: int = 48,
    fps: int = 15,
    num_frames: int = 15,
    audio_hz: float | None = 440.0,
    audio_rate: int = 16000,
    video: bool = True,
    faststart: bool = False,
    gop: int | None = None,
) -> Path:
    """Write an mp4 whose frame ``i`` is coded in its colour, red = ``10 + 25 * (i % 10)`` and blue =
    ``10 + 25 * (i // 10)`` (a white bar on the left edge), and, when ``audio_hz``, a sine tone of the
    same length.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    duration = num_frames / fps
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        vs = None
        if video:
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.options = {"preset": "ultrafast", **({"g": str(gop)} if gop else {})}
        if audio_hz is not None:
            aus = c.add_stream("aac", rate=audio_rate)
            aus.layout = "mono"
            aus.options = {"aac_coder": "fast"}
        for i in range(num_frames if video else 0):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = 10 + 25 * (i % 10)
            img[..., 2] = 10 + 25 * (i // 10)
            img[:, :4] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for p in vs.encode(frame):
                c.mux(p)
        if vs is not None:
            for p in vs.encode():
                c.mux(p)
        if audio_hz is not None:
            t = np.arange(round(audio_rate * duration)) / audio_rate
            wave = (0.5 * np.sin(2 * np.pi * audio_hz * t)).astype(np.float32)
            for j in range(0, len(wave), 1024):
                af = av.AudioFrame.from_ndarray(wave[None, j : j + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = audio_rate, j
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A folder of small clips shared by the decode/example tests."""
    d = tmp_path_factory.mktemp("clips")
    write_video(d / "tone.mp4")  # 1 s, 15 frames 64x48, 440 Hz
    write_video(d / "silent.mp4", audio_hz=None)
    write_video(d / "short.mp4", num_frames=3, audio_hz=None)
    write_video(d / "long.mp4", num_frames=90, fps=15, gop=15, audio_hz=1000.0)  # 6 s
    write_video(d / "audio_only.mp4", video=False)
    write_video(d / "faststart.mp4", faststart=True, num_frames=30)
    data = (d / "tone.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # moov atom (at the end) cut off
    fs = (d / "faststart.mp4").read_bytes()
    (d / "truncated_faststart.mp4").write_bytes(fs[: len(fs) // 3])  # index intact, media cut
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is not a video\n" * 20)
    return d
