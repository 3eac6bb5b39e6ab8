"""Pictures of a trained checkpoint, logged to its MLflow run under ``pictures/``.

From the best checkpoint and the validation records (driver side, no Ray):

- ``retrieval_gallery.png``: a few validation captions with their top-5 clips among ALL decoded
  validation videos (middle-frame thumbnails), the ground truth framed green;
- ``word_clusters.png``: word-piece -> NetVLAD cluster soft-assignment weights of those captions;
- ``expert_mixture.png``: the per-expert mixture weights of those captions (renormalised over the
  experts available for their ground-truth video);
- ``recall_curve.png``: R@K for every K, both directions, from the full validation ranks.

A picture the model cannot make (no NetVLAD in ``alignment=global``, no mixture in ``local``) is left
out. :func:`log_pictures_safely` never raises: a plotting failure must not fail a finished training run.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from etva.config import Config
from etva.data.decode import decode_clip
from etva.data.example import SKIPPABLE_ERRORS
from etva.data.records import ClipRecord
from etva.data.tokenizer import tokenize
from etva.eval.similarity import score_all
from etva.inference import encode_records, encode_tokens, load_trained
from etva.model import ETVA, TextEmbedding, VideoEmbedding
from etva.model.alignment import mixture_weights
from etva.viz.figures import (
    expert_mixture_bars,
    png_bytes,
    ranks_from_similarity,
    recall_curve,
    retrieval_gallery,
    word_cluster_heatmap,
)

__all__ = ["PICTURES", "SplitScores", "make_pictures", "log_pictures", "log_pictures_safely"]

logger = logging.getLogger(__name__)

PICTURES = ("retrieval_gallery.png", "word_clusters.png", "expert_mixture.png", "recall_curve.png")
ARTIFACT_DIR = "pictures"
THUMB_SIZE = 96
TOP_K = 5


@dataclass
class SplitScores:
    """Everything the pictures need from one encoded split (videos that failed to decode removed)."""

    records: list[ClipRecord]  # the decoded videos, in order
    captions: list[str]  # (Q,) texts of their captions
    query_to_video: np.ndarray  # (Q,) int64 index into records
    input_ids: np.ndarray  # (Q, L)
    attention_mask: np.ndarray  # (Q, L)
    text: TextEmbedding  # Q captions
    video: VideoEmbedding  # V videos
    sim: np.ndarray  # (Q, V) float32 fused similarity


def _encode_videos(
    model: ETVA, records: list[ClipRecord], cfg: Config
) -> tuple[VideoEmbedding, list[ClipRecord]]:
    """Decode + encode every record; clips that fail to decode are skipped (logged)."""
    enc = encode_records(model, records, cfg.data, batch_size=cfg.train.eval_batch_size)
    for i, reason in enc.failed.items():
        logger.warning("pictures: skipping %s: %s", records[i].video_path, reason)
    if enc.video is None:
        raise ValueError("pictures: no validation video could be decoded")
    return enc.video, [records[i] for i in enc.kept]


@torch.no_grad()
def score_split(model: ETVA, cfg: Config, tokenizer, records: list[ClipRecord]) -> SplitScores:
    """Encode the split's videos and captions once and score all pairs (fused similarity)."""
    video, kept = _encode_videos(model, records, cfg)
    captions = [c for r in kept for c in r.captions]
    qv = np.repeat(np.arange(len(kept)), [len(r.captions) for r in kept]).astype(np.int64)
    ids, mask = tokenize(tokenizer, captions, cfg.data.max_text_len)
    text = encode_tokens(model, ids, mask, cfg.train.eval_batch_size)

    def score(qs: slice, vs: slice) -> torch.Tensor:
        return model.similarity(text[qs], video[vs])["fused"]

    sim = score_all(score, len(captions), len(kept), query_chunk=1024)
    return SplitScores(kept, captions, qv, ids, mask, text, video, sim)


def pick_queries(num_captions: int, n: int) -> np.ndarray:
    """``n`` caption indices spread evenly over the split (deterministic)."""
    return np.unique(np.linspace(0, num_captions - 1, min(n, num_captions)).round().astype(np.int64))


def _thumbnail(rec: ClipRecord) -> np.ndarray:
    """(S, S, 3) uint8 middle frame of the clip window (grey when it cannot be decoded)."""
    try:
        clip = decode_clip(
            rec.video_path, 1, THUMB_SIZE, start_s=rec.start_s, end_s=rec.end_s, audio_rate=None
        )
        return clip.frames[0]
    except SKIPPABLE_ERRORS as e:
        logger.warning("pictures: no thumbnail for %s: %s", rec.video_path, e)
        return np.full((THUMB_SIZE, THUMB_SIZE, 3), 128, np.uint8)


