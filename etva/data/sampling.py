"""Evenly spaced sampling of a sequence (frames of a clip, rows of a feature array), shared by the clip
decoder, the feature readers and the frozen video encoders."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_indices"]


def sample_indices(length: int, num: int) -> np.ndarray:
    """``num`` indices into ``range(length)`` at the centres of ``num`` equal segments (repeats when
    ``length < num``): ``floor((i + 0.5) * length / num)``."""
    return np.floor((np.arange(num) + 0.5) * length / num).astype(np.int64)
