"""Statistics of a study (variants x seeds): intervals over seeds and a paired bootstrap over seeds and videos.

Pure functions of numbers (numpy only), used by the ablation study (``tuning.study``):

- :func:`t_interval`: mean, sample std and the Student-t confidence interval of one variant's metric over
  its seeds (``mean +- t_{(1+level)/2, n-1} * std / sqrt(n)``); with 5 seeds the 95% factor is 2.776.
- :func:`hierarchical_bootstrap`: the same paired difference with BOTH sources of variance, between
  training seeds and between test videos. Its replicates resample the seeds, then the test videos (every
  seed scored the same videos, so one draw of videos serves all drawn seeds: the design is crossed, and
  drawing videos independently per seed would average the between-video variance away). With five seeds
  the percentiles of those replicates are too narrow (the bootstrap's seed variance is short by
  (S - 1) / S and its tails are normal, not Student), so the interval is studentized:
  ``diff +- t_{df} * se``, ``se^2`` = the unbiased variance of the per-seed differences over S (the seed
  part; what the seed t-interval uses) + the variance of the video resamples with every seed kept (the
  video part), ``df`` by Welch-Satterthwaite (about S - 1 when seeds dominate, large when videos do).
- :func:`hits_at_k`: the per-query ``P(rank < K)`` of text->video from the rank counts a trial logs
  (``etva.eval.metrics.count_ranks``: ``h`` candidates above the ground truth, ``e`` tied with it), with the
  project's tie policy (``ties="average"``), so the mean of the hits is exactly the logged R@K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from etva.eval.metrics import rank_outcomes

__all__ = [
    "Interval",
    "HierarchicalTest",
    "t_quantile",
    "t_interval",
    "hierarchical_bootstrap",
    "hits_at_k",
]


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof=1; 0 for one value) and the ``level`` interval of the mean over ``n`` values."""

    mean: float
    std: float
    low: float
    high: float
    n: int
    level: float

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high


