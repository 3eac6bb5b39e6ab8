"""Validate a dataset before training: every split's annotations parse and agree, every video decodes.

:func:`check_dataset` loads the records of every split the source defines (for MSRVTT: the splits of the
chosen subset), checks them for consistency (duplicate ids in a split, one id naming different files,
empty captions dropped, caption-less videos, train/test overlap), decodes every referenced video once
with the training transform (:func:`make_video_example`, in threads, with a progress bar) and returns a
:class:`CheckReport` (``to_dict()`` for JSON; ``format()`` for people).
"""

from __future__ import annotations

import logging
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from etva.config import DataConfig
from etva.data.example import make_video_example
from etva.data.records import AnnotationError, ClipRecord
from etva.data.sources import activitynet, load_records, lsmdc, msrvtt

__all__ = ["BadFile", "CheckReport", "splits_of", "check_dataset", "check_videos"]

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "val", "val_1", "val_2")  # compared against "train" for overlap


@dataclass
class BadFile:
    path: str
    video_ids: list[str]
    splits: list[str]
    kind: str  # DecodeError kind (missing, empty, corrupt, truncated, ...) or the exception type
    reason: str


@dataclass
class CheckReport:
    dataset: str
    root: str
    subset: str | None
    splits: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> counts
    annotation_errors: dict[str, str] = field(default_factory=dict)  # split -> one-line error
    warnings: list[str] = field(default_factory=list)
    bad_files: list[BadFile] = field(default_factory=list)
    videos_checked: int = 0

    @property
    def ok(self) -> bool:
        return not self.bad_files and not self.annotation_errors

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def format(self, max_bad: int = 50) -> str:
        """A human-readable report: counts per split, warnings, errors, bad files."""
        lines = [f"{self.dataset} {self.subset or ''} at {self.root}".replace("  ", " ")]
        lines.append(f"{'split':<10}{'videos':>8}{'captions':>10}{'bad':>6}")
        for name, c in self.splits.items():
            lines.append(f"{name:<10}{c['videos']:>8}{c['captions']:>10}{c['bad']:>6}")
        lines += [f"annotation error ({s}): {e}" for s, e in self.annotation_errors.items()]
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"videos decoded: {self.videos_checked}, bad: {len(self.bad_files)}")
        for b in self.bad_files[:max_bad]:
            lines.append(f"  BAD {b.path} [{b.kind}] ({', '.join(b.splits)}): {b.reason}")
        if len(self.bad_files) > max_bad:
            lines.append(f"  ... and {len(self.bad_files) - max_bad} more (see --report)")
        lines.append("OK" if self.ok else "FAILED")
        return "\n".join(lines)


def splits_of(dataset: str, subset: str | None) -> list[str]:
    """The splits a source defines (MSRVTT: those of ``subset``)."""

    if dataset == "msrvtt":
        key = (subset or "1k-a").strip().lower()
        key = msrvtt._ALIASES.get(key, key)
        if key not in msrvtt.SUBSETS:
            raise ValueError(f"unknown MSRVTT subset {subset!r}; expected one of 1k-A, 1k-B, full, 7k")
        return list(msrvtt.SUBSETS[key])
    table = {"activitynet": activitynet.SPLIT_FILES, "lsmdc": lsmdc.SPLIT_FILES}
    if dataset not in table:
        raise ValueError(f"unknown dataset {dataset!r}; expected msrvtt, activitynet, lsmdc or features")
    return list(table[dataset])


