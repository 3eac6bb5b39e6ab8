"""A sharded Parquet feature store: one store per expert, written by ``ray_jobs/extract.py``.

Layout (a store root may hold several stores, one per expert and encoder setting)::

    <root>/stores.json                         {"experts": {"<expert>": "<expert>-<key>"}}  (latest)
    <root>/<expert>-<key>/manifest.json        identity, key, dim, dtype, done ids, failed clips, shards
    <root>/<expert>-<key>/shards/part-*.parquet   rows: video_id (str), num_tokens (int32),
                                                   features (binary: the (T, dim) array's bytes,
                                                   row-major, little-endian, the manifest's dtype)

Layout 1 (``etva-feature-store/1``, written before) stored ``features`` as list<float>: still read, and a
resumed extraction into such a store keeps writing it. Layout 2 stores one binary value per clip because
Parquet decodes a list column value by value (a repetition level per float): reading a shard of 256 clips
x 16 x 768 float16 took about 26 ms as a list and about 4 ms as binary (benchmarks/RESULTS.md).

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
import threading
import time
import uuid
from collections.abc import Mapping
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

FORMAT = "etva-feature-store/2"
FORMAT_LIST = "etva-feature-store/1"  # features as list<float>: read, and kept when resuming such a store
# clips per Parquet row group: the unit a reader can fetch alone, so that a training block can gather
# clips from many shards (ray_jobs.data) and a per-id reader fetches 32 clips, not a whole shard
ROW_GROUP_CLIPS = 32
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


def _chunk_ids(path: str) -> list[tuple[int, str]]:
    """``[(row group, video_id)]`` of one shard file, in file order."""
    f = pq.ParquetFile(path)
    ids = f.read(columns=["video_id"], use_threads=False).column("video_id").to_pylist()
    groups = np.repeat(
        np.arange(f.num_row_groups), [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
    )
    return list(zip(groups.tolist(), ids, strict=True))


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
        self.done: set[str] = {i for s in self.shards for _, i in _chunk_ids(str(self.shards_dir / s))}
        self.failed: dict[str, str] = {k: v for k, v in old.get("failed", {}).items() if k not in self.done}
        self.format = old.get("format", FORMAT) if self.shards else FORMAT  # a store keeps its layout
        self.meta = {"format": self.format, "key": self.key, "identity": dict(identity), "dim": self.dim}
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
        arrays, counts = [], []
        for vid, arr in keep:
            arr = np.asarray(arr).reshape(-1, self.dim) if np.size(arr) else np.zeros((0, self.dim))
            if arr.ndim != 2 or arr.shape[1] != self.dim:
                raise FeatureStoreError(f"{self.path}: {vid}: expected (T, {self.dim}), got {arr.shape}")
            arrays.append(np.ascontiguousarray(arr, np.dtype(np_dtype).newbyteorder("<")))
            counts.append(arr.shape[0])
        table = pa.table(
            {
                "video_id": [i for i, _ in keep],
                "num_tokens": pa.array(counts, pa.int32()),
                "features": _features_column(arrays, pa_dtype, self.format),
            }
        )
        name = f"part-{len(self.shards):05d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.shards_dir / f".{name}.tmp"
        # no dictionary or statistics for the feature values (a dictionary-encoded float16 list read
        # about 5x slower; benchmarks/RESULTS.md, "Training pass streamed from the feature store")
        pq.write_table(
            table,
            tmp,
            row_group_size=ROW_GROUP_CLIPS,
            use_dictionary=["video_id"],
            write_statistics=["video_id", "num_tokens"],
        )
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
    shard map, a few bytes per clip). :meth:`read_tokens` then reads only the row groups that hold the ids
    asked for, keeping the last ones read (one shard's, never the whole store) for neighbouring lookups.
    Safe for threads sharing one reader (``etva search`` decodes in threads): the id map is built under a
    lock, and the kept row groups are swapped as one reference, so a reader always gathers from the row
    groups it read or found, never from another thread's.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = _read_json(self.path / MANIFEST)
        for key in ("format", "key", "dim", "shards"):
            if key not in self.manifest:
                raise FeatureStoreError(f"{self.path / MANIFEST}: key '{key}' missing")
        if self.manifest["format"] not in (FORMAT, FORMAT_LIST):
            raise FeatureStoreError(
                f"{self.path / MANIFEST}: format {self.manifest['format']!r}, want {FORMAT} (or {FORMAT_LIST})"
            )
        self.dim, self.key = int(self.manifest["dim"]), self.manifest["key"]
        self.expert = str(self.manifest.get("expert") or "")
        self._where: dict[str, tuple[str, int]] | None = None  # video_id -> (shard file, row group)
        self._where_lock = threading.Lock()
        self._last: _Shard | None = None  # the last row groups read (replaced whole, never mutated)

    def shard_files(self) -> list[str]:
        """Finished shard files (what a reader should read)."""
        return sorted(str(p) for p in (self.path / "shards").glob("part-*.parquet"))

    def chunk_map(self) -> dict[str, tuple[str, int]]:
        """``{video_id: (shard file, row group)}`` of every finished clip (from the shards' id columns,
        read once): a row group (:data:`ROW_GROUP_CLIPS` clips) is the smallest unit a reader fetches."""
        with self._where_lock:
            if self._where is None:
                self._where = {vid: (f, g) for f in self.shard_files() for g, vid in _chunk_ids(f)}
            return self._where

    def ids(self) -> set[str]:
        return set(self.chunk_map())

    def read_tokens(self, video_ids: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """``(features (B, N, D) in the stored dtype, mask (B, N) bool)`` for a batch of clips, N =
        ``max_tokens``: longer clips sampled at N segment centres (:func:`sample_indices`),
        shorter ones zero-padded; a clip the store lacks (or with T = 0) has an all-False mask. One
        vectorised gather per shard, reading only the row groups that hold these clips (no per-clip Python
        work): this is the feature path's hot loop."""
        feat = np.zeros((len(video_ids), max_tokens, self.dim), self.np_dtype)
        mask = np.zeros((len(video_ids), max_tokens), bool)
        k = np.arange(max_tokens)
        for (shard, groups), rows in self._by_shard(video_ids, positions=True).items():
            part = self._shard(shard, groups)
            j = np.fromiter((part.pos[video_ids[i]] for i in rows), np.int64, len(rows))
            start, count = part.offsets[j], part.offsets[j + 1] - part.offsets[j]  # in tokens
            sampled = sample_indices(count, max_tokens)  # (R, N), used where a clip is longer than N
            idx = np.where((count > max_tokens)[:, None], sampled, k[None])
            valid = k[None] < np.minimum(count, max_tokens)[:, None]
            if not valid.any():
                continue
            r = np.asarray(rows)
            got = part.tokens[np.where(valid, idx + start[:, None], 0)]  # (R, N, D)
            got[~valid] = 0
            feat[r], mask[r] = got, valid
        return feat, mask

    @property
    def np_dtype(self):
        return _DTYPES.get(str(self.manifest.get("dtype", "float32")), _DTYPES["float32"])[0]

    def _by_shard(self, video_ids: list[str], positions: bool = False) -> dict[tuple[str, tuple], list]:
        """The ids the store has (or their positions in ``video_ids``), grouped by shard file, keyed by
        ``(shard, the row groups that hold them)``."""
        where = self.chunk_map()
        found: dict[str, list] = {}
        groups: dict[str, set[int]] = {}
        for i, vid in enumerate(video_ids):
            if vid in where:
                shard, g = where[vid]
                found.setdefault(shard, []).append(i if positions else vid)
                groups.setdefault(shard, set()).add(g)
        return {(shard, tuple(sorted(groups[shard]))): items for shard, items in found.items()}

    def _shard(self, shard: str, groups: tuple[int, ...]) -> _Shard:
        """Row groups of one shard, parsed; the last read is kept (neighbouring lookups), never more. Returns
        the object it checked or read, never ``self._last`` again: another thread may have replaced it."""
        last = self._last
        if last is not None and last.path == shard and set(groups) <= set(last.groups):
            return last
        part = _read_shard(shard, groups, self.dim, self.np_dtype)
        self._last = part
        return part


