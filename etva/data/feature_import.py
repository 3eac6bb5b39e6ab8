"""Import existing pre-extracted features (``.npy``/``.npz``) into the Parquet feature store.

Three source layouts (what CE / MMT / T2VLAD-style releases ship):

- a folder with ``features_manifest.json`` (``{"experts": {"<name>": {"dim": D, "fps": f, "dir": "<sub>"}}}``)
  and one ``<sub>/<video_id>.npy`` per video and expert;
- a folder of ``<video_id>.npy`` files of one expert (``expert`` names it);
- one array per split: a ``.npz`` with ``ids`` (V,) and ``features`` (V, T, D) or (V, D), or a ``.npy``
  array with an id list (``ids_file``, one id per line) (``expert`` names it).

Every array must be ``(T, D)`` (or ``(D,)``, one token) with one D per expert; ids must be unique and
non-empty. Arrays that fail the check are listed and not written. Each expert becomes
``<out_root>/<expert>-<key>/`` with a manifest, registered in ``stores.json`` (the layout ``etva extract``
writes); a re-run writes only the ids not stored yet.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from etva.data.feature_store import FeatureStoreError, FeatureStoreWriter, register_store, store_dir
from etva.data.sources.features import MANIFEST_NAME, load_feature_manifest

__all__ = ["ImportResult", "import_features"]

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """What an import did for one expert."""

    expert: str
    folder: Path
    dim: int
    stored: int = 0  # ids in the store after the import
    written: int = 0  # ids written by this run
    invalid: dict[str, str] = field(default_factory=dict)  # source entry -> what is wrong


def _as_tokens(arr: np.ndarray, dim: int | None, where: str) -> np.ndarray:
    arr = arr[None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.dtype.kind != "f" or (dim is not None and arr.shape[1] != dim):
        raise FeatureStoreError(
            f"{where}: expected a float array (T, {dim or 'D'}), got {arr.dtype} {tuple(arr.shape)}"
        )
    return arr


def _folder_items(folder: Path) -> Iterator[tuple[str, str, np.ndarray | None, str]]:
    """(video_id, file, array or None, error) of every ``<video_id>.npy`` in ``folder``."""
    for name in sorted(os.listdir(folder)):
        if name.endswith(".npy"):
            path = str(folder / name)
            try:
                yield name[: -len(".npy")], path, np.load(path, allow_pickle=False), ""
            except (OSError, ValueError) as e:
                yield name[: -len(".npy")], path, None, f"not a readable .npy ({e})"


def _split_items(path: Path, ids_file: str) -> Iterator[tuple[str, str, np.ndarray | None, str]]:
    """(video_id, "<file>[i]", array, "") of one array per split (``.npz`` or ``.npy`` + id list)."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = {"ids", "features"} - set(z.files)
            if missing:
                raise FeatureStoreError(f"{path}: arrays {sorted(missing)} missing (has {z.files})")
            ids, feats = [str(i) for i in z["ids"]], z["features"]
    else:
        if not ids_file:
            raise FeatureStoreError(f"{path}: one array per split needs its id list (--ids, one id per line)")
        ids = [line.strip() for line in Path(ids_file).read_text().splitlines() if line.strip()]
        feats = np.load(path, mmap_mode="r", allow_pickle=False)
    if len(ids) != len(feats):
        raise FeatureStoreError(f"{path}: {len(feats)} arrays but {len(ids)} ids ({ids_file or 'ids'})")
    for i, vid in enumerate(ids):
        yield vid, f"{path}[{i}]", np.asarray(feats[i]), ""


def _import_one(items, out_root: Path, expert: str, identity: dict, dim: int | None, shard_size: int,
                dtype: str) -> ImportResult:  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    invalid: dict[str, str] = {}
    for vid, where, arr, error in items:
        if error or arr is None:
            invalid[where] = error
        elif not vid:
            invalid[where] = "empty video id"
        elif vid in arrays:
            invalid[where] = f"duplicate video id '{vid}'"
        else:
            try:
                arrays[vid] = _as_tokens(arr, dim, where)
                dim = arrays[vid].shape[1]
            except FeatureStoreError as e:
                invalid[where] = str(e).split(": ", 1)[1]
    if dim is None:
        raise FeatureStoreError(f"{identity['path']}: no readable feature array for expert '{expert}'")
    identity = {**identity, "dim": dim, "dtype": dtype}
    folder = store_dir(out_root, expert, identity)
    writer = FeatureStoreWriter(folder, identity, dim, dtype=dtype, expert=expert)
    todo = [v for v in arrays if v not in writer.done]
    for s in range(0, len(todo), shard_size):
        chunk = todo[s : s + shard_size]
        writer.write_shard(chunk, [arrays[v] for v in chunk])
    register_store(out_root, expert, folder)
    return ImportResult(expert, folder, dim, len(writer.done), len(todo), invalid)


def import_features(
    source: str | os.PathLike,
    out_root: str | os.PathLike,
    *,
    expert: str = "",
    ids_file: str = "",
    shard_size: int = 256,
    dtype: str = "float32",
) -> list[ImportResult]:
    """Import ``source`` (see the module doc) into stores under ``out_root``; one result per expert.

    Raises:
        FeatureStoreError / AnnotationError: the source is not one of the layouts (names the file).
    """
    src, out_root = Path(source).expanduser(), Path(out_root).expanduser()
    if not src.exists():
        raise FeatureStoreError(f"{src}: not found (expected a features folder, a .npz or a .npy)")
    if src.is_dir() and (src / MANIFEST_NAME).is_file():
        manifest = load_feature_manifest(src)
        return [
            _import_one(_folder_items(Path(spec.dir)), out_root, name,
                        {"source": "npy", "path": os.path.realpath(spec.dir), "fps": spec.fps}, spec.dim,
                        shard_size, dtype)  # fmt: skip
            for name, spec in manifest.experts.items()
        ]
    if not expert:
        raise FeatureStoreError(
            f"{src}: no {MANIFEST_NAME} here, so name the expert these features are for (--expert)"
        )
    if src.is_dir():
        items, kind = _folder_items(src), "npy"
    elif src.suffix in (".npz", ".npy"):
        items, kind = _split_items(src, ids_file), src.suffix[1:]
    else:
        raise FeatureStoreError(f"{src}: expected a folder, a .npz or a .npy file")
    identity = {"source": kind, "path": os.path.realpath(src)}
    return [_import_one(items, out_root, expert, identity, None, shard_size, dtype)]
