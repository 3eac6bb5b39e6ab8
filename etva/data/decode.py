"""Decode a clip with PyAV: T uniformly sampled RGB frames and the mono audio track.

Sampling rule: the clip window ``[t0, t1)`` (``start_s``/``end_s``, default the whole video stream) is cut
into T equal segments and target ``i`` is the segment centre ``t0 + (i + 0.5) * (t1 - t0) / T``; its
frame is the one on screen at that time (the last frame whose timestamp is <= the target; the first
frame of the window when the target precedes it). Only the chosen frames are converted to RGB and
resized (shorter side to ``size``, then a centre crop), each once even when several targets share it.
Decoding stops as soon as every target has its frame. Short clips: a frame shared by several targets is
repeated, and targets past the last decoded frame repeat the last frame (deterministic padding). When
the stream has no duration metadata all frames are decoded (kept unconverted) and T indices are taken
at segment centres of the frame list.

Audio is decoded in the same pass, resampled to mono float32 at ``audio_rate`` and cut to
``[t0, min(t1, t0 + max_audio_s))`` (dropping AAC priming/padding samples beyond the duration).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from etva.data.sampling import sample_indices

__all__ = ["Clip", "DecodeError", "decode_clip", "open_container", "sample_times"]

log = logging.getLogger(__name__)

# a truncated file whose frames stop before this share of the declared duration is an error
MIN_COVERAGE = 0.75
# start seeking (to the keyframe before start_s) only past this offset; smaller offsets just decode
SEEK_MIN_S = 1.0

_KNOWN_HEADERS = {  # first bytes of containers we expect videos in -> name, to tell corrupt from non-media
    b"\x1a\x45\xdf\xa3": "Matroska/WebM",
    b"RIFF": "AVI",
}


class DecodeError(RuntimeError):
    """A clip that cannot be decoded. ``kind``: missing | empty | corrupt | not_media |
    no_video_stream | truncated | decode | no_frames | bad_window."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "decode"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across processes (Ray, multiprocessing)
        return (DecodeError, (self.path, self.reason, self.kind))


@dataclass
class Clip:
    frames: np.ndarray  # uint8 (T, size, size, 3) RGB
    audio: np.ndarray | None  # float32 (S,) mono at audio_rate; None when the file has no audio
    audio_rate: int


def sample_times(t0: float, t1: float, num: int) -> np.ndarray:
    """Segment-centre target times of ``num`` equal segments of ``[t0, t1)``."""
    return t0 + (np.arange(num) + 0.5) * (t1 - t0) / num


def _sniff(path: str) -> str | None:
    with open(path, "rb") as f:
        head = f.read(12)
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide"):
        return "MP4/MOV"
    return next((name for magic, name in _KNOWN_HEADERS.items() if head.startswith(magic)), None)


def open_container(path: str | os.PathLike) -> av.container.InputContainer:
    """``av.open`` with a :class:`DecodeError` naming the file and what is wrong with it."""
    path = str(path)
    if not os.path.exists(path):
        raise DecodeError(path, "file not found", "missing")
    if os.path.getsize(path) == 0:
        raise DecodeError(path, "empty file (0 bytes)", "empty")
    try:
        return av.open(path, metadata_errors="ignore")
    except av.FFmpegError as e:
        fmt = _sniff(path)
        if fmt is not None:
            raise DecodeError(path, f"truncated or corrupt {fmt} file ({e})", "corrupt") from e
        raise DecodeError(path, f"not a recognised video file ({e})", "not_media") from e


def _resize_dims(width: int, height: int, size: int) -> tuple[int, int]:
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


