"""One entry point, :func:`load_records`, dispatching to one adapter per source format.

Each adapter has the signature ``(root: Path, split: str, subset: str | None, summary: LoadSummary)
-> list[ClipRecord]``: it parses the annotation files (recording their names in the summary) and returns
records with raw captions. Cleaning, dropping and counting happen here, once for every source.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from pathlib import Path

from etva.data.records import ClipRecord, LoadSummary, clean_captions
from etva.data.sources.activitynet import load_activitynet
from etva.data.sources.features import load_feature_manifest
from etva.data.sources.lsmdc import load_lsmdc
from etva.data.sources.msrvtt import load_msrvtt

__all__ = [
    "SOURCES",
    "load_records",
    "load_split",
    "load_feature_manifest",
]

log = logging.getLogger(__name__)

Adapter = Callable[[Path, str, "str | None", LoadSummary], list[ClipRecord]]

SOURCES: dict[str, Adapter] = {
    "msrvtt": load_msrvtt,
    "activitynet": load_activitynet,
    "lsmdc": load_lsmdc,
}

_MAX_MISSING_EXAMPLES = 10


def load_records(
    dataset: str,
    root: str | os.PathLike,
    split: str,
    subset: str | None = None,
    *,
    max_caption_chars: int = 1000,
    return_summary: bool = False,
) -> list[ClipRecord] | tuple[list[ClipRecord], LoadSummary]:
    """Parse ``dataset`` under ``root`` into the records of ``split``.

    Args:
        dataset: a key of :data:`SOURCES` (msrvtt | activitynet | lsmdc).
        root: the dataset folder (annotation files and videos).
        split: e.g. "train", "val", "test" (per source; see each adapter).
        subset: MSRVTT split protocol ("1k-A", "1k-B", "full", "7k"); ignored by other sources.
        max_caption_chars: longer captions are truncated (counted); 0 = no limit.
        return_summary: also return the :class:`LoadSummary` (counts of what was dropped).

    Raises:
        AnnotationError: a malformed annotation file (names the file, line/key, what was expected).
        ValueError: an unknown dataset, subset or split.
    """
    if dataset not in SOURCES:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(SOURCES)}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} is not a directory")
    summary = LoadSummary(dataset=dataset, split=split, subset=subset, root=str(root))
    raw = SOURCES[dataset](root, split, subset, summary)
    records = _clean(raw, max_caption_chars, summary)
    _count_missing(records, summary)
    log.info(
        "%s %s%s: %d videos, %d captions (dropped: %d empty captions, %d caption-less videos; "
        "%d captions truncated; %d video files missing)",
        dataset,
        split,
        f" ({subset})" if subset else "",
        summary.num_records,
        summary.num_captions,
        summary.empty_captions_dropped,
        summary.videos_without_captions,
        summary.captions_truncated,
        summary.missing_video_files,
    )
    return (records, summary) if return_summary else records


def load_split(cfg, split: str, return_summary: bool = False):
    """:func:`load_records` for a :class:`etva.config.DataConfig` (dataset, root, subset, limits)."""
    return load_records(
        cfg.dataset,
        cfg.root,
        split,
        cfg.subset,
        max_caption_chars=cfg.max_caption_chars,
        return_summary=return_summary,
    )


def _clean(raw: list[ClipRecord], max_chars: int, summary: LoadSummary) -> list[ClipRecord]:
    out = []
    for rec in raw:
        caps = clean_captions(rec.captions, max_chars, summary)
        if not caps:
            summary.videos_without_captions += 1
            log.warning("dropping %s: no non-empty caption", rec.video_id)
            continue
        out.append(dataclasses.replace(rec, captions=caps))
    summary.num_records = len(out)
    summary.num_captions = sum(len(r.captions) for r in out)
    return out


def _count_missing(records: list[ClipRecord], summary: LoadSummary) -> None:
    for rec in records:
        if not os.path.exists(rec.video_path):
            summary.missing_video_files += 1
            if len(summary.missing_examples) < _MAX_MISSING_EXAMPLES:
                summary.missing_examples.append(rec.video_path)
