"""Retrieval metrics: pure functions of a (queries x videos) similarity matrix.

Definitions (DESIGN.md section 6): ``rank`` is the 0-based position of the ground truth when the
candidates are sorted by descending similarity; ``R@K = 100 * mean(rank < K)``,
``MdR = median(rank) + 1``, ``MnR = mean(rank) + 1``.

Ties. For one query with ground-truth set G, ``s*`` is the best ground-truth score, ``m`` the number of
ground truths scoring ``s*``, ``h`` the other candidates scoring above ``s*`` and ``e`` the other
candidates scoring exactly ``s*``. The tie policies are:

- ``"average"`` (default): the expectation over a uniformly random order of tied candidates:
  ``E[rank] = h + e / (m + 1)`` (per query; MdR is the median of these, MnR their mean) and
  ``P(rank < K) = 1 - C(e, K - h) / C(e + m, K - h)`` for ``0 < K - h <= e``, 1 when ``K - h > e``,
  0 when ``K - h <= 0``. A constant matrix scores chance (R@1 = 100 / N).
- ``"optimistic"``: rank = h (ties resolved in favour of the ground truth).
- ``"pessimistic"``: rank = h + e.

Directions. text->video (``t2v``): every row is a query, its ground truth the column
``query_to_video[i]`` (m = 1). video->text (``v2t``): every column is a query over ALL rows (captions),
its ground truths are all captions of that video, and the video's rank is the rank of its best-scored
caption (collaborative-experts/VSE convention). Videos without any caption cannot be ranked in v2t:
they are excluded from the v2t averages with a logged warning (``missing="exclude"``, default) or
raise (``missing="error"``); they stay candidates for t2v.

The per-query counting (h, e, m) is done here on the full matrix and in
:func:`etva.retrieval.chunked_retrieval_metrics` chunk by chunk; both hand the counts to the same
:func:`rank_outcomes` / :func:`summarize`, so the two paths give identical numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "TIE_POLICIES",
    "retrieval_metrics",
    "rank_outcomes",
    "summarize",
    "check_inputs",
    "v2t_best_caption",
]

logger = logging.getLogger(__name__)

TIE_POLICIES = ("average", "optimistic", "pessimistic")
MISSING_POLICIES = ("exclude", "error")


def to_numpy(x: Any) -> np.ndarray:
    """A numpy view of ``x`` (numpy array, sequence or torch tensor on any device)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        return x.detach().cpu().numpy()
    return np.asarray(x)


def sim_to_numpy(sim: Any) -> np.ndarray:
    """Similarities as a float numpy array (bf16/f16 -> f32, integers -> f64; f32/f64 kept)."""
    if hasattr(sim, "detach") and sim.dtype.is_floating_point and sim.element_size() < 4:
        sim = sim.detach().float()
    arr = to_numpy(sim)
    return arr if arr.dtype.kind == "f" else arr.astype(np.float64)


def check_inputs(
    shape: tuple[int, ...],
    query_to_video: Any,
    ks: Sequence[int],
    ties: str,
    missing: str = "exclude",
) -> np.ndarray:
    """Validate the arguments shared by the naive and chunked paths; return ``query_to_video`` (int64)."""
    if len(shape) != 2:
        raise ValueError(f"sim: expected a 2-D (num_queries, num_videos) matrix, got shape {shape}")
    num_q, num_v = shape
    if num_q == 0 or num_v == 0:
        raise ValueError(f"sim: empty similarity matrix of shape {shape}")
    if ties not in TIE_POLICIES:
        raise ValueError(f"ties: unknown policy '{ties}', expected one of {TIE_POLICIES}")
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing: unknown policy '{missing}', expected one of {MISSING_POLICIES}")
    if not ks or any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks: expected positive integers, got {tuple(ks)}")
    if query_to_video is None:
        if num_q != num_v:
            raise ValueError(
                f"sim: shape {shape} is not square; pass query_to_video (the video of every query)"
            )
        return np.arange(num_q, dtype=np.int64)
    qv = to_numpy(query_to_video)
    if qv.ndim != 1 or qv.shape[0] != num_q:
        raise ValueError(
            f"query_to_video: expected shape ({num_q},) (one video per query row of sim), got {qv.shape}"
        )
    if qv.dtype.kind not in "iu":
        raise ValueError(f"query_to_video: expected integer video indices, got dtype {qv.dtype}")
    qv = qv.astype(np.int64)
    bad = np.flatnonzero((qv < 0) | (qv >= num_v))
    if bad.size:
        raise ValueError(
            f"query_to_video: {bad.size} entries outside [0, {num_v}) "
            f"(first: query {bad[0]} -> video {qv[bad[0]]})"
        )
    return qv


def check_finite_block(block: np.ndarray, row_offset: int = 0) -> None:
    """Raise if ``block`` (rows of sim starting at ``row_offset``) holds NaN."""
    nan = np.isnan(block)
    if nan.any():
        rows, cols = np.nonzero(nan)
        raise ValueError(
            f"sim: {int(nan.sum())} NaN similarities (first at query {rows[0] + row_offset}, video {cols[0]})"
        )