@dataclass(frozen=True)
class HierarchicalTest:
    """``a - b`` over seeds and test videos: the studentized interval (both variances, small-sample corrected),
    its two-sided p-value, the standard error and its degrees of freedom, and the plain percentile interval of
    the same resamples (``boot_low``, ``boot_high``: too narrow with few seeds, kept for comparison)."""

    diff: float
    low: float
    high: float
    p_value: float
    se: float
    df: float
    boot_low: float
    boot_high: float
    num_queries: int
    num_seeds: int
    n_boot: int


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on the exact CDF)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_interval(
    values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> Interval:
    """Mean, sample std and the Student-t ``level`` interval of the mean (one value: the interval is
    the value itself, std 0; NaN values are an error). ``bounds``: the interval is cut to the metric's
    range (e.g. (0, 100) for a recall in percent), never reaching outside what the metric can be."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"t_interval: expected a non-empty 1-D sequence, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError("t_interval: NaN among the values")
    if not 0.0 < level < 1.0:
        raise ValueError(f"t_interval: level must be in (0, 1), got {level}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, 0.0, mean, mean, 1, level)
    std = float(x.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, x.size - 1) * std / math.sqrt(x.size)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, std, low, high, int(x.size), level)


def _cluster_sums(d: np.ndarray, clusters: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(S, Q) differences -> per seed and cluster sums (S, C) and the queries per cluster (C,)."""
    if clusters is None:
        return d, np.ones(d.shape[1])
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    if inverse.shape != (d.shape[1],):
        raise ValueError(
            f"hierarchical_bootstrap: clusters must have shape ({d.shape[1]},), got {np.shape(clusters)}"
        )
    counts = np.bincount(inverse).astype(np.float64)
    sums = np.stack([np.bincount(inverse, weights=row, minlength=counts.size) for row in d])
    return sums, counts


def _draw_counts(rng: np.random.Generator, k: int, n: int) -> np.ndarray:
    """(k, n): per replicate, how often each of n items is drawn in n draws with replacement."""
    idx = rng.integers(0, n, size=(k, n)) + n * np.arange(k)[:, None]
    return np.bincount(idx.ravel(), minlength=k * n).reshape(k, n).astype(np.float64)


def _crossed_boots(
    sums: np.ndarray, counts: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Replicates of the mean difference: (seeds drawn with replacement, then videos drawn with replacement
    once per replicate and shared by its seeds; the same video draws with every seed kept). Draws are
    counts, so a block holds (k, C) + (k, S) numbers."""
    s, c = sums.shape
    crossed, videos = np.empty(n_boot), np.empty(n_boot)
    step = max(1, 2_000_000 // max(c, s))
    for b0 in range(0, n_boot, step):
        k = min(step, n_boot - b0)
        wv = _draw_counts(rng, k, c)  # (k, C) times each video is drawn
        ws = _draw_counts(rng, k, s)  # (k, S) times each seed is drawn
        per_seed = wv @ sums.T  # (k, S) each seed's sum over the drawn videos
        queries = s * (wv @ counts)  # (k,)
        crossed[b0 : b0 + k] = (ws * per_seed).sum(axis=1) / queries
        videos[b0 : b0 + k] = per_seed.sum(axis=1) / queries
    return crossed, videos


def hierarchical_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray | None = None,
    n_boot: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> HierarchicalTest:
    """Paired difference ``mean(a - b)`` with an interval carrying the seed AND the test-video variance.

    Args:
        a, b: (S, Q) per-query outcomes (e.g. hit@1 in percent) of two variants on the same S seeds and
            the same Q test queries; a 1-D (Q,) array is one seed (the interval then carries videos only).
        clusters: (Q,) the video of every query (its captions are resampled together); None = one each.
        n_boot: resamples (seeds, then videos); level: the interval's coverage.
    Returns:
        :class:`HierarchicalTest`; the interval is ``diff +- t_{df, (1+level)/2} * se`` (module docstring),
        cut to [-100, 100] (a difference of percentages).
    """
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"hierarchical_bootstrap: a and b need the same non-empty shape, got {a.shape}, {b.shape}"
        )
    if n_boot < 2 or not 0.0 < level < 1.0:
        raise ValueError(f"hierarchical_bootstrap: need n_boot >= 2 and 0 < level < 1, got {n_boot}, {level}")
    sums, counts = _cluster_sums(a - b, clusters)  # (S, C), (C,)
    (s, c), total = sums.shape, counts.sum()
    seed_means = sums.sum(axis=1) / total  # (S,) each seed's difference over all test queries
    diff = float(seed_means.mean())
    boots, video_boots = _crossed_boots(sums, counts, n_boot, np.random.default_rng(seed))
    video_var = float(video_boots.var()) * c / max(c - 1, 1)  # between videos (every seed kept)
    seed_var = float(seed_means.var(ddof=1)) / s if s > 1 else 0.0  # unbiased: the small-sample correction
    var = seed_var + video_var
    parts = [(seed_var, s - 1), (video_var, c - 1)]
    df = var**2 / sum(v**2 / n for v, n in parts if n > 0 and v > 0) if var > 0 else math.inf
    se = math.sqrt(var)
    half = t_quantile(0.5 + level / 2.0, df) * se if var > 0 else 0.0
    p = 2.0 * (1.0 - _t_cdf(abs(diff) / se, df)) if var > 0 else float(diff == 0.0)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(boots, [alpha, 1.0 - alpha])
    bounded = (max(diff - half, -100.0), min(diff + half, 100.0))
    return HierarchicalTest(
        diff, *bounded, min(1.0, p), se, df, float(low), float(high), a.shape[1], s, n_boot
    )


def hits_at_k(h: Sequence[int], e: Sequence[int], k: int = 1, ties: str = "average") -> np.ndarray:
    """Per-query ``100 * P(rank < k)`` of text->video queries from their rank counts (one ground truth)."""
    h, e = np.asarray(h, np.int64), np.asarray(e, np.int64)
    if h.shape != e.shape:
        raise ValueError(f"hits_at_k: h and e differ in shape: {h.shape} vs {e.shape}")
    _, p = rank_outcomes(h, e, np.ones_like(h), (k,), ties)
    return 100.0 * p[k]
