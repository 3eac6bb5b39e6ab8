"""Chunked scoring and metrics: identical to the full-matrix path; fused ETVA scorer vs a naive loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from etva.eval.metrics import retrieval_metrics
from etva.eval.similarity import FusedScorer, score_all

torch.set_num_threads(1)


def _tied_case(seed: int, num_v: int = 9, max_caps: int = 4, levels: int = 4):
    rng = np.random.default_rng(seed)
    caps = rng.integers(1, max_caps + 1, size=num_v)
    qv = rng.permutation(np.repeat(np.arange(num_v), caps))
    sim = (rng.integers(0, levels, size=(qv.size, num_v)) / levels).astype(np.float32)
    return sim, qv


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 4, 7, 1000])
@pytest.mark.parametrize("ties", ["average", "optimistic", "pessimistic"])
def test_chunked_identical_to_full(seed: int, chunk: int, ties: str) -> None:
    sim, qv = _tied_case(seed)
    full = retrieval_metrics(sim, qv, ks=(1, 3, 5, 10), ties=ties)
    chunked = retrieval_metrics(sim, qv, ks=(1, 3, 5, 10), ties=ties, query_chunk=chunk)
    assert chunked == full  # exact equality: same integer counts, same tie math


def test_chunked_square_torch_and_missing_video() -> None:
    rng = np.random.default_rng(5)
    sim = rng.standard_normal((11, 11)).astype(np.float32)
    assert retrieval_metrics(torch.from_numpy(sim), query_chunk=3) == retrieval_metrics(sim)
    qv = np.array([0, 0, 1, 1, 3, 3, 3, 0, 1, 3, 3])  # videos 2, 4.. have no caption
    assert retrieval_metrics(sim, qv, query_chunk=4) == retrieval_metrics(sim, qv)
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(sim, qv, missing="error", query_chunk=2)


def test_chunked_reports_nan_position() -> None:
    sim = np.zeros((6, 6), dtype=np.float32)
    sim[4, 2] = np.nan
    with pytest.raises(ValueError, match="query 4, video 2"):
        retrieval_metrics(sim, query_chunk=3)


def test_score_all_fills_blocks_without_grad() -> None:
    rng = np.random.default_rng(0)
    full = torch.from_numpy(rng.standard_normal((13, 7)).astype(np.float32))
    w = torch.ones((), requires_grad=True)
    calls = []

    def score_fn(qs: slice, vs: slice) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        calls.append((qs, vs))
        return (full[qs, vs] * w).double()

    out = score_all(score_fn, 13, 7, query_chunk=5, video_chunk=3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, full.numpy())
    assert len(calls) == 3 * 3
    qv = rng.integers(0, 7, size=13)
    qv[:7] = np.arange(7)
    blocks = score_all(score_fn, 13, 7, query_chunk=4, video_chunk=2)
    assert retrieval_metrics(blocks, qv, query_chunk=4) == retrieval_metrics(full.numpy(), qv)


def test_score_all_rejects_wrong_block_shape() -> None:
    with pytest.raises(ValueError, match="returned shape"):
        score_all(lambda qs, vs: torch.zeros(2, 2), 4, 4, query_chunk=3)


def _naive_etva(tg, tlog, vg, avail, tl, vl, alpha):
    """Per-pair loop straight from the definition."""
    num_q, num_v, num_k = tg.shape[0], vg.shape[0], tl.shape[1]
    out = torch.zeros(num_q, num_v, dtype=torch.float64)
    for q in range(num_q):
        for v in range(num_v):
            a = avail[v]
            s_global = 0.0
            if a.any():
                w = torch.softmax(tlog[q][a].double(), dim=0)
                cos = F.cosine_similarity(tg[q][a].double(), vg[v][a].double(), dim=-1)
                s_global = float((w * cos).sum())
            tk = F.normalize(tl[q].double(), dim=-1)
            vk = F.normalize(vl[v].double(), dim=-1)
            s_local = float((tk * vk).sum()) / num_k
            out[q, v] = alpha * s_global + (1 - alpha) * s_local
    return out


def test_fused_scorer_matches_naive_with_missing_experts() -> None:
    g = torch.Generator().manual_seed(0)
    num_q, num_v, num_e, num_k, d = 7, 10, 3, 4, 5
    tg, vg = torch.randn(num_q, num_e, d, generator=g), torch.randn(num_v, num_e, d, generator=g)
    tlog = torch.randn(num_q, num_e, generator=g)
    tl, vl = torch.randn(num_q, num_k, d, generator=g), torch.randn(num_v, num_k, d, generator=g)
    avail = torch.ones(num_v, num_e, dtype=torch.bool)
    avail[1, 2] = avail[4, 2] = avail[6, 0] = False  # three patterns + one video with none
    avail[8] = False
    scorer = FusedScorer(tg, tlog, vg, avail, tl, vl, alpha=0.3)
    assert len(scorer.patterns) == 4
    ref = _naive_etva(tg, tlog, vg, avail, tl, vl, 0.3)
    got = score_all(scorer, num_q, num_v, query_chunk=3, video_chunk=4)
    torch.testing.assert_close(torch.from_numpy(got).double(), ref, rtol=1e-5, atol=1e-5)
    one_pattern = torch.ones_like(avail)
    ref1 = _naive_etva(tg, tlog, vg, one_pattern, tl, vl, 1.0)
    got1 = FusedScorer(tg, tlog, vg, one_pattern, tl, vl, alpha=1.0)(slice(0, num_q), slice(0, 10))
    torch.testing.assert_close(got1.double(), ref1, rtol=1e-5, atol=1e-5)


def test_fused_scorer_shape_errors() -> None:
    t = torch.zeros
    with pytest.raises(ValueError, match="video_avail"):
        FusedScorer(t(2, 3, 4), t(2, 3), t(5, 3, 4), t(5, 2), t(2, 6, 4), t(5, 6, 4), 0.5)


def _random_embeddings(seed: int, num_q: int = 6, num_v: int = 9, num_e: int = 3, k: int = 4, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    avail = torch.rand(num_v, num_e, generator=g) > 0.3
    return dict(
        text_global=unit(num_q, num_e, d),
        text_logits=torch.randn(num_q, num_e, generator=g),
        video_global=unit(num_v, num_e, d),
        video_avail=avail,
        text_local=unit(num_q, k, d),
        video_local=unit(num_v, k, d),
    )


def test_fused_scorer_single_branch() -> None:
    emb = _random_embeddings(1)
    ref_g = _naive_etva(*[emb[n] for n in list(emb)], alpha=1.0)
    glob = FusedScorer(**{**emb, "text_local": None, "video_local": None}, alpha=0.2)
    torch.testing.assert_close(glob(slice(0, 6), slice(0, 9)).double(), ref_g, rtol=1e-5, atol=1e-5)
    ref_l = _naive_etva(*[emb[n] for n in list(emb)], alpha=0.0)
    none = {"text_global": None, "text_logits": None, "video_global": None, "video_avail": None}
    loc = FusedScorer(**{**emb, **none}, alpha=0.7, normalized=True)
    torch.testing.assert_close(loc(slice(0, 6), slice(2, 9)).double(), ref_l[:, 2:], rtol=1e-5, atol=1e-5)


def test_fused_scorer_matches_model_similarity() -> None:
    """Same numbers as the model's own (per-expert matmul) similarity functions."""
    alignment = pytest.importorskip("etva.model.alignment")
    netvlad = pytest.importorskip("etva.model.netvlad")
    emb = _random_embeddings(2)
    ref = 0.4 * alignment.GlobalAlignment.similarity(
        emb["text_global"], emb["text_logits"], emb["video_global"], emb["video_avail"]
    ) + 0.6 * netvlad.LocalAlignment.similarity(emb["text_local"], emb["video_local"])
    got = FusedScorer(**emb, alpha=0.4, normalized=True)(slice(0, 6), slice(0, 9))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
