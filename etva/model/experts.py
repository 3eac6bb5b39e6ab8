"""Video experts: each maps a batch to a token sequence ``(B, N_e, D_e)`` and a mask ``(B, N_e)``.

Built in (trainable from raw clips): ``appearance`` (per-frame 2D CNN), ``motion`` (2D CNN over
pairs of consecutive frames and their difference), ``audio`` (log-mel -> strided 2D conv, pooled to
a few frequency bands, one token per downsampled time step). ``features`` reads pre-extracted
features from the batch keys ``feat/<name>`` and ``feat_mask/<name>``; ``pretrained`` runs a frozen
``transformers`` encoder inline (:mod:`etva.model.pretrained`).

An expert whose mask is all False for a clip is *unavailable* for that clip (e.g. audio of a silent
clip); the global alignment then renormalises the mixture over the other experts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etva.config import ExpertConfig
from etva.model.expert_base import Expert
from etva.model.pretrained import build_pretrained_expert

__all__ = ["EXPERT_BUILDERS", "build_expert", "Expert"]

_PIXEL_MEAN = 0.45
_PIXEL_STD = 0.25


class _RingPad(nn.Module):
    """Pads (N, C, H, W) by one: H (time) circularly, W with zeros. Before an unpadded conv, the conv
    commutes with a rotation of H by any multiple of its stride."""

    def forward(self, x: Tensor) -> Tensor:
        x = torch.cat([x[:, :, -1:], x, x[:, :, :1]], dim=2)
        return F.pad(x, (1, 1))


def _conv_stack(in_ch: int, width: int, layers: int = 3, ring: bool = False) -> nn.Sequential:
    """Strided 3x3 conv blocks: (N, in_ch, H, W) -> (N, width, H/2^layers, W/2^layers); ``ring``: H is
    padded circularly (time as a ring, :class:`_RingPad`), else every side with zeros."""
    mods: list[nn.Module] = []
    ch = in_ch
    for i in range(layers):
        out = width if i == layers - 1 else max(width // 2, 8)
        conv = nn.Conv2d(ch, out, 3, stride=2, padding=0 if ring else 1)
        mods += [_RingPad(), conv] if ring else [conv]
        mods += [nn.GroupNorm(1, out), nn.GELU()]
        ch = out
    return nn.Sequential(*mods)


def _frames_to_float(frames: Tensor) -> Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W), normalised."""
    if frames.dim() != 5 or frames.shape[-1] != 3:
        raise ValueError(f"batch['frames']: expected (B, T, H, W, 3), got {tuple(frames.shape)}")
    x = frames.permute(0, 1, 4, 2, 3).float() / 255.0
    return (x - _PIXEL_MEAN) / _PIXEL_STD


class _MeanMaxHead(nn.Module):
    """(N, C, h, w) -> (N, g*g, C): mean and max over each cell of a ``grid`` x ``grid`` split of the
    map, concatenated and mixed back to C, plus a learnt embedding of the cell (``grid=1``: one token for
    the whole frame, no cell embedding).

    Region tokens (``grid > 1``) keep what is where: one pooled vector per frame holds "red" and
    "circle" but not which object is red (a channel's maximum over the frame forgets its place), while a
    cell's features are those of what it shows, so the fine-grained alignment can match "the red
    circle" to the cell that shows it (docs/study.md)."""

    def __init__(self, width: int, grid: int = 1) -> None:
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid: expected >= 1 cells per side, got {grid}")
        self.grid = grid
        self.mix = nn.Linear(2 * width, width)
        self.cell = nn.Parameter(torch.zeros(grid * grid, width)) if grid > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        g = self.grid
        pooled = [F.adaptive_avg_pool2d(x, g), F.adaptive_max_pool2d(x, g)]  # 2 x (N, C, g, g)
        y = self.mix(torch.cat(pooled, dim=1).flatten(2).transpose(1, 2))  # (N, g*g, C)
        return y if self.cell is None else y + self.cell


class AppearanceExpert(Expert):
    """Per-frame 2D CNN: frames (B, T, H, W, 3) uint8 -> (B, T * grid^2, width), frame-major (a frame's
    region tokens together, frames in time order)."""

    def __init__(self, width: int, grid: int = 1) -> None:
        super().__init__()
        self.out_dim = width
        self.cnn = _conv_stack(3, width)
        self.head = _MeanMaxHead(width, grid)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = _frames_to_float(batch["frames"])  # (B, T, 3, H, W)
        b = x.shape[0]
        y = self.head(self.cnn(x.flatten(0, 1))).reshape(b, -1, self.out_dim)  # (B, T * g^2, C)
        return y, torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)


