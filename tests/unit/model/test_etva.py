"""ETVA end to end: shapes, alignment modes, separable/chunked scoring equals full, grads."""

from __future__ import annotations

import pytest
import torch

from etva.config import ExpertConfig
from etva.model import ETVA, TextEmbedding, VideoEmbedding, build_model

torch.set_num_threads(1)


def _model(make_cfg, **kw) -> ETVA:
    torch.manual_seed(0)
    return build_model(make_cfg(**kw), 50).eval()


@pytest.mark.parametrize(
    "alignment,keys",
    [("global", {"global", "fused"}), ("local", {"local", "fused"}), ("both", {"global", "local", "fused"})],
)
def test_alignment_modes(alignment, keys, make_cfg, make_batch):
    model = _model(make_cfg, alignment=alignment)
    batch = make_batch(b=3)
    t, v = model(batch)
    sims = model.similarity(t, v)
    assert set(sims) == keys
    for s in sims.values():
        assert s.shape == (3, 3) and torch.isfinite(s).all()
    assert set(model.loss_keys) <= set(sims)
    if alignment == "both":
        torch.testing.assert_close(sims["fused"], 0.5 * sims["global"] + 0.5 * sims["local"])
        assert t.local.shape == (3, 4, 32) and t.experts.shape == (3, 3, 32)
    else:
        torch.testing.assert_close(sims["fused"], sims[alignment])
    assert (model.global_align is None) == (alignment == "local")
    assert (model.local_align is None) == (alignment == "global")


def test_chunked_and_concatenated_similarity_equals_full(make_cfg, make_batch):
    model = _model(make_cfg)
    b1, b2 = make_batch(b=3, seed=1), make_batch(b=4, seed=2)
    with torch.no_grad():
        t1, v1 = model(b1)
        t2, v2 = model(b2)
        t_all, v_all = TextEmbedding.cat([t1, t2]), VideoEmbedding.cat([v1, v2])
        assert len(t_all) == 7 and len(v_all) == 7
        full = model.similarity(t_all, v_all)
        for qs in (slice(0, 2), slice(2, 7)):
            for vs in (slice(0, 5), slice(5, 7)):
                part = model.similarity(t_all[qs], v_all[vs])
                for k in full:
                    torch.testing.assert_close(part[k], full[k][qs, vs])
        # separable: encoding a clip alone gives the same embedding as in a batch
        single = model.encode_video({k: x[1:2] for k, x in b1.items()})
        torch.testing.assert_close(single.local, v1.local[1:2], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single.experts, v1.experts[1:2], atol=1e-5, rtol=1e-4)


def test_missing_audio_gets_zero_weight_and_finite_scores(make_cfg, make_batch):
    model = _model(make_cfg)
    batch = make_batch(b=3)
    batch["audio_mask"][0] = False
    with torch.no_grad():
        t, v = model(batch)
    assert v.available[:, 2].tolist() == [False, True, True]
    assert v.available[:, :2].all()
    sims = model.similarity(t, v)
    assert torch.isfinite(sims["fused"]).all()
    # changing the audio of the silent clip changes nothing
    batch["audio_mel"][0] = 7.0
    with torch.no_grad():
        sims2 = model.similarity(*model(batch))
    torch.testing.assert_close(sims2["global"][:, 0], sims["global"][:, 0])


def test_all_experts_unavailable_no_nan(make_cfg, make_batch):
    cfg = make_cfg()
    cfg.experts = {"audio": ExpertConfig(kind="audio", width=16)}
    model = build_model(cfg, 50)
    batch = make_batch(b=2)
    batch["audio_mask"][1] = False
    t, v = model(batch)
    sims = model.similarity(t, v)
    assert all(torch.isfinite(s).all() for s in sims.values())
    sims["fused"].sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_every_parameter_gets_a_gradient(make_cfg, make_batch):
    """DDP without find_unused_parameters needs every parameter in the graph."""
    for mode in ("shared", "separate", "text"):
        model = _model(make_cfg, vlad_mode=mode).train()
        t, v = model(make_batch(b=3))
        sims = model.similarity(t, v)
        sum(s.sum() for s in sims.values()).backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (mode, missing)


def test_disabled_experts_and_config_errors(make_cfg):
    cfg = make_cfg()
    cfg.experts["motion"].enabled = False
    model = build_model(cfg, 50)
    assert model.expert_names == ["appearance", "audio"]
    with pytest.raises(ValueError, match="model.alignment"):
        build_model(make_cfg(alignment="fine"), 50)
    empty = make_cfg()
    empty.experts = {}
    with pytest.raises(ValueError, match="no expert"):
        build_model(empty, 50)


@pytest.mark.parametrize("alignment", ["global", "local", "both"])
def test_fused_scorer_matches_model_similarity(alignment, make_cfg, make_batch):
    """The evaluation's one-GEMM scorer gives the model's own fused score (missing audio included)."""
    from etva.eval.similarity import FusedScorer

    model = _model(make_cfg, alignment=alignment, alpha=0.3)
    batch = make_batch(b=5)
    batch["audio_mask"][2] = False
    with torch.no_grad():
        t, v = model(batch)
        ref = model.similarity(t, v)["fused"]
        scorer = FusedScorer.from_embeddings(t, v, alpha=model.alpha, normalized=True)
        torch.testing.assert_close(scorer(slice(0, 5), slice(0, 5)), ref, atol=1e-5, rtol=1e-5)
