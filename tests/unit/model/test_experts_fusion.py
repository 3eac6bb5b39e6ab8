"""Experts (shapes, masks, registry errors) and the fusion transformer (no NaN, masks honoured)."""

from __future__ import annotations

import pytest
import torch

from etva.config import ExpertConfig
from etva.model.experts import EXPERT_BUILDERS, build_expert
from etva.model.fusion import VideoFusion

torch.set_num_threads(1)


def test_builtin_expert_shapes(make_batch):
    batch = make_batch(b=2, t=4, size=16, a=24)
    x, m = build_expert("appearance", ExpertConfig(kind="appearance", width=8))(batch)
    assert x.shape == (2, 4, 8) and m.all()
    x, m = build_expert("motion", ExpertConfig(kind="motion", width=8))(batch)
    assert x.shape == (2, 3, 8) and m.shape == (2, 3)
    x, m = build_expert("audio", ExpertConfig(kind="audio", width=8))(batch)
    assert x.shape == (2, 3, 8) and m.shape == (2, 3)  # 24 -> 12 -> 6 -> 3


def test_audio_mask_downsampled_and_silent_clip_unavailable(make_batch):
    batch = make_batch(b=3, a=24)
    batch["audio_mask"][1] = False  # no audio
    batch["audio_mask"][2, 9:] = False  # 9 real frames -> 5 -> 3 -> 2 tokens
    audio = build_expert("audio", ExpertConfig(kind="audio", width=8))
    x, m = audio(batch)
    assert m.tolist() == [[True, True, True], [False, False, False], [True, True, False]]
    # padding content does not leak into the features
    batch2 = {**batch, "audio_mel": batch["audio_mel"].clone()}
    batch2["audio_mel"][1] = 50.0
    torch.testing.assert_close(audio(batch2)[0][1], x[1])


def test_features_expert_and_errors():
    fe = build_expert("clip", ExpertConfig(kind="features", dim=5, width=8))
    batch = {"feat/clip": torch.randn(2, 7, 5), "feat_mask/clip": torch.ones(2, 7, dtype=torch.bool)}
    x, m = fe(batch)
    assert x.shape == (2, 7, 5) and m.shape == (2, 7)  # no width bottleneck: dim goes straight on
    assert fe.out_dim == 5
    with pytest.raises(KeyError, match="feat/clip"):
        fe({})
    with pytest.raises(ValueError, match="model.experts.clip.dim"):
        fe({"feat/clip": torch.randn(2, 7, 6)})
    with pytest.raises(ValueError, match="model.experts.x.dim"):
        build_expert("x", ExpertConfig(kind="features", dim=0))
    with pytest.raises(ValueError, match="model.experts.y.kind"):
        build_expert("y", ExpertConfig(kind="optical_flow"))
    assert set(EXPERT_BUILDERS) == {"appearance", "motion", "audio", "features", "pretrained"}


def test_fusion_fully_masked_rows_no_nan_and_padding_ignored():
    fusion = VideoFusion(8, layers=2, heads=2, dropout=0.0).eval()
    x = torch.randn(3, 5, 8)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False], [False] * 5])
    out = fusion(x, mask)
    assert torch.isfinite(out).all()
    assert torch.all(out[2] == 0) and torch.all(out[1, 2:] == 0)
    x2 = x.clone()
    x2[1, 2:] = 123.0  # padded tokens must not change real outputs
    torch.testing.assert_close(fusion(x2, mask)[1], out[1])
    out.sum().backward()


@pytest.mark.parametrize("kind", ["appearance", "motion"])
def test_region_tokens_per_frame_and_their_place(make_batch, kind):
    """model.experts.<e>.grid: grid x grid tokens per frame (frame-major); grid 1 is the whole frame. A cell's
    token pools its own quarter of the CNN map (plus the cell's embedding): what the fine-grained alignment
    needs to tell which object is red."""
    torch.manual_seed(0)
    batch = make_batch(b=2, t=4, size=32, a=24)
    steps = 4 if kind == "appearance" else 3
    whole = build_expert(kind, ExpertConfig(kind=kind, width=8))
    assert whole(batch)[0].shape == (2, steps, 8)
    expert = build_expert(kind, ExpertConfig(kind=kind, width=8, grid=2)).eval()
    torch.nn.init.normal_(expert.head.cell)
    x, m = expert(batch)
    assert x.shape == (2, steps * 4, 8) and m.shape == (2, steps * 4) and m.all()
    frames = (batch["frames"].permute(0, 1, 4, 2, 3).float() / 255.0 - 0.45) / 0.25
    if kind == "motion":
        frames = torch.cat([frames[:, :-1], frames[:, 1:] - frames[:, :-1]], dim=2)
    fmap = expert.cnn(frames.flatten(0, 1)).view(2, steps, 8, 4, 4)  # 32 px -> a 4 x 4 map
    for cell, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        part = fmap[..., 2 * r : 2 * r + 2, 2 * c : 2 * c + 2]
        want = expert.head.mix(torch.cat([part.mean(dim=(-2, -1)), part.amax(dim=(-2, -1))], dim=-1))
        torch.testing.assert_close(x.view(2, steps, 4, 8)[:, :, cell], want + expert.head.cell[cell])


def test_region_grid_must_be_positive():
    with pytest.raises(ValueError, match="grid"):
        build_expert("appearance", ExpertConfig(kind="appearance", width=8, grid=0))