def _consistency(records: dict[str, list[ClipRecord]], summaries: dict) -> list[str]:
    """Warnings about the annotations (nothing here stops training, but each deserves a look)."""
    out = []
    paths: dict[str, set[str]] = defaultdict(set)
    for split, recs in records.items():
        dup = [v for v, n in Counter(r.video_id for r in recs).items() if n > 1]
        if dup:
            out.append(f"{split}: {len(dup)} video ids listed more than once (e.g. {dup[0]})")
        for r in recs:
            paths[r.video_id].add(r.video_path)
        s = summaries[split]
        if s.empty_captions_dropped or s.videos_without_captions:
            out.append(f"{split}: {s.empty_captions_dropped} empty captions dropped, "
                       f"{s.videos_without_captions} videos without any caption dropped")  # fmt: skip
        if s.captions_truncated:
            out.append(f"{split}: {s.captions_truncated} captions truncated")
    clash = [v for v, p in paths.items() if len(p) > 1]
    if clash:
        out.append(f"{len(clash)} video ids name different files in different splits (e.g. {clash[0]})")
    train = {r.video_id for r in records.get("train", [])}
    for split in EVAL_SPLITS:
        overlap = train & {r.video_id for r in records.get(split, [])}
        if overlap:
            out.append(f"train and {split} share {len(overlap)} videos (e.g. {sorted(overlap)[0]}): leakage")
    return out


def _decode_one(rec: ClipRecord, data_cfg) -> tuple[str, str] | None:
    """None when the clip decodes, else (kind, reason)."""
    try:
        make_video_example(rec, data_cfg)
        return None
    except Exception as e:  # a checker reports every failure, known kinds and surprises alike
        return getattr(e, "kind", type(e).__name__), getattr(e, "reason", str(e))


def check_videos(
    records: dict[str, list[ClipRecord]], data_cfg, workers: int = 2, progress: bool = True
) -> tuple[list[BadFile], int]:
    """Decode each distinct (file, window) once. Returns (bad files sorted by path, clips decoded)."""
    users: dict[tuple, list[tuple[str, str]]] = defaultdict(list)  # clip -> [(split, video_id)]
    first: dict[tuple, ClipRecord] = {}
    for split, recs in records.items():
        for r in recs:
            key = (r.video_path, r.start_s, r.end_s)
            users[key].append((split, r.video_id))
            first.setdefault(key, r)
    keys = sorted(first, key=lambda k: (k[0], k[1] or 0.0, k[2] or 0.0))
    bad = []
    bar = tqdm(total=len(keys), unit="video", desc="check", file=sys.stderr, disable=not progress)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for key, result in zip(keys, pool.map(lambda k: _decode_one(first[k], data_cfg), keys)):
            bar.update(1)
            if result is not None:
                splits = sorted({s for s, _ in users[key]})
                ids = sorted({v for _, v in users[key]})
                bad.append(BadFile(key[0], ids, splits, result[0], result[1]))
    bar.close()
    return bad, len(keys)


def check_dataset(
    dataset: str,
    root: str | Path,
    subset: str | None = None,
    data_cfg=None,
    *,
    workers: int = 2,
    progress: bool = True,
    decode: bool = True,
) -> CheckReport:
    """Check every split of a dataset (``data_cfg``: the DataConfig whose decode settings to use).

    Raises:
        FileNotFoundError: ``root`` is not a directory.  ValueError: unknown dataset or subset.
    """
    if not Path(root).is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    data_cfg = data_cfg or DataConfig(dataset=dataset, root=str(root), subset=subset or "1k-A")
    report = CheckReport(
        dataset, str(root), subset or (data_cfg.subset if dataset == "msrvtt" else None)
    )
    records: dict[str, list[ClipRecord]] = {}
    summaries = {}
    for split in splits_of(dataset, subset):
        try:
            records[split], summaries[split] = load_records(
                dataset, root, split, subset,
                max_caption_chars=data_cfg.max_caption_chars, return_summary=True,
            )  # fmt: skip
        except AnnotationError as e:
            report.annotation_errors[split] = str(e)
    report.warnings = _consistency(records, summaries)
    if decode:
        report.bad_files, report.videos_checked = check_videos(records, data_cfg, workers, progress)
    bad_by_split = Counter(s for b in report.bad_files for s in b.splits)
    for split, recs in records.items():
        report.splits[split] = {
            "videos": len(recs),
            "captions": sum(len(r.captions) for r in recs),
            "missing": summaries[split].missing_video_files,
            "bad": bad_by_split.get(split, 0),
        }
    return report
