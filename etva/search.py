"""Text-to-video search over a folder of videos with a trained checkpoint, with a cached video index.

The folder is encoded once: each video goes through the training decode (:func:`make_video_example` with
the checkpoint's data config) and ``model.encode_video``; the per-video embeddings are cached with each
file's mtime and size in ``<videos>/.etva_index/<model key>.pt`` (or any ``index_path``). Later calls
re-use the cache and update it incrementally: new or changed files are encoded, deleted ones dropped,
files that failed to decode are remembered (and retried only when they change). A query is tokenized
with the checkpoint's tokenizer, encoded with ``encode_text`` and scored against every video with
``model.similarity(...)["fused"]`` (the retrieval score of every alignment mode).

Library code: PyTorch and PyAV only (no Ray, no MLflow).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from etva.data.records import ClipRecord
from etva.inference import encode_records, encode_texts, load_trained
from etva.model.etva import ETVA, VideoEmbedding

__all__ = [
    "SearchError",
    "Searcher",
    "VideoIndex",
    "Hit",
    "VIDEO_EXTS",
    "load_searcher",
    "list_videos",
    "default_index_path",
    "update_index",
    "search",
]

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
INDEX_DIR = ".etva_index"
INDEX_VERSION = 1
EMB_FIELDS = ("experts", "available", "local")  # VideoEmbedding fields, stored per video


class SearchError(ValueError):
    """A user-facing search problem (no videos, unusable checkpoint, unreadable index)."""


@dataclass
class Searcher:
    """A model ready for search: eval mode, with its data config, tokenizer and a cache key."""

    model: ETVA
    data_cfg: object  # etva.config.DataConfig of the checkpoint
    tokenizer: object
    key: str  # identifies the weights + config: the index file name


@dataclass
class Hit:
    path: str  # relative to the videos folder
    score: float
    rank: int  # 1-based


@dataclass
class VideoIndex:
    """Per-video embeddings of a folder; ``paths`` are relative to the folder, rows follow ``paths``."""

    key: str
    paths: list[str] = field(default_factory=list)
    stats: list[tuple[int, int]] = field(default_factory=list)  # (mtime_ns, size) per path
    emb: dict[str, torch.Tensor] = field(default_factory=dict)  # field -> (V, ...) tensor
    failed: dict[str, tuple[int, int, str]] = field(default_factory=dict)  # path -> (mtime_ns, size, reason)

    def embedding(self) -> VideoEmbedding:
        return VideoEmbedding(**{f: self.emb.get(f) for f in EMB_FIELDS})

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically (temp file + rename)."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "version": INDEX_VERSION,
            "key": self.key,
            "paths": list(self.paths),
            "stats": torch.tensor(self.stats, dtype=torch.int64).reshape(-1, 2),
            "emb": dict(self.emb),
            "failed": {p: list(v) for p, v in self.failed.items()},
        }
        tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        torch.save(payload, tmp)
        os.replace(tmp, out)

    @classmethod
    def load(cls, path: str | os.PathLike, key: str) -> VideoIndex | None:
        """The index at ``path`` if it exists and belongs to ``key`` (else None: rebuild)."""
        p = Path(path)
        if not p.is_file():
            return None
        try:
            data = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt cache is rebuilt, not fatal
            log.warning("ignoring unreadable index %s (%s); rebuilding", p, e)
            return None
        if not isinstance(data, dict) or data.get("version") != INDEX_VERSION or data.get("key") != key:
            log.info("index %s is for another model or version; rebuilding", p)
            return None
        stats = [(int(a), int(b)) for a, b in data["stats"].tolist()]
        failed = {k: (int(v[0]), int(v[1]), str(v[2])) for k, v in data["failed"].items()}
        return cls(key, list(data["paths"]), stats, dict(data["emb"]), failed)


def _checkpoint_key(ckpt_dir: Path) -> str:
    """sha256 of the checkpoint manifest (covers model.pt, config.yaml and the tokenizer)."""
    return hashlib.sha256((ckpt_dir / "MANIFEST.json").read_bytes()).hexdigest()[:16]


def load_searcher(ckpt_dir: str | os.PathLike) -> Searcher:
    """Load a local checkpoint directory (verified) into a :class:`Searcher`.

    Raises:
        SearchError: no model.pt in ``ckpt_dir``.
        etva.train.checkpoint.CheckpointError: an incomplete checkpoint (no config.yaml or tokenizer/ folder, ...).
    """
    root = Path(ckpt_dir)
    if not (root / "model.pt").is_file():
        raise SearchError(f"{root}: not a checkpoint directory (no model.pt)")
    model, cfg, tok = load_trained(root)
    return Searcher(model, cfg.data, tok, _checkpoint_key(root))


def list_videos(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Video files under ``folder`` (recursive, hidden folders skipped): relative path -> (mtime_ns, size)."""
    root = Path(folder)
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(VIDEO_EXTS) and not name.startswith("."):
                path = Path(dirpath) / name
                st = path.stat()
                out[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return out


def default_index_path(folder: str | os.PathLike, key: str) -> Path:
    return Path(folder) / INDEX_DIR / f"{key}.pt"


def encode_videos(
    searcher: Searcher,
    folder: Path,
    paths: list[str],
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> tuple[list[str], dict[str, torch.Tensor], dict[str, str]]:
    """Decode (``workers`` threads) and encode ``paths`` in batches.

    Returns:
        (encoded paths, {field: (V, ...) tensor}, {failed path: reason}).
    """
    records = [ClipRecord(Path(p).name, str(folder / p), [], "") for p in paths]
    with tqdm(total=len(paths), unit="video", desc="encode", file=sys.stderr, disable=not progress) as bar:
        enc = encode_records(
            searcher.model, records, searcher.data_cfg, batch_size=batch_size, workers=max(1, workers),
            on_batch=bar.update,
        )  # fmt: skip
    failed = {paths[i]: reason for i, reason in enc.failed.items()}
    for p, reason in failed.items():
        log.warning("skipping %s: %s", p, reason)
    fields = {}
    if enc.video is not None:
        fields = {f: getattr(enc.video, f).cpu() for f in EMB_FIELDS if getattr(enc.video, f) is not None}
    return [paths[i] for i in enc.kept], fields, failed


@dataclass
class UpdateStats:
    reused: int = 0
    encoded: int = 0
    dropped: int = 0
    failed: int = 0  # files that cannot be decoded (new failures and remembered ones)


def update_index(
    searcher: Searcher,
    folder: str | os.PathLike,
    index_path: str | os.PathLike | None = None,
    *,
    batch_size: int = 8,
    workers: int = 2,
    progress: bool = True,
) -> tuple[VideoIndex, UpdateStats]:
    """Load the cached index of ``folder`` for this model, bring it up to date, save it, return it."""
    root = Path(folder)
    if not root.is_dir():
        raise SearchError(f"--videos {root}: not a directory")
    files = list_videos(root)
    if not files:
        raise SearchError(f"--videos {root}: no video files ({', '.join(VIDEO_EXTS)})")
    path = Path(index_path) if index_path else default_index_path(root, searcher.key)
    old = VideoIndex.load(path, searcher.key) or VideoIndex(searcher.key)
    stats = UpdateStats()
    keep = [i for i, p in enumerate(old.paths) if files.get(p) == old.stats[i]]
    stats.reused = len(keep)
    stats.dropped = sum(p not in files for p in old.paths) + sum(p not in files for p in old.failed)
    failed = {p: v for p, v in old.failed.items() if files.get(p) == v[:2]}
    known = {old.paths[i] for i in keep} | set(failed)
    todo = [p for p in files if p not in known]
    idx = torch.tensor(keep, dtype=torch.long)
    new = VideoIndex(
        searcher.key, [old.paths[i] for i in keep], [old.stats[i] for i in keep],
        {f: t[idx] for f, t in old.emb.items()}, failed,
    )  # fmt: skip
    if todo:
        done, emb, errors = encode_videos(searcher, root, todo, batch_size, workers, progress)
        new.paths += done
        new.stats += [files[p] for p in done]
        for f, t in emb.items():
            new.emb[f] = torch.cat([new.emb[f], t]) if f in new.emb else t
        new.failed.update({p: (*files[p], reason) for p, reason in errors.items()})
        stats.encoded = len(done)
    stats.failed = len(new.failed)
    if todo or stats.dropped or not path.is_file():
        try:
            new.save(path)
        except OSError as e:  # e.g. a read-only videos folder: search still works, uncached
            log.warning("cannot write the index %s (%s); pass --index PATH to cache it elsewhere", path, e)
    log.info("index %s: %d reused, %d encoded, %d dropped, %d undecodable", path, stats.reused,
             stats.encoded, stats.dropped, stats.failed)  # fmt: skip
    return new, stats


@torch.no_grad()
def search(
    searcher: Searcher, index: VideoIndex, queries: list[str], top_k: int = 5, video_chunk: int = 4096
) -> list[list[Hit]]:
    """The ``top_k`` videos of the index for each query, best first (fused similarity)."""
    if not index.paths:
        raise SearchError("the index holds no decodable video")
    text = encode_texts(searcher.model, searcher.tokenizer, queries, searcher.data_cfg.max_text_len)
    video = index.embedding()
    scores = torch.cat(
        [
            searcher.model.similarity(text, video[v0 : v0 + video_chunk])["fused"]  # (Q, v)
            for v0 in range(0, len(index.paths), video_chunk)
        ],
        dim=1,
    )  # (Q, V)
    k = min(top_k, scores.shape[1])
    values, cols = scores.topk(k, dim=1)
    return [
        [Hit(index.paths[c], float(s), r + 1) for r, (s, c) in enumerate(zip(vs.tolist(), cs.tolist()))]
        for vs, cs in zip(values, cols)
    ]
