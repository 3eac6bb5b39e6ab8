"""Tiny random pretrained encoders (CLIP vision, VideoMAE, AST) saved with ``save_pretrained`` into local
folders, the way a user's downloaded weights sit on disk; and the config overrides that point the three
features experts of a shipped config at them."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    ASTConfig,
    ASTModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    VideoMAEConfig,
    VideoMAEModel,
)

TINY = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
DIMS = {"appearance": 12, "motion": 16, "audio": 16}  # CLIP projection_dim; VideoMAE / AST hidden_size


def save_tiny_encoders(root: Path) -> dict[str, str]:
    """``{"clip"|"videomae"|"ast": folder}``: three tiny encoders saved under ``root``."""
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(**TINY, image_size=32, patch_size=8, projection_dim=DIMS["appearance"])
    ).save_pretrained(root / "clip")
    VideoMAEModel(VideoMAEConfig(**TINY, image_size=32, patch_size=16, num_frames=4)).save_pretrained(
        root / "videomae"
    )
    ASTModel(
        ASTConfig(**TINY, patch_size=16, num_mel_bins=32, max_length=64, frequency_stride=16, time_stride=16)
    ).save_pretrained(root / "ast")
    return {k: str(root / k) for k in ("clip", "videomae", "ast")}


def encoder_overrides(models: dict[str, str], *, with_dims: bool = False) -> list[str]:
    """Point appearance/motion/audio at the tiny encoders (and their widths, when ``with_dims``)."""
    e = "model.experts"
    out = [
        f"{e}.appearance.encoder=clip",
        f"{e}.appearance.pretrained_path={models['clip']}",
        f"{e}.motion.encoder=videomae",
        f"{e}.motion.pretrained_path={models['videomae']}",
        f"{e}.audio.encoder=ast",
        f"{e}.audio.pretrained_path={models['ast']}",
        f"{e}.audio.pooling=time",
    ]
    if with_dims:
        out += [f"{e}.{name}.dim={dim}" for name, dim in DIMS.items()]
    return out
