"""Log-mel features of a clip's audio, padded to a fixed number of frames, with a mask.

Uses the audio utilities transformers ships (``mel_filter_bank``, ``spectrogram``, ``window_function``):
25 ms Hann window, 10 ms hop (so ``A = round(100 * max_audio_s)`` frames), power spectrum, Slaney mel
filters from 0 Hz to Nyquist, ``log10`` with a floor of 1e-10, then Whisper's normalisation: values are
clamped to at most 8 below the clip's maximum and mapped by ``(x + 4) / 4`` (roughly [-1.5, 1.5]).
Frame ``i`` is centred at ``i * hop``; frames centred inside the audio are valid (mask True), the rest
of the ``A`` frames are zero padding (mask False). No audio -> all zeros, all-False mask.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

__all__ = ["HOP_S", "WIN_S", "num_audio_frames", "log_mel"]

HOP_S = 0.010
WIN_S = 0.025


def num_audio_frames(max_audio_s: float) -> int:
    """A: the fixed number of mel frames for ``max_audio_s`` seconds (10 ms hop)."""
    return max(1, round(max_audio_s / HOP_S))


@lru_cache(maxsize=8)
def _bank(rate: int, num_mel_bins: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    win = round(WIN_S * rate)
    hop = round(HOP_S * rate)
    n_fft = 1 << (win - 1).bit_length()  # next power of two
    window = window_function(win, "hann", frame_length=n_fft)
    filters = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=num_mel_bins,
        min_frequency=0.0,
        max_frequency=rate / 2,
        sampling_rate=rate,
        norm="slaney",
        mel_scale="slaney",
    )  # (n_fft // 2 + 1, M)
    return window, filters, win, hop, n_fft


def log_mel(
    audio: np.ndarray | None, rate: int, num_mel_bins: int, max_audio_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel frames of ``audio`` (mono float, ``rate`` Hz), first ``max_audio_s`` seconds.

    Returns:
        mel: float32 (A, M), A = :func:`num_audio_frames` (max_audio_s), M = num_mel_bins.
        mask: bool (A,), False on padding; all False when ``audio`` is None or empty.
    """
    num = num_audio_frames(max_audio_s)
    mel = np.zeros((num, num_mel_bins), np.float32)  # (A, M)
    mask = np.zeros((num,), bool)  # (A,)
    if audio is None or len(audio) == 0:
        return mel, mask
    window, filters, win, hop, n_fft = _bank(rate, num_mel_bins)
    wave = np.asarray(audio, np.float32).reshape(-1)[: round(max_audio_s * rate)]
    valid = min(num, -(-len(wave) // hop))  # frames centred inside the audio: ceil(S / hop)
    if len(wave) < n_fft // 2 + 1:  # reflect padding needs a little signal
        wave = np.pad(wave, (0, n_fft // 2 + 1 - len(wave)))
    spec = spectrogram(
        wave,
        window,
        frame_length=n_fft,
        hop_length=hop,
        power=2.0,
        mel_filters=filters,
        mel_floor=1e-10,
        log_mel="log10",
    )  # (M, frames)
    spec = spec[:, :valid].T  # (valid, M)
    spec = np.maximum(spec, spec.max() - 8.0)
    mel[:valid] = (spec + 4.0) / 4.0
    mask[:valid] = True
    return mel, mask
