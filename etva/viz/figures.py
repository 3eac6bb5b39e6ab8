"""Pictures of a trained model, as matplotlib figures from plain arrays (no torch, no pyplot state).

- :func:`retrieval_gallery`: per caption, the top-K retrieved clips as thumbnails, ground truth framed;
- :func:`word_cluster_heatmap`: word -> NetVLAD cluster soft-assignment weights per caption (the
  paper's "visualization of weight allocation");
- :func:`expert_mixture_bars`: the per-expert mixture weights of a few queries;
- :func:`recall_curve`: R@K for every K, text->video and video->text, with the chance line.

Figures are built on the Agg canvas directly (headless, thread-safe, no global pyplot figures);
:func:`png_bytes` renders one.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from etva.eval.metrics import check_inputs, count_ranks, rank_outcomes

__all__ = [
    "GT_COLOUR",
    "png_bytes",
    "retrieval_gallery",
    "word_cluster_heatmap",
    "expert_mixture_bars",
    "ranks_from_similarity",
    "recall_at_k",
    "recall_curve",
]

GT_COLOUR = "#00c000"  # frame of a ground-truth clip in the gallery
GT_RGB = (0, 192, 0)
MISS_COLOUR = "#d0d0d0"


def _figure(width_in: float, height_in: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _frame(ax, colour: str, width: float) -> None:
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def retrieval_gallery(
    captions: Sequence[str],
    topk_thumbs: np.ndarray,
    gt_marks: np.ndarray,
    scores: np.ndarray,
    gt_ranks: Sequence[float] | None = None,
) -> Figure:
    """One row per caption: the caption, then its top-K clips (best first), ground truth framed green.

    Args:
        captions: Q query texts.
        topk_thumbs: uint8 (Q, K, H, W, 3) thumbnails of the retrieved clips.
        gt_marks: bool (Q, K), True where the retrieved clip is the caption's ground truth.
        scores: (Q, K) similarity of each retrieved clip.
        gt_ranks: optional Q 1-based ranks of the ground truth (shown under the caption).
    """
    thumbs, marks, scores = np.asarray(topk_thumbs), np.asarray(gt_marks, bool), np.asarray(scores)
    q = len(captions)
    if thumbs.ndim != 5 or thumbs.shape[0] != q or thumbs.shape[-1] != 3:
        raise ValueError(f"topk_thumbs: expected (Q={q}, K, H, W, 3), got {thumbs.shape}")
    k = thumbs.shape[1]
    if marks.shape != (q, k) or scores.shape != (q, k):
        raise ValueError(f"gt_marks/scores: expected ({q}, {k}), got {marks.shape}/{scores.shape}")
    if gt_ranks is not None and len(gt_ranks) != q:
        raise ValueError(f"gt_ranks: expected {q} values, got {len(gt_ranks)}")
    height = 1.7 * q + 0.5
    fig = _figure(2.6 + 1.5 * k, height)
    grid = fig.add_gridspec(
        q,
        k + 1,
        width_ratios=[2.2] + [1.0] * k,
        wspace=0.08,
        hspace=0.35,
        left=0.02,
        right=0.98,
        bottom=0.1 / height,
        top=1.0 - 0.55 / height,
    )
    for i in range(q):
        tax = fig.add_subplot(grid[i, 0])
        tax.axis("off")
        text = "\n".join(textwrap.wrap(captions[i], 28)[:5])
        if gt_ranks is not None:
            text += f"\n(ground truth at rank {gt_ranks[i]:g})"
        tax.text(0.0, 0.5, text, va="center", ha="left", fontsize=8, transform=tax.transAxes)
        for j in range(k):
            ax = fig.add_subplot(grid[i, j + 1])
            ax.imshow(thumbs[i, j], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            hit = bool(marks[i, j])
            _frame(ax, GT_COLOUR if hit else MISS_COLOUR, 5.0 if hit else 0.8)
            ax.set_title(f"#{j + 1} {scores[i, j]:.3f}" + (" GT" if hit else ""), fontsize=7)
            ax.set_gid(f"thumb-{i}-{j}")
    fig.suptitle(f"text->video retrieval: top-{k} (ground truth framed green)", fontsize=10)
    return fig


def word_cluster_heatmap(
    tokens: Sequence[Sequence[str]],
    weights: Sequence[np.ndarray],
    titles: Sequence[str] | None = None,
) -> Figure:
    """One panel per caption: rows = word pieces, columns = NetVLAD clusters, colour = weight.

    Args:
        tokens: per caption, its L_i word pieces (padding removed).
        weights: per caption, (L_i, K) soft-assignment weights of those tokens.
        titles: optional panel titles.
    """
    if len(tokens) != len(weights) or not tokens:
        raise ValueError(
            f"tokens/weights: expected the same non-zero count, got {len(tokens)}/{len(weights)}"
        )
    ws = [np.asarray(w, np.float64) for w in weights]
    for i, (t, w) in enumerate(zip(tokens, ws)):
        if w.ndim != 2 or w.shape[0] != len(t):
            raise ValueError(f"weights[{i}]: expected ({len(t)}, K), got {w.shape}")
    k = ws[0].shape[1]
    if any(w.shape[1] != k for w in ws):
        raise ValueError(f"weights: every caption needs the same number of clusters K={k}")
    vmax = max(1e-6, max(float(w.max()) for w in ws if w.size))
    n, rows = len(ws), max(len(t) for t in tokens)
    fig = _figure(max(4.0, 1.2 + 0.28 * k) * n, 1.8 + 0.24 * rows, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    image = None
    for i, ax in enumerate(axes):
        image = ax.imshow(ws[i], aspect="auto", cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_yticks(range(len(tokens[i])), [str(t) for t in tokens[i]], fontsize=7)
        ax.set_xticks(range(k), [str(c) for c in range(k)], fontsize=6)
        ax.set_xlabel("cluster", fontsize=8)
        if titles is not None:
            ax.set_title("\n".join(textwrap.wrap(titles[i], 40)[:2]), fontsize=8)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="assignment weight")
    fig.suptitle("word -> cluster assignment weights (shared NetVLAD)", fontsize=10)
    return fig


def expert_mixture_bars(queries: Sequence[str], weights: np.ndarray, expert_names: Sequence[str]) -> Figure:
    """Grouped horizontal bars: for every query, the mixture weight given to each expert.

    Args:
        queries: Q query texts.
        weights: (Q, E) mixture weights (rows sum to 1 over the available experts).
        expert_names: E names.
    """
    w = np.asarray(weights, np.float64)
    if w.shape != (len(queries), len(expert_names)):
        raise ValueError(f"weights: expected ({len(queries)}, {len(expert_names)}), got {w.shape}")
    if not np.all(np.isfinite(w)) or w.min() < 0 or np.any(w.sum(1) > 1.0 + 1e-4):
        raise ValueError("weights: expected finite non-negative rows summing to at most 1")
    q, e = w.shape
    fig = _figure(7.5, 0.9 + 0.25 * q * e + 0.3 * q)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / e
    y = np.arange(q)
    for j, name in enumerate(expert_names):
        ax.barh(y + j * height - 0.4 + height / 2, w[:, j], height, label=name)
    labels = ["\n".join(textwrap.wrap(s, 32)[:2]) for s in queries]
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("mixture weight")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("per-expert mixture weights of the global alignment", fontsize=10)
    fig.tight_layout()
    return fig


def ranks_from_similarity(sim, query_to_video) -> dict[str, np.ndarray]:
    """0-based (expected, ties averaged) ranks of the ground truth, as in :mod:`etva.eval.metrics`.

    Returns ``{"t2v": (Q,), "v2t": (V',)}`` (v2t: the best caption of each video with captions).
    """
    qv = check_inputs(tuple(sim.shape), query_to_video, (1,), "average")
    c = count_ranks(sim, qv)
    t2v, _ = rank_outcomes(c.t2v_h, c.t2v_e, np.ones(c.t2v_h.shape[0], np.int64), ())
    keep = c.v2t_m > 0
    v2t, _ = rank_outcomes(c.v2t_h[keep], c.v2t_e[keep], c.v2t_m[keep], ())
    return {"t2v": t2v, "v2t": v2t}


def recall_at_k(ranks: np.ndarray, max_k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(K = 1..max_k, R@K in percent)`` from 0-based ranks."""
    r = np.asarray(ranks, np.float64)
    ks = np.arange(1, max_k + 1)
    return ks, 100.0 * (r[None, :] < ks[:, None]).mean(1)


def recall_curve(ranks: Mapping[str, np.ndarray], num_candidates: Mapping[str, int]) -> Figure:
    """R@K against K (log axis) per direction, R@1/5/10 marked, with the chance line ``100 K / N``.

    Args:
        ranks: direction name -> 0-based ranks of its queries (e.g. from :func:`ranks_from_similarity`).
        num_candidates: direction name -> number of candidates N (videos for t2v, captions for v2t).
    """
    if not ranks:
        raise ValueError("recall_curve: no ranks given")
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for name, r in ranks.items():
        n = int(num_candidates[name])
        if n < 1 or len(r) == 0:
            raise ValueError(f"recall_curve: '{name}' needs ranks and num_candidates >= 1")
        ks, rec = recall_at_k(r, n)
        (line,) = ax.step(ks, rec, where="post", label=f"{name} ({len(r)} queries, N={n})")
        marks = [k for k in (1, 5, 10) if k <= n]
        ax.plot(marks, rec[np.asarray(marks) - 1], "o", color=line.get_color())
        ax.plot(ks, 100.0 * ks / n, ":", color=line.get_color(), linewidth=0.8)
    ax.set_xscale("log")
    n_max = max(int(n) for n in num_candidates.values())
    ax.set_xticks([k for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000) if k < n_max] + [n_max])
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 101)
    ax.set_xlabel("K")
    ax.set_ylabel("R@K (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("recall at K (dotted: chance)", fontsize=10)
    fig.tight_layout()
    return fig
