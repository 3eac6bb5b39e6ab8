"""Pre-extracted expert features: a manifest plus one ``(T, D)`` ``.npy`` array per video per expert.

Store layout::

    <features_dir>/features_manifest.json   {"experts": {"<name>": {"dim": D, "fps": f, "dir": "<subdir>"}}}
    <features_dir>/<subdir>/<video_id>.npy   float array (T, D), T may differ per video

A video without a file for some expert is allowed: its tokens are all masked.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etva.data.records import AnnotationError, ClipRecord, LoadSummary, read_json, resolve_inside
from etva.data.sampling import sample_indices

__all__ = [
    "MANIFEST_NAME",
    "ExpertSpec",
    "FeatureManifest",
    "FeatureError",
    "load_feature_manifest",
    "default_features_dir",
    "attach_features",
    "read_features",
]

MANIFEST_NAME = "features_manifest.json"


class FeatureError(ValueError):
    """A feature file that cannot be read or has the wrong shape (names the file)."""


@dataclass(frozen=True)
class ExpertSpec:
    name: str
    dim: int
    fps: float
    dir: str  # absolute folder holding <video_id>.npy


@dataclass(frozen=True)
class FeatureManifest:
    root: str
    experts: dict[str, ExpertSpec]

    @property
    def dims(self) -> dict[str, int]:
        return {name: spec.dim for name, spec in self.experts.items()}


def default_features_dir(root: str | os.PathLike) -> Path:
    """Where ``dataset="features"`` looks for the store when none is configured."""
    return Path(root) / "features"


def load_feature_manifest(features_dir: str | os.PathLike) -> FeatureManifest:
    """Parse and check ``features_manifest.json`` (AnnotationError names the bad key)."""
    features_dir = Path(features_dir)
    path = features_dir / MANIFEST_NAME
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("experts"), dict) or not data["experts"]:
        raise AnnotationError(path, "key 'experts'", "a non-empty object {name: {dim, fps, dir}}")
    experts = {}
    for name, spec in data["experts"].items():
        where = f"experts.{name}"
        if not isinstance(spec, dict):
            raise AnnotationError(path, where, "an object with keys 'dim', 'fps', 'dir'")
        for key in ("dim", "fps", "dir"):
            if key not in spec:
                raise AnnotationError(path, f"{where}: key '{key}'", "present (missing)")
        dim, fps, sub = spec["dim"], spec["fps"], spec["dir"]
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise AnnotationError(path, f"{where}.dim", f"a positive integer, got {dim!r}")
        if not isinstance(fps, (int, float)) or isinstance(fps, bool) or fps <= 0:
            raise AnnotationError(path, f"{where}.fps", f"a positive number, got {fps!r}")
        if not isinstance(sub, str) or not sub:
            raise AnnotationError(path, f"{where}.dir", f"a folder name, got {sub!r}")
        folder = resolve_inside(features_dir, sub, path, f"{where}.dir")
        experts[name] = ExpertSpec(name, dim, float(fps), str(folder))
    return FeatureManifest(str(features_dir), experts)


def attach_features(records: list[ClipRecord], features_dir: Path, summary: LoadSummary) -> list[ClipRecord]:
    """Records with ``features={expert: path}`` for the feature files that exist (missing counted)."""
    manifest = load_feature_manifest(features_dir)
    listings = {
        name: set(os.listdir(spec.dir)) if os.path.isdir(spec.dir) else set()
        for name, spec in manifest.experts.items()
    }
    summary.features_missing = {name: 0 for name in manifest.experts}
    out = []
    for rec in records:
        feats = {}
        for name, spec in manifest.experts.items():
            if f"{rec.video_id}.npy" in listings[name]:
                feats[name] = os.path.join(spec.dir, f"{rec.video_id}.npy")
            else:
                summary.features_missing[name] += 1
        out.append(dataclasses.replace(rec, features=feats))
    return out


def read_features(
    record: ClipRecord,
    expert_names: Sequence[str] | Mapping[str, int],
    max_tokens: int,
    dims: Mapping[str, int] | None = None,
) -> dict[str, np.ndarray]:
    """Read the experts of one record as fixed-size token arrays.

    Args:
        record: a record whose ``features`` maps expert name -> ``.npy`` path (missing = masked).
        expert_names: the experts to return (a mapping name -> dim also gives the dims).
        max_tokens: N; longer arrays are sampled at N segment centres, shorter ones zero-padded.
        dims: feature dim per expert (needed for an expert missing for this video).

    Returns:
        ``{"feat/<e>": float32 (N, D), "feat_mask/<e>": bool (N,)}`` for each expert.
    """
    if isinstance(expert_names, Mapping):
        dims = {**(dims or {}), **expert_names}
    dims = dims or {}
    paths = record.features or {}
    out: dict[str, np.ndarray] = {}
    for name in expert_names:
        path = paths.get(name)
        arr = _load_array(path, dims.get(name)) if path else None
        dim = arr.shape[1] if arr is not None else dims.get(name)
        if dim is None:
            raise FeatureError(f"{record.video_id}: expert {name!r} is missing and its dim is unknown")
        feat = np.zeros((max_tokens, dim), np.float32)  # (N, D)
        mask = np.zeros((max_tokens,), bool)  # (N,)
        if arr is not None and len(arr):
            idx = sample_indices(len(arr), max_tokens) if len(arr) > max_tokens else np.arange(len(arr))
            feat[: len(idx)] = arr[idx]
            mask[: len(idx)] = True
        out[f"feat/{name}"] = feat
        out[f"feat_mask/{name}"] = mask
    return out


def _load_array(path: str, dim: int | None) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeatureError(f"{path}: cannot read feature array ({e})") from e
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or (dim is not None and arr.shape[1] != dim):
        raise FeatureError(f"{path}: expected shape (T, {dim or 'D'}), got {tuple(arr.shape)}")
    return arr  # memory-mapped: only the sampled rows are read
