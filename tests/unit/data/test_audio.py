"""Log-mel features: fixed shape, mask, padding, and that a tone lands in the right mel bin."""

from __future__ import annotations

import numpy as np
from transformers.audio_utils import mel_filter_bank

from etva.data.audio import log_mel, num_audio_frames


def tone(hz: float, seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_fixed_shape_and_mask_for_short_audio():
    mel, mask = log_mel(tone(440, 1.0), 16000, 40, max_audio_s=4.0)
    assert num_audio_frames(4.0) == 400
    assert mel.shape == (400, 40) and mel.dtype == np.float32
    assert mask.shape == (400,) and mask.dtype == bool
    assert mask[:100].all() and not mask[100:].any()  # ceil(16000 / 160) valid frames
    assert not mel[100:].any()  # padding is zero
    assert np.isfinite(mel).all()


def test_long_audio_is_cut_to_max_audio_s():
    mel, mask = log_mel(tone(440, 3.0), 16000, 20, max_audio_s=2.0)
    assert mel.shape == (200, 20) and mask.all()


def test_no_audio_gives_all_false_mask():
    for audio in (None, np.zeros(0, np.float32)):
        mel, mask = log_mel(audio, 16000, 40, max_audio_s=2.0)
        assert mel.shape == (200, 40) and not mel.any() and not mask.any()


def test_tone_peaks_in_the_mel_bin_of_its_frequency():
    bank = mel_filter_bank(257, 40, 0.0, 8000.0, 16000, norm="slaney", mel_scale="slaney")  # (257, M)
    for hz in (440.0, 2000.0):
        mel, mask = log_mel(tone(hz, 1.0), 16000, 40, max_audio_s=1.0)
        expected = int(np.argmax(bank[round(hz * 512 / 16000)]))
        assert int(np.argmax(mel[mask].mean(0))) == expected


def test_other_rate_and_partial_frames():
    mel, mask = log_mel(tone(300, 0.505, rate=8000), 8000, 16, max_audio_s=1.0)
    assert mel.shape == (100, 16) and mask.sum() == 51  # ceil(4040 / 80)
    tiny_mel, tiny_mask = log_mel(np.ones(10, np.float32), 16000, 16, max_audio_s=1.0)
    assert tiny_mask.sum() == 1 and np.isfinite(tiny_mel).all()


def test_equal_to_transformers_audio_utils():
    """The numpy log-mel (no transformers import in decode processes) is transformers' own, exactly."""
    from transformers.audio_utils import spectrogram, window_function

    from etva.data.audio import _bank, _log_mel_spectrogram

    rng = np.random.default_rng(0)
    for rate, bins, seconds in [(16000, 40, 4.0), (22050, 64, 0.3), (8000, 8, 0.02)]:
        window, filters, win, hop, n_fft = _bank(rate, bins)
        ref_window = window_function(win, "hann", frame_length=n_fft)
        ref_filters = mel_filter_bank(
            num_frequency_bins=n_fft // 2 + 1, num_mel_filters=bins, min_frequency=0.0,
            max_frequency=rate / 2, sampling_rate=rate, norm="slaney", mel_scale="slaney",
        )  # fmt: skip
        np.testing.assert_array_equal(window, ref_window)
        np.testing.assert_allclose(filters, ref_filters, rtol=1e-12, atol=1e-15)
        wave = rng.standard_normal(int(rate * seconds)).astype(np.float32)
        ref = spectrogram(
            wave, ref_window, frame_length=n_fft, hop_length=hop, power=2.0,
            mel_filters=ref_filters, mel_floor=1e-10, log_mel="log10",
        )  # fmt: skip
        np.testing.assert_allclose(_log_mel_spectrogram(wave, window, filters, hop), ref, rtol=1e-6, atol=1e-6)


def test_decode_processes_do_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, ray_jobs.data; print('transformers' in sys.modules)"  # what decode tasks load
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
