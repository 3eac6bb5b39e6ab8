"""etva.eval.reweight: the chunked re-weighted metrics equal a naive full-matrix reference."""

from __future__ import annotations

import numpy as np
import pytest

from etva.eval.metrics import retrieval_metrics
from etva.eval.reweight import reweighted_metrics


def _naive(sim: np.ndarray, method: str, scale: float) -> np.ndarray:
    z = scale * sim.astype(np.float64)
    col = np.log(np.exp(z - z.max(0)).sum(0)) + z.max(0)  # logsumexp over queries, per video
    p = np.exp(z - col)
    return np.log(p) if method == "inverted_softmax" else sim * p


@pytest.mark.parametrize("method", ["inverted_softmax", "dsl"])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_equals_naive(method, chunk):
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(30, 12)).astype(np.float32)
    qv = rng.integers(0, 12, size=30)
    got = reweighted_metrics(sim, qv, method, scale=5.0, query_chunk=chunk)
    want = retrieval_metrics(_naive(sim, method, 5.0), qv)
    for k in ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "t2v_MnR"):
        assert got[k] == pytest.approx(want[k], abs=1e-9)
    assert not any(k.startswith("v2t") for k in got)


def test_inverted_softmax_damps_a_hub_video():
    # every caption scores its own video 0.5 and video 0 (a hub) 0.6: R@1 is 1/8 without re-weighting
    sim = np.full((8, 8), 0.1, np.float32)
    np.fill_diagonal(sim, 0.5)
    sim[:, 0] = 0.6
    qv = np.arange(8)
    assert retrieval_metrics(sim, qv)["t2v_R1"] == pytest.approx(12.5)
    assert reweighted_metrics(sim, qv, "inverted_softmax", scale=20.0)["t2v_R1"] == pytest.approx(100.0)


def test_bad_method_is_refused():
    with pytest.raises(ValueError, match="unknown method"):
        reweighted_metrics(np.zeros((2, 2)), [0, 1], "softmax", 1.0)
