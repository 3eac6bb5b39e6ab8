"""Build or update an index: what to encode for a source, and the rows of encoded videos.

A source is a folder of video files (key = path relative to the folder, group = its sub-folder) or a
Parquet feature store (key = video id, group = ''). :func:`plan` compares a source with the index: files
that are new or changed (mtime/size) are to encode, rows whose file is gone or changed are stale;
videos that failed before are retried only when their file changed. :func:`encode_rows` runs the
model's video encoder (the training decode of the checkpoint's data config) and returns the rows of
one index part. ``etva search`` runs them in-process; ``ray_jobs.index_job`` runs :func:`encode_rows`
in a Ray Data actor pool.

Library code: PyTorch, PyAV, pyarrow (no Ray, no MLflow).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from etva.data.feature_store import open_stores
from etva.data.records import ClipRecord
from etva.index.exact import pattern_key, video_vectors
from etva.index.store import IndexError_, IndexStore, ModelId, rows_table
from etva.inference import encode_records, load_trained
from etva.model.etva import ETVA

__all__ = [
    "VIDEO_EXTS",
    "IndexModel",
    "Item",
    "load_index_model",
    "list_videos",
    "source_items",
    "plan",
    "encode_rows",
    "open_for",
    "default_index_dir",
    "digest_of",
]

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass
class IndexModel:
    """A trained model ready to encode videos and queries, with its identity and data config."""

    model: ETVA
    data_cfg: object  # etva.config.DataConfig of the checkpoint
    tokenizer: object
    id: ModelId

    @property
    def dim(self) -> int:
        """Length of a video vector: (E + K) * d of the model's branches."""
        m = self.model
        e = len(m.expert_names) if m.global_align is not None else 0
        k = m.local_align.num_clusters if m.local_align is not None else 0
        return (e + k) * m.expert_type.shape[1]


@dataclass(frozen=True)
class Item:
    """One video of a source."""

    key: str
    path: str  # file relative to the source folder ('' for a feature store)
    group: str  # sub-folder ('' at the top or for a feature store)
    stat: tuple[int, int]  # (mtime_ns, size); (0, 0) for a feature store


def load_index_model(ckpt_dir: str | os.PathLike, name: str = "", version: str = "", uri: str = "") -> IndexModel:
    """Load a local checkpoint directory; its digest is the sha256 of its MANIFEST.json (weights, config,
    tokenizer)."""
    root = Path(ckpt_dir)
    if not (root / "model.pt").is_file():
        raise IndexError_(f"{root}: not a checkpoint directory (no model.pt)")
    model, cfg, tok = load_trained(root)
    return IndexModel(model, cfg.data, tok, ModelId(digest_of(root), name, str(version), uri or str(root)))


def digest_of(ckpt_dir: str | os.PathLike) -> str:
    """The model digest: sha256 of the checkpoint's MANIFEST.json (which hashes weights, config, tokenizer)."""
    return hashlib.sha256((Path(ckpt_dir) / "MANIFEST.json").read_bytes()).hexdigest()


def list_videos(folder: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Video files under ``folder`` (recursive, hidden folders skipped): relative path -> (mtime_ns, size)."""
    root = Path(folder)
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.lower().endswith(VIDEO_EXTS) and not name.startswith("."):
                st = (Path(dirpath) / name).stat()
                out[str((Path(dirpath) / name).relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return out


def _group(rel: str) -> str:
    parent = str(Path(rel).parent)
    return "" if parent == "." else parent


def source_items(kind: str, path: str | os.PathLike) -> list[Item]:
    """The videos of a source: ``folder`` (video files) or ``store`` (a Parquet feature store's ids)."""
    root = Path(path)
    if kind == "folder":
        if not root.is_dir():
            raise IndexError_(f"--videos {root}: not a directory")
        files = list_videos(root)
        if not files:
            raise IndexError_(f"--videos {root}: no video files ({', '.join(VIDEO_EXTS)})")
        return [Item(p, p, _group(p), s) for p, s in files.items()]
    if kind == "store":
        stores = open_stores(root)
        ids = sorted(set().union(*(s.ids() for s in stores.values())))
        if not ids:
            raise IndexError_(f"--store {root}: the feature store holds no video")
        return [Item(i, "", "", (0, 0)) for i in ids]
    raise ValueError(f"source kind '{kind}': expected 'folder' or 'store'")


def plan(store: IndexStore, source: int, items: list[Item]) -> tuple[list[Item], set[str]]:
    """(items to encode, stale keys to drop) to bring ``source``'s rows up to date with ``items``."""
    known, failed = store.known(source), store.failed(source)
    current = {it.key: it.stat for it in items}
    stale = {k for k, st in known.items() if current.get(k) != st}
    stale |= {k for k, v in failed.items() if current.get(k) != tuple(v[:2])}
    done = (set(known) | set(failed)) - stale
    return [it for it in items if it.key not in done], stale


def record_for(kind: str, root: str | os.PathLike, item: Item) -> ClipRecord:
    """The clip record the training decode reads for one item."""
    path = str(Path(root) / item.path) if kind == "folder" else ""
    return ClipRecord(item.key, path, [], "")


def data_config_for(im: IndexModel, kind: str, root: str | os.PathLike):
    """The checkpoint's data config, reading the features of a store source instead of video files."""
    if kind == "store":
        return dataclasses.replace(im.data_cfg, decode_clips=False, feature_store=str(Path(root).resolve()))
    return im.data_cfg


def encode_rows(
    im: IndexModel, kind: str, root: str | os.PathLike, source: int, items: list[Item],
    batch_size: int = 8, workers: int = 1,
) -> tuple[pa.Table, dict[str, tuple[int, int, str]]]:  # fmt: skip
    """Encode ``items`` of one source -> (rows of an index part, {key: (mtime, size, why)} failures)."""
    records = [record_for(kind, root, it) for it in items]
    enc = encode_records(im.model, records, data_config_for(im, kind, root), batch_size=batch_size,
                         workers=max(1, workers))  # fmt: skip
    failed = {items[i].key: (*items[i].stat, why) for i, why in enc.failed.items()}
    for key, (_, _, why) in failed.items():
        log.warning("skipping %s: %s", key, why)
    kept = [items[i] for i in enc.kept]
    if enc.video is None:
        vectors = np.zeros((0, im.dim), np.float32)
        patterns: list[str] = []
    else:
        v = enc.video.to("cpu")
        vec, pat = video_vectors(v.experts, v.available, v.local)  # (n, D), (n, E)
        vectors, patterns = vec.numpy(), [pattern_key(p) for p in pat]
    rows = rows_table([it.key for it in kept], source, [it.path for it in kept], [it.group for it in kept],
                      patterns, vectors, [it.stat for it in kept])  # fmt: skip
    return rows, failed


def open_for(im: IndexModel, index_path: str | os.PathLike) -> IndexStore:
    """The index at ``index_path`` opened for this model (created when absent; refuses another model)."""
    m = im.model
    return IndexStore.open(index_path, im.id, m.alpha, list(m.expert_names) if m.global_align else [], im.dim)


def default_index_dir(source: str | os.PathLike, digest: str, root: str | os.PathLike = "runs/index") -> Path:
    """``<root>/<source name>-<path hash>-<model digest>``: one index per source and model."""
    resolved = str(Path(source).resolve())
    tag = hashlib.sha256(resolved.encode()).hexdigest()[:8]
    return Path(root) / f"{Path(resolved).name}-{tag}-{digest[:12]}"
