"""Inner-product search over the video vectors of an index, one faiss index per availability pattern.

Exact by default: one matrix product per pattern in torch, ``(Q, D) @ (D, n)``, so a batch of Q queries
reads the pattern's vectors once (faiss's flat search scans them once per query below its BLAS threshold
of 128,000 = queries x dim, 53 queries at 2,432 dims); the scores are the model's, to fp32 rounding. Any
faiss ``index_factory`` string (e.g. ``IVF1024,Flat``, ``IVF1024,PQ64x4fs``, ``IVF1024,SQfp16``) gives an
approximate index whose candidates (``rerank`` per query, at least k) are re-ranked with the exact score
from a float16 copy of the part's vectors: the approximate index only has to find the neighbours, its
lossy scores never rank them. A pattern with too few videos to train an approximate index is searched
exactly.
The text side of each pattern is built by :func:`etva.index.exact.query_vectors`; the top-k of the
parts are merged (docs/serving.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import faiss
import numpy as np
import torch
from torch import Tensor

from etva.index.exact import pattern_from_key, query_vectors

__all__ = ["EXACT", "PatternIndex", "index_bytes"]

log = logging.getLogger(__name__)

EXACT = "Flat"
MIN_TRAIN = 1024  # fewer vectors than this in a pattern: searched exactly whatever the spec
RERANK = 100  # candidates per query an approximate part re-ranks with the exact score


@dataclass
class _Part:
    pattern: torch.Tensor  # (E,) bool
    rows: np.ndarray  # (n,) int64 rows of the whole index, in the order of the part's vectors / faiss ids
    exact: torch.Tensor | None  # (n, D) float32: searched by a matrix product (None: approximate)
    index: faiss.Index | None  # the approximate index (None: exact)
    half: torch.Tensor | None = None  # (n, D) float16: an approximate part's re-rank vectors (None: none)

    def nbytes(self) -> int:
        if self.exact is not None:
            return self.exact.numel() * 4
        return index_bytes(self.index) + (self.half.numel() * 2 if self.half is not None else 0)


def _build(vectors: np.ndarray, spec: str) -> faiss.Index | None:
    """The faiss index of ``spec`` over ``vectors``; None when the part is searched exactly."""
    if spec == EXACT or len(vectors) < MIN_TRAIN:
        return None
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def _exact_search(part: _Part, q: torch.Tensor, k: int, local: np.ndarray | None) -> tuple[Tensor, Tensor]:
    """Top ``k`` of one part by one matrix product: (scores, part-local positions), each (Q, k')."""
    scores = q @ part.exact.T  # (Q, n): the part's vectors read once for the whole batch
    if local is not None:
        keep = torch.zeros(scores.shape[1], dtype=torch.bool)
        keep[torch.from_numpy(local)] = True
        scores.masked_fill_(~keep, float("-inf"))
    return torch.topk(scores, min(k, scores.shape[1] if local is None else len(local)), dim=1)


def _rerank(half: torch.Tensor, q: torch.Tensor, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of each query's candidates (part-local positions, -1 = none) by the exact inner
    product with the float16 vectors ``half``: (scores, positions), each (Q, k'), position -1 where a
    query had fewer candidates."""
    valid = torch.from_numpy(cand >= 0)  # (Q, C)
    idx = torch.from_numpy(np.maximum(cand, 0))
    scores = torch.einsum("qd,qcd->qc", q, half[idx].float()).masked_fill(~valid, float("-inf"))  # (Q, C)
    top = torch.topk(scores, min(k, cand.shape[1]), dim=1)
    pos = torch.gather(idx, 1, top.indices).numpy()
    return top.values.numpy(), np.where(np.isfinite(top.values.numpy()), pos, -1)


def index_bytes(index: faiss.Index) -> int:
    """The size of a faiss index as serialised (its vectors/codes plus the trained quantizers)."""
    return int(faiss.serialize_index(index).nbytes)


class PatternIndex:
    """Search ``vectors`` (N, D) float32 whose rows have availability ``patterns`` (N pattern keys).

    Args:
        vectors: (N, D) video vectors (:func:`etva.index.exact.video_vectors`).
        patterns: N pattern keys (:func:`etva.index.exact.pattern_key`).
        alpha: the model's fusion weight.
        spec: ``Flat`` (exact) or a faiss ``index_factory`` string.
        nprobe: inverted lists visited per query by IVF indexes.
        rerank: candidates per query an approximate part re-ranks exactly (0: its own scores rank them).
    """

    def __init__(
        self,
        vectors: np.ndarray,
        patterns: list[str],
        alpha: float,
        spec: str = EXACT,
        nprobe: int = 16,
        rerank: int = RERANK,
    ) -> None:
        if len(vectors) != len(patterns):
            raise ValueError(f"PatternIndex: {len(vectors)} vectors but {len(patterns)} patterns")
        self.alpha, self.spec, self.nprobe, self.rerank = float(alpha), spec, nprobe, rerank
        self.num_rows = len(vectors)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = np.asarray(patterns, dtype=object)
        self.parts: list[_Part] = []
        for key in sorted(set(patterns)):
            rows = np.flatnonzero(keys == key).astype(np.int64)
            index = _build(vectors[rows], spec)
            exact = torch.from_numpy(vectors[rows]) if index is None else None
            half = (
                torch.from_numpy(vectors[rows].astype(np.float16)) if index is not None and rerank else None
            )
            self.parts.append(_Part(pattern_from_key(key), rows, exact, index, half))

    def nbytes(self) -> int:
        """Bytes of all the parts: the exact parts' fp32 vectors, the approximate parts' faiss indexes and
        float16 re-rank vectors."""
        return sum(p.nbytes() for p in self.parts)

    def _params(self, part: _Part, local: np.ndarray | None):
        sel = faiss.IDSelectorBatch(local) if local is not None else None
        if isinstance(faiss.try_extract_index_ivf(part.index), faiss.IndexIVF):
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.nprobe)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def _search_part(
        self, part: _Part, text, k: int, local: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, part-local positions) of one part, (Q, k'); position -1 where faiss found fewer."""
        q = (
            query_vectors(text.experts, text.logits, text.local, part.pattern, self.alpha)
            .detach()
            .cpu()
            .float()
        )
        if part.exact is not None:
            s, i = _exact_search(part, q, k, local)
            return s.numpy(), i.numpy().astype(np.int64)
        qn = np.ascontiguousarray(q.numpy(), dtype=np.float32)  # (Q, D)
        wanted = min(max(k, self.rerank) if part.half is not None else k, len(part.rows))
        s, i = part.index.search(qn, wanted, params=self._params(part, local))  # (Q, wanted) candidates
        return _rerank(part.half, q, i, k) if part.half is not None else (s, i)

    def search(self, text, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` rows for each query of ``text`` (a TextEmbedding), best first.

        Args:
            text: the queries' TextEmbedding (experts/logits/local, Q rows).
            k: results per query.
            allowed: rows (int64) the results may come from (a filter); None = all.
        Returns:
            (scores (Q, k') float32, rows (Q, k') int64) with ``k' = min(k, rows searched)``.
        """
        scores, rows = [], []
        for part in self.parts:
            local = None if allowed is None else np.flatnonzero(np.isin(part.rows, allowed)).astype(np.int64)
            if local is not None and len(local) == 0:
                continue
            s, i = self._search_part(part, text, k, local)  # (Q, k_p)
            scores.append(np.where(i >= 0, s, -np.inf).astype(np.float32))
            rows.append(np.where(i >= 0, part.rows[np.maximum(i, 0)], -1))
        num_q = len(text)
        if not scores:
            return np.zeros((num_q, 0), np.float32), np.zeros((num_q, 0), np.int64)
        s, r = np.concatenate(scores, axis=1), np.concatenate(rows, axis=1)  # (Q, sum k_p)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        s, r = np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)
        keep = int((r >= 0).all(axis=0).sum()) if len(r) else 0  # drop columns padded by faiss
        return s[:, :keep], r[:, :keep]
