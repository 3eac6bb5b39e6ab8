"""A sharded Parquet feature store: one store per expert, written by ``ray_jobs/extract.py``.

Layout (a store root may hold several stores, one per expert and encoder setting)::

    <root>/stores.json                         {"experts": {"<expert>": "<expert>-<key>"}}  (latest)
    <root>/<expert>-<key>/manifest.json        identity, key, dim, dtype, done ids, failed clips, shards
    <root>/<expert>-<key>/shards/part-*.parquet   rows: video_id (str), num_tokens (int32),
                                                   features (list<float>, T * dim values, row-major)

The store *key* is a hash of the identity (encoder kind, model name, sha256 of every weight file, layer,
pooling, dim, decode settings): a changed encoder or decode setting is a different store. Shards are
written atomically (temporary name, then rename), so the set of ids in finished shards is the truth a
resumed job starts from; the manifest's ``done`` list mirrors it. A clip with ``num_tokens = 0`` is done
but has no features (e.g. no audio track): the expert is unavailable for it at training time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etva.data.sampling import sample_indices

__all__ = [
    "FORMAT",
    "FeatureStoreError",
    "store_key",
    "store_dir",
    "FeatureStoreWriter",
    "FeatureStore",
    "open_stores",
    "register_store",
    "store_batch",
    "check_stores",
]

log = logging.getLogger(__name__)

FORMAT = "etva-feature-store/1"
MANIFEST = "manifest.json"
INDEX = "stores.json"
_DTYPES = {"float32": (np.float32, pa.float32()), "float16": (np.float16, pa.float16())}


class FeatureStoreError(ValueError):
    """A store that is missing, malformed, or does not match what was asked (names the file)."""


def store_key(identity: Mapping) -> str:
    """16 hex digits of sha256 over the canonical JSON of the identity fields."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def store_dir(root: str | os.PathLike, expert: str, identity: Mapping) -> Path:
    """The folder of ``expert``'s store for ``identity`` under ``root``."""
    return Path(root) / f"{expert}-{store_key(identity)}"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FeatureStoreError(f"{path}: not found (expected a feature store manifest)") from None
    except (OSError, json.JSONDecodeError) as e:
        raise FeatureStoreError(f"{path}: not readable JSON ({e})") from e
    if not isinstance(data, dict):
        raise FeatureStoreError(f"{path}: expected a JSON object")
    return data


def _shard_ids(path: Path) -> list[str]:
    return pq.read_table(path, columns=["video_id"]).column("video_id").to_pylist()


