"""ActivityNet Captions, paragraph -> video retrieval.

``train.json`` / ``val_1.json`` / ``val_2.json``: ``{"v_<id>": {"duration": float, "timestamps":
[[s, e], ...], "sentences": [str, ...]}}``. All sentences of a video are joined, in order, into one
caption (the paragraph query) and the whole video is used. Video files ``v_<id>.mp4|.mkv|.webm`` (or
without the ``v_`` prefix, as some downloads name them) are looked up in ``root/videos/`` then ``root/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from etva.data.records import (
    AnnotationError,
    ClipRecord,
    LoadSummary,
    check_safe_name,
    read_json,
    resolve_inside,
)

__all__ = ["load_activitynet", "SPLIT_FILES", "VIDEO_EXTS"]

SPLIT_FILES = {"train": "train.json", "val_1": "val_1.json", "val_2": "val_2.json"}
_ALIASES = {"val": "val_1", "test": "val_1", "val1": "val_1", "val2": "val_2"}
VIDEO_EXTS = (".mp4", ".mkv", ".webm")


def load_activitynet(root: Path, split: str, subset: str | None, summary: LoadSummary) -> list[ClipRecord]:
    """One record per video: captions = [the video's sentences joined in order]."""
    canonical = _ALIASES.get(split, split)
    if canonical not in SPLIT_FILES:
        raise ValueError(
            f"ActivityNet has no split {split!r}; expected one of {sorted(SPLIT_FILES) + sorted(_ALIASES)}"
        )
    path = root / SPLIT_FILES[canonical]
    summary.annotation_files.append(str(path))
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "top level", "an object {video_id: {duration, timestamps, sentences}}")
    index = _index_videos(root)
    records = []
    for vid, entry in data.items():
        check_safe_name(vid, path, f"key {vid!r}")
        paragraph = _paragraph(entry, path, vid)
        rel = index.get(vid) or index.get(vid[2:] if vid.startswith("v_") else f"v_{vid}")
        video_path = resolve_inside(root, rel or f"videos/{vid}.mp4", path, f"key {vid!r}")
        records.append(ClipRecord(vid, str(video_path), [paragraph], canonical))
    return records


def _paragraph(entry: object, path: Path, vid: str) -> str:
    where = f"key {vid!r}"
    if not isinstance(entry, dict):
        raise AnnotationError(path, where, "an object with 'duration', 'timestamps', 'sentences'")
    for key in ("duration", "timestamps", "sentences"):
        if key not in entry:
            raise AnnotationError(path, f"{where}: key '{key}'", "present (missing)")
    sents, stamps = entry["sentences"], entry["timestamps"]
    if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
        raise AnnotationError(path, f"{where}.sentences", "a list of strings")
    if not isinstance(stamps, list) or len(stamps) != len(sents):
        raise AnnotationError(
            path, f"{where}.timestamps", f"a list of {len(sents)} [start, end] pairs (one per sentence)"
        )
    if not isinstance(entry["duration"], (int, float)) or isinstance(entry["duration"], bool):
        raise AnnotationError(path, f"{where}.duration", "a number (seconds)")
    # ActivityNet sentences often carry their own trailing spaces; join on single spaces
    return " ".join(s.strip() for s in sents if s.strip())


def _index_videos(root: Path) -> dict[str, str]:
    """``{stem: path relative to root}`` for video files in root/videos/ then root/ (first wins)."""
    index: dict[str, str] = {}
    for sub in ("videos", ""):
        folder = root / sub if sub else root
        if not folder.is_dir():
            continue
        found: dict[str, tuple[int, str]] = {}  # stem -> (extension rank, file name)
        with os.scandir(folder) as it:
            for entry in it:
                stem, ext = os.path.splitext(entry.name)
                rank = VIDEO_EXTS.index(ext.lower()) if ext.lower() in VIDEO_EXTS else -1
                if rank >= 0 and (stem not in found or rank < found[stem][0]):
                    found[stem] = (rank, entry.name)
        for stem, (_, name) in found.items():
            index.setdefault(stem, f"{sub}/{name}" if sub else name)
    return index