class _FramePicker:
    """Assigns decoded frames to target times; converts each chosen frame once."""

    def __init__(self, targets: np.ndarray, size: int, offset: float, fps: float):
        self.targets, self.size, self.offset, self.fps = targets, size, offset, fps
        self.out: list[np.ndarray | None] = [None] * len(targets)
        self.k = 0  # next target to fill
        self.prev = None  # last decoded frame (not converted)
        self.prev_rgb: np.ndarray | None = None
        self.count = 0
        self.last_time = -np.inf
        self._sws = VideoReformatter()

    @property
    def done(self) -> bool:
        return self.k == len(self.targets)

    def convert(self, frame) -> np.ndarray:
        w, h = _resize_dims(frame.width, frame.height, self.size)
        rgb = self._sws.reformat(frame, w, h, "rgb24", interpolation="BILINEAR").to_ndarray()
        y, x = (h - self.size) // 2, (w - self.size) // 2
        return rgb[y : y + self.size, x : x + self.size]  # (size, size, 3)

    def _prev_rgb(self) -> np.ndarray:
        if self.prev_rgb is None:
            self.prev_rgb = self.convert(self.prev)
        return self.prev_rgb

    def push(self, frame) -> None:
        t = frame.time - self.offset if frame.time is not None else self.count / self.fps
        self.count += 1
        self.last_time = t
        while not self.done and self.targets[self.k] < t:
            if self.prev is None:  # target before the first frame: use this frame
                self.prev, self.prev_rgb = frame, None
            self.out[self.k] = self._prev_rgb()
            self.k += 1
        self.prev, self.prev_rgb = frame, None

    def finish(self) -> np.ndarray:
        """Targets after the last decoded frame repeat it. Returns (T, size, size, 3) uint8."""
        while not self.done:
            self.out[self.k] = self._prev_rgb()
            self.k += 1
        return np.stack(self.out)


class _AudioCollector:
    """Resamples decoded audio to mono float32 and keeps the samples of ``[t0, t_end)``."""

    def __init__(self, rate: int, t0: float, t_end: float | None, offset: float):
        self.rate, self.t0, self.t_end, self.offset = rate, t0, t_end, offset
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.chunks: list[np.ndarray] = []
        self.first_time: float | None = None
        self.last_time = -np.inf

    @property
    def done(self) -> bool:
        return self.t_end is not None and self.last_time >= self.t_end

    def push(self, frame) -> None:
        if frame.time is not None:
            self.last_time = frame.time - self.offset
            if self.first_time is None:
                self.first_time = self.last_time
        for out in self.resampler.resample(frame):
            self.chunks.append(out.to_ndarray().reshape(-1))

    def finish(self) -> np.ndarray | None:
        for out in self.resampler.resample(None):
            self.chunks.append(out.to_ndarray().reshape(-1))
        if not self.chunks:
            return None
        audio = np.concatenate(self.chunks).astype(np.float32, copy=False)  # (S,)
        start = round((self.t0 - (self.first_time or 0.0)) * self.rate)
        if start < 0:  # audio begins after the clip start: pad silence in front
            audio, start = np.concatenate([np.zeros(-start, np.float32), audio]), 0
        stop = len(audio) if self.t_end is None else start + round((self.t_end - self.t0) * self.rate)
        return np.ascontiguousarray(audio[start:stop])


def _push_audio(audio: _AudioCollector, packet, path: str) -> _AudioCollector | None:
    """Decode one audio packet; a broken audio track is dropped (the clip keeps its frames)."""
    try:
        for frame in packet.decode():
            audio.push(frame)
    except av.FFmpegError as e:
        log.warning("%s: dropping the audio track, it cannot be decoded (%s)", path, e)
        return None
    return audio


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode_clip(
    path: str | os.PathLike,
    num_frames: int,
    size: int,
    start_s: float | None = None,
    end_s: float | None = None,
    audio_rate: int | None = 16000,
    max_audio_s: float | None = None,
    threads: int = 1,
) -> Clip:
    """Decode ``num_frames`` uniformly sampled ``size``x``size`` RGB frames and the mono audio.

    Args:
        path: the video file.
        num_frames: T, frames returned (repeated for short clips; see the module docstring).
        size: output side; shorter side resized to it, then a centre crop.
        start_s, end_s: clip window in seconds from the start of the video stream (None = whole video).
        audio_rate: audio sample rate; None skips audio.
        max_audio_s: keep at most this many seconds of audio from the clip start.
        threads: decoder threads (0 = FFmpeg's choice; >1 or 0 enables frame/slice threading).

    Raises:
        DecodeError: missing, empty, truncated, non-video or undecodable file (names the file).
    """
    path = str(path)
    container = open_container(path)
    try:
        return _decode(container, path, num_frames, size, start_s, end_s, audio_rate, max_audio_s, threads)
    except av.FFmpegError as e:
        raise DecodeError(path, f"decoding failed ({e})", "decode") from e
    finally:
        container.close()