class FeatureStoreWriter:
    """Create or reopen the store ``path`` for ``identity`` and append shards of finished clips.

    Args:
        path: the store folder (see :func:`store_dir`).
        identity: what the features depend on; must match an existing store's (else an error).
        dim: feature width D.
        dtype: float32 | float16 (stored precision).
        expert: the expert name recorded in the manifest.
    """

    def __init__(
        self, path: str | os.PathLike, identity: Mapping, dim: int, dtype: str = "float32", expert: str = ""
    ) -> None:
        if dtype not in _DTYPES:
            raise FeatureStoreError(f"{path}: dtype '{dtype}' is not one of {sorted(_DTYPES)}")
        self.path, self.dim, self.dtype = Path(path), int(dim), dtype
        self.key = store_key(identity)
        self.shards_dir = self.path / "shards"
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        mpath = self.path / MANIFEST
        old = _read_json(mpath) if mpath.exists() else {}
        if old and old.get("key") != self.key:
            raise FeatureStoreError(
                f"{mpath}: store key {old.get('key')} differs from this job's {self.key} (identity changed; "
                "write to a new folder, see store_dir)"
            )
        for tmp in self.shards_dir.glob(".*.tmp"):  # a shard a killed job did not finish
            tmp.unlink()
        self.shards = sorted(p.name for p in self.shards_dir.glob("part-*.parquet"))
        self.done: set[str] = {i for s in self.shards for i in _shard_ids(self.shards_dir / s)}
        self.failed: dict[str, str] = {k: v for k, v in old.get("failed", {}).items() if k not in self.done}
        self.meta = {"format": FORMAT, "key": self.key, "identity": dict(identity), "dim": self.dim}
        self.meta.update(dtype=dtype, expert=expert or old.get("expert", ""))
        self.write_manifest()

    def write_shard(self, ids: list[str], arrays: list[np.ndarray]) -> Path | None:
        """Write the clips not yet done as one shard (atomic); returns its path (None if all done)."""
        np_dtype, pa_dtype = _DTYPES[self.dtype]
        keep = [(i, a) for i, a in zip(ids, arrays, strict=True) if i not in self.done]
        if len({i for i, _ in keep}) != len(keep):
            raise FeatureStoreError(f"{self.path}: duplicate video ids in one shard")
        if not keep:
            return None
        flat, offsets, counts = [], [0], []
        for vid, arr in keep:
            arr = np.asarray(arr).reshape(-1, self.dim) if np.size(arr) else np.zeros((0, self.dim))
            if arr.ndim != 2 or arr.shape[1] != self.dim:
                raise FeatureStoreError(f"{self.path}: {vid}: expected (T, {self.dim}), got {arr.shape}")
            flat.append(arr.astype(np_dtype).reshape(-1))
            offsets.append(offsets[-1] + arr.size)
            counts.append(arr.shape[0])
        values = pa.array(np.concatenate(flat), type=pa_dtype)
        feats = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)
        table = pa.table(
            {"video_id": [i for i, _ in keep], "num_tokens": pa.array(counts, pa.int32()), "features": feats}
        )
        name = f"part-{len(self.shards):05d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.shards_dir / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.shards_dir / name)
        self.shards.append(name)
        for vid, _ in keep:
            self.done.add(vid)
            self.failed.pop(vid, None)
        self.write_manifest()
        return self.shards_dir / name

    def record_failures(self, failures: Mapping[str, str]) -> None:
        """Remember clips that could not be decoded/encoded (retried by the next run)."""
        self.failed.update({k: v for k, v in failures.items() if k not in self.done})
        if failures:
            self.write_manifest()

    def write_manifest(self) -> None:
        data = {**self.meta, "num_done": len(self.done), "done": sorted(self.done)}
        data.update(failed=dict(sorted(self.failed.items())), shards=self.shards, updated=time.time())
        _write_json(self.path / MANIFEST, data)


