"""Text encoder presets: tiny builds offline; missing pretrained weights give a helpful error."""

from __future__ import annotations

import os

import pytest
import torch

from etva.config import TextConfig
from etva.model.text import build_text_encoder

torch.set_num_threads(1)


def test_tiny_preset_builds_offline_and_masks_pooling(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TextConfig(
        hidden_size=16, embedding_size=8, num_layers=1, num_heads=2, intermediate_size=32, max_position=12
    )
    enc = build_text_encoder(cfg, vocab_size=30).eval()
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    attn = (ids > 0).long()
    out = enc(ids, attn)
    assert out.tokens.shape == (2, 4, 16) and out.pooled.shape == (2, 16)
    assert out.mask.dtype == torch.bool and out.mask.tolist() == attn.bool().tolist()
    ref = out.tokens[1, :2].mean(0)
    torch.testing.assert_close(out.pooled[1], ref)
    assert not hasattr(enc.albert, "pooler") or enc.albert.pooler is None


def test_freeze_stops_gradients():
    cfg = TextConfig(
        hidden_size=16,
        embedding_size=8,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_position=12,
        freeze=True,
    )
    enc = build_text_encoder(cfg, vocab_size=30)
    assert not any(p.requires_grad for p in enc.parameters())


def test_missing_pretrained_path_error_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TextConfig(preset="albert-base-v2", pretrained_path=str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="pretrained_path") as e:
        build_text_encoder(cfg, vocab_size=30000)
    assert "network" in str(e.value)


def test_missing_hf_cache_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = TextConfig(preset="albert-base-v2")
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        build_text_encoder(cfg, vocab_size=30000)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_pretrained_path_round_trip(tmp_path):
    """A saved local model dir loads through the albert-base-v2 preset (no network)."""
    tiny = TextConfig(
        hidden_size=16, embedding_size=8, num_layers=1, num_heads=2, intermediate_size=32, max_position=12
    )
    enc = build_text_encoder(tiny, vocab_size=30)
    enc.albert.save_pretrained(tmp_path)
    loaded = build_text_encoder(TextConfig(preset="albert-base-v2", pretrained_path=str(tmp_path)), 30)
    for (n, p), (_, q) in zip(enc.albert.named_parameters(), loaded.albert.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)
    with pytest.raises(ValueError, match="vocab_size"):
        build_text_encoder(TextConfig(preset="albert-base-v2", pretrained_path=str(tmp_path)), 99)
    with pytest.raises(ValueError, match="model.text.preset"):
        build_text_encoder(TextConfig(preset="bert"), 30)
