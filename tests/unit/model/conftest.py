"""Fixtures for model tests: a tiny ModelConfig factory and a random batch factory."""

from __future__ import annotations

import pytest
import torch

from etva.config import ExpertConfig, ModelConfig, TextConfig

torch.set_num_threads(1)

VOCAB = 50


def tiny_model_config(**overrides) -> ModelConfig:
    text = TextConfig(
        hidden_size=32,
        embedding_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=64,
        max_position=16,
    )
    experts = {
        "appearance": ExpertConfig(kind="appearance", width=16),
        "motion": ExpertConfig(kind="motion", width=16),
        "audio": ExpertConfig(kind="audio", width=16),
    }
    cfg = ModelConfig(d=32, text=text, experts=experts, fusion_heads=2, num_clusters=4, dropout=0.0)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def random_batch(b: int = 3, t: int = 4, size: int = 16, a: int = 24, mel: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(2, 9, (b,), generator=g)
    attn = (torch.arange(8)[None] < lens[:, None]).long()
    return {
        "frames": torch.randint(0, 256, (b, t, size, size, 3), generator=g, dtype=torch.uint8),
        "audio_mel": torch.randn(b, a, mel, generator=g),
        "audio_mask": torch.ones(b, a, dtype=torch.bool),
        "input_ids": torch.randint(1, VOCAB, (b, 8), generator=g) * attn,
        "attention_mask": attn,
        "video_index": torch.arange(b),
        "caption_index": torch.arange(b),
    }


@pytest.fixture
def make_cfg():
    return tiny_model_config


@pytest.fixture
def make_batch():
    return random_batch
