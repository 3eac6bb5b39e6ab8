"""Test-time re-weighting over the query set: inverted softmax and dual softmax ("dsl").

Both re-normalise each video's column of scores over ALL test queries, which damps "hub" videos that
score high for every query and typically raises text->video R@1 by several points on MSRVTT. They use
every test query at once, so they are a property of the test set, not of the model: the project reports
them only as a separate, labelled row (``<split>/reweighted/t2v_R1`` ...), never as the model's score,
and never for checkpoint selection (``eval.reweight``, off by default).

With ``z = scale * s`` and ``L_v = logsumexp_q z(q, v)`` (over the queries of the split):

- ``inverted_softmax``: ``s'(q, v) = exp(z(q, v) - L_v)``, ranked by its log ``z(q, v) - L_v``;
- ``dsl`` (dual softmax): ``s'(q, v) = s(q, v) * exp(z(q, v) - L_v)``.

Memory: two passes over query-row chunks of the (Q, V) score matrix the evaluation already holds; the
only new arrays are ``(query_chunk, V)`` temporaries and ``(V,)`` column statistics (no second matrix).
Only text->video is re-weighted (the queries are the captions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from etva.eval.metrics import check_inputs, rank_outcomes, sim_to_numpy, summarize

__all__ = ["METHODS", "column_logsumexp", "reweight_block", "reweighted_metrics"]

METHODS = ("inverted_softmax", "dsl")


def column_logsumexp(sim, scale: float, query_chunk: int = 2048) -> np.ndarray:
    """(V,) ``logsumexp`` over the rows of ``scale * sim``, streaming over row chunks (float64)."""
    num_q, num_v = sim.shape
    peak = np.full(num_v, -np.inf)
    total = np.zeros(num_v)
    for q0 in range(0, num_q, query_chunk):
        z = scale * sim_to_numpy(sim[q0 : q0 + query_chunk]).astype(np.float64)  # (c, V)
        new_peak = np.maximum(peak, z.max(axis=0))
        total = total * np.exp(peak - new_peak) + np.exp(z - new_peak).sum(axis=0)
        peak = new_peak
    return peak + np.log(total)


def reweight_block(block: np.ndarray, lse: np.ndarray, method: str, scale: float) -> np.ndarray:
    """Re-weighted scores of a block of rows (c, V), given the columns' :func:`column_logsumexp`."""
    log_p = scale * block.astype(np.float64) - lse[None, :]  # log softmax over queries, per column
    if method == "inverted_softmax":
        return log_p
    if method == "dsl":
        return block * np.exp(log_p)
    raise ValueError(f"reweight: unknown method {method!r}, expected one of {METHODS}")


def reweighted_metrics(
    sim,
    query_to_video,
    method: str,
    scale: float,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "average",
    query_chunk: int = 2048,
) -> dict[str, float]:
    """``t2v_R{K}``, ``t2v_MdR``, ``t2v_MnR`` of the re-weighted scores (chunked; no second matrix).

    Args:
        sim: (Q, V) scores (row = caption, column = video), numpy array or memmap.
        query_to_video: (Q,) the video of every caption.
        method: ``inverted_softmax`` or ``dsl``; scale: inverse temperature of the softmax over queries.
    """
    if method not in METHODS:
        raise ValueError(f"reweight: unknown method {method!r}, expected one of {METHODS}")
    if not scale > 0:
        raise ValueError(f"reweight: scale must be > 0, got {scale}")
    qv = check_inputs(tuple(sim.shape), query_to_video, ks, ties)
    lse = column_logsumexp(sim, scale, query_chunk)
    num_q = sim.shape[0]
    h, e = np.empty(num_q, np.int64), np.empty(num_q, np.int64)
    for q0 in range(0, num_q, query_chunk):
        q1 = min(q0 + query_chunk, num_q)
        block = reweight_block(sim_to_numpy(sim[q0:q1]), lse, method, scale)  # (c, V)
        gt = block[np.arange(q1 - q0), qv[q0:q1]][:, None]
        h[q0:q1] = (block > gt).sum(axis=1)
        e[q0:q1] = (block == gt).sum(axis=1) - 1
    return summarize("t2v", *rank_outcomes(h, e, np.ones_like(h), ks, ties))


def format_row(metrics: dict[str, float], prefix: str, method: str) -> str:
    """The labelled table row of ``{prefix}reweighted/t2v_*`` ("" when the metrics hold none)."""
    keys = [f"{prefix}reweighted/t2v_{c}" for c in ("R1", "R5", "R10", "MdR", "MnR")]
    if keys[0] not in metrics:
        return ""
    label = f"text->video re-weighted over all test queries ({method}; NOT the model's own score)"
    return f"{'t2v ' + method:<12}" + "".join(f"{metrics[k]:>9.1f}" for k in keys) + f"   <- {label}"