class MotionExpert(Expert):
    """2D CNN over consecutive frame pairs [frame_t, frame_{t+1} - frame_t]: -> (B, (T-1) * grid^2, width).

    A clip with a single frame yields one token computed on a zero difference. ``ring``: the pair (last
    frame, first frame) is added, T pairs in all, so a clip rotated in time gives its tokens rotated.
    """

    def __init__(self, width: int, grid: int = 1, ring: bool = False) -> None:
        super().__init__()
        self.out_dim = width
        self.ring = ring
        self.cnn = _conv_stack(6, width)
        self.head = _MeanMaxHead(width, grid)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = _frames_to_float(batch["frames"])  # (B, T, 3, H, W)
        if x.shape[1] == 1:
            x = torch.cat([x, x], dim=1)
        b = x.shape[0]
        nxt = torch.roll(x, -1, dims=1) if self.ring else x[:, 1:]  # ring: frame T-1 pairs with frame 0
        cur = x if self.ring else x[:, :-1]
        pairs = torch.cat([cur, nxt - cur], dim=2)  # (B, T-1 or T, 6, H, W)
        y = self.head(self.cnn(pairs.flatten(0, 1))).reshape(b, -1, self.out_dim)  # (B, (T-1) * g^2, C)
        return y, torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)


class AudioExpert(Expert):
    """log-mel (B, A, M) -> (B, A', width) with A' = A / 8; independent of the mel bin count M.

    Three stride-2 conv blocks over (time, frequency), then adaptive pooling to ``bands``
    frequency bands (keeps coarse pitch information), flattened and projected to ``width``.
    ``ring``: the time axis is padded circularly, so log-mel rotated in time by a multiple of 8 frames
    gives its tokens rotated. The mask is ``audio_mask`` max-pooled with the same strides: a clip with no audio keeps an
    all-False mask (the expert is unavailable for it).
    """

    bands = 4

    def __init__(self, width: int, ring: bool = False) -> None:
        super().__init__()
        self.out_dim = width
        self.cnn = _conv_stack(1, width, ring=ring)
        self.proj = nn.Linear(width * self.bands, width)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        mel, mask = batch["audio_mel"], batch["audio_mask"]
        if mel.dim() != 3 or mask.shape != mel.shape[:2]:
            raise ValueError(
                f"batch['audio_mel'] (B, A, M) / batch['audio_mask'] (B, A): got "
                f"{tuple(mel.shape)} / {tuple(mask.shape)}"
            )
        x = (mel.float() * mask.unsqueeze(-1)).unsqueeze(1)  # (B, 1, A, M), padding zeroed
        y = self.cnn(x)  # (B, C, A', M')
        y = F.adaptive_avg_pool2d(y, (y.shape[2], self.bands))  # (B, C, A', bands)
        y = self.proj(y.permute(0, 2, 1, 3).flatten(2))  # (B, A', C)
        m = mask.float().unsqueeze(1)  # (B, 1, A)
        for _ in range(3):
            m = F.max_pool1d(m, kernel_size=3, stride=2, padding=1)
        return y, m.squeeze(1)[:, : y.shape[1]] > 0.5


class FeatureExpert(Expert):
    """Pre-extracted features ``batch['feat/<name>']`` (B, N, dim) -> LayerNorm, ``out_dim = dim``.

    No bottleneck: the model's per-expert projection maps ``dim`` straight to the model width d.
    """

    def __init__(self, name: str, dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(
                f"model.experts.{name}.dim: a features expert needs its input dim (> 0), got {dim}"
            )
        self.name, self.dim, self.out_dim = name, dim, dim
        self.norm = nn.LayerNorm(dim)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        key = f"feat/{self.name}"
        if key not in batch:
            raise KeyError(f"features expert '{self.name}': batch has no key '{key}'")
        x = batch[key].float()
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(
                f"batch['{key}']: expected (B, N, {self.dim}) (model.experts.{self.name}.dim), "
                f"got {tuple(x.shape)}"
            )
        mask = batch.get(f"feat_mask/{self.name}")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.norm(x), mask.bool()


EXPERT_BUILDERS: dict[str, Callable[[str, ExpertConfig], Expert]] = {
    "appearance": lambda name, cfg: AppearanceExpert(cfg.width, cfg.grid),
    "motion": lambda name, cfg: MotionExpert(cfg.width, cfg.grid, cfg.ring),
    "audio": lambda name, cfg: AudioExpert(cfg.width, cfg.ring),
    "features": lambda name, cfg: FeatureExpert(name, cfg.dim),
    "pretrained": build_pretrained_expert,
}


def build_expert(name: str, cfg: ExpertConfig) -> Expert:
    """Build the expert ``name`` of kind ``cfg.kind``."""
    if cfg.kind not in EXPERT_BUILDERS:
        raise ValueError(
            f"model.experts.{name}.kind: unknown '{cfg.kind}', expected one of {sorted(EXPERT_BUILDERS)}"
        )
    if cfg.ring and cfg.kind not in ("motion", "audio"):
        raise ValueError(
            f"model.experts.{name}.ring: only the built-in motion and audio experts mix time steps, got "
            f"kind '{cfg.kind}'"
        )
    return EXPERT_BUILDERS[cfg.kind](name, cfg)
