"""The interface every video expert implements (built-in, pre-extracted features or a frozen
pretrained encoder): below both :mod:`etva.model.experts` and :mod:`etva.model.pretrained`."""

from __future__ import annotations

from torch import nn

__all__ = ["Expert"]


class Expert(nn.Module):
    """Base class: ``forward(batch) -> (tokens (B, N, out_dim), mask (B, N) bool)``."""

    out_dim: int
