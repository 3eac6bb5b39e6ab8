"""Decoded-example cache (``data.cache``): decode every clip once, reuse it for every later epoch.

Without it each epoch decodes every clip again although the sampled frames are the same (the decode
has no temporal augmentation). Modes:

- ``none``: decode every epoch (the streaming pipeline of ``ray_jobs.data``).
- ``memory``: decode once into Ray's object store (``Dataset.materialize``) when the job starts; every
  epoch reads the blocks from there.
- ``disk``: decode once into Parquet shards under ``<ray.storage_path>/decoded-cache/<key>/``; later
  epochs, the trials of a sweep and resumed runs read them. ``<key>`` hashes the decode settings, the
  video files (path, size, mtime) and the caption ids, so a change to any of them is a new cache; the
  folder is renamed into place only when complete (a killed writer leaves no half cache behind).

Before decoding, the decoded size is estimated (clips x the bytes of one decoded example,
``etva.data.example.example_nbytes``): ``memory`` refuses when it passes :data:`OBJECT_STORE_SHARE` of
the cluster's object store (Ray would spill to disk, for hours on a large split), ``disk`` when it passes
the free space of the cache's filesystem; the message names the other modes.

A cached training split is re-ordered every epoch by block order plus a local shuffle buffer in the
worker (``ray_jobs.batches``), instead of the full shuffle of the index rows that the streaming path does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import ray
import ray.data

from etva.config import DataConfig
from etva.data.example import example_nbytes

__all__ = ["DECODE_FIELDS", "cache_key", "cached", "disk_cache_dir"]

logger = logging.getLogger(__name__)

# the DataConfig fields that change what decode_stage produces
DECODE_FIELDS = (
    "dataset", "num_frames", "frame_size", "audio_rate", "num_mel_bins", "max_audio_s",
    "features_dir", "max_feature_tokens", "feature_store", "decode_clips",
)  # fmt: skip


def _file_id(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, int(st.st_mtime)]
    except OSError:
        return [path, -1, -1]


def cache_key(rows: list[dict], data_cfg: DataConfig) -> str:
    """A digest of what the decoded rows depend on: decode settings, video files, row contents."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(data_cfg).items() if k in DECODE_FIELDS}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for row in rows:
        h.update(json.dumps(_file_id(row["video_path"])).encode())
        for key in sorted(row):
            value = row[key]
            h.update(key.encode())
            h.update(value.tobytes() if hasattr(value, "tobytes") else repr(value).encode())
    return h.hexdigest()[:24]


def disk_cache_dir(rows: list[dict], data_cfg: DataConfig, storage: str) -> Path:
    """The folder of the ``data.cache=disk`` cache of ``rows`` (complete when it holds ``_COMPLETE``)."""
    return Path(storage) / "decoded-cache" / cache_key(rows, data_cfg)


def cached(decoded, rows: list[dict], data_cfg: DataConfig, storage: str, name: str):
    """``decoded`` (a lazy Dataset of decoded rows) cached as ``data_cfg.cache`` says."""
    if data_cfg.cache == "none":
        return decoded
    if data_cfg.cache == "memory":
        _check_object_store(estimated_bytes(rows, data_cfg), len(rows), name)
        logger.info("%s: decoding %d clips once into the object store (data.cache=memory)", name, len(rows))
        return decoded.materialize()
    return _disk(decoded, rows, data_cfg, storage, name)


OBJECT_STORE_SHARE = 0.8  # of the cluster's object store a data.cache=memory split may fill


def estimated_bytes(rows: list[dict], data_cfg: DataConfig) -> int:
    """Decoded size of ``rows``: the arrays of one decoded example plus the row's own arrays, per row."""
    own = sum(np.asarray(v).nbytes for v in rows[0].values() if isinstance(v, np.ndarray)) if rows else 0
    return len(rows) * (example_nbytes(data_cfg) + own)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _check_object_store(need: int, clips: int, name: str) -> None:
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    if store and need > OBJECT_STORE_SHARE * store:
        raise ValueError(
            f"{name}: data.cache=memory would hold about {_gib(need)} of decoded clips ({clips} clips) in "
            f"an object store of {_gib(store)} (more than {OBJECT_STORE_SHARE:.0%}: Ray would spill it to "
            "disk). Set data.cache=disk (decoded once into Parquet under ray.storage_path) or "
            "data.cache=none (decoded every epoch)"
        )


def _check_free_space(folder: Path, need: int, clips: int, name: str) -> None:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise ValueError(
            f"{name}: data.cache=disk would write about {_gib(need)} of decoded clips ({clips} clips) to "
            f"{folder}, but its filesystem has {_gib(free)} free. Free space there, set ray.storage_path "
            "to a larger filesystem, or set data.cache=none (decoded every epoch)"
        )


def _disk(decoded, rows: list[dict], data_cfg: DataConfig, storage: str, name: str):
    if "://" in storage:
        raise ValueError(
            f"data.cache=disk needs a local or shared-filesystem ray.storage_path, got {storage}"
        )
    folder = disk_cache_dir(rows, data_cfg, storage)
    if not (folder / "_COMPLETE").is_file():
        _check_free_space(folder, estimated_bytes(rows, data_cfg), len(rows), name)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
        logger.info("%s: decoding %d clips once into %s (data.cache=disk)", name, len(rows), folder)
        try:
            decoded.write_parquet(str(tmp))
            (tmp / "_COMPLETE").write_text(json.dumps({"rows": len(rows)}))
            if folder.exists():  # another writer finished first: keep theirs
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    else:
        logger.info("%s: reusing the decoded cache %s", name, folder)
    return ray.data.read_parquet(str(folder), file_extensions=["parquet"])