def gallery_figure(s: SplitScores, queries: np.ndarray):
    k = min(TOP_K, s.sim.shape[1])
    rows = s.sim[queries]  # (q, V)
    top = np.argsort(-rows, axis=1, kind="stable")[:, :k]  # (q, k)
    gt = s.query_to_video[queries]
    ranks = ranks_from_similarity(s.sim, s.query_to_video)["t2v"][queries] + 1
    thumbs = np.stack([[_thumbnail(s.records[v]) for v in row] for row in top])  # (q, k, S, S, 3)
    scores = np.take_along_axis(rows, top, axis=1)
    return retrieval_gallery([s.captions[i] for i in queries], thumbs, top == gt[:, None], scores, ranks)


@torch.no_grad()
def word_cluster_figure(model: ETVA, tokenizer, s: SplitScores, queries: np.ndarray):
    ids, mask = torch.from_numpy(s.input_ids[queries]), torch.from_numpy(s.attention_mask[queries])
    weights = model.text_cluster_assignments(ids, mask).numpy()  # (q, L, K)
    lens = mask.sum(1).tolist()
    tokens = [tokenizer.convert_ids_to_tokens(ids[i, :n].tolist()) for i, n in enumerate(lens)]
    return word_cluster_heatmap(
        tokens, [weights[i, :n] for i, n in enumerate(lens)], [s.captions[i] for i in queries]
    )


def mixture_figure(model: ETVA, s: SplitScores, queries: np.ndarray):
    gt = torch.from_numpy(s.query_to_video[queries])
    pair = mixture_weights(s.text.logits[torch.from_numpy(queries)], s.video.available[gt])  # (q, q, E)
    w = torch.diagonal(pair, dim1=0, dim2=1).t().numpy()  # (q, E): each caption with its own video
    return expert_mixture_bars([s.captions[i] for i in queries], w, model.expert_names)


def curve_figure(s: SplitScores):
    ranks = ranks_from_similarity(s.sim, s.query_to_video)
    return recall_curve(ranks, {"t2v": s.sim.shape[1], "v2t": s.sim.shape[0]})


def make_pictures(
    ckpt_dir: str | Path,
    records: list[ClipRecord],
    out_dir: str | Path,
    num_queries: int = 4,
    max_videos: int = 1000,
) -> list[Path]:
    """Write the PNGs of :data:`PICTURES` that the model supports into ``out_dir``; return their paths.

    The gallery and the recall curve rank against all decoded videos of ``records`` (the first
    ``max_videos`` of a larger split).
    """
    model, cfg, tokenizer = load_trained(ckpt_dir)
    if len(records) > max_videos:
        logger.info("pictures: ranking against the first %d of %d videos", max_videos, len(records))
        records = records[:max_videos]
    s = score_split(model, cfg, tokenizer, records)
    queries = pick_queries(len(s.captions), num_queries)
    figures = {
        "retrieval_gallery.png": lambda: gallery_figure(s, queries),
        "recall_curve.png": lambda: curve_figure(s),
    }
    if model.local_align is not None:
        figures["word_clusters.png"] = lambda: word_cluster_figure(model, tokenizer, s, queries)
    if model.global_align is not None:
        figures["expert_mixture.png"] = lambda: mixture_figure(model, s, queries)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PICTURES:
        if name in figures:
            (out / name).write_bytes(png_bytes(figures[name]()))
            paths.append(out / name)
    return paths


def log_pictures(client, run_id: str, ckpt_dir: str | Path, records: list[ClipRecord], **kwargs) -> list[str]:
    """Make the pictures and log them to the MLflow run as ``pictures/<name>.png``; return those paths."""
    with tempfile.TemporaryDirectory(prefix="etva-pictures-") as tmp:
        paths = make_pictures(ckpt_dir, records, tmp, **kwargs)
        for p in paths:
            client.log_artifact(run_id, str(p), ARTIFACT_DIR)
    logged = [f"{ARTIFACT_DIR}/{p.name}" for p in paths]
    logger.info("logged %s to MLflow run %s", logged, run_id)
    return logged


def log_pictures_safely(
    client, run_id: str, ckpt_dir: str | Path, records: list[ClipRecord], **kwargs
) -> list[str]:
    """:func:`log_pictures`, but any failure is a logged warning and ``[]`` (training already succeeded)."""
    try:
        return log_pictures(client, run_id, ckpt_dir, records, **kwargs)
    except Exception as e:  # plots are a by-product: never fail the run for them
        logger.warning(
            "pictures for MLflow run %s failed (the run is unaffected): %s: %s", run_id, type(e).__name__, e
        )
        return []
