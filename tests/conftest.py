"""Fixtures shared by unit and integration tests: tiny frozen encoders (CLIP vision, VideoMAE, AST) with
random weights, saved once per session with ``save_pretrained`` (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch

# widths small enough for a test, two layers so that layer selection can be checked
TINY_ENCODER = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory) -> dict[str, str]:
    """Folders of tiny random ``clip`` (32 px frames, projection 12), ``videomae`` (4 frames of 32 px)
    and ``ast`` (32 mel bins, 64 frames) models: ``{kind: folder}``."""
    from transformers import (
        ASTConfig,
        ASTModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        VideoMAEConfig,
        VideoMAEModel,
    )

    root = tmp_path_factory.mktemp("tiny_encoders")
    configs = {
        "clip": (CLIPVisionModelWithProjection, CLIPVisionConfig(image_size=32, patch_size=8, projection_dim=12)),
        "videomae": (VideoMAEModel, VideoMAEConfig(image_size=32, patch_size=16, num_frames=4, tubelet_size=2)),
        "ast": (ASTModel, ASTConfig(patch_size=16, num_mel_bins=32, max_length=64, frequency_stride=16, time_stride=16)),
    }
    folders = {}
    for kind, (model_class, cfg) in configs.items():
        cfg.update(TINY_ENCODER)
        torch.manual_seed(0)
        model_class(cfg).save_pretrained(root / kind)
        folders[kind] = str(root / kind)
    return folders
