"""Ray Data pipeline from a Parquet feature store alone: no video file is opened.

Each expert's shards are read with ``ray.data.read_parquet`` (local paths or object-storage URIs), gathered
once into an Arrow table in the object store, and broadcast to a small actor pool that turns index rows
into model inputs by ``video_id`` (a broadcast join: the stores are small next to the videos, and Ray
Data's hash join needs ``polars``). Rows come out like ``ray_jobs.data.build_video_dataset``'s, minus the
raw-clip columns: ``feat/<e>`` float32 (N, D), ``feat_mask/<e>`` bool (N,), ``ok``, ``video_index`` and
the caption columns. A clip lacking one expert gets that expert's mask all False (unavailable); a clip
lacking every expert has ``ok = False`` (the worker counts and names it, like a clip that fails to decode).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pyarrow as pa
import ray
import ray.data
from ray.data import ActorPoolStrategy

from etva.config import DataConfig, RayConfig
from etva.data.feature_store import open_stores
from etva.data.records import ClipRecord
from etva.data.sampling import sample_indices
from ray_jobs.data import CaptionTable, index_rows

logger = logging.getLogger(__name__)

__all__ = ["read_store_table", "FeatureJoin", "build_feature_dataset"]


def read_store_table(shard_files: list[str]):
    """All shards of one store as one Arrow table (video_id, num_tokens, features), read by Ray Data."""
    ds = ray.data.read_parquet(shard_files, columns=["video_id", "num_tokens", "features"])
    return pa.concat_tables([t for t in ray.get(ds.to_arrow_refs()) if t.num_rows])


class FeatureJoin:
    """Actor: holds every expert's table; ``__call__(index batch)`` -> model inputs from the features."""

    def __init__(self, tables: dict, dims: dict[str, int], max_tokens: int) -> None:
        self.dims, self.max_tokens = dims, max_tokens
        self.rows: dict[str, tuple[dict[str, int], np.ndarray, np.ndarray]] = {}
        for name, ref in tables.items():
            table = ray.get(ref) if isinstance(ref, ray.ObjectRef) else ref
            feats = table.column("features").combine_chunks()
            flat = feats.values.to_numpy(zero_copy_only=False)
            ids = {v: i for i, v in enumerate(table.column("video_id").to_pylist())}
            self.rows[name] = (ids, flat, feats.offsets.to_numpy())

    def _tokens(self, name: str, vid: str) -> tuple[np.ndarray, np.ndarray]:
        n, dim = self.max_tokens, self.dims[name]
        feat, mask = np.zeros((n, dim), np.float32), np.zeros((n,), bool)  # (N, D), (N,)
        ids, flat, offsets = self.rows[name]
        j = ids.get(vid)
        if j is not None and offsets[j + 1] > offsets[j]:
            arr = flat[offsets[j] : offsets[j + 1]].reshape(-1, dim)
            idx = sample_indices(len(arr), n) if len(arr) > n else np.arange(len(arr))
            feat[: len(idx)], mask[: len(idx)] = arr[idx], True
        return feat, mask

    def __call__(self, batch: dict) -> dict:
        vids = [str(v) for v in batch["video_id"]]
        out: dict[str, np.ndarray] = {}
        for name in self.dims:
            pairs = [self._tokens(name, v) for v in vids]
            out[f"feat/{name}"] = np.stack([p[0] for p in pairs])  # (B, N, D)
            out[f"feat_mask/{name}"] = np.stack([p[1] for p in pairs])  # (B, N)
        out["ok"] = np.any([out[f"feat_mask/{n}"].any(1) for n in self.dims], axis=0)
        for i in np.flatnonzero(~out["ok"]):
            logger.warning("skipping clip %s: no expert has features for it", vids[i])
        for key in ("video_index", "caption_ids", "caption_first", "caption_count"):
            if key in batch:
                out[key] = np.asarray(batch[key])
        return out


def build_feature_dataset(
    records: list[ClipRecord],
    data_cfg: DataConfig,
    ray_cfg: RayConfig,
    *,
    captions: CaptionTable | None = None,
    shuffle: bool = False,
):
    """A Ray Dataset of one row per video read from ``data_cfg.feature_store`` (same contract as
    :func:`ray_jobs.data.build_video_dataset`, without frames/audio)."""
    if not data_cfg.feature_store:
        raise ValueError("data.feature_store: required to build the dataset from features")
    stores = open_stores(data_cfg.feature_store)
    tables = {name: ray.put(read_store_table(s.shard_files())) for name, s in stores.items()}
    rows = index_rows(records, captions)
    for row, rec in zip(rows, records, strict=True):
        row["video_id"] = rec.video_id
    ds = ray.data.from_items(rows, override_num_blocks=max(1, min(200, math.ceil(len(rows) / 16))))
    if shuffle:
        ds = ds.random_shuffle()
    return ds.map_batches(
        FeatureJoin,
        fn_constructor_kwargs={
            "tables": tables,
            "dims": {n: s.dim for n, s in stores.items()},
            "max_tokens": data_cfg.max_feature_tokens,
        },
        batch_size=32,
        batch_format="numpy",
        num_cpus=ray_cfg.decode_cpus,
        compute=ActorPoolStrategy(size=max(1, min(2, ray_cfg.decode_concurrency))),
    )
