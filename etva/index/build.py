"""Build or update an index: what to encode for a source, and the rows of encoded videos.

A source is a folder of video files (key = path relative to the folder, group = its sub-folder) or a
Parquet feature store (key = video id, group = the split of the model's own dataset that lists the video:
:func:`dataset_splits`; '' when no annotation of the checkpoint's data config lists it). :func:`plan` compares a source with the index: files
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
from etva.data.sources import load_records
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
    "dataset_splits",
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


def dataset_splits(data_cfg) -> dict[str, str]:
    """video id -> split name, from the annotations of a checkpoint's data config (dataset, root, subset).

    The splits are the ones the config names (train_split, val_split unless it is carved from train by
    ``val_from_train``, test_split); a video listed by two keeps the first of that order. A split whose
    annotations cannot be read (root moved, files missing) is logged and lists nothing.
    """
    names = [data_cfg.train_split, "" if data_cfg.val_from_train > 0 else data_cfg.val_split, data_cfg.test_split]
    out: dict[str, str] = {}
    for split in dict.fromkeys(n for n in names if n):
        try:
            records = load_records(data_cfg.dataset, data_cfg.root, split, data_cfg.subset,
                                   max_caption_chars=data_cfg.max_caption_chars)  # fmt: skip
        except (OSError, ValueError) as e:  # AnnotationError is a ValueError
            log.warning("split '%s' of %s at '%s': annotations not readable (%s)", split, data_cfg.dataset,
                        data_cfg.root, e)  # fmt: skip
            continue
        for rec in records:
            out.setdefault(rec.video_id, split)
    return out


def source_items(kind: str, path: str | os.PathLike, data_cfg=None) -> list[Item]:
    """The videos of a source: ``folder`` (video files) or ``store`` (a Parquet feature store's ids).

    With ``data_cfg`` (the checkpoint's data config) a store video's group is its dataset split; the
    number of store videos no split lists is logged.
    """
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
        splits = dataset_splits(data_cfg) if data_cfg is not None else {}
        missing = sum(1 for i in ids if i not in splits)
        if data_cfg is not None and missing:
            log.warning("--store %s: %d of %d videos are in no split of %s at '%s' (indexed without a split; "
                        "a split filter never returns them)", root, missing, len(ids), data_cfg.dataset,
                        data_cfg.root)  # fmt: skip
        return [Item(i, "", splits.get(i, ""), (0, 0)) for i in ids]
    raise ValueError(f"source kind '{kind}': expected 'folder' or 'store'")


def plan(store: IndexStore, source: int, items: list[Item]) -> tuple[list[Item], set[str]]:
    """(items to encode, stale keys to drop) to bring ``source``'s rows up to date with ``items``."""
    known, failed, groups = store.known(source), store.failed(source), store.groups(source)
    current = {it.key: it.stat for it in items}
    stale = {k for k, st in known.items() if current.get(k) != st}
    stale |= {it.key for it in items if it.key in groups and groups[it.key] != it.group}  # e.g. a new split
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
