"""Global alignment: pooling masks, mixture renormalisation, all-pairs score vs a naive loop."""

from __future__ import annotations

import math

import pytest
import torch

from etva.model.alignment import GlobalAlignment, masked_mean_max_pool, mixture_weights

torch.set_num_threads(1)


def test_masked_mean_max_pool():
    x = torch.tensor([[[1.0, -1.0], [3.0, 5.0], [100.0, 100.0]]])
    m = torch.tensor([[True, True, False]])
    torch.testing.assert_close(masked_mean_max_pool(x, m), torch.tensor([[2.0, 2.0, 3.0, 5.0]]))
    empty = masked_mean_max_pool(x, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.all(empty == 0)


def test_mixture_renormalised_when_expert_missing():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    avail = torch.tensor([[True, True, True], [True, True, False]])  # video 1 lacks audio (e=2)
    w = mixture_weights(logits, avail)  # (1, 2, 3)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2))
    assert w[0, 1, 2] == 0
    e0, e1 = math.exp(0.0), math.exp(1.0)
    torch.testing.assert_close(w[0, 1, :2], torch.tensor([e0 / (e0 + e1), e1 / (e0 + e1)]))


def _naive_global(t, logits, v, avail):
    bt, bv = t.shape[0], v.shape[0]
    out = torch.zeros(bt, bv)
    for i in range(bt):
        for j in range(bv):
            es = [e for e in range(t.shape[1]) if avail[j, e]]
            if not es:
                continue
            w = torch.softmax(logits[i, es], 0)
            out[i, j] = sum(w[q] * torch.dot(t[i, e], v[j, e]) for q, e in enumerate(es))
    return out


def test_global_similarity_matches_naive_and_priors_shift_weights():
    ga = GlobalAlignment(["a", "m", "s"], [1.0, 1.0, 0.5], text_dim=6, d=4)
    pooled = torch.randn(3, 6)
    t, logits = ga.encode_text(pooled)
    assert t.shape == (3, 3, 4) and logits.shape == (3, 3)
    torch.testing.assert_close(
        logits - ga.mixture(pooled), math.log(0.5) * torch.tensor([0, 0, 1.0]).expand(3, 3)
    )
    toks = [torch.randn(2, n, 4) for n in (3, 2, 5)]
    masks = [torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool)]
    masks.append(torch.tensor([[True] * 5, [False] * 5]))  # video 1: no audio
    v, avail = ga.encode_video(toks, masks)
    assert avail.tolist() == [[True, True, True], [True, True, False]]
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 3))
    sim = GlobalAlignment.similarity(t, logits, v, avail)
    torch.testing.assert_close(sim, _naive_global(t, logits, v, avail))
    # the missing expert's embedding must not matter for video 1
    v2 = v.clone()
    v2[1, 2] = -v2[1, 2]
    torch.testing.assert_close(GlobalAlignment.similarity(t, logits, v2, avail), sim)


def test_prior_must_be_positive():
    with pytest.raises(ValueError, match="prior"):
        GlobalAlignment(["a"], [0.0], 4, 4)


def test_large_logit_gap_with_top_expert_unavailable_matches_fused_scorer():
    """Gap 200 (exp underflows in fp32): masking in logit space keeps the other experts' weights."""
    from etva.eval.similarity import FusedScorer

    g = torch.Generator().manual_seed(0)
    t = torch.nn.functional.normalize(torch.randn(2, 3, 4, generator=g), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(3, 3, 4, generator=g), dim=-1)
    logits = torch.tensor([[200.0, 0.0, 1.0], [0.0, 0.5, 200.0]], requires_grad=True)
    avail = torch.tensor([[False, True, True], [True, True, False], [False, False, False]])
    sim = GlobalAlignment.similarity(t, logits, v, avail)
    fused = FusedScorer(t, logits.detach(), v, avail, None, None, normalized=True)(slice(0, 2), slice(0, 3))
    torch.testing.assert_close(sim.detach(), fused)
    torch.testing.assert_close(sim.detach(), _naive_global(t, logits.detach(), v, avail))
    # the pairs whose top expert is missing are not 0 (the old exp(logit - max) path underflowed to 0)
    e1, e2 = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    assert sim[0, 0].item() == pytest.approx(
        (e1 * t[0, 1] @ v[0, 1] + e2 * t[0, 2] @ v[0, 2]).item(), abs=1e-6
    )
    assert sim[0, 0].abs().item() > 1e-3
    assert sim[:, 2].abs().max().item() == 0.0  # a video with no available expert scores 0
    sim.sum().backward()
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(mixture_weights(logits.detach(), avail)[0, 0], torch.stack([0 * e1, e1, e2]))
