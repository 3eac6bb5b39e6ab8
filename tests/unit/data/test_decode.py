"""Clip decoding: sampling rule vs a naive reference, windows, audio, padding, and each bad file kind."""

from __future__ import annotations

import av
import numpy as np
import pytest

from etva.data import decode as decode_mod
from etva.data.decode import DecodeError, decode_clip, sample_times


def frame_ids(frames: np.ndarray) -> list[int]:
    """Recover the source frame index from the colour code written by ``write_video``."""
    centre = frames[:, frames.shape[1] // 2, -2].astype(float)  # (T, 3)
    return [round((r - 10) / 25) + 10 * round((b - 10) / 25) for r, _, b in centre]


def naive_decode(path, num_frames, size, start_s=None, end_s=None):
    """Reference: decode and convert every frame to full-size RGB, then pick by the same time rule."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        duration = float(vs.duration * vs.time_base)
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    t0, t1 = start_s or 0.0, end_s or duration
    out = []
    for t in sample_times(t0, t1, num_frames):
        before = [img for ft, img in frames if ft <= t]
        img = before[-1] if before else frames[0][1]
        h, w = img.shape[:2]
        scale = size / min(w, h)
        rw, rh = max(size, round(w * scale)), max(size, round(h * scale))
        small = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(
            rw, rh, "rgb24", interpolation="BILINEAR"
        )
        arr = small.to_ndarray()
        y, x = (rh - size) // 2, (rw - size) // 2
        out.append(arr[y : y + size, x : x + size])
    return np.stack(out)


def test_frames_shape_and_uniform_sampling(clip_dir):
    clip = decode_clip(clip_dir / "tone.mp4", num_frames=5, size=32)
    assert clip.frames.shape == (5, 32, 32, 3) and clip.frames.dtype == np.uint8
    # 15 frames at 15 fps; segment centres 0.1, 0.3, ... 0.9 s -> frames 1, 4, 7, 10, 13
    assert frame_ids(clip.frames) == [1, 4, 7, 10, 13]


def test_matches_naive_reference(clip_dir):
    for name, kwargs in [("tone.mp4", {}), ("long.mp4", {"start_s": 2.3, "end_s": 4.9})]:
        fast = decode_clip(clip_dir / name, 7, 40, **kwargs).frames
        ref = naive_decode(clip_dir / name, 7, 40, **kwargs)
        # the YUV->RGB path differs (one step vs two), so allow a small difference
        assert np.abs(fast.astype(int) - ref.astype(int)).mean() < 2.0
        assert frame_ids(fast) == frame_ids(ref)


def test_window_with_seek_selects_the_right_frames(clip_dir):
    clip = decode_clip(clip_dir / "long.mp4", num_frames=4, size=32, start_s=4.0, end_s=5.0)
    # window [4, 5) s at 15 fps = frames 60..74; centres 4.125, 4.375, 4.625, 4.875 s
    assert frame_ids(clip.frames) == [61, 65, 69, 73]


def test_only_sampled_frames_are_converted(clip_dir, monkeypatch):
    calls = []
    original = decode_mod._FramePicker.convert

    def counting(self, frame):
        calls.append(frame.time)
        return original(self, frame)

    monkeypatch.setattr(decode_mod._FramePicker, "convert", counting)
    decode_clip(clip_dir / "long.mp4", num_frames=6, size=32)
    assert len(calls) == 6  # 90 frames decoded, 6 converted
    calls.clear()
    decode_clip(clip_dir / "short.mp4", num_frames=8, size=32)
    assert len(calls) == 3  # a frame shared by several targets is converted once


def test_short_clip_repeats_frames_deterministically(clip_dir):
    # 3 frames (0.2 s): targets 0.0125 .. 0.1875 s -> frames on screen 0,0,0,1,1,2,2,2
    a = decode_clip(clip_dir / "short.mp4", num_frames=8, size=16)
    b = decode_clip(clip_dir / "short.mp4", num_frames=8, size=16)
    assert frame_ids(a.frames) == [0, 0, 0, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(a.frames, b.frames)


def test_end_past_the_stream_repeats_the_last_frame(clip_dir):
    clip = decode_clip(clip_dir / "tone.mp4", num_frames=4, size=16, end_s=1.2)
    assert frame_ids(clip.frames)[-1] == 14


def test_unknown_duration_falls_back_to_index_sampling(clip_dir, monkeypatch):
    monkeypatch.setattr(decode_mod, "_duration", lambda container, stream: None)
    clip = decode_clip(clip_dir / "tone.mp4", num_frames=5, size=16)
    assert frame_ids(clip.frames) == [1, 4, 7, 10, 13]


def test_audio_is_mono_float_trimmed_to_the_clip(clip_dir):
    clip = decode_clip(clip_dir / "tone.mp4", 4, 16, audio_rate=16000)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    assert len(clip.audio) == 16000  # AAC decodes 16384 samples (priming/padding) for 1 s
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spectrum) * 16000 / len(clip.audio) - 440) < 5
    assert 0.4 < np.abs(clip.audio[2000:-2000]).max() < 0.6


def test_audio_window_rate_and_max_length(clip_dir):
    clip = decode_clip(clip_dir / "long.mp4", 4, 16, start_s=2.0, end_s=5.0, audio_rate=8000, max_audio_s=1.5)
    assert len(clip.audio) == 12000
    spectrum = np.abs(np.fft.rfft(clip.audio))
    assert abs(np.argmax(spectrum) * 8000 / len(clip.audio) - 1000) < 5
    assert decode_clip(clip_dir / "tone.mp4", 4, 16, audio_rate=None).audio is None


def test_no_audio_track_gives_none(clip_dir):
    assert decode_clip(clip_dir / "silent.mp4", 4, 16).audio is None


@pytest.mark.parametrize(
    "name, kind",
    [
        ("missing.mp4", "missing"),
        ("empty.mp4", "empty"),
        ("truncated.mp4", "corrupt"),
        ("truncated_faststart.mp4", "truncated"),
        ("notes.mp4", "not_media"),
        ("audio_only.mp4", "no_video_stream"),
    ],
)
def test_bad_files_raise_a_specific_decode_error(clip_dir, name, kind):
    with pytest.raises(DecodeError) as info:
        decode_clip(clip_dir / name, 4, 16)
    assert info.value.kind == kind
    assert name in str(info.value) and info.value.path == str(clip_dir / name)


def test_bad_window_and_pickling(clip_dir):
    import pickle

    with pytest.raises(DecodeError) as info:
        decode_clip(clip_dir / "tone.mp4", 4, 16, start_s=0.8, end_s=0.5)
    assert info.value.kind == "bad_window"
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.path, again.kind, str(again)) == (info.value.path, "bad_window", str(info.value))


def test_seek_skips_decoding_before_the_window(clip_dir, monkeypatch):
    pushed = []
    original = decode_mod._FramePicker.push

    def counting(self, frame):
        pushed.append(frame.time)
        return original(self, frame)

    monkeypatch.setattr(decode_mod._FramePicker, "push", counting)
    decode_clip(clip_dir / "long.mp4", num_frames=4, size=16, start_s=4.0, end_s=5.0)
    # keyframes every 15 frames (1 s): the seek lands on frame 60; decoding stops after frame 74
    assert min(pushed) >= 3.9 and len(pushed) <= 20
