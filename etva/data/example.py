"""The per-video transform shared by the Ray Data decode stage and a plain DataLoader.

Plain functions of numpy arrays and Python lists (no Ray): :func:`make_video_example` turns one record
into model inputs; :func:`decode_batch` does it for a ``map_batches`` batch, never raising for a bad
clip: failed rows get zero arrays, ``ok=False`` and the error text, so the stage can drop and count them.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from etva.data.audio import log_mel, num_audio_frames
from etva.data.decode import DecodeError, decode_clip
from etva.data.feature_store import FeatureStore, FeatureStoreError, open_stores, store_batch
from etva.data.records import ClipRecord
from etva.data.sources.features import FeatureError

__all__ = [
    "make_video_example",
    "decode_batch",
    "feature_stores_for",
    "example_nbytes",
    "feature_stores_for_path",
    "SKIPPABLE_ERRORS",
]

log = logging.getLogger(__name__)

# errors that mean "this clip is bad" (skipped and counted); anything else is a bug and propagates
SKIPPABLE_ERRORS = (DecodeError, FeatureError, OSError)


def feature_stores_for(cfg) -> dict[str, FeatureStore]:
    """The Parquet feature stores of a DataConfig (``data.feature_store``), ``{}`` when unset."""
    return feature_stores_for_path(cfg.feature_store) if cfg.feature_store else {}


def feature_stores_for_path(path: str) -> dict[str, FeatureStore]:
    """``open_stores(path)``, once per process while the store is unchanged (each store keeps its
    id -> shard map, never its rows); a store that grew since (a resumed extraction) is opened again."""
    return _stores(path, _stamp(path))


def _stamp(path: str) -> tuple:
    """Modification times of the store's index and manifests: a new shard changes them."""
    root = Path(path)
    files = [root / "stores.json", root / "manifest.json", *root.glob("*/manifest.json")]
    return tuple(sorted((str(f), f.stat().st_mtime_ns) for f in files if f.is_file()))


@lru_cache(maxsize=4)
def _stores(path: str, stamp: tuple) -> dict[str, FeatureStore]:
    try:
        return open_stores(path)
    except FeatureStoreError as e:  # a config error, not a bad clip: not skippable
        raise ValueError(f"data.feature_store: {e}") from e


def make_video_example(record: ClipRecord, cfg) -> dict[str, np.ndarray]:
    """Decode one record into model inputs (``cfg`` is a :class:`etva.config.DataConfig`).

    With ``cfg.decode_clips = False`` no video file is opened: only the Parquet ``cfg.feature_store`` is
    read (the shards holding this clip); an expert a clip lacks is masked (unavailable).

    Returns:
        frames uint8 (T, S, S, 3); audio_mel float32 (A, M); audio_mask bool (A,) (when decoding);
        and per pre-extracted expert ``feat/<e>`` (N, D) in the store's dtype, ``feat_mask/<e>`` bool (N,).

    Raises:
        DecodeError / FeatureError: the clip or one of its feature files cannot be read.
    """
    out = _clip_example(record, cfg)
    stores = feature_stores_for(cfg)
    if stores:
        out.update({k: v[0] for k, v in store_batch(stores, [record.video_id], cfg.max_feature_tokens).items()})
    _check_has_features(record.video_id, out, cfg)
    return out


def _clip_example(record: ClipRecord, cfg) -> dict[str, np.ndarray]:
    """What one record gives without the Parquet store: the decoded clip (when ``decode_clips``)."""
    out: dict[str, np.ndarray] = {}
    if cfg.decode_clips:
        clip = decode_clip(
            record.video_path,
            cfg.num_frames,
            cfg.frame_size,
            start_s=record.start_s,
            end_s=record.end_s,
            audio_rate=cfg.audio_rate or None,
            max_audio_s=cfg.max_audio_s,
            threads=cfg.decode_threads,
        )
        mel, mask = log_mel(clip.audio, cfg.audio_rate, cfg.num_mel_bins, cfg.max_audio_s)
        out = {"frames": clip.frames, "audio_mel": mel, "audio_mask": mask}
    if not cfg.decode_clips and not cfg.feature_store:
        raise ValueError("data.decode_clips=false: set data.feature_store to read from")
    return out


