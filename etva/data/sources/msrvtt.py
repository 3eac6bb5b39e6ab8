"""MSRVTT: ``MSRVTT_data.json`` + the split files of the 1k-A, 1k-B, Full and 7k protocols.

Layout under the root::

    MSRVTT_data.json           {"videos": [{"video_id", ...}], "sentences": [{"caption", "video_id", "sen_id"}]}
    MSRVTT_train.9k.csv        1k-A train (column video_id)       MSRVTT_train.7k.csv   7k train
    MSRVTT_JSFUSION_test.csv   1k-A / 7k test (key,vid_key,video_id,sentence: one caption per video)
    train_list_miech.txt, test_list_miech.txt                     1k-B (test: first caption by sen_id)
    train_list_full.txt, val_list_full.txt, test_list_full.txt    Full (all captions)
    videos/all/<video_id>.mp4
"""

from __future__ import annotations

import csv
from pathlib import Path

from etva.data.records import (
    AnnotationError,
    ClipRecord,
    LoadSummary,
    check_safe_name,
    read_json,
    resolve_inside,
)

__all__ = ["load_msrvtt", "parse_msrvtt_json", "SUBSETS"]

JSON_NAME = "MSRVTT_data.json"
JSFUSION = ("jsfusion", "MSRVTT_JSFUSION_test.csv", "sentence")

# subset -> split -> (list kind, file name, which captions: all | first | sentence)
SUBSETS: dict[str, dict[str, tuple[str, str, str]]] = {
    "1k-a": {"train": ("csv", "MSRVTT_train.9k.csv", "all"), "test": JSFUSION},
    "1k-b": {
        "train": ("list", "train_list_miech.txt", "all"),
        "test": ("list", "test_list_miech.txt", "first"),
    },
    "full": {
        "train": ("list", "train_list_full.txt", "all"),
        "val": ("list", "val_list_full.txt", "all"),
        "test": ("list", "test_list_full.txt", "all"),
    },
    "7k": {"train": ("csv", "MSRVTT_train.7k.csv", "all"), "test": JSFUSION},
}
_ALIASES = {"1ka": "1k-a", "jsfusion": "1k-a", "1kb": "1k-b", "miech": "1k-b", "9k": "1k-a"}


def load_msrvtt(root: Path, split: str, subset: str | None, summary: LoadSummary) -> list[ClipRecord]:
    """Records of one MSRVTT split under one protocol (``subset``, default 1k-A)."""
    key = (subset or "1k-a").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in SUBSETS:
        raise ValueError(f"unknown MSRVTT subset {subset!r}; expected one of 1k-A, 1k-B, full, 7k")
    if split not in SUBSETS[key]:
        raise ValueError(
            f"MSRVTT {subset or '1k-A'} has no split {split!r}; expected one of {sorted(SUBSETS[key])}"
        )
    kind, name, mode = SUBSETS[key][split]
    json_path = root / JSON_NAME
    video_ids, captions = parse_msrvtt_json(json_path)
    list_path = root / name
    summary.annotation_files += [str(json_path), str(list_path)]
    known = set(video_ids)
    if kind == "jsfusion":
        rows = _read_jsfusion(list_path, known)
    else:
        ids = _read_csv_ids(list_path, known) if kind == "csv" else _read_list(list_path, known)
        rows = [(vid, captions[vid][:1] if mode == "first" else list(captions[vid])) for vid in ids]
    video_dir = root / "videos" / "all"
    return [
        ClipRecord(
            video_id=vid,
            video_path=str(resolve_inside(video_dir, f"{vid}.mp4", json_path, f"video {vid!r}")),
            captions=caps,
            split=split,
        )
        for vid, caps in rows
    ]


def parse_msrvtt_json(path: Path) -> tuple[list[str], dict[str, list[str]]]:
    """``(video ids in file order, {video_id: captions ordered by sen_id})``, checked."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(path, "top level", "an object with keys 'videos' and 'sentences'")
    for key in ("videos", "sentences"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(path, f"key '{key}'", "a list (missing or wrong type)")
    video_ids: list[str] = []
    for i, video in enumerate(data["videos"]):
        if not isinstance(video, dict) or "video_id" not in video:
            raise AnnotationError(path, f"videos[{i}]", "an object with key 'video_id'")
        video_ids.append(check_safe_name(video["video_id"], path, f"videos[{i}].video_id"))
    by_video: dict[str, list[tuple[int, str]]] = {vid: [] for vid in video_ids}
    for i, sent in enumerate(data["sentences"]):
        where = f"sentences[{i}]"
        if not isinstance(sent, dict):
            raise AnnotationError(path, where, "an object with keys 'caption', 'video_id', 'sen_id'")
        for key in ("caption", "video_id", "sen_id"):
            if key not in sent:
                raise AnnotationError(path, f"{where}: key '{key}'", "present (missing)")
        if not isinstance(sent["caption"], str):
            raise AnnotationError(path, f"{where}.caption", "a string")
        if sent["video_id"] not in by_video:
            raise AnnotationError(
                path, f"{where}.video_id", f"a video listed under 'videos', got {sent['video_id']!r}"
            )
        try:
            sen_id = int(sent["sen_id"])
        except (TypeError, ValueError):
            raise AnnotationError(path, f"{where}.sen_id", "an integer") from None
        by_video[sent["video_id"]].append((sen_id, sent["caption"]))
    captions = {vid: [c for _, c in sorted(items, key=lambda t: t[0])] for vid, items in by_video.items()}
    return video_ids, captions


def _check_id(vid: str, known: set[str], path: Path, where: str, seen: dict[str, str]) -> str:
    if not vid:
        raise AnnotationError(path, where, "a video id (empty)")
    if vid not in known:
        raise AnnotationError(path, where, f"a video id present in {JSON_NAME}, got {vid!r}")
    if vid in seen:
        raise AnnotationError(path, where, f"each video once, but {vid!r} repeats {seen[vid]}")
    seen[vid] = where
    return vid


def _open_text(path: Path):
    try:
        return path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        raise AnnotationError(path, "file", "split file not found") from None


def _read_list(path: Path, known: set[str]) -> list[str]:
    """One video id per line (blank lines ignored)."""
    seen: dict[str, str] = {}
    with _open_text(path) as f:
        return [
            _check_id(line.strip(), known, path, f"line {n}", seen)
            for n, line in enumerate(f, start=1)
            if line.strip()
        ]


def _csv_rows(path: Path, required: tuple[str, ...]):
    """Yield ``(line_number, {column: value})`` for a CSV with a header naming ``required``."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or any(col not in header for col in required):
            raise AnnotationError(path, "line 1 (header)", f"columns {', '.join(required)}, got {header}")
        for row in reader:
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise AnnotationError(
                    path, f"line {reader.line_num}", f"{len(header)} columns, got {len(row)}"
                )
            yield reader.line_num, dict(zip(header, row))


def _read_csv_ids(path: Path, known: set[str]) -> list[str]:
    seen: dict[str, str] = {}
    return [
        _check_id(row["video_id"].strip(), known, path, f"line {n}", seen)
        for n, row in _csv_rows(path, ("video_id",))
    ]


def _read_jsfusion(path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    seen: dict[str, str] = {}
    return [
        (_check_id(row["video_id"].strip(), known, path, f"line {n}", seen), [row["sentence"]])
        for n, row in _csv_rows(path, ("key", "vid_key", "video_id", "sentence"))
    ]
