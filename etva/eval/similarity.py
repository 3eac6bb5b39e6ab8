"""All-pairs scoring and retrieval metrics for large splits, in chunks.

Memory model: the only allocation that grows with ``queries x videos`` is the float32 similarity
matrix itself (MSRVTT Full: 59,800 x 2,990 x 4 B = 715 MB). Everything else is bounded by a chunk:

- :func:`score_all` fills a preallocated ``(Q, V)`` float32 array by calling a pairwise scorer on
  ``(query_chunk x video_chunk)`` blocks under ``torch.no_grad``;
- :func:`etva.eval.metrics.retrieval_metrics` with ``query_chunk`` streams over query-row chunks through the one rank counter,
  :func:`etva.eval.metrics.count_ranks` (text->video counts per row, video->text counts per column
  accumulated over the chunks), so the numbers are identical to the full-matrix path;
- :class:`FusedScorer` scores ETVA's ``alpha * s_global + (1 - alpha) * s_local`` for a block as ONE
  matmul per expert-availability pattern (see its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from etva.index.exact import query_vectors, video_vectors

__all__ = ["score_all", "FusedScorer"]

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


class FusedScorer:
    """ETVA all-pairs similarity ``alpha * s_global + (1 - alpha) * s_local`` as one matmul per block.

    ``s_global(q, v) = sum_e w_e(q, v) cos(t_qe, v_ve)`` with ``w(q, v) = softmax`` of the text's
    mixture logits over the experts available for video ``v``; ``s_local(q, v) = (1/K) sum_k
    <t_qk, v_vk>`` over L2-normalised cluster descriptors.

    Trick: for a fixed availability pattern ``p`` (a set of experts) the weights depend on the query
    only, so the whole similarity is one inner product in a ``(E + K) * d`` space:
    ``text_p(q) = [alpha * w_p(q)_e * t_qe (e=1..E) ; (1-alpha)/K * t_qk (k=1..K)]`` and
    ``video(v) = [v_ve * avail_ve ; v_vk]`` (unit vectors). Videos are grouped by pattern (a handful in
    practice: all experts, no audio, ...), so scoring stays one GEMM per pattern and block, with the
    same multiply-adds as the per-expert matmuls but none of their ``(q, v)`` elementwise passes. A
    video with no available expert gets ``s_global = 0``.

    Either side may be absent (pass None for all its tensors): ``global``/``local`` alignment ablations
    then score with that branch alone (weight 1).

    Args:
        text_global: (Q, E, d) per-expert text embeddings.
        text_logits: (Q, E) mixture logits (including any log prior).
        video_global: (V, E, d) per-expert video embeddings.
        video_avail: (V, E) bool, expert available for the video.
        text_local / video_local: (Q, K, d) / (V, K, d) cluster descriptors.
        alpha: fusion weight of the global score.
        normalized: True when the embeddings are already L2-normalised (per expert / per cluster),
            as the model returns them; False normalises them here (a copy).
    """

    def __init__(
        self,
        text_global: Tensor | None,
        text_logits: Tensor | None,
        video_global: Tensor | None,
        video_avail: Tensor | None,
        text_local: Tensor | None,
        video_local: Tensor | None,
        alpha: float = 0.5,
        normalized: bool = False,
    ) -> None:
        has_g, has_l = text_global is not None, text_local is not None
        if not (has_g or has_l):
            raise ValueError("FusedScorer: neither global nor local embeddings given")
        norm = (lambda t: t.float()) if normalized else (lambda t: F.normalize(t.float(), dim=-1))
        self.alpha = float(alpha)
        self.text_global = self.text_local = self.text_logits = None
        if has_g:
            num_q, num_e, d = text_global.shape
            num_v = video_global.shape[0]
            _check_shape("text_logits", text_logits, (num_q, num_e))
            _check_shape("video_global", video_global, (num_v, num_e, d))
            _check_shape("video_avail", video_avail, (num_v, num_e))
            self.text_global, self.text_logits = norm(text_global), text_logits.float()
        if has_l:
            num_q, num_k, d = text_local.shape
            _check_shape("video_local", video_local, (video_local.shape[0], num_k, d))
            self.text_local = norm(text_local)
        self.video, avail = video_vectors(  # (V, (E+K)*d), (V, E)
            norm(video_global) if has_g else None, video_avail, norm(video_local) if has_l else None
        )
        if has_g:
            self.patterns, self.video_pattern = torch.unique(avail, dim=0, return_inverse=True)
        else:  # one trivial pattern
            self.patterns = torch.zeros(1, 0, dtype=torch.bool)
            self.video_pattern = torch.zeros(len(self.video), dtype=torch.long)
        logger.debug("FusedScorer: %d availability patterns", len(self.patterns))

    @classmethod
    def from_embeddings(cls, text: Any, video: Any, alpha: float, normalized: bool = True) -> FusedScorer:
        """From objects with ``experts/logits/local`` (text) and ``experts/available/local`` (video)."""
        return cls(
            text.experts, text.logits, video.experts, video.available, text.local, video.local,
            alpha=alpha, normalized=normalized,
        )  # fmt: skip

    def text_features(self, qs: slice, pattern: Tensor) -> Tensor:
        """(q, (E+K)*d) text side of the inner product for one availability pattern (E,) bool."""
        glob = None if self.text_global is None else self.text_global[qs]
        logits = None if self.text_logits is None else self.text_logits[qs]
        local = None if self.text_local is None else self.text_local[qs]
        return query_vectors(glob, logits, local, pattern, self.alpha)

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
