"""The CE/MMT-style ``.npy`` layout that ``etva data import-features`` reads (training reads only the
Parquet store it writes), and the token sampling shared by every features reader.

Layout::

    <features_dir>/features_manifest.json   {"experts": {"<name>": {"dim": D, "fps": f, "dir": "<subdir>"}}}
    <features_dir>/<subdir>/<video_id>.npy   float array (T, D), T may differ per video

A video without a file for some expert is allowed: its tokens are all masked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from etva.data.records import AnnotationError, read_json, resolve_inside

__all__ = [
    "MANIFEST_NAME",
    "ExpertSpec",
    "FeatureManifest",
    "FeatureError",
    "load_feature_manifest",
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
