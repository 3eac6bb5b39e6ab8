"""LSMDC (2016 challenge files): one caption per clip.

Annotation files are tab-separated with no header and 6 columns ``clip_id, start_aligned, end_aligned,
start_extracted, end_extracted, sentence``. Clip files are ``<movie>/<clip_id>.avi|.mp4`` where the movie
folder is the clip id up to its last ``_`` (``1004_Juno_00.00.32.849-00.00.35.458`` -> ``1004_Juno``),
looked up under ``root/videos/`` then ``root/``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from etva.data.records import (
    AnnotationError,
    ClipRecord,
    LoadSummary,
    check_safe_name,
    resolve_inside,
)

__all__ = ["load_lsmdc", "SPLIT_FILES", "movie_of"]

SPLIT_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
_ALIASES = {"training": "train", "public_test": "test"}
NUM_COLUMNS = 6
CLIP_EXTS = (".avi", ".mp4")


def movie_of(clip_id: str) -> str:
    """The movie folder of a clip: the clip id up to its last ``_``."""
    return clip_id.rsplit("_", 1)[0]


def load_lsmdc(root: Path, split: str, subset: str | None, summary: LoadSummary) -> list[ClipRecord]:
    """One record per clip (a clip listed twice keeps both captions)."""
    canonical = _ALIASES.get(split, split)
    if canonical not in SPLIT_FILES:
        raise ValueError(f"LSMDC has no split {split!r}; expected one of {sorted(SPLIT_FILES)}")
    path = root / SPLIT_FILES[canonical]
    summary.annotation_files.append(str(path))
    finder = _ClipFinder(root)
    captions: dict[str, list[str]] = {}
    paths: dict[str, Path] = {}
    for line_no, clip_id, sentence in _read_rows(path):
        where = f"line {line_no}"
        check_safe_name(clip_id, path, f"{where}: clip id")
        if clip_id not in paths:
            paths[clip_id] = resolve_inside(root, finder.find(clip_id), path, where)
            captions[clip_id] = []
        captions[clip_id].append(sentence)
    return [ClipRecord(cid, str(paths[cid]), caps, canonical) for cid, caps in captions.items()]


def _read_rows(path: Path):
    """Yield ``(line number, clip id, sentence)``; a wrong column count raises AnnotationError."""
    try:
        f = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, "file", "annotation file not found") from None
    with f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != NUM_COLUMNS:
                raise AnnotationError(
                    path,
                    f"line {reader.line_num}",
                    f"{NUM_COLUMNS} tab-separated columns (clip_id, start_aligned, end_aligned, "
                    f"start_extracted, end_extracted, sentence), got {len(row)}",
                )
            yield reader.line_num, row[0].strip(), row[-1]


class _ClipFinder:
    """Find ``<movie>/<clip_id>.avi|.mp4`` under root/videos/ or root/, listing each folder once."""

    def __init__(self, root: Path):
        self.root = root
        self._listing: dict[str, set[str]] = {}

    def _names(self, rel_dir: str) -> set[str]:
        if rel_dir not in self._listing:
            folder = self.root / rel_dir
            self._listing[rel_dir] = set(os.listdir(folder)) if folder.is_dir() else set()
        return self._listing[rel_dir]

    def find(self, clip_id: str) -> str:
        """Path relative to root (the default ``videos/<movie>/<clip>.avi`` when none exists)."""
        movie = movie_of(clip_id)
        for base in ("videos", ""):
            rel_dir = f"{base}/{movie}" if base else movie
            names = self._names(rel_dir)
            for ext in CLIP_EXTS:
                if clip_id + ext in names:
                    return f"{rel_dir}/{clip_id}{ext}"
        return f"videos/{movie}/{clip_id}{CLIP_EXTS[0]}"