class _Shard:
    """Row groups of one shard file in memory: every token of their clips as one (total tokens, D) array."""

    def __init__(self, path: str, groups, tokens: np.ndarray, offsets: np.ndarray, ids: list[str]) -> None:
        self.path, self.groups, self.tokens, self.offsets = path, tuple(groups), tokens, offsets  # in tokens
        self.pos = {vid: j for j, vid in enumerate(ids)}


def _features_column(arrays: list[np.ndarray], pa_dtype, layout: str) -> pa.Array:
    """The ``features`` column of a shard: one binary value per clip (layout 2) or list<float> (1)."""
    if layout == FORMAT_LIST:
        offsets = np.concatenate([[0], np.cumsum([a.size for a in arrays])]).astype(np.int32)
        flat = np.concatenate([a.reshape(-1) for a in arrays]) if arrays else np.zeros(0)
        return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, type=pa_dtype))
    sizes = np.array([a.nbytes for a in arrays], np.int64)
    if sizes.sum() >= 2**31:
        raise FeatureStoreError(f"one shard would hold {sizes.sum()} bytes of features: write smaller shards")
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    data = b"".join(a.tobytes() for a in arrays)
    return pa.Array.from_buffers(pa.binary(), len(arrays), [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _read_shard(shard: str, groups: tuple[int, ...], dim: int, dtype) -> _Shard:
    # whole row groups, no row filter: a filter saves no I/O within a row group and its dataset scanner
    # cost more than the read itself (benchmarks/RESULTS.md)
    try:
        t = pq.ParquetFile(shard).read_row_groups(
            list(groups), columns=["video_id", "features"], use_threads=False
        )
    except (OSError, pa.ArrowException) as e:
        raise FeatureStoreError(f"{shard}: not a readable feature shard ({e})") from e
    col = t.column("features").combine_chunks()
    if pa.types.is_binary(col.type):  # layout 2: the values' bytes back to back, zero-copy
        _, off_buf, data_buf = col.buffers()
        offsets = np.frombuffer(off_buf, np.int32)[col.offset : col.offset + len(col) + 1].astype(np.int64)
        item = np.dtype(dtype).newbyteorder("<")
        data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
        data = data[offsets[0] : offsets[-1]]
        if data.size % (item.itemsize * dim) or (np.diff(offsets) % (item.itemsize * dim)).any():
            raise FeatureStoreError(f"{shard}: feature bytes are not whole (T, {dim}) {item.name} arrays")
        offsets = (offsets - offsets[0]) // (item.itemsize * dim)
        tokens = data.view(item).reshape(-1, dim)
    elif pa.types.is_list(col.type):  # layout 1
        flat = col.values.to_numpy(zero_copy_only=False)
        if flat.size % dim:
            raise FeatureStoreError(f"{shard}: {flat.size} feature values are not a multiple of dim {dim}")
        offsets = col.offsets.to_numpy().astype(np.int64) // dim
        tokens = flat.reshape(-1, dim)
    else:
        raise FeatureStoreError(f"{shard}: column 'features' is {col.type}, expected binary (or a list)")
    return _Shard(shard, groups, tokens, offsets, t.column("video_id").to_pylist())


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


def store_batch(
    stores: Mapping[str, FeatureStore], video_ids: list[str], max_tokens: int
) -> dict[str, np.ndarray]:
    """``feat/<e>`` (B, N, D) in each store's dtype (the model casts on its device) and ``feat_mask/<e>``
    bool (B, N) for a batch of clips: see :meth:`FeatureStore.read_tokens`."""
    out: dict[str, np.ndarray] = {}
    for name, store in stores.items():
        out[f"feat/{name}"], out[f"feat_mask/{name}"] = store.read_tokens(list(video_ids), max_tokens)
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
