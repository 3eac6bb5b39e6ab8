"""NetVLAD against a naive loop reference; masking, ghosts, zero vectors, modes."""

from __future__ import annotations

import math

import pytest
import torch

from etva.model.netvlad import LocalAlignment, NetVLAD, netvlad

torch.set_num_threads(1)


def naive_netvlad(x, mask, w, b, c):
    """Loop reference, straight from the definition."""
    bsz, n, d = x.shape
    k = c.shape[0]
    out = torch.zeros(bsz, k, d, dtype=torch.float64)
    for i in range(bsz):
        for j in range(n):
            if not mask[i, j]:
                continue
            logits = [float(x[i, j].double() @ w[q].double() + b[q]) for q in range(w.shape[0])]
            z = sum(math.exp(v) for v in logits)
            for q in range(k):
                out[i, q] += math.exp(logits[q]) / z * (x[i, j].double() - c[q].double())
        for q in range(k):
            norm = out[i, q].norm()
            if norm > 0:
                out[i, q] = out[i, q] / norm
    return out


def _inputs(bsz=3, n=5, d=6, k=4, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, d, generator=gen)
    mask = torch.rand(bsz, n, generator=gen) > 0.3
    mask[:, 0] = True
    w = torch.randn(k + g, d, generator=gen)
    b = torch.randn(k + g, generator=gen)
    c = torch.randn(k, d, generator=gen)
    return x, mask, w, b, c


def test_matches_naive_reference_with_mask_and_ghosts():
    x, mask, w, b, c = _inputs()
    got = netvlad(x, mask, w, b, c)
    assert got.shape == (3, 4, 6)
    torch.testing.assert_close(got.double(), naive_netvlad(x, mask, w, b, c), atol=1e-5, rtol=1e-5)


def test_masked_tokens_have_no_effect():
    x, mask, w, b, c = _inputs()
    x2 = x.clone()
    x2[~mask] = 1000.0  # garbage on padding
    torch.testing.assert_close(netvlad(x2, mask, w, b, c), netvlad(x, mask, w, b, c))


def test_ghost_clusters_take_assignment_mass():
    x, mask, w, b, c = _inputs(g=0)
    no_ghost = netvlad(x, mask, w, b, c)
    # a ghost cluster with a huge bias absorbs all assignment -> residual sums shrink, not equal
    w_g = torch.cat([w, torch.zeros(1, w.shape[1])])
    b_g = torch.cat([b, torch.tensor([0.0])])
    with_ghost = netvlad(x, mask, w_g, b_g, c)
    assert not torch.allclose(no_ghost, with_ghost)
    torch.testing.assert_close(with_ghost.double(), naive_netvlad(x, mask, w_g, b_g, c), atol=1e-5, rtol=1e-5)


def test_all_masked_row_gives_zero_vector_and_finite_grads():
    x, mask, w, b, c = _inputs()
    mask[1] = False
    params = [t.clone().requires_grad_(True) for t in (x, w, b, c)]
    out = netvlad(params[0], mask, *params[1:])
    assert torch.all(out[1] == 0)
    assert torch.allclose(out[0].norm(dim=-1), torch.ones(4))
    out.sum().backward()
    for p in params:
        assert torch.isfinite(p.grad).all()
    assert torch.all(params[0].grad[1] == 0)


def test_shared_vs_separate_parameter_identity():
    shared = LocalAlignment(8, 8, 8, 4, 1, mode="shared")
    assert shared.text_vlad is shared.video_vlad
    n_shared = sum(p.numel() for p in shared.parameters())
    sep = LocalAlignment(8, 8, 8, 4, 1, mode="separate")
    assert sep.text_vlad is not sep.video_vlad
    assert sep.text_vlad.centers is not sep.video_vlad.centers
    n_sep = sum(p.numel() for p in sep.parameters())
    vlad_params = sum(p.numel() for p in NetVLAD(8, 4, 1).parameters())
    assert n_sep - n_shared == vlad_params
    # shared: a video-side-only loss moves the same centres the text side uses
    tok = torch.randn(2, 3, 8)
    m = torch.ones(2, 3, dtype=torch.bool)
    shared.encode_video(tok, m).sum().backward()
    assert shared.text_vlad.centers.grad is not None


def test_text_mode_video_side_attention_pooling():
    la = LocalAlignment(8, 8, 8, 4, 1, mode="text")
    tok = torch.randn(2, 3, 8)
    m = torch.tensor([[True, True, False], [False, False, False]])
    v = la.encode_video(tok, m)
    assert v.shape == (2, 4, 8)
    torch.testing.assert_close(v[0].norm(dim=-1), torch.ones(4))
    assert torch.all(v[1] == 0)
    tok2 = tok.clone()
    tok2[0, 2] = 99.0  # masked token changes nothing
    torch.testing.assert_close(la.encode_video(tok2, m), v)
    with pytest.raises(ValueError, match="vlad_mode"):
        LocalAlignment(8, 8, 8, 4, 1, mode="both")


def test_local_similarity_equals_mean_cluster_inner_product():
    t = torch.randn(3, 4, 5)
    v = torch.randn(2, 4, 5)
    ref = torch.stack([torch.stack([(t[i] * v[j]).sum(-1).mean() for j in range(2)]) for i in range(3)])
    torch.testing.assert_close(LocalAlignment.similarity(t, v), ref)
