"""The one record type every data source yields, its load summary, and shared parsing helpers.

Adapters (``etva/data/sources/``) only parse annotation files into :class:`ClipRecord` s. Caption cleaning
(strip, drop empty, truncate long ones), dropping caption-less videos and counting all of it happen once,
in :func:`etva.data.sources.load_records`, through :class:`LoadSummary`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AnnotationError",
    "ClipRecord",
    "LoadSummary",
    "clean_captions",
    "read_json",
    "resolve_inside",
    "check_safe_name",
]


class AnnotationError(ValueError):
    """A malformed annotation file: names the file, the line or key, and what was expected."""

    def __init__(self, file: str | os.PathLike, where: str, expected: str):
        self.file = str(file)
        self.where = where
        self.expected = expected
        super().__init__(f"{self.file}: {where}: {expected}")


@dataclass(frozen=True)
class ClipRecord:
    """One video (or clip of a video) with its captions.

    ``start_s``/``end_s`` select a segment of the file (None = from the start / to the end).
    ``features`` maps an expert name to its pre-extracted ``(T, D)`` ``.npy`` file, for the experts
    that exist for this video (a missing expert is masked downstream).
    """

    video_id: str
    video_path: str
    captions: list[str]
    split: str
    start_s: float | None = None
    end_s: float | None = None
    features: dict[str, str] | None = None


@dataclass
class LoadSummary:
    """What loading a split kept and dropped; ``as_metrics()`` gives flat numbers for logging."""

    dataset: str
    split: str
    subset: str | None
    root: str
    annotation_files: list[str] = field(default_factory=list)
    num_records: int = 0
    num_captions: int = 0
    empty_captions_dropped: int = 0
    captions_truncated: int = 0
    videos_without_captions: int = 0  # dropped
    missing_video_files: int = 0  # kept: the decode stage skips and counts them
    missing_examples: list[str] = field(default_factory=list)  # first few missing paths
    features_missing: dict[str, int] = field(default_factory=dict)  # expert -> videos without it

    def as_metrics(self, prefix: str = "data/") -> dict[str, float]:
        """Flat ``{name: number}`` for MLflow/log lines (names prefixed with ``prefix``)."""
        keys = (
            "num_records",
            "num_captions",
            "empty_captions_dropped",
            "captions_truncated",
            "videos_without_captions",
            "missing_video_files",
        )
        out = {f"{prefix}{self.split}/{k}": float(getattr(self, k)) for k in keys}
        for name, n in sorted(self.features_missing.items()):
            out[f"{prefix}{self.split}/features_missing/{name}"] = float(n)
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def clean_captions(captions: list[str], max_chars: int, summary: LoadSummary) -> list[str]:
    """Strip captions, drop empty/whitespace-only ones and truncate to ``max_chars`` (counted)."""
    out = []
    for cap in captions:
        text = " ".join(cap.split())  # also collapses newlines and tabs
        if not text:
            summary.empty_captions_dropped += 1
            continue
        if max_chars > 0 and len(text) > max_chars:
            summary.captions_truncated += 1
            text = text[:max_chars].rstrip()
        out.append(text)
    return out


def read_json(path: Path) -> Any:
    """Parse a JSON annotation file; a missing or malformed file raises :class:`AnnotationError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, "file", "annotation file not found") from None
    except OSError as e:
        raise AnnotationError(path, "file", f"a readable file ({e.strerror})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(path, f"line {e.lineno} column {e.colno}", f"valid JSON ({e.msg})") from e


def check_safe_name(name: Any, file: str | os.PathLike, where: str) -> str:
    """A video/clip id used as a file name: a non-empty string with no path separators or ``..``."""
    if not isinstance(name, str) or not name.strip():
        raise AnnotationError(file, where, f"a non-empty id string, got {name!r}")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("..") or "\x00" in name:
        raise AnnotationError(file, where, f"an id that names a file inside the dataset root, got {name!r}")
    return name


def resolve_inside(base: Path, relative: str, file: str | os.PathLike, where: str) -> Path:
    """``base / relative``, rejected when it leaves ``base`` (absolute, ``..``, or a symlink out).

    ``base`` itself is resolved first, so a dataset folder that is a symlink to another disk is fine;
    only entries inside it that point elsewhere are rejected.
    """
    if os.path.isabs(relative) or any(part == ".." for part in Path(relative).parts):
        raise AnnotationError(file, where, f"a path inside the dataset root, got {relative!r}")
    real_base = Path(os.path.realpath(base))
    target = base / relative
    real = Path(os.path.realpath(target))
    if real != real_base and real_base not in real.parents:
        raise AnnotationError(
            file, where, f"a path inside the dataset root {base}, but {target} resolves to {real}"
        )
    return target