def v2t_best_caption(
    gt_scores: np.ndarray, query_to_video: np.ndarray, num_videos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per video: best ground-truth caption score ``s*`` and how many of its captions score ``s*``.

    Args:
        gt_scores: (Q,) ``sim[i, query_to_video[i]]``.
        query_to_video: (Q,) int64.
    Returns:
        ``(s_star (V,), m (V,) int64)``; videos without captions get ``s* = nan``, ``m = 0``.
    """
    s_star = np.full(num_videos, -np.inf, dtype=np.float64)
    np.maximum.at(s_star, query_to_video, gt_scores.astype(np.float64))
    at_best = gt_scores.astype(np.float64) == s_star[query_to_video]
    m = np.bincount(query_to_video[at_best], minlength=num_videos).astype(np.int64)
    s_star[m == 0] = np.nan
    return s_star.astype(gt_scores.dtype), m


def _at_most_k_prob(h: np.ndarray, e: np.ndarray, m: np.ndarray, k: int) -> np.ndarray:
    """``P(rank < k)`` under a uniformly random order of the ``e + m`` tied candidates."""
    r = k - h  # positions left for the tied block
    # C(e, r) / C(e + m, r) = prod_{i < r} (e - i) / (e + m - i): all first r tied slots are negatives
    in_block = (r > 0) & (r <= e)
    ratio = np.ones(h.shape, dtype=np.float64)
    for i in range(k):
        use = in_block & (i < r)
        ratio = np.where(use, ratio * (e - i) / np.maximum(e + m - i, 1), ratio)
    prob = np.where(r > e, 1.0, 0.0)
    return np.where(in_block, 1.0 - ratio, prob)


def rank_outcomes(
    h: np.ndarray, e: np.ndarray, m: np.ndarray, ks: Sequence[int], ties: str = "average"
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-query (expected) rank and ``P(rank < K)`` from the tie counts (the one tie implementation).

    Args:
        h: (N,) candidates (not ground truth) strictly above the best ground-truth score.
        e: (N,) candidates (not ground truth) equal to it.
        m: (N,) ground truths at the best score (>= 1).
    Returns:
        ``(rank (N,) float64, {K: P(rank < K) (N,) float64})``.
    """
    h, e, m = (np.asarray(a, dtype=np.int64) for a in (h, e, m))
    if ties == "optimistic":
        rank = h.astype(np.float64)
        return rank, {k: (h < k).astype(np.float64) for k in ks}
    if ties == "pessimistic":
        rank = (h + e).astype(np.float64)
        return rank, {k: (h + e < k).astype(np.float64) for k in ks}
    if ties != "average":
        raise ValueError(f"ties: unknown policy '{ties}', expected one of {TIE_POLICIES}")
    rank = h + e / (m + 1.0)
    return rank, {k: _at_most_k_prob(h, e, m, int(k)) for k in ks}


def summarize(prefix: str, rank: np.ndarray, p_at_k: dict[int, np.ndarray]) -> dict[str, float]:
    """``{prefix}_R{K}`` (percent), ``{prefix}_MdR`` and ``{prefix}_MnR`` (1-based) from per-query values."""
    out = {f"{prefix}_R{k}": float(100.0 * p.mean()) for k, p in p_at_k.items()}
    out[f"{prefix}_MdR"] = float(np.median(rank) + 1.0)
    out[f"{prefix}_MnR"] = float(rank.mean() + 1.0)
    return out


def handle_missing_videos(m: np.ndarray, missing: str) -> np.ndarray:
    """Boolean mask of the videos ranked in v2t; warn about (or reject) videos without captions."""
    has_caption = m > 0
    n_missing = int((~has_caption).sum())
    if n_missing:
        first = np.flatnonzero(~has_caption)[:5].tolist()
        msg = f"v2t: {n_missing} of {m.size} videos have no caption (first video indices: {first})"
        if missing == "error":
            raise ValueError(msg)
        logger.warning("%s; excluded from the v2t metrics", msg)
    return has_caption


def retrieval_metrics(
    sim: Any,
    query_to_video: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "average",
    missing: str = "exclude",
) -> dict[str, float]:
    """Text->video and video->text R@K, MdR and MnR of a full similarity matrix.

    Args:
        sim: (num_queries, num_videos) numpy array or torch tensor; row = caption, column = video.
        query_to_video: (num_queries,) int, the video of every caption; None = diagonal (square sim).
        ks: the K of R@K.
        ties: "average" | "optimistic" | "pessimistic" (see the module docstring).
        missing: videos without any caption in v2t: "exclude" (logged) or "error".
    Returns:
        ``{"t2v_R1", ..., "t2v_MdR", "t2v_MnR", "v2t_R1", ..., "v2t_MnR"}`` as floats.
    """
    s = sim_to_numpy(sim)
    qv = check_inputs(s.shape, query_to_video, ks, ties, missing)
    check_finite_block(s)
    num_q, num_v = s.shape
    gt = s[np.arange(num_q), qv]  # (Q,)
    # t2v: the ground truth itself is one of the candidates equal to s*, hence the -1
    h_t = (s > gt[:, None]).sum(axis=1)
    e_t = (s == gt[:, None]).sum(axis=1) - 1
    out = summarize("t2v", *rank_outcomes(h_t, e_t, np.ones(num_q, np.int64), ks, ties))
    # v2t: no caption of video j scores above s*_j, and exactly m_j of them equal it
    s_star, m = v2t_best_caption(gt, qv, num_v)
    keep = handle_missing_videos(m, missing)
    h_v = (s > s_star[None, :]).sum(axis=0)
    e_v = (s == s_star[None, :]).sum(axis=0) - m
    rank, p = rank_outcomes(h_v[keep], e_v[keep], m[keep], ks, ties)
    out.update(summarize("v2t", rank, p))
    return out
