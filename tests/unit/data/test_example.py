"""The per-row transform: one record -> model inputs; a batch with bad clips -> ok/error columns."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from etva.config import DataConfig
from etva.data.decode import DecodeError
from etva.data.example import decode_batch, make_video_example
from etva.data.records import ClipRecord

CFG = DataConfig(num_frames=4, frame_size=24, num_mel_bins=16, max_audio_s=2.0, audio_rate=16000)


def test_make_video_example_shapes(clip_dir):
    rec = ClipRecord("tone", str(clip_dir / "tone.mp4"), ["a tone"], "train")
    ex = make_video_example(rec, CFG)
    assert ex["frames"].shape == (4, 24, 24, 3) and ex["frames"].dtype == np.uint8
    assert ex["audio_mel"].shape == (200, 16) and ex["audio_mel"].dtype == np.float32
    assert ex["audio_mask"].sum() == 100  # 1 s of audio in a 2 s window
    silent = make_video_example(replace(rec, video_path=str(clip_dir / "silent.mp4")), CFG)
    assert not silent["audio_mask"].any() and set(silent) == {"frames", "audio_mel", "audio_mask"}
    with pytest.raises(DecodeError):
        make_video_example(replace(rec, video_path=str(clip_dir / "empty.mp4")), CFG)


def test_decode_batch_marks_failures_and_keeps_shapes(clip_dir):
    batch = {
        "video_path": np.array(
            [str(clip_dir / n) for n in ("tone.mp4", "missing.mp4", "notes.mp4", "long.mp4")]
        ),
        "start_s": np.array([np.nan, np.nan, np.nan, 2.0]),
        "end_s": np.array([np.nan, np.nan, np.nan, 3.0]),
        "video_index": np.array([10, 11, 12, 13]),
    }
    out = decode_batch(batch, CFG)
    assert out["ok"].tolist() == [True, False, False, True]
    assert out["error"][0] == "" and "missing.mp4" in out["error"][1] and "DecodeError" in out["error"][2]
    assert out["frames"].shape == (4, 4, 24, 24, 3) and out["audio_mask"].shape == (4, 200)
    assert not out["frames"][1].any() and not out["audio_mask"][2].any()
    assert out["audio_mask"][3].sum() == 100  # the [2, 3] s window of long.mp4
    np.testing.assert_array_equal(out["video_index"], [10, 11, 12, 13])
    assert "video_path" not in out and out["end_s"][3] == 3.0  # numeric columns pass through
    single = make_video_example(ClipRecord("t", batch["video_path"][0], [], ""), CFG)
    np.testing.assert_array_equal(out["frames"][0], single["frames"])
