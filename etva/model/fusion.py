"""Video fusion: expert tokens -> d + expert-type and temporal embeddings -> small transformer (``layers=0``:
no transformer and no temporal embedding, the tokens pass through a LayerNorm)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["sinusoidal_positions", "VideoFusion"]


def sinusoidal_positions(n: int, d: int, device: torch.device | None = None) -> Tensor:
    """Fixed temporal embedding (n, d) (any length; no table to outgrow)."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]  # (n, 1)
    half = d // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=device) / max(half, 1))
    ang = pos * freq[None]  # (n, half)
    out = torch.zeros(n, d, device=device)
    out[:, 0 : 2 * half : 2] = ang.sin()
    out[:, 1 : 2 * half : 2] = ang.cos()
    return out


class VideoFusion(nn.Module):
    """Pre-norm TransformerEncoder over the concatenated expert tokens, with padding masks.

    Rows whose tokens are ALL masked (every expert unavailable) would give NaN in attention; for
    those rows the padding mask is lifted for the computation and their outputs zeroed.
    """

    def __init__(self, d: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.layers = layers
        if layers > 0:
            layer = nn.TransformerEncoderLayer(
                d, heads, dim_feedforward=4 * d, dropout=dropout, batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)

    def positions(self, n: int, d: int, device: torch.device | None = None) -> Tensor:
        """The temporal embedding added to an expert's n tokens: sinusoidal for a transformer, zeros with
        ``layers == 0`` (no token mixing: the tokens pass through to the pooling, which then cannot tell
        one order of the same tokens from another; the blind control of docs/study.md)."""
        if self.layers == 0:
            return torch.zeros(n, d, device=device)
        return sinusoidal_positions(n, d, device)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (B, N, d), mask (B, N) bool (True = real) -> (B, N, d); masked positions zeroed."""
        if self.layers > 0:
            empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
            pad = ~mask & ~empty  # (B, N): fully-masked rows attend to everything (then zeroed)
            x = self.encoder(x, src_key_padding_mask=pad)
        return self.norm(x) * mask.unsqueeze(-1).to(x.dtype)
