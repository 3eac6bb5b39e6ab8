"""The one on-disk video index: Parquet parts of video-side vectors plus a JSON manifest.

Layout of an index directory::

    manifest.json      format, the model (name, version, digest, uri), alpha, expert names, vector dim,
                       the sources (folders or feature stores), the committed parts, the failed videos
    part-00000.parquet one row per video: key, source, path, group, pattern, vector, mtime_ns, size
                       (group: the sub-folder of a folder's file, the dataset split of a store's video)
    part-00001.parquet ...

A part is written first, then the manifest naming it is replaced atomically, so an interrupted build
leaves a valid index holding every committed part (a resumed build encodes only what is missing; a
part file the manifest does not name is an interrupted write and is deleted). An index belongs to one
model digest: :meth:`IndexStore.open` refuses to add vectors of another model (:class:`IndexMismatch`).

Library code: pyarrow and numpy only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["IndexError_", "IndexMismatch", "ModelId", "IndexStore", "FORMAT", "MANIFEST", "rows_table"]

FORMAT = 1
MANIFEST = "manifest.json"


class IndexError_(ValueError):  # noqa: N801 (IndexError is a builtin)
    """A user-facing index problem: missing, unreadable, or built from other sources."""


class IndexMismatch(IndexError_):
    """The index holds vectors of another model (name/version/digest)."""


@dataclass(frozen=True)
class ModelId:
    """Which model wrote the vectors: ``digest`` (sha256 of the checkpoint manifest) decides."""

    digest: str
    name: str = ""  # registered model name ('' for a local checkpoint)
    version: str = ""  # registered model version
    uri: str = ""  # what the user passed (models:/name@alias, a directory)

    def describe(self) -> str:
        named = f"{self.name} v{self.version}" if self.name else (self.uri or "a local checkpoint")
        return f"{named} (digest {self.digest[:12]})"


@dataclass
class Manifest:
    model: ModelId
    alpha: float
    experts: list[str]
    dim: int
    sources: list[dict] = field(default_factory=list)  # {"kind": "folder"|"store", "path": abs path}
    parts: list[str] = field(default_factory=list)
    failed: dict[str, list] = field(default_factory=dict)  # "<source>:<key>" -> [mtime_ns, size, why]
    format: int = FORMAT

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexError_(f"{where}: not an etva index manifest of format {FORMAT}")
        try:
            return cls(**{**data, "model": ModelId(**data["model"])})
        except (KeyError, TypeError) as e:
            raise IndexError_(f"{where}: malformed manifest ({e})") from e


def rows_table(
    keys: list[str], source: int, paths: list[str], groups: list[str], patterns: list[str],
    vectors: np.ndarray, stats: list[tuple[int, int]],
) -> pa.Table:  # fmt: skip
    """One part's rows: ``vectors`` (n, D) float32, ``stats`` (mtime_ns, size) per row."""
    n, dim = vectors.shape
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
    return pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "source": pa.array([source] * n, pa.int32()),
            "path": pa.array(paths, pa.string()),
            "group": pa.array(groups, pa.string()),
            "pattern": pa.array(patterns, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            "mtime_ns": pa.array([s[0] for s in stats], pa.int64()),
            "size": pa.array([s[1] for s in stats], pa.int64()),
        }
    )


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class IndexStore:
    """An index directory opened for reading and appending (one writer at a time)."""

    def __init__(self, root: Path, manifest: Manifest) -> None:
        self.root, self.manifest = root, manifest

    @classmethod
    def read(cls, path: str | os.PathLike) -> IndexStore:
        """An existing index. Raises IndexError_ when there is none or it is unreadable."""
        root = Path(path)
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise IndexError_(f"{root}: no index here (no {MANIFEST}); build one with 'etva index'")
        try:
            data = json.loads(mpath.read_text())
        except (OSError, ValueError) as e:
            raise IndexError_(f"{mpath}: unreadable ({e})") from e
        return cls(root, Manifest.from_json(data, mpath))

    @classmethod
    def open(
        cls, path: str | os.PathLike, model: ModelId, alpha: float, experts: list[str], dim: int
    ) -> IndexStore:
        """Open ``path`` for ``model`` (created when absent); drop uncommitted part files.

        Raises:
            IndexMismatch: the index holds vectors of another model digest.
        """
        root = Path(path)
        if (root / MANIFEST).is_file():
            store = cls.read(root)
            have = store.manifest.model
            if have.digest != model.digest:
                raise IndexMismatch(
                    f"{root}: the index holds vectors of {have.describe()}, not {model.describe()}; "
                    "vectors of two models are never mixed: build into a new --index directory"
                )
            if store.manifest.dim != dim or store.manifest.experts != experts:
                raise IndexMismatch(f"{root}: the index has other dimensions or experts than the model")
            store.manifest.model = model  # same weights, maybe a newer registry version
        else:
            root.mkdir(parents=True, exist_ok=True)
            store = cls(root, Manifest(model, float(alpha), list(experts), int(dim)))
            store.commit()
        committed = set(store.manifest.parts)
        for stray in root.glob("part-*.parquet"):
            if stray.name not in committed:
                stray.unlink()
        return store

    def commit(self) -> None:
        """Write the manifest atomically (the parts it names must already be on disk)."""
        _write_json_atomic(self.root / MANIFEST, self.manifest.to_json())

    def source_id(self, kind: str, path: str | os.PathLike) -> int:
        """The number of a source (added to the manifest when new)."""
        entry = {"kind": kind, "path": str(Path(path).resolve())}
        if entry not in self.manifest.sources:
            self.manifest.sources.append(entry)
            self.commit()
        return self.manifest.sources.index(entry)

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """All committed rows (an empty table with the schema when there are none)."""
        tables = [pq.read_table(self.root / p, columns=columns) for p in self.manifest.parts]
        if not tables:
            empty = rows_table([], 0, [], [], [], np.zeros((0, self.manifest.dim), np.float32), [])
            return empty.select(columns) if columns else empty
        return pa.concat_tables(tables)

    def known(self, source: int) -> dict[str, tuple[int, int]]:
        """key -> (mtime_ns, size) of the rows of one source."""
        t = self.table(["key", "source", "mtime_ns", "size"]).to_pydict()
        return {
            k: (m, s) for k, src, m, s in zip(t["key"], t["source"], t["mtime_ns"], t["size"]) if src == source
        }

    def groups(self, source: int) -> dict[str, str]:
        """key -> group (sub-folder or dataset split) of the rows of one source."""
        t = self.table(["key", "source", "group"]).to_pydict()
        return {k: g for k, src, g in zip(t["key"], t["source"], t["group"]) if src == source}

    def _next_part(self) -> str:
        used = {int(p[5:10]) for p in self.manifest.parts}
        used |= {int(p.name[5:10]) for p in self.root.glob("part-*.parquet")}  # incl. ones about to go
        return f"part-{(max(used) + 1) if used else 0:05d}.parquet"

    def failed(self, source: int) -> dict[str, tuple[int, int, str]]:
        """key -> (mtime_ns, size, why) of the videos of one source that could not be encoded."""
        pre = f"{source}:"
        return {k[len(pre) :]: tuple(v) for k, v in self.manifest.failed.items() if k.startswith(pre)}

    def append(self, rows: pa.Table, source: int = 0, failed: Mapping[str, tuple] = ()) -> None:
        """Commit one part of new rows, and the videos of ``source`` that failed (key -> (mtime, size, why))."""
        if rows.num_rows:
            name = self._next_part()
            pq.write_table(rows, self.root / name)
            self.manifest.parts.append(name)
        self.manifest.failed.update({f"{source}:{k}": list(v) for k, v in dict(failed).items()})
        self.commit()

    def drop(self, source: int, keys: set[str]) -> None:
        """Remove the rows (and failures) of ``keys`` of one source: one compacted part replaces all."""
        if not keys:
            return
        old = list(self.manifest.parts)
        t = self.table()
        src, key = t.column("source").to_numpy(), t.column("key").to_pylist()
        keep = np.array([not (s == source and k in keys) for s, k in zip(src, key)], dtype=bool)
        self.manifest.parts = []
        for k in keys:
            self.manifest.failed.pop(f"{source}:{k}", None)
        self.append(t.filter(pa.array(keep)))
        for name in old:
            (self.root / name).unlink(missing_ok=True)
