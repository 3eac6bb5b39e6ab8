"""Frozen pretrained encoders: tiny random models (the ``tiny_encoders`` fixture) loaded back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from etva.config import ExpertConfig
from etva.model import build_model
from etva.model.experts import build_expert
from etva.model.pretrained import load_encoder, weight_hashes

from .conftest import VOCAB, tiny_model_config

# the encoders are the session fixture ``tiny_encoders`` (tests/conftest.py)

def _frames(b=2, t=6, s=40, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 255, (b, t, s, s, 3), dtype=np.uint8))


@pytest.mark.parametrize("pooling,dim", [("proj", 12), ("cls", 16), ("mean", 16)])
def test_clip_per_frame_embeddings(tiny_encoders, pooling, dim):
    enc = load_encoder("clip", tiny_encoders["clip"], pooling=pooling)
    frames = _frames()
    y = enc(frames)
    assert y.shape == (2, 6, dim) and enc.dim == dim
    # per frame: encoding one frame alone gives the same embedding
    torch.testing.assert_close(enc(frames[:1, 2:3])[0, 0], y[0, 2], atol=1e-5, rtol=1e-4)
    assert not any(p.requires_grad for p in enc.parameters())


def test_clip_weights_round_trip(tiny_encoders):
    """The loaded weights are the saved ones (not a fresh random init)."""
    enc = load_encoder("clip", tiny_encoders["clip"])
    ref = CLIPVisionModelWithProjection.from_pretrained(tiny_encoders["clip"])
    for (name, a), (_, b) in zip(enc.model.state_dict().items(), ref.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)


def test_clip_layer_selection(tiny_encoders):
    enc_last = load_encoder("clip", tiny_encoders["clip"], pooling="mean")
    enc_l1 = load_encoder("clip", tiny_encoders["clip"], layer=1, pooling="mean")
    frames = _frames()
    assert not torch.allclose(enc_last(frames), enc_l1(frames))
    with pytest.raises(ValueError, match="layer 9 out of range"):
        load_encoder("clip", tiny_encoders["clip"], layer=9, pooling="mean")(frames)


@pytest.mark.parametrize("pooling,tokens", [("time", 2), ("mean", 1)])
def test_videomae(tiny_encoders, pooling, tokens):
    enc = load_encoder("videomae", tiny_encoders["videomae"], pooling=pooling)
    y = enc(_frames(t=7))
    assert y.shape == (2, tokens, 16)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("pooling,tokens", [("cls", 1), ("mean", 1), ("time", 4)])
def test_ast_from_waveform(tiny_encoders, pooling, tokens):
    enc = load_encoder("ast", tiny_encoders["ast"], pooling=pooling)
    t = np.arange(16000, dtype=np.float32) / 16000
    fb = enc.fbank(np.sin(2 * np.pi * 440 * t).astype(np.float32), 16000)
    assert fb.shape == (64, 32)
    y = enc(torch.from_numpy(np.stack([fb, fb * 0])))
    assert y.shape == (2, tokens, 16)
    with pytest.raises(ValueError, match="16000"):
        enc.fbank(t, 8000)


def test_errors_name_the_key_and_folder(tiny_encoders, tmp_path):
    with pytest.raises(ValueError, match="model.experts.a.pretrained_path: a local folder"):
        load_encoder("clip", "", where="model.experts.a")
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_encoder("clip", str(tmp_path), where="model.experts.a")
    with pytest.raises(ValueError, match="model.experts.a.encoder: unknown 'resnet'"):
        load_encoder("resnet", tiny_encoders["clip"], where="model.experts.a")
    with pytest.raises(ValueError, match="pooling: 'time' is not one of"):
        load_encoder("clip", tiny_encoders["clip"], pooling="time")


def test_weight_hashes_change_with_weights(tiny_encoders, tmp_path):
    h1 = weight_hashes(tiny_encoders["clip"])
    assert list(h1) == ["model.safetensors"] and len(h1["model.safetensors"]) == 64
    torch.manual_seed(1)
    cfg = CLIPVisionConfig.from_pretrained(tiny_encoders["clip"])  # same shape, other weights
    CLIPVisionModelWithProjection(cfg).save_pretrained(tmp_path / "other")
    assert weight_hashes(tmp_path / "other") != h1


def test_inline_pretrained_expert_in_the_model(tiny_encoders):
    """kind=pretrained: a frozen CLIP expert beside a trainable one; only the rest gets gradients."""
    cfg = tiny_model_config()
    cfg.experts = {
        "clip": ExpertConfig(kind="pretrained", encoder="clip", pretrained_path=tiny_encoders["clip"]),
        "audio": ExpertConfig(kind="audio", width=16),
    }
    model = build_model(cfg, VOCAB)
    b = 3
    batch = {
        "frames": _frames(b=b, t=4, s=32),
        "audio_mel": torch.randn(b, 16, 8),
        "audio_mask": torch.ones(b, 16, dtype=torch.bool),
        "input_ids": torch.randint(1, VOCAB, (b, 6)),
        "attention_mask": torch.ones(b, 6, dtype=torch.long),
    }
    model.train()
    assert not model.experts["clip"].encoder.model.training  # frozen stays in eval mode
    text, video = model(batch)
    sim = model.similarity(text, video)["fused"]
    sim.sum().backward()
    assert all(p.grad is None for p in model.experts["clip"].parameters())
    assert model.expert_proj["clip"].weight.grad is not None
    with pytest.raises(KeyError, match="decode_clips"):
        build_expert("clip", cfg.experts["clip"])({"audio_mel": batch["audio_mel"]})