class FeatureStore:
    """Read a store folder by video id, loading only the shards that hold the ids asked for.

    Opening reads the manifest; the first lookup reads the ``video_id`` column of each shard (an id ->
    shard map, a few bytes per clip). ``get``/``read`` then read only the shards that hold the ids asked
    for, keeping the last shard read (one shard, never the whole store) for neighbouring lookups.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = _read_json(self.path / MANIFEST)
        for key in ("format", "key", "dim", "shards"):
            if key not in self.manifest:
                raise FeatureStoreError(f"{self.path / MANIFEST}: key '{key}' missing")
        if self.manifest["format"] != FORMAT:
            raise FeatureStoreError(
                f"{self.path / MANIFEST}: format {self.manifest['format']!r}, want {FORMAT}"
            )
        self.dim, self.key = int(self.manifest["dim"]), self.manifest["key"]
        self.expert = str(self.manifest.get("expert") or "")
        self._where: dict[str, str] | None = None  # video_id -> shard file
        self._last: tuple[str, dict[str, np.ndarray]] = ("", {})  # the last shard read, by id

    def shard_files(self) -> list[str]:
        """Finished shard files (what a reader should read)."""
        return sorted(str(p) for p in (self.path / "shards").glob("part-*.parquet"))

    def shard_map(self) -> dict[str, str]:
        """``{video_id: shard file}`` of every finished clip (read from the shards' id columns once)."""
        if self._where is None:
            self._where = {vid: f for f in self.shard_files() for vid in _shard_ids(Path(f))}
        return self._where

    def ids(self) -> set[str]:
        return set(self.shard_map())

    def read(self, video_ids: Iterable[str]) -> dict[str, np.ndarray]:
        """``{video_id: (T, D) array}`` for the ids the store has (others are absent); each needed shard
        is read once, only its rows for these ids."""
        where = self.shard_map()
        by_shard: dict[str, list[str]] = {}
        for vid in dict.fromkeys(video_ids):
            if vid in where:
                by_shard.setdefault(where[vid], []).append(vid)
        out: dict[str, np.ndarray] = {}
        for shard, ids in by_shard.items():
            if self._last[0] == shard:
                rows = self._last[1]
            elif len(ids) == 1:  # a per-id caller walks neighbours: keep this one shard
                rows = _read_rows(shard, None, self.dim)
                self._last = (shard, rows)
            else:
                rows = _read_rows(shard, ids, self.dim)
            out.update((vid, rows[vid]) for vid in ids if vid in rows)
        return out

    def get(self, video_id: str) -> np.ndarray | None:
        """The (T, D) features of one clip (T may be 0), or None when the store lacks it."""
        return self.read([video_id]).get(video_id)


def _read_rows(shard: str, ids: list[str] | None, dim: int) -> dict[str, np.ndarray]:
    """``{video_id: (T, D)}`` of one shard file, only ``ids`` (all when None)."""
    import pyarrow.compute as pc

    flt = None if ids is None else pc.field("video_id").isin(ids)
    try:
        t = pq.read_table(shard, columns=["video_id", "features"], filters=flt)
    except (OSError, pa.ArrowException) as e:
        raise FeatureStoreError(f"{shard}: not a readable feature shard ({e})") from e
    values = t.column("features").combine_chunks()
    flat = values.values.to_numpy(zero_copy_only=False)
    offsets = values.offsets.to_numpy()
    return {
        vid: flat[offsets[j] : offsets[j + 1]].reshape(-1, dim)
        for j, vid in enumerate(t.column("video_id").to_pylist())
    }


def register_store(root: str | os.PathLike, expert: str, folder: str | os.PathLike) -> None:
    """Point ``<root>/stores.json`` at ``folder`` (a sub-folder of root) for ``expert``."""
    index = Path(root) / INDEX
    data = _read_json(index) if index.exists() else {"experts": {}}
    data.setdefault("experts", {})[expert] = Path(folder).name
    _write_json(index, data)


def open_stores(path: str | os.PathLike) -> dict[str, FeatureStore]:
    """``{expert: FeatureStore}`` for a store root (``stores.json``) or a single store folder."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        store = FeatureStore(path)
        return {store.manifest.get("expert") or path.name: store}
    index = _read_json(path / INDEX)
    experts = index.get("experts")
    if not isinstance(experts, dict) or not experts:
        raise FeatureStoreError(f"{path / INDEX}: key 'experts' must map expert names to store folders")
    return {name: FeatureStore(path / sub) for name, sub in experts.items()}


def store_batch(stores: Mapping[str, FeatureStore], video_ids: list[str], max_tokens: int) -> dict[str, np.ndarray]:
    """``feat/<e>`` float32 (B, N, D) and ``feat_mask/<e>`` bool (B, N) for a batch of clips.

    Longer arrays are sampled at N segment centres, shorter ones zero-padded; a clip the store lacks
    (or with T = 0) gets an all-False mask: the expert is unavailable for it. Each store reads only the
    shards that hold these ids.
    """
    out: dict[str, np.ndarray] = {}
    for name, store in stores.items():
        found = store.read(video_ids)
        feat = np.zeros((len(video_ids), max_tokens, store.dim), np.float32)  # (B, N, D)
        mask = np.zeros((len(video_ids), max_tokens), bool)  # (B, N)
        for i, vid in enumerate(video_ids):
            arr = found.get(vid)
            if arr is not None and len(arr):
                idx = sample_indices(len(arr), max_tokens) if len(arr) > max_tokens else np.arange(len(arr))
                feat[i, : len(idx)] = arr[idx]
                mask[i, : len(idx)] = True
        out[f"feat/{name}"], out[f"feat_mask/{name}"] = feat, mask
    return out


def check_stores(stores: Mapping[str, FeatureStore], dims: Mapping[str, int], where: str) -> None:
    """Fail unless every expert of ``dims`` (``{expert: input dim}``, 0 = any) has a store of that width.

    Raises:
        FeatureStoreError: naming the expert, the manifest, what the config asks and what the store has.
    """
    for name, dim in dims.items():
        store = stores.get(name)
        if store is None:
            raise FeatureStoreError(
                f"{where}: no store for expert '{name}' (the store has {sorted(stores)}); extract it "
                "(etva extract) or import it (etva data import-features)"
            )
        if dim and dim != store.dim:
            raise FeatureStoreError(
                f"{store.path / MANIFEST}: expert '{name}' has dim {store.dim}, the config's "
                f"model.experts.{name}.dim is {dim}"
            )
