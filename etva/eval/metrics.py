"""Retrieval metrics: pure functions of a (queries x videos) similarity matrix.

Definitions (docs/design.md, Metrics): ``rank`` is the 0-based position of the ground truth when the
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

The per-query counting (h, e, m) is done in ONE place, :func:`count_ranks`, streaming over query-row
chunks (one chunk = the whole matrix); :func:`retrieval_metrics`,
:func:`retrieval_metrics` with ``query_chunk`` and :func:`etva.viz.figures.ranks_from_similarity` all use it
and hand the counts to the same :func:`rank_outcomes` / :func:`summarize`, so their numbers agree.

Model selection (checkpoints, sweep trials, ``etva best``) uses one rule, :func:`selection_key`:
the highest t2v R@1, ties broken by the lower t2v MdR. :data:`METRIC_NAMES` lists the metric names
and :func:`format_table` prints them as the paper-style table.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "TIE_POLICIES",
    "METRIC_NAMES",
    "HEADLINE_METRICS",
    "SELECTION_METRIC",
    "TIE_BREAK_METRIC",
    "RankCounts",
    "count_ranks",
    "metrics_from_counts",
    "selection_key",
    "ranking_order_by",
    "format_table",
    "retrieval_metrics",
    "rank_outcomes",
    "summarize",
    "check_inputs",
    "v2t_best_caption",
]

logger = logging.getLogger(__name__)

TIE_POLICIES = ("average", "optimistic", "pessimistic")
MISSING_POLICIES = ("exclude", "error")

_COLUMNS = ("R1", "R5", "R10", "MdR", "MnR")
# every metric name :func:`retrieval_metrics` returns with the default ks, in table order
METRIC_NAMES: tuple[str, ...] = tuple(f"{d}_{c}" for d in ("t2v", "v2t") for c in _COLUMNS)
SELECTION_METRIC = "t2v_R1"  # model selection: the highest of this ...
TIE_BREAK_METRIC = "t2v_MdR"  # ... ties broken by the lowest of this
# the slice of METRIC_NAMES shown in run rankings and sweep summaries (one row per run)
HEADLINE_METRICS: tuple[str, ...] = ("t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1")


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


@dataclass(frozen=True)
class RankCounts:
    """Per-query tie counts (module docstring): how many candidates beat / tie the best ground truth."""

    t2v_h: np.ndarray  # (Q,) videos strictly above the caption's ground-truth score
    t2v_e: np.ndarray  # (Q,) other videos equal to it
    v2t_h: np.ndarray  # (V,) captions strictly above the video's best caption score s*
    v2t_e: np.ndarray  # (V,) non-ground-truth captions equal to s*
    v2t_m: np.ndarray  # (V,) captions of the video scoring s* (0: the video has no caption)


def _gt_scores(sim: Any, qv: np.ndarray) -> np.ndarray:
    """``sim[i, qv[i]]`` for every query as a float numpy array (O(Q), no chunk-sized temporaries)."""
    if hasattr(sim, "detach"):  # torch.Tensor: index on its own device
        import torch  # optional here: numpy callers (etva best, the CLI) never load torch (2.5 s of CPU)

        idx = torch.as_tensor(qv, device=sim.device)
        return sim_to_numpy(sim[torch.arange(sim.shape[0], device=sim.device), idx])
    s = np.asarray(sim)
    gt = s[np.arange(s.shape[0]), qv]
    return gt if gt.dtype.kind == "f" else gt.astype(np.float64)


def count_ranks(sim: Any, query_to_video: np.ndarray, query_chunk: int | None = None) -> RankCounts:
    """The one rank counter: tie counts of both directions, streaming over query-row chunks.

    Args:
        sim: (Q, V) numpy array (or memmap) or torch tensor; row = caption, column = video.
        query_to_video: (Q,) int64 video of every caption, already checked (:func:`check_inputs`).
        query_chunk: rows per chunk (temporaries are ``(query_chunk, V)``); None = all rows at once.
    Raises:
        ValueError: a NaN similarity (names its query and video).
    """
    num_q, num_v = sim.shape
    chunk = query_chunk or num_q
    gt = _gt_scores(sim, query_to_video)  # (Q,)
    s_star, m = v2t_best_caption(gt, query_to_video, num_v)  # (V,), (V,)
    h_t, e_t = np.empty(num_q, np.int64), np.empty(num_q, np.int64)
    h_v, e_v = np.zeros(num_v, np.int64), np.zeros(num_v, np.int64)
    for q0 in range(0, num_q, chunk):
        q1 = min(q0 + chunk, num_q)
        block = sim_to_numpy(sim[q0:q1])  # (c, V)
        check_finite_block(block, q0)
        g = gt[q0:q1, None]
        h_t[q0:q1] = (block > g).sum(axis=1)
        # t2v: the ground truth itself is one of the candidates equal to its score, hence the -1
        e_t[q0:q1] = (block == g).sum(axis=1) - 1
        h_v += (block > s_star[None, :]).sum(axis=0)
        e_v += (block == s_star[None, :]).sum(axis=0)
    # v2t: no caption of video j scores above s*_j, and exactly m_j of them equal it
    return RankCounts(h_t, e_t, h_v, e_v - m, m)


def metrics_from_counts(
    counts: RankCounts, ks: Sequence[int] = (1, 5, 10), ties: str = "average", missing: str = "exclude"
) -> dict[str, float]:
    """``t2v_*`` and ``v2t_*`` R@K / MdR / MnR from :func:`count_ranks` (caption-less videos: ``missing``)."""
    t2v_m = np.ones(counts.t2v_h.shape[0], np.int64)
    out = summarize("t2v", *rank_outcomes(counts.t2v_h, counts.t2v_e, t2v_m, ks, ties))
    keep = handle_missing_videos(counts.v2t_m, missing)
    h, e, m = counts.v2t_h[keep], counts.v2t_e[keep], counts.v2t_m[keep]
    out.update(summarize("v2t", *rank_outcomes(h, e, m, ks, ties)))
    return out


def retrieval_metrics(
    sim: Any,
    query_to_video: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "average",
    missing: str = "exclude",
    query_chunk: int | None = None,
) -> dict[str, float]:
    """Text->video and video->text R@K, MdR and MnR of a similarity matrix.

    Args:
        sim: (num_queries, num_videos) numpy array or torch tensor; row = caption, column = video.
        query_to_video: (num_queries,) int, the video of every caption; None = diagonal (square sim).
        ks: the K of R@K.
        ties: "average" | "optimistic" | "pessimistic" (see the module docstring).
        missing: videos without any caption in v2t: "exclude" (logged) or "error".
        query_chunk: count ranks over this many rows at a time; None = the whole matrix at once.
    Returns:
        ``{"t2v_R1", ..., "t2v_MdR", "t2v_MnR", "v2t_R1", ..., "v2t_MnR"}`` as floats.
    """
    qv = check_inputs(tuple(sim.shape), query_to_video, ks, ties, missing)
    if query_chunk is not None and query_chunk <= 0:
        raise ValueError(f"query_chunk must be positive, got {query_chunk}")
    return metrics_from_counts(count_ranks(sim, qv, query_chunk), ks, ties, missing)


# --------------------------------------------------------------------------------------------------
# model selection and the results table


def _value(metrics: Mapping[str, float], key: str) -> float | None:
    v = metrics.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def selection_key(metrics: Mapping[str, float], prefix: str = "val/") -> tuple[float, float]:
    """Sort key of the selection rule, higher is better: ``(R@1, -MdR)`` of ``{prefix}t2v_*``.

    A missing (or NaN) R@1 ranks below every present one; a missing MdR below every present MdR.
    ``max(results, key=selection_key)`` is the best result; sort with ``reverse=True`` for best first.
    """
    r1 = _value(metrics, f"{prefix}{SELECTION_METRIC}")
    mdr = _value(metrics, f"{prefix}{TIE_BREAK_METRIC}")
    return (-math.inf if r1 is None else r1, -math.inf if mdr is None else -mdr)


def ranking_order_by(prefix: str = "best/") -> list[str]:
    """:func:`selection_key` (highest R@1, ties by lowest MdR) as an MLflow ``order_by`` over the metrics
    ``{prefix}t2v_R1`` and ``{prefix}t2v_MdR`` (what ``etva best`` asks the tracking server for)."""
    return [f"metrics.`{prefix}{SELECTION_METRIC}` DESC", f"metrics.`{prefix}{TIE_BREAK_METRIC}` ASC"]


def format_table(metrics: Mapping[str, float], prefix: str = "val/") -> str:
    """Paper-style table: R@1, R@5, R@10, MdR, MnR for both directions (missing values print nan)."""
    lines = [f"{'direction':<12}" + "".join(f"{c:>9}" for c in ("R@1", "R@5", "R@10", "MdR", "MnR"))]
    for d, name in (("t2v", "text->video"), ("v2t", "video->text")):
        vals = [metrics.get(f"{prefix}{d}_{c}", float("nan")) for c in _COLUMNS]
        lines.append(f"{name:<12}" + "".join(f"{v:>9.1f}" for v in vals))
    return "\n".join(lines)
