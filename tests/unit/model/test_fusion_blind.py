"""model.fusion_layers=0: no transformer and no temporal embedding, the tokens pass through; a global-only
model of per-frame tokens then cannot tell the two halves of a clip apart from the same halves swapped
(the blind control of docs/study.md), while one fusion layer can."""

from __future__ import annotations

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
