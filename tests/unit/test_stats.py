"""etva.eval.stats on constructed inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etva.eval.metrics import count_ranks, retrieval_metrics
from etva.eval.stats import hits_at_k, paired_bootstrap, t_interval, t_quantile


@pytest.mark.parametrize(
    "p, df, expected",
    [(0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 30, 2.042272), (0.95, 9, 1.833113)],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-5)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-5)


def test_t_interval_known_answer():
    iv = t_interval([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)  # t_{0.975, 2} * std / sqrt(n)
    assert (iv.mean, iv.std, iv.n) == (2.0, 1.0, 3)
    assert iv.low == pytest.approx(2.0 - half, abs=1e-5) and iv.high == pytest.approx(2.0 + half, abs=1e-5)
    five = t_interval([50.0, 52.0, 48.0, 51.0, 49.0])  # std = sqrt(2.5)
    assert five.high - five.mean == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), abs=1e-5)
    one = t_interval([7.0])
    assert (one.low, one.high, one.std) == (7.0, 7.0, 0.0)
    assert not t_interval([1.0, 1.1, 0.9]).overlaps(t_interval([5.0, 5.1, 4.9]))
    with pytest.raises(ValueError, match="NaN"):
        t_interval([1.0, float("nan")])


def test_paired_bootstrap_constant_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 100, size=(5, 200))  # seeds x queries, very spread out
    test = paired_bootstrap(b + 1.0, b, n_boot=2000)
    assert test.diff == pytest.approx(1.0) and test.low == pytest.approx(1.0) and test.high == pytest.approx(1.0)
    assert test.p_value == pytest.approx(2 / 2001)  # the smallest p this many resamples can give
    assert (test.num_seeds, test.num_queries) == (5, 200)


def test_paired_bootstrap_matches_the_normal_approximation():
    # 60 queries +1, 40 queries -1: mean 0.2, se = sqrt(0.96 / 100) = 0.098, z = 2.04, p = 0.041
    d = np.array([1.0] * 60 + [-1.0] * 40)
    test = paired_bootstrap(d, np.zeros_like(d), n_boot=20000, seed=1)
    se = math.sqrt(0.96 / 100)
    assert test.diff == pytest.approx(0.2)
    assert test.low == pytest.approx(0.2 - 1.96 * se, abs=0.03) and test.high == pytest.approx(0.2 + 1.96 * se, abs=0.03)
    assert 0.02 < test.p_value < 0.08


def test_paired_bootstrap_no_difference_and_bad_input():
    x = np.tile([100.0, 0.0], 50)
    assert paired_bootstrap(x, x[::-1], n_boot=1000).p_value == 1.0
    with pytest.raises(ValueError, match="same non-empty shape"):
        paired_bootstrap(np.zeros((2, 3)), np.zeros((3, 3)))


def test_hits_at_k_average_to_the_logged_recall():
    rng = np.random.default_rng(3)
    sim = rng.integers(0, 4, size=(40, 10)).astype(np.float32)  # many ties
    qv = rng.integers(0, 10, size=40)
    counts = count_ranks(sim, qv)
    metrics = retrieval_metrics(sim, qv)
    for k in (1, 5, 10):
        assert hits_at_k(counts.t2v_h, counts.t2v_e, k).mean() == pytest.approx(metrics[f"t2v_R{k}"])


def test_paired_bootstrap_clusters_resample_whole_videos():
    # 10 videos x 10 identical captions: as 100 independent queries the interval is sqrt(10) times too
    # narrow; resampled by video it matches the 10-query answer
    d = np.array([1.0] * 6 + [-1.0] * 4)
    per_video = paired_bootstrap(d, np.zeros(10), n_boot=20000, seed=2)
    clustered = paired_bootstrap(np.repeat(d, 10), np.zeros(100), n_boot=20000, seed=2,
                                 clusters=np.repeat(np.arange(10), 10))  # fmt: skip
    naive = paired_bootstrap(np.repeat(d, 10), np.zeros(100), n_boot=20000, seed=2)
    width = per_video.high - per_video.low
    assert clustered.high - clustered.low == pytest.approx(width, rel=0.1)
    assert naive.high - naive.low < 0.5 * width
