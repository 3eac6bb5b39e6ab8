"""Rank-0 scoring of an encoded evaluation split: gather, dedupe, score all pairs, chunked metrics.

Every rank encodes its shard (:func:`etva.train.engine.evaluate`) into an :class:`EncodedStream` of float32
embedding chunks; :func:`score_streams` concatenates them (releasing each chunk as it is copied),
gathers them to rank 0 only (:func:`etva.distributed.gather_to_rank0`: the other ranks never hold the
whole split), and rank 0 scores all pairs in blocks (``etva.eval.similarity.score_all`` +
``FusedScorer``) into one float32 ``(Q, V)`` matrix and ranks it with the chunked metrics (and, given the
split's groups, the binding metric of ``etva.eval.binding``). Rank 0's memory: the split's embeddings +
the score matrix + one block's temporaries.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from etva.distributed import gather_objects, gather_to_rank0, get_rank, get_world_size
from etva.eval.binding import GroupTable, group_counts, metrics_from_group_counts
from etva.eval.metrics import check_inputs, count_ranks, metrics_from_counts
from etva.eval.reweight import reweighted_metrics
from etva.eval.similarity import FusedScorer, score_all
from etva.model.etva import ETVA

__all__ = ["EncodedStream", "score_streams"]

log = logging.getLogger(__name__)


@dataclass
class EncodedStream:
    """One rank's encoded chunks of a split: ``parts`` (Text/VideoEmbedding, float32) and the index
    columns of every chunk (``cols[c][i]``: int64 CPU tensor of column ``c`` for chunk ``i``)."""

    parts: list = field(default_factory=list)
    cols: list[list[Tensor]] = field(default_factory=list)


_TRIM_EVERY = 256 * 2**20  # bytes of freed CPU chunks between two heap trims


def _trim_heap() -> None:
    """Hand freed CPU heap pages back to the OS (glibc ``malloc_trim``); a no-op elsewhere.

    Encoded chunks are small allocations that glibc keeps in its heap after they are freed, so without
    this the resident set would hold the chunks AND their concatenation (twice the split's size).
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL("libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        _libc.malloc_trim(0)


_libc: Any = None


def _cat_consuming(parts: list):
    """Concatenate embedding chunks, releasing each chunk once copied (peak: result + one trim period)."""
    if len(parts) == 1:
        return parts.pop()
    total = sum(len(p) for p in parts)
    out = parts[0].map(lambda t: t.new_empty((total, *t.shape[1:])))
    names = [f.name for f in dataclasses.fields(out) if getattr(out, f.name) is not None]
    on_cpu = all(getattr(out, n).device.type == "cpu" for n in names)
    offset = freed = 0
    for i in range(len(parts)):
        chunk, parts[i] = parts[i], None
        for name in names:
            src = getattr(chunk, name)
            getattr(out, name)[offset : offset + len(chunk)] = src
            freed += src.numel() * src.element_size()
        offset += len(chunk)
        del chunk, src
        if on_cpu and freed >= _TRIM_EVERY:
            _trim_heap()
            freed = 0
    parts.clear()
    if on_cpu:
        _trim_heap()
    return out


def _gather_stream(stream: EncodedStream, device, what: str) -> tuple[Any, list[Tensor]]:
    """This rank's chunks, concatenated and gathered to rank 0 (with their index columns).

    Returns ``(embedding, [index tensors])`` on rank 0 and ``(None, [])`` on the others. Every rank
    raises when no rank encoded anything.
    """
    local = _cat_consuming(stream.parts) if stream.parts else None
    idx = [torch.cat(col) if col else torch.zeros(0, dtype=torch.int64) for col in stream.cols]
    world = get_world_size()
    # a rank with nothing to encode still joins the collectives with empty tensors of the right shape
    # (an empty copy, not a view: pickling a view of 0 rows would send its whole storage)
    spec = None if local is None else local.map(lambda t: torch.empty((0, *t.shape[1:]), dtype=t.dtype))
    templates = [s for s in gather_objects(spec) if s is not None] if world > 1 else [spec]
    if templates[0] is None:
        raise ValueError(f"evaluate: nothing to score (no {what} was encoded on any rank)")
    if world == 1:
        return local, idx
    if local is None:
        local = templates[0].to(device)
    gathered = local.map(gather_to_rank0)  # fields are None on ranks other than 0
    del local
    cols = [gather_to_rank0(i.to(device)) for i in idx]
    return (gathered, [c.cpu() for c in cols]) if get_rank() == 0 else (None, [])


def _device_of(emb) -> torch.device:
    return next(t for t in vars(emb).values() if t is not None).device


def _first_per_index(idx: Tensor) -> Tensor:
    """Positions keeping the first occurrence of every index value, ordered by that value."""
    order = torch.argsort(idx, stable=True)
    keep = torch.ones_like(order, dtype=torch.bool)
    keep[1:] = idx[order][1:] != idx[order][:-1]
    return order[keep]


def _select(emb, cols: list[Tensor], sel: Tensor):
    """Rows ``sel`` of an embedding and its index columns; no copy when ``sel`` keeps every row in order."""
    if len(sel) == len(cols[0]) and torch.equal(sel, torch.arange(len(sel))):
        return emb, cols
    return emb[sel.to(_device_of(emb))], [c[sel] for c in cols]


def _score(core: ETVA, text, video, query_chunk, video_chunk, score_key) -> np.ndarray:
    """All-pairs scores in blocks: ``fused`` through one GEMM per block (FusedScorer, same values
    as ``core.similarity(...)["fused"]``), any other key through ``core.similarity``."""
    if score_key == "fused":
        score_fn = FusedScorer.from_embeddings(text, video, alpha=core.alpha, normalized=True)
    else:

        def score_fn(qs: slice, vs: slice) -> Tensor:
            return core.similarity(text[qs], video[vs])[score_key]

    return score_all(score_fn, len(text), len(video), query_chunk, video_chunk)


def _metrics(
    sim: np.ndarray,
    q2v: np.ndarray,
    ties: str,
    query_chunk: int,
    reweight: str,
    reweight_scale: float,
    groups: GroupTable | None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every metric of the score matrix (rank counts, re-weighted row, binding metric), and the per-caption
    rows (``t2v_h``, ``t2v_e``; with groups ``group_h``, ``group_e``, ``group_size``)."""
    counts = count_ranks(sim, check_inputs(sim.shape, q2v, (1, 5, 10), ties), query_chunk)
    metrics = metrics_from_counts(counts, ties=ties)
    rows = {"t2v_h": counts.t2v_h, "t2v_e": counts.t2v_e}
    if reweight != "none":
        rw = reweighted_metrics(sim, q2v, reweight, reweight_scale, ties=ties, query_chunk=query_chunk)
        metrics.update({f"reweighted/{k}": v for k, v in rw.items()})
    if groups is not None:
        gc = group_counts(sim, q2v, groups, query_chunk)
        metrics.update(metrics_from_group_counts(gc, ties))
        rows.update(group_h=gc.h, group_e=gc.e, group_size=gc.size)
    return metrics, rows


def score_streams(
    core: ETVA,
    videos: EncodedStream,
    captions: EncodedStream,
    device: torch.device | str,
    *,
    query_chunk: int = 2048,
    video_chunk: int | None = None,
    ties: str = "average",
    score_key: str = "fused",
    timings: dict[str, float] | None = None,
    reweight: str = "none",
    reweight_scale: float = 30.0,
    per_query: dict[str, np.ndarray] | None = None,
    groups: GroupTable | None = None,
) -> dict[str, float]:
    """Gather every rank's encoded videos (cols: video_index) and captions (cols: caption_index,
    video_index) to rank 0, dedupe and order them by index, score all pairs in fp32 blocks and compute
    the metrics with the chunked path. Consumes the streams' chunks. Every rank returns rank 0's numbers.
    ``timings`` (if given) receives rank 0's seconds per phase: ``gather_s``, ``score_s``, ``metrics_s``.
    ``reweight`` (``etva.eval.reweight``, not "none") adds ``reweighted/t2v_*`` keys computed over the same
    matrix in chunks. ``per_query`` (if given) receives rank 0's text->video rank counts per caption:
    ``caption_index``, its ``video_index``, ``t2v_h`` and ``t2v_e`` (``etva.eval.metrics.RankCounts``).
    ``groups`` (the compositional benchmark's :class:`etva.eval.binding.GroupTable` of the split, one row
    per ``video_index``) adds the binding metric (``group_R1``, ``group_R1_chance``, ``pair_acc``,
    ``pair_acc_<kind>``) computed over the same matrix in query chunks, and ``group_h``, ``group_e``,
    ``group_size`` to ``per_query`` (``etva.eval.binding.GroupCounts``).
    """
    t0 = time.perf_counter()
    video, vcols = _gather_stream(videos, device, "video")
    text, ccols = _gather_stream(captions, device, "caption")
    if get_rank() != 0:
        return gather_objects(None)[0]
    video, (vid_idx,) = _select(video, vcols, _first_per_index(vcols[0]))
    text, (cap_idx, cap_vid) = _select(text, ccols, _first_per_index(ccols[0]))
    column = {int(v): j for j, v in enumerate(vid_idx.tolist())}
    has_video = torch.tensor([int(v) in column for v in cap_vid.tolist()], dtype=torch.bool)
    if not bool(has_video.all()):
        log.warning(
            "evaluate: %d captions whose video was not encoded (skipped clip) are dropped",
            int((~has_video).sum()),
        )
        text, (cap_idx, cap_vid) = _select(text, [cap_idx, cap_vid], has_video.nonzero(as_tuple=True)[0])
    q2v = np.array([column[int(v)] for v in cap_vid.tolist()], dtype=np.int64)
    t1 = time.perf_counter()
    with torch.no_grad():
        sim = _score(core, text, video, query_chunk, video_chunk, score_key)  # (Q, V) float32
        t2 = time.perf_counter()
        column_groups = None if groups is None else groups.take(vid_idx.numpy())
        metrics, rows = _metrics(sim, q2v, ties, query_chunk, reweight, reweight_scale, column_groups)
    if timings is not None:
        timings.update(gather_s=t1 - t0, score_s=t2 - t1, metrics_s=time.perf_counter() - t2)
    metrics.update(num_videos=float(len(video)), num_queries=float(len(text)))
    if per_query is not None:
        per_query.update(caption_index=cap_idx.numpy(), video_index=vid_idx.numpy()[q2v], **rows)
    if get_world_size() > 1:
        gather_objects(metrics)
    return metrics
