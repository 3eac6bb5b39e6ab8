"""Text-to-video search over an index (``etva.index``): load it for a model, rank queries, update it.

The index is the one format ``etva index`` writes (Parquet parts + manifest, docs/serving.md); a query is
tokenized with the checkpoint's tokenizer, encoded with ``encode_text`` and ranked through
:class:`etva.index.vectors.PatternIndex`, which gives the model's own fused similarity (exact by default).
:func:`update_index` brings an index up to date with a folder or a feature store in this process (the
same planning and encoding as the Ray Data job of ``etva index``).

Library code: PyTorch, PyAV, faiss, pyarrow (no Ray, no MLflow).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from etva.index.build import IndexModel, encode_rows, open_for, plan, source_items
from etva.index.store import IndexError_, IndexMismatch, IndexStore
from etva.index.vectors import EXACT, PatternIndex
from etva.inference import encode_texts

__all__ = [
    "SearchError",
    "Hit",
    "Query",
    "SearchIndex",
    "UpdateStats",
    "update_index",
    "load_index",
    "search",
    "search_batch",
]

log = logging.getLogger(__name__)

SearchError = IndexError_  # the user-facing error of search and indexing


@dataclass
class Hit:
    key: str  # video id: the file relative to its folder, or the feature store id
    path: str  # file relative to its source folder ('' for a feature-store video)
    root: str  # the source folder ('' for a feature store)
    group: str  # sub-folder of the file; dataset split of a feature-store video ('' = none)
    score: float
    rank: int  # 1-based


@dataclass
class SearchIndex:
    """An index loaded for search: row metadata and the vector search."""

    store: IndexStore
    keys: list[str]
    paths: list[str]
    groups: np.ndarray  # (N,) object: sub-folder (folder rows) or dataset split (store rows)
    sources: np.ndarray  # (N,) int
    vectors: PatternIndex

    def _of_kind(self, kind: str) -> np.ndarray:
        """(N,) bool: rows of a source of ``kind`` (folder | store)."""
        kinds = np.array([s["kind"] == kind for s in self.store.manifest.sources], dtype=bool)
        return kinds[self.sources] if len(self.sources) else np.zeros(0, bool)

    def splits(self) -> list[str]:
        """The dataset splits of the feature-store rows (sorted; '' = no split is left out)."""
        return sorted({str(g) for g in self.groups[self._of_kind("store")]} - {""})

    def rows_in(self, folder: str = "", split: str = "") -> np.ndarray | None:
        """Rows of sub-folder ``folder`` (recursively, folder sources) or of dataset split ``split``
        (feature-store sources); None = all rows.

        Raises:
            SearchError: both given, a filter the index's sources do not have, or no row matches.
        """
        folder, split = folder.strip("/"), split.strip()
        if folder and split:
            raise SearchError(f"folder '{folder}' and split '{split}': filter by one (a video comes from a "
                              "folder or from a feature store, not both)")  # fmt: skip
        if split:
            if not self._of_kind("store").any():
                raise SearchError(f"split '{split}': this index was built from a folder (no dataset splits); "
                                  "filter by folder")  # fmt: skip
            present = self.splits()
            if split not in present:
                raise SearchError(f"split '{split}': no indexed video in this split; splits present: "
                                  f"{', '.join(present) or 'none (no annotation listed the videos)'}")  # fmt: skip
            return np.flatnonzero(self._of_kind("store") & (self.groups == split)).astype(np.int64)
        if not folder:
            return None
        if not self._of_kind("folder").any():
            raise SearchError(f"folder '{folder}': this index was built from a feature store (no sub-folders); "
                              "filter by split")  # fmt: skip
        inside = np.array([g == folder or g.startswith(folder + "/") for g in self.groups], dtype=bool)
        rows = np.flatnonzero(inside & self._of_kind("folder")).astype(np.int64)
        if not len(rows):
            raise SearchError(f"folder '{folder}': no indexed video in this sub-folder")
        return rows


@dataclass
class UpdateStats:
    reused: int = 0
    encoded: int = 0
    dropped: int = 0
    failed: int = 0  # videos that cannot be encoded (new failures and remembered ones)
    no_split: int = 0  # feature-store videos no split of the model's dataset lists


def update_index(
    im: IndexModel, index_path: str | os.PathLike, kind: str, root: str | os.PathLike, *,
    batch_size: int = 8, workers: int = 2, part_size: int = 256, progress: bool = True,
) -> UpdateStats:  # fmt: skip
    """Bring the index at ``index_path`` up to date with one source, in this process.

    Encodes new and changed videos ``part_size`` at a time, committing a part after each (an interrupted
    update resumes where it stopped), and drops rows whose file is gone or changed.

    Raises:
        IndexMismatch: the index holds vectors of another model.
    """
    items = source_items(kind, root, im.data_cfg)  # a store video's group: its split in the model's dataset
    store = open_for(im, index_path)
    source = store.source_id(kind, root)
    todo, stale = plan(store, source, items)
    stats = UpdateStats(
        dropped=len(stale), no_split=sum(1 for it in items if kind == "store" and not it.group)
    )
    store.drop(source, stale)
    stats.reused = len(store.known(source))
    with tqdm(total=len(todo), unit="video", desc="encode", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(todo), part_size):
            chunk = todo[start : start + part_size]
            rows, failed = encode_rows(im, kind, root, source, chunk, batch_size, workers)
            store.append(rows, source, failed)
            stats.encoded += rows.num_rows
            bar.update(len(chunk))
    stats.failed = len(store.failed(source))
    log.info("index %s: %d reused, %d encoded, %d dropped, %d not encodable", index_path, stats.reused,
             stats.encoded, stats.dropped, stats.failed)  # fmt: skip
    return stats


def load_index(
    im: IndexModel, index_path: str | os.PathLike, spec: str = EXACT, nprobe: int = 16
) -> SearchIndex:
    """The index at ``index_path`` ready to search with ``im``.

    Raises:
        SearchError: no index there, or it holds no video.
        IndexMismatch: it was built by another model (digest).
    """
    store = IndexStore.read(index_path)
    have = store.manifest.model
    if have.digest != im.id.digest:
        raise IndexMismatch(f"{index_path}: the index was built by {have.describe()}, not by "
                            f"{im.id.describe()}; rebuild it with 'etva index' for this model")  # fmt: skip
    t = store.table()
    if t.num_rows == 0:
        raise SearchError(f"{index_path}: the index holds no encoded video")
    vectors = t.column("vector").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
    pats = t.column("pattern").to_pylist()
    return SearchIndex(
        store, t.column("key").to_pylist(), t.column("path").to_pylist(),
        np.asarray(t.column("group").to_pylist(), dtype=object), t.column("source").to_numpy(),
        PatternIndex(vectors, pats, im.model.alpha, spec, nprobe),
    )  # fmt: skip


@dataclass(frozen=True)
class Query:
    """One query of a batch: its text, how many results, and at most one filter."""

    text: str
    k: int = 5
    folder: str = ""  # only videos in this sub-folder (folder sources)
    split: str = ""  # only feature-store videos of this dataset split


def search(
    im: IndexModel, index: SearchIndex, queries: list[str], top_k: int = 5, folder: str = "", split: str = ""
) -> list[list[Hit]]:
    """The ``top_k`` videos of the index for each query, best first; ``folder`` keeps one sub-folder (of
    folder sources), ``split`` one dataset split (of feature-store sources).

    Raises:
        SearchError: a filter the index cannot answer (:meth:`SearchIndex.rows_in`).
    """
    return search_batch(im, index, [Query(q, top_k, folder, split) for q in queries])


@torch.no_grad()
def search_batch(im: IndexModel, index: SearchIndex, queries: list[Query]) -> list[list[Hit]]:
    """Each query's top ``k`` videos, best first, for a batch of queries with their own k and filter.

    The texts are encoded in one forward pass; the queries that share a filter are ranked together, one
    matrix product per availability pattern (:meth:`PatternIndex.search`), so a batch reads the vectors
    once per filter, not once per query.

    Raises:
        SearchError: a filter the index cannot answer (:meth:`SearchIndex.rows_in`).
    """
    by_filter: dict[tuple[str, str], list[int]] = {}
    for i, q in enumerate(queries):
        by_filter.setdefault((q.folder, q.split), []).append(i)
    allowed = {key: index.rows_in(*key) for key in by_filter}  # every filter checked before any work
    text = encode_texts(im.model, im.tokenizer, [q.text for q in queries], im.data_cfg.max_text_len)
    out: list[list[Hit]] = [[] for _ in queries]
    for key, members in by_filter.items():
        k = max(queries[i].k for i in members)
        scores, rows = index.vectors.search(text[torch.tensor(members)], k, allowed[key])
        for i, srow, rrow in zip(members, scores, rows):
            out[i] = _hits(index, srow[: queries[i].k], rrow[: queries[i].k])
    return out


def _hits(index: SearchIndex, scores: np.ndarray, rows: np.ndarray) -> list[Hit]:
    sources = index.store.manifest.sources
    hits = []
    for rank, (s, r) in enumerate(zip(scores.tolist(), rows.tolist()), 1):
        src = sources[int(index.sources[r])]
        root = src["path"] if src["kind"] == "folder" else ""
        hits.append(Hit(index.keys[r], index.paths[r], root, str(index.groups[r]), float(s), rank))
    return hits