def example_nbytes(cfg) -> int:
    """Bytes of one decoded example's arrays (frames, audio, expert features) under ``cfg``: the size
    estimate a decoded cache (``data.cache``) checks before decoding anything."""
    return sum(math.prod(shape) * np.dtype(dtype).itemsize for shape, dtype in _example_shapes(cfg).values())


_NO_FEATURES = "no expert has features for this clip (data.decode_clips=false)"


def _check_has_features(video_id: str, example: dict, cfg) -> None:
    if not cfg.decode_clips and not any(v.any() for k, v in example.items() if k.startswith("feat_mask/")):
        raise FeatureError(f"{video_id}: {_NO_FEATURES}")


def _example_shapes(cfg) -> dict[str, tuple[tuple[int, ...], type]]:
    """Shape and dtype of every array of a good example."""
    a = num_audio_frames(cfg.max_audio_s)
    out: dict[str, tuple[tuple[int, ...], type]] = {}
    if cfg.decode_clips:
        out = {
            "frames": ((cfg.num_frames, cfg.frame_size, cfg.frame_size, 3), np.uint8),
            "audio_mel": ((a, cfg.num_mel_bins), np.float32),
            "audio_mask": ((a,), bool),
        }
    for name, store in feature_stores_for(cfg).items():  # the stored dtype (the model casts on its device)
        out[f"feat/{name}"] = ((cfg.max_feature_tokens, store.dim), store.np_dtype)
        out[f"feat_mask/{name}"] = ((cfg.max_feature_tokens,), bool)
    return out


def _empty_example(cfg) -> dict[str, np.ndarray]:
    """Zero arrays with the shapes of a good example (filled in for failed rows)."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in _example_shapes(cfg).items()}


def _time(value) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def decode_batch(batch: dict, cfg) -> dict[str, np.ndarray]:
    """Decode a batch of index rows (a ``map_batches`` function body).

    Args:
        batch: columns ``video_path`` and optionally ``start_s``/``end_s`` (None or NaN = unset),
            ``video_id`` (the feature store's key; default: the path). Other numeric/bool columns
            (e.g. ``video_index``) are passed through; string columns are not.
        cfg: a :class:`etva.config.DataConfig`.

    Returns:
        The example arrays stacked over the batch (B, ...), plus ``ok`` bool (B,) and ``error`` str (B,)
        ("" when ok); failed rows hold zeros.
    """
    paths = [str(p) for p in batch["video_path"]]
    n = len(paths)
    starts, ends = batch.get("start_s", [None] * n), batch.get("end_s", [None] * n)
    ids = [str(v) for v in batch.get("video_id", paths)]
    stores = feature_stores_for(cfg)
    # store columns stay whole-batch arrays (one gather per shard); only decoded clips go row by row
    out = store_batch(stores, ids, cfg.max_feature_tokens) if stores else {}
    has_feat = np.zeros(n, bool)
    for key, mask in out.items():
        if key.startswith("feat_mask/"):
            has_feat |= mask.any(axis=1)
    examples, ok, errors = [], np.ones(n, bool), [""] * n
    for i, path in enumerate(paths):
        rec = ClipRecord(ids[i], path, [], "", _time(starts[i]), _time(ends[i]))
        try:
            ex = _clip_example(rec, cfg)
            if not cfg.decode_clips and not has_feat[i]:
                raise FeatureError(f"{ids[i]}: {_NO_FEATURES}")
            examples.append(ex)
        except SKIPPABLE_ERRORS as e:
            log.warning("skipping %s: %s", ids[i] if not cfg.decode_clips else path, e)
            ok[i], errors[i] = False, f"{type(e).__name__}: {e}"
            examples.append(None)
    for key, zero in _empty_example(cfg).items():
        if key not in out:
            out[key] = np.stack([ex[key] if ex is not None else zero for ex in examples])
    for key in out:
        if key.startswith("feat") and not ok.all():  # failed rows hold zeros
            out[key][~ok] = 0
    for key, values in batch.items():  # numeric columns pass through (strings cannot become tensors)
        arr = np.asarray(values) if key not in out else None
        if arr is not None and (arr.dtype.kind in "biuf"):
            out[key] = arr
    out["ok"] = ok
    out["error"] = np.asarray(errors, dtype=object)
    return out
