"""Tests for etva.train.losses: hand-computed values, directions, margin variants, ETVALoss parts."""

from __future__ import annotations

import math

import pytest
import torch

from etva.config import LossConfig
from etva.train.losses import build_loss, infonce_loss, max_margin_loss

torch.set_num_threads(1)


def _ce(row: list[float], target: int) -> float:
    return -row[target] + math.log(sum(math.exp(v) for v in row))


def test_infonce_known_value_on_2x2():
    sim = torch.tensor([[1.0, 0.0], [0.5, 2.0]])
    t = 0.5
    logits = [[2.0, 0.0], [1.0, 4.0]]
    t2v = (_ce(logits[0], 0) + _ce(logits[1], 1)) / 2
    cols = [[2.0, 1.0], [0.0, 4.0]]
    v2t = (_ce(cols[0], 0) + _ce(cols[1], 1)) / 2
    expected = (t2v + v2t) / 2
    torch.testing.assert_close(infonce_loss(sim, t), torch.tensor(expected))


def test_infonce_is_bidirectional_not_symmetric_by_accident():
    # an asymmetric matrix: transposing must give the same loss (t2v and v2t swap roles)
    sim = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(infonce_loss(sim, 0.1), infonce_loss(sim.t(), 0.1))
    # but a t2v-only loss would differ from the bidirectional one
    t2v_only = torch.nn.functional.cross_entropy(sim / 0.1, torch.arange(5))
    assert not torch.isclose(infonce_loss(sim, 0.1), t2v_only)


def test_infonce_perfect_diagonal_is_low_and_shuffled_is_high():
    sim = torch.eye(8) * 2 - 1  # cos 1 on diagonal, -1 elsewhere
    assert infonce_loss(sim, 0.05).item() < 1e-6
    perm = torch.roll(torch.eye(8), 1, dims=1) * 2 - 1
    assert infonce_loss(perm, 0.05).item() > 10


def test_infonce_rejects_non_square():
    with pytest.raises(ValueError, match="square"):
        infonce_loss(torch.zeros(2, 3), 0.1)


def test_margin_hardest_vs_sum_known_values():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.5, 0.6], [0.0, 0.3, 0.7]])
    m = 0.2
    # t2v costs: row0: [., .1, 0] row1: [0, ., .3] row2: [0, 0, .]
    # v2t costs (column j vs its diagonal): col0: [., 0, 0] col1: [.5, ., 0] col2: [0, .1, .]
    hard = (0.1 + 0.3 + 0.0) / 3 + (0.0 + 0.5 + 0.1) / 3
    summ = (0.1 + 0.3 + 0.0) / 3 + (0.0 + 0.5 + 0.1) / 3
    torch.testing.assert_close(max_margin_loss(sim, m, True), torch.tensor(hard))
    torch.testing.assert_close(max_margin_loss(sim, m, False), torch.tensor(summ))
    # with two violating negatives in a row, sum > hardest
    sim2 = torch.tensor([[0.5, 0.45, 0.4], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    h = max_margin_loss(sim2, m, True).item()
    s = max_margin_loss(sim2, m, False).item()
    assert h == pytest.approx((0.15 + 0 + 0) / 3 + (0 + 0 + 0) / 3, abs=1e-6)
    assert s == pytest.approx((0.15 + 0.1) / 3, abs=1e-6)


def test_margin_zero_when_separated():
    sim = torch.eye(4)
    assert max_margin_loss(sim, 0.2, True).item() == 0.0


def test_etva_loss_parts_weights_and_skip():
    cfg = LossConfig(kind="infonce", temperature=0.1, lambda_global=2.0, lambda_local=0.5)
    loss_fn = build_loss(cfg)
    g = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    f = torch.randn(4, 4, generator=torch.Generator().manual_seed(2))
    total, parts = loss_fn({"global": g, "fused": f})  # no "local": skipped
    assert set(parts) == {"global", "fused", "temperature"}
    expected = 2.0 * infonce_loss(g, 0.1) + 1.0 * infonce_loss(f, 0.1)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(parts["temperature"], torch.tensor(0.1))


def test_etva_loss_temperature_learnable_and_clamped():
    loss_fn = build_loss(LossConfig(temperature=0.05, learnable_temperature=True))
    assert loss_fn.log_temperature.requires_grad
    sim = torch.randn(4, 4, requires_grad=True)
    total, _ = loss_fn({"fused": sim})
    total.backward()
    assert loss_fn.log_temperature.grad is not None
    with torch.no_grad():
        loss_fn.log_temperature.fill_(-20.0)
    assert loss_fn.temperature.item() == pytest.approx(1e-3)
    frozen = build_loss(LossConfig(learnable_temperature=False))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_etva_loss_margin_kind_and_errors():
    loss_fn = build_loss(LossConfig(kind="margin", margin=0.2, hardest_negative=False))
    sim = torch.eye(3)
    total, parts = loss_fn({"global": sim, "local": sim, "fused": sim})
    assert total.item() == 0.0 and set(parts) >= {"global", "local", "fused"}
    with pytest.raises(ValueError, match="loss.kind"):
        build_loss(LossConfig(kind="nope"))
    with pytest.raises(ValueError, match="no similarity"):
        build_loss(LossConfig())({})
