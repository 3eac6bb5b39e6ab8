"""Word -> cluster soft assignments (for the weight-allocation pictures) match what NetVLAD uses."""

from __future__ import annotations

import pytest
import torch

from etva.model import build_model
from etva.model.netvlad import NetVLAD, netvlad, safe_l2_normalize, soft_assignments

torch.set_num_threads(1)


def _inputs(bsz=3, n=6, d=8, k=4, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bsz, n, d, generator=gen)
    mask = torch.rand(bsz, n, generator=gen) > 0.3
    mask[:, 0] = True
    return x, mask, torch.randn(k + g, d, generator=gen), torch.randn(k + g, generator=gen), torch.randn(k, d)


def test_assignments_rebuild_the_netvlad_descriptor():
    x, mask, w, b, c = _inputs()
    a = soft_assignments(x, mask, w, b, c.shape[0])  # (B, N, K)
    assert a.shape == (3, 6, 4)
    v = torch.einsum("bnk,bnd->bkd", a, x) - a.sum(1).unsqueeze(-1) * c  # residual sums
    torch.testing.assert_close(safe_l2_normalize(v), netvlad(x, mask, w, b, c))


def test_padding_gets_no_weight_and_ghosts_take_mass():
    x, mask, w, b, c = _inputs()
    a = soft_assignments(x, mask, w, b, 4)
    assert torch.all(a[~mask] == 0)
    sums = a.sum(-1)[mask]
    assert torch.all(sums < 1.0) and torch.all(sums > 0)  # 2 ghost clusters absorb some mass
    no_ghost = soft_assignments(x, mask, w[:4], b[:4], 4)
    torch.testing.assert_close(no_ghost.sum(-1)[mask], torch.ones(int(mask.sum())))


def test_module_method_uses_its_parameters():
    vlad = NetVLAD(8, 4, ghost_clusters=1)
    x, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    want = soft_assignments(x, mask, vlad.assign_weight, vlad.assign_bias, 4)
    torch.testing.assert_close(vlad.assignments(x, mask), want)


def test_etva_text_cluster_assignments(make_cfg, make_batch):
    torch.manual_seed(0)
    model = build_model(make_cfg(), vocab_size=50).eval()
    batch = make_batch(b=3)
    with torch.no_grad():
        a = model.text_cluster_assignments(batch["input_ids"], batch["attention_mask"])
        local = model.encode_text(batch["input_ids"], batch["attention_mask"]).local  # (B, K, d)
        feats = model.text(batch["input_ids"], batch["attention_mask"])
        x = model.local_align.text_proj(feats.tokens)  # (B, L, d)
    assert a.shape == (3, 8, 4)
    pad = batch["attention_mask"] == 0
    assert torch.all(a[pad] == 0) and torch.all(a[~pad].sum(-1) > 0)
    # the weights are the ones encode_text's NetVLAD used: they rebuild its descriptors
    centers = model.local_align.text_vlad.centers
    v = torch.einsum("bnk,bnd->bkd", a, x) - a.sum(1).unsqueeze(-1) * centers
    torch.testing.assert_close(safe_l2_normalize(v), local)


def test_etva_without_netvlad_refuses(make_cfg, make_batch):
    model = build_model(make_cfg(alignment="global"), vocab_size=50)
    batch = make_batch(b=2)
    with pytest.raises(ValueError, match="alignment='global'"):
        model.text_cluster_assignments(batch["input_ids"], batch["attention_mask"])
