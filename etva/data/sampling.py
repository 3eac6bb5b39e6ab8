"""Evenly spaced sampling of a sequence (frames of a clip, rows of a feature array), shared by the clip
decoder, the feature readers and the frozen video encoders."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_indices"]


def sample_indices(length, num: int) -> np.ndarray:
    """``num`` indices into ``range(length)`` at the centres of ``num`` equal segments (repeats when
    ``length < num``): ``floor((i + 0.5) * length / num)``. ``length`` may be an array of lengths (the
    feature store's batched gather): then one row of ``num`` indices per length."""
    return np.floor((np.arange(num) + 0.5) * np.asarray(length)[..., None] / num).astype(np.int64)
