"""All-pairs scoring and retrieval metrics for large splits, in chunks.

Memory model: the only allocation that grows with ``queries x videos`` is the float32 similarity
matrix itself (MSRVTT Full: 59,800 x 2,990 x 4 B = 715 MB). Everything else is bounded by a chunk:

- :func:`score_all` fills a preallocated ``(Q, V)`` float32 array by calling a pairwise scorer on
  ``(query_chunk x video_chunk)`` blocks under ``torch.no_grad``;
- :func:`chunked_retrieval_metrics` streams over query-row chunks: text->video counts per row, and
  video->text counts per column accumulated over the chunks. It hands the same integer tie counts to
  :func:`etva.metrics.rank_outcomes` as :func:`etva.metrics.retrieval_metrics`, so the numbers are
  identical to the full-matrix path;
- :class:`FusedScorer` scores ETVA's ``alpha * s_global + (1 - alpha) * s_local`` for a block as ONE
  matmul per expert-availability pattern (see its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from etva.metrics import (
    check_finite_block,
    check_inputs,
    handle_missing_videos,
    rank_outcomes,
    sim_to_numpy,
    summarize,
    v2t_best_caption,
)

__all__ = ["score_all", "chunked_retrieval_metrics", "evaluate_scorer", "FusedScorer"]

logger = logging.getLogger(__name__)

ScoreFn = Callable[[slice, slice], Tensor]


def score_all(
    score_fn: ScoreFn,
    num_queries: int,
    num_videos: int,
    query_chunk: int = 2048,
    video_chunk: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fill a ``(num_queries, num_videos)`` float32 matrix block by block.

    Args:
        score_fn: ``score_fn(q_slice, v_slice) -> Tensor (q, v)`` similarities of the queries and
            videos in the two slices (any device/float dtype).
        query_chunk / video_chunk: block size; ``video_chunk=None`` = all videos at once.
        out: optional preallocated float32 array to fill.
    Returns:
        The filled float32 array.
    """
    if num_queries <= 0 or num_videos <= 0:
        raise ValueError(f"score_all: need positive sizes, got {num_queries} x {num_videos}")
    if query_chunk <= 0 or (video_chunk is not None and video_chunk <= 0):
        raise ValueError(f"score_all: chunk sizes must be positive, got {query_chunk}, {video_chunk}")
    video_chunk = video_chunk or num_videos
    if out is None:
        out = np.empty((num_queries, num_videos), dtype=np.float32)
    elif out.shape != (num_queries, num_videos) or out.dtype != np.float32:
        raise ValueError(f"score_all: out must be float32 {(num_queries, num_videos)}")
    with torch.no_grad():
        for q0 in range(0, num_queries, query_chunk):
            qs = slice(q0, min(q0 + query_chunk, num_queries))
            for v0 in range(0, num_videos, video_chunk):
                vs = slice(v0, min(v0 + video_chunk, num_videos))
                block = score_fn(qs, vs)
                expected = (qs.stop - qs.start, vs.stop - vs.start)
                if tuple(block.shape) != expected:
                    raise ValueError(
                        f"score_fn({qs}, {vs}) returned shape {tuple(block.shape)}, expected {expected}"
                    )
                out[qs, vs] = block.detach().float().cpu().numpy()
    return out


def _rows(sim: Any, q0: int, q1: int) -> np.ndarray:
    """Rows ``q0:q1`` of a numpy array or torch tensor as a float numpy array."""
    return sim_to_numpy(sim[q0:q1])


def _gt_scores(sim: Any, qv: np.ndarray) -> np.ndarray:
    """``sim[i, qv[i]]`` for every query (O(Q), no chunk-sized temporaries)."""
    if isinstance(sim, Tensor):
        idx = torch.as_tensor(qv, device=sim.device)
        return sim_to_numpy(sim[torch.arange(sim.shape[0], device=sim.device), idx])
    s = np.asarray(sim)
    gt = s[np.arange(s.shape[0]), qv]
    return gt if gt.dtype.kind == "f" else gt.astype(np.float64)


def chunked_retrieval_metrics(
    sim: Any,
    query_to_video: Any = None,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "average",
    missing: str = "exclude",
    query_chunk: int = 4096,
) -> dict[str, float]:
    """Same result as :func:`etva.metrics.retrieval_metrics`, streaming over query-row chunks.

    Temporaries are ``(query_chunk, num_videos)``; no full-size boolean/int matrix is built.
    ``sim`` may be a numpy array (e.g. from :func:`score_all`, or a memmap) or a torch tensor.
    """
    qv = check_inputs(tuple(sim.shape), query_to_video, ks, ties, missing)
    if query_chunk <= 0:
        raise ValueError(f"query_chunk must be positive, got {query_chunk}")
    num_q, num_v = sim.shape
    gt = _gt_scores(sim, qv)  # (Q,)
    s_star, m = v2t_best_caption(gt, qv, num_v)  # (V,), (V,)
    h_t = np.empty(num_q, np.int64)
    e_t = np.empty(num_q, np.int64)
    h_v = np.zeros(num_v, np.int64)
    e_v = np.zeros(num_v, np.int64)
    for q0 in range(0, num_q, query_chunk):
        q1 = min(q0 + query_chunk, num_q)
        block = _rows(sim, q0, q1)  # (c, V)
        check_finite_block(block, q0)
        g = gt[q0:q1, None]
        h_t[q0:q1] = (block > g).sum(axis=1)
        e_t[q0:q1] = (block == g).sum(axis=1) - 1
        h_v += (block > s_star[None, :]).sum(axis=0)
        e_v += (block == s_star[None, :]).sum(axis=0)
    e_v -= m
    out = summarize("t2v", *rank_outcomes(h_t, e_t, np.ones(num_q, np.int64), ks, ties))
    keep = handle_missing_videos(m, missing)
    out.update(summarize("v2t", *rank_outcomes(h_v[keep], e_v[keep], m[keep], ks, ties)))
    return out


