"""model.fusion_layers=0: no transformer and no temporal embedding, the tokens pass through; a global-only
model of per-frame tokens then cannot tell the two halves of a clip apart from the same halves swapped
(the blind control of docs/study.md), while one fusion layer can."""

from __future__ import annotations

import pytest
import torch

from etva.config import ExpertConfig, load_config
from etva.config.settings import DEFAULT_CONFIG
from etva.model import build_model
from etva.model.fusion import VideoFusion
from tests.unit.model.conftest import VOCAB, random_batch, tiny_model_config


def test_zero_layers_pass_the_tokens_through_a_layer_norm():
    fusion = VideoFusion(8, layers=0, heads=2, dropout=0.0)
    assert not hasattr(fusion, "encoder") and not fusion.positions(5, 8).any()
    x, mask = torch.randn(2, 5, 8), torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.testing.assert_close(fusion(x, mask), fusion.norm(x) * mask[..., None])
    assert VideoFusion(8, layers=1, heads=2, dropout=0.0).positions(5, 8).abs().sum() > 0
    assert load_config(DEFAULT_CONFIG, ["model.fusion_layers=0"]).model.fusion_layers == 0


def _video_embedding(layers: int, frames: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = tiny_model_config(alignment="global", fusion_layers=layers)
    cfg.experts = {"appearance": ExpertConfig(kind="appearance", width=16)}
    model = build_model(cfg, VOCAB).eval()
    with torch.no_grad():
        return model.encode_video({"frames": frames}).experts


def test_a_global_model_without_fusion_is_blind_to_the_order_of_the_halves():
    frames = random_batch(b=2, t=6)["frames"]
    swapped = torch.cat([frames[:, 3:], frames[:, :3]], dim=1)  # the "order" distractor of a clip
    torch.testing.assert_close(_video_embedding(0, swapped), _video_embedding(0, frames))
    assert not torch.allclose(_video_embedding(1, swapped), _video_embedding(1, frames), atol=1e-4)


def _all_experts_embedding(ring: bool, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    torch.manual_seed(0)
    cfg = tiny_model_config(alignment="global", fusion_layers=0)
    cfg.experts = {
        "appearance": ExpertConfig(kind="appearance", width=16, grid=2),
        "motion": ExpertConfig(kind="motion", width=16, grid=2, ring=ring),
        "audio": ExpertConfig(kind="audio", width=16, ring=ring),
    }
    model = build_model(cfg, VOCAB).eval()
    with torch.no_grad():
        return model.encode_video(batch).experts


def test_with_time_as_a_ring_every_expert_is_blind_to_the_order_of_the_halves():
    """The study's blind control (global only, no fusion, motion and audio experts with ring=true): the order
    distractor (frames' halves exchanged) and the sound-moment distractor (audio's halves exchanged) give the
    target's video embedding exactly; without the ring, the motion pair across the cut and the audio
    convolutions at the clip's ends tell them apart."""
    batch = random_batch(b=2, t=6, a=400)  # 4 s of log-mel: a half (200 frames) is a multiple of the stride 8
    swapped = dict(batch)
    swapped["frames"] = torch.roll(batch["frames"], 3, dims=1)
    swapped["audio_mel"] = torch.roll(batch["audio_mel"], 200, dims=1)
    torch.testing.assert_close(_all_experts_embedding(True, swapped), _all_experts_embedding(True, batch))
    assert not torch.allclose(_all_experts_embedding(False, swapped), _all_experts_embedding(False, batch), atol=1e-4)
    for only in ("frames", "audio_mel"):  # each of the two experts alone breaks the blindness without the ring
        one = {**batch, only: swapped[only]}
        assert not torch.allclose(_all_experts_embedding(False, one), _all_experts_embedding(False, batch), atol=1e-4)


def test_ring_is_refused_where_no_expert_mixes_time():
    cfg = tiny_model_config(alignment="global")
    cfg.experts = {"appearance": ExpertConfig(kind="appearance", width=16, ring=True)}
    with pytest.raises(ValueError, match=r"model.experts.appearance.ring"):
        build_model(cfg, VOCAB)
