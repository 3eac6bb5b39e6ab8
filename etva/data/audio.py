"""Log-mel features of a clip's audio, padded to a fixed number of frames, with a mask.

The same features as transformers' ``audio_utils`` (``window_function``, ``mel_filter_bank``,
``spectrogram``; a test holds them equal), computed here with numpy alone: importing transformers costs a
decode process several seconds of start-up and the decode needs nothing else from it. 25 ms Hann window, 10 ms hop (so ``A = round(100 * max_audio_s)`` frames), power spectrum, Slaney mel
filters from 0 Hz to Nyquist, ``log10`` with a floor of 1e-10, then Whisper's normalisation: values are
clamped to at most 8 below the clip's maximum and mapped by ``(x + 4) / 4`` (roughly [-1.5, 1.5]).
Frame ``i`` is centred at ``i * hop``; frames centred inside the audio are valid (mask True), the rest
of the ``A`` frames are zero padding (mask False). No audio -> all zeros, all-False mask.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["HOP_S", "WIN_S", "num_audio_frames", "log_mel"]

HOP_S = 0.010
WIN_S = 0.025


def num_audio_frames(max_audio_s: float) -> int:
    """A: the fixed number of mel frames for ``max_audio_s`` seconds (10 ms hop)."""
    return max(1, round(max_audio_s / HOP_S))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    mel = 3.0 * hz / 200.0
    log = hz >= 1000.0
    mel[log] = 15.0 + np.log(hz[log] / 1000.0) * (27.0 / np.log(6.4))
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    hz = 200.0 * mel / 3.0
    log = mel >= 15.0
    hz[log] = 1000.0 * np.exp(np.log(6.4) * (mel[log] - 15.0) / 27.0)
    return hz


def _slaney_filters(num_bins: int, num_mel: int, rate: int) -> np.ndarray:
    """(num_bins, num_mel) triangular Slaney mel filters from 0 Hz to Nyquist, area-normalised."""
    edges = _mel_to_hz(np.linspace(*_hz_to_mel(np.array([0.0, rate / 2])), num_mel + 2))  # (M + 2,)
    slopes = edges[None, :] - np.linspace(0, rate // 2, num_bins)[:, None]  # (F, M + 2)
    diff = np.diff(edges)
    tri = np.maximum(0.0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))  # (F, M)
    return tri * (2.0 / (edges[2:] - edges[:num_mel]))[None, :]


@lru_cache(maxsize=8)
def _bank(rate: int, num_mel_bins: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    win = round(WIN_S * rate)
    hop = round(HOP_S * rate)
    n_fft = 1 << (win - 1).bit_length()  # next power of two
    window = np.zeros(n_fft)  # periodic Hann of ``win`` samples, centred in the FFT frame
    offset = (n_fft - win) // 2
    window[offset : offset + win] = np.hanning(win + 1)[:-1]
    filters = _slaney_filters(n_fft // 2 + 1, num_mel_bins, rate)  # (n_fft // 2 + 1, M)
    return window, filters, win, hop, n_fft


def _log_mel_spectrogram(wave: np.ndarray, window: np.ndarray, filters: np.ndarray, hop: int) -> np.ndarray:
    """(M, frames) log10 mel power of centred, reflect-padded frames (one FFT frame per ``hop``)."""
    n_fft = len(window)
    padded = np.pad(wave, (n_fft // 2, n_fft // 2), mode="reflect").astype(np.float64)
    num = 1 + (padded.size - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:num]  # (frames, n_fft)
    spec = np.fft.rfft(frames * window, axis=1).astype(np.complex64)  # (frames, F)
    power = np.abs(spec, dtype=np.float64) ** 2.0
    return np.log10(np.maximum(1e-10, filters.T @ power.T)).astype(np.float32)  # (M, frames)


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
    spec = _log_mel_spectrogram(wave, window, filters, hop)  # (M, frames)
    spec = spec[:, :valid].T  # (valid, M)
    spec = np.maximum(spec, spec.max() - 8.0)
    mel[:valid] = (spec + 4.0) / 4.0
    mask[:valid] = True
    return mel, mask