def _decode(container, path, num_frames, size, start_s, end_s, audio_rate, max_audio_s, threads) -> Clip:
    if not container.streams.video:
        raise DecodeError(path, "no video stream", "no_video_stream")
    vs = container.streams.video[0]
    if threads != 1:
        vs.thread_type = "AUTO"
    vs.codec_context.thread_count = threads
    offset = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
    fps = float(vs.average_rate or vs.guessed_rate or 25)
    duration = _duration(container, vs)
    t0 = max(float(start_s or 0.0), 0.0)
    t1 = float(end_s) if end_s is not None and not np.isnan(end_s) else duration
    if t1 is not None and t1 <= t0:
        raise DecodeError(path, f"empty clip window [{t0}, {t1}] s", "bad_window")
    streams = [vs]
    audio = None
    if audio_rate and container.streams.audio:
        t_end = t1 if max_audio_s is None else min(t1 if t1 is not None else np.inf, t0 + max_audio_s)
        audio = _AudioCollector(audio_rate, t0, None if t_end == np.inf else t_end, offset)
        streams.append(container.streams.audio[0])
    if t0 >= SEEK_MIN_S:
        container.seek(int((t0 + offset) / vs.time_base), stream=vs, backward=True, any_frame=False)
    if t1 is None:
        return _decode_unknown_duration(container, streams, path, num_frames, size, t0, offset, fps, audio)
    picker = _FramePicker(sample_times(t0, t1, num_frames), size, offset, fps)
    for packet in container.demux(streams):
        if packet.stream.type == "video":
            if not picker.done:
                for frame in packet.decode():
                    picker.push(frame)
        elif audio is not None and not audio.done:
            audio = _push_audio(audio, packet, path)
        if picker.done and (audio is None or audio.done):
            break
    if picker.count == 0:
        raise DecodeError(path, "no video frames could be decoded", "no_frames")
    t_last = min(t1, duration or t1)
    if not picker.done and picker.last_time < t0 + MIN_COVERAGE * (t_last - t0) - 1 / fps:
        raise DecodeError(
            path,
            f"truncated: frames stop at {picker.last_time:.2f} s, the clip should reach {t_last:.2f} s",
            "truncated",
        )
    return Clip(picker.finish(), audio.finish() if audio is not None else None, audio_rate or 0)


def _decode_unknown_duration(container, streams, path, num_frames, size, t0, offset, fps, audio) -> Clip:
    """No duration metadata: keep every frame of the window unconverted, then pick T of them."""
    frames = []
    for packet in container.demux(streams):
        if packet.stream.type != "video":
            if audio is not None and not audio.done:
                audio = _push_audio(audio, packet, path)
            continue
        for frame in packet.decode():
            t = frame.time - offset if frame.time is not None else len(frames) / fps
            if t >= t0 - 0.5 / fps:
                frames.append(frame)
    if not frames:
        raise DecodeError(path, "no video frames could be decoded", "no_frames")
    picker = _FramePicker(np.zeros(0), size, offset, fps)
    chosen: dict[int, np.ndarray] = {}
    for i in sample_indices(len(frames), num_frames).tolist():
        if i not in chosen:
            chosen[i] = picker.convert(frames[i])
    out = [chosen[i] for i in sample_indices(len(frames), num_frames).tolist()]
    return Clip(np.stack(out), audio.finish() if audio is not None else None, audio.rate if audio else 0)