def evaluate_scorer(
    score_fn: ScoreFn,
    query_to_video: Any,
    num_videos: int,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "average",
    query_chunk: int = 2048,
    video_chunk: int | None = None,
) -> dict[str, float]:
    """Score all pairs with :func:`score_all`, then :func:`chunked_retrieval_metrics`."""
    num_q = len(query_to_video)
    sim = score_all(score_fn, num_q, num_videos, query_chunk, video_chunk)
    return chunked_retrieval_metrics(sim, query_to_video, ks, ties, query_chunk=query_chunk)


class FusedScorer:
    """ETVA all-pairs similarity ``alpha * s_global + (1 - alpha) * s_local`` as one matmul per block.

    ``s_global(q, v) = sum_e w_e(q, v) cos(t_qe, v_ve)`` with ``w(q, v) = softmax`` of the text's
    mixture logits over the experts available for video ``v``; ``s_local(q, v) = (1/K) sum_k
    <t_qk, v_vk>`` over L2-normalised cluster descriptors.

    Trick: for a fixed availability pattern ``p`` (a set of experts) the weights depend on the query
    only, so the whole similarity is one inner product in a ``(E + K) * d`` space:
    ``text_p(q) = [alpha * w_p(q)_e * t_qe/|t_qe| (e=1..E) ; (1-alpha)/K * t_qk (k=1..K)]`` and
    ``video(v) = [v_ve/|v_ve| * avail_ve ; v_vk]``. Videos are grouped by pattern (a handful in
    practice: all experts, no audio, ...), so scoring stays one GEMM per pattern and block. A video with
    no available expert gets ``s_global = 0``.

    Args:
        text_global: (Q, E, d) per-expert text embeddings (normalised here).
        text_logits: (Q, E) mixture logits.
        video_global: (V, E, d) per-expert video embeddings (normalised here).
        video_avail: (V, E) bool, expert available for the video.
        text_local / video_local: (Q, K, d) / (V, K, d) cluster descriptors (normalised here per cluster).
        alpha: fusion weight of the global score.
    """

    def __init__(
        self,
        text_global: Tensor,
        text_logits: Tensor,
        video_global: Tensor,
        video_avail: Tensor,
        text_local: Tensor,
        video_local: Tensor,
        alpha: float,
    ) -> None:
        num_q, num_e, d = text_global.shape
        num_v, num_k = video_local.shape[0], video_local.shape[1]
        _check_shape("text_logits", text_logits, (num_q, num_e))
        _check_shape("video_global", video_global, (num_v, num_e, d))
        _check_shape("video_avail", video_avail, (num_v, num_e))
        _check_shape("text_local", text_local, (num_q, num_k, d))
        _check_shape("video_local", video_local, (num_v, num_k, d))
        self.alpha = float(alpha)
        self.num_k = num_k
        self.text_global = F.normalize(text_global.float(), dim=-1)  # (Q, E, d)
        self.text_local = F.normalize(text_local.float(), dim=-1)  # (Q, K, d)
        self.text_logits = text_logits.float()  # (Q, E)
        avail = video_avail.bool()
        vg = F.normalize(video_global.float(), dim=-1) * avail[..., None]  # (V, E, d)
        vl = F.normalize(video_local.float(), dim=-1)  # (V, K, d)
        self.video = torch.cat([vg.flatten(1), vl.flatten(1)], dim=1)  # (V, (E+K)*d)
        self.patterns, self.video_pattern = torch.unique(avail, dim=0, return_inverse=True)
        logger.debug("FusedScorer: %d availability patterns over %d videos", len(self.patterns), num_v)

    def text_features(self, qs: slice, pattern: Tensor) -> Tensor:
        """(q, (E+K)*d) text side of the inner product for one availability pattern (E,) bool."""
        logits = self.text_logits[qs].masked_fill(~pattern, float("-inf"))  # (q, E)
        w = torch.softmax(logits, dim=-1) if pattern.any() else torch.zeros_like(logits)
        tg = self.alpha * w[..., None] * self.text_global[qs]  # (q, E, d)
        tl = self.text_local[qs] * ((1.0 - self.alpha) / self.num_k)  # (q, K, d)
        return torch.cat([tg.flatten(1), tl.flatten(1)], dim=1)

    def __call__(self, qs: slice, vs: slice) -> Tensor:
        """(q, v) similarities of the queries in ``qs`` and the videos in ``vs``."""
        video = self.video[vs]  # (v, (E+K)*d)
        pattern_of = self.video_pattern[vs]  # (v,)
        present = torch.unique(pattern_of)
        if present.numel() == 1:  # the common case: one GEMM, no scatter
            return self.text_features(qs, self.patterns[present[0]]) @ video.T
        out = video.new_empty((qs.stop - qs.start, video.shape[0]))
        for p in present.tolist():
            cols = (pattern_of == p).nonzero(as_tuple=True)[0]
            out[:, cols] = self.text_features(qs, self.patterns[p]) @ video[cols].T
        return out


def _check_shape(name: str, t: Tensor, expected: tuple[int, ...]) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"FusedScorer: {name} has shape {tuple(t.shape)}, expected {expected}")
