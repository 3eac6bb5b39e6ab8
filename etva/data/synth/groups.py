"""The groups of a generated compositional benchmark, read from its manifest (``shapes_manifest.json``).

Each video of the compositional mode belongs to a group (a target and its distractors) and records the
one binding it changes (``changed_binding``: ``""`` for the target). Two readers:

- :func:`video_groups`: ``{video_id: group}`` of a dataset root (what a validation split carved from
  training needs to keep groups whole);
- :func:`read_group_table`: the :class:`etva.eval.binding.GroupTable` of a split's videos, in the order of
  their ``video_index`` (what evaluation needs for the binding metric).

Both return None for a root that is not a compositional benchmark (no manifest, or a ``shapes`` one), and
refuse a compositional dataset generated before groups were kept within one split.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from etva.data.synth.generate import MANIFEST_NAME as MANIFEST
from etva.eval.binding import GroupTable, binding_kind

__all__ = ["video_groups", "read_group_table"]


def _compositional_videos(root: str | Path) -> dict[str, dict] | None:
    """The manifest's ``videos`` of a compositional dataset under ``root``; None for any other root."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        params, videos = manifest["params"], manifest["videos"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable synthetic dataset manifest ({e!r})") from e
    if params.get("mode") != "compositional":
        return None
    if not params.get("groups_within_splits"):
        raise ValueError(
            f"{path}: this compositional dataset was generated before a target and its distractors were kept "
            f"in one split (groups straddle train/test); delete {Path(root)} and generate it again"
        )
    return videos


def _entry(videos: dict[str, dict], vid: str, path: Path) -> tuple[int, str]:
    if vid not in videos:
        raise ValueError(f"{path}: video {vid!r} is not in the manifest (a split of another dataset?)")
    v = videos[vid]
    try:
        return int(v["group"]), str(v["changed_binding"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"{path}: video {vid!r} needs an integer 'group' and a 'changed_binding' ({e!r})"
        ) from e


def video_groups(root: str | Path) -> dict[str, int] | None:
    """``{video_id: group id}`` of every video of the compositional benchmark under ``root``; None when
    ``root`` holds no compositional manifest."""
    videos = _compositional_videos(root)
    if videos is None:
        return None
    path = Path(root) / MANIFEST
    return {vid: _entry(videos, vid, path)[0] for vid in videos}


def read_group_table(root: str | Path, video_ids: Sequence[str]) -> GroupTable | None:
    """The group table of a split: row ``i`` is ``video_ids[i]`` (the split's ``video_index`` order).

    Args:
        root: the dataset root (``data.root``) holding ``shapes_manifest.json``.
        video_ids: the split's video ids in ``video_index`` order.
    Returns:
        the :class:`GroupTable` (group ids and changed-binding kinds), or None when ``root`` is not a
        compositional benchmark (the binding metric does not apply).
    Raises:
        ValueError: an unreadable manifest, an old layout, or a video the manifest does not know.
    """
    videos = _compositional_videos(root)
    if videos is None:
        return None
    path = Path(root) / MANIFEST
    entries = [_entry(videos, vid, path) for vid in video_ids]
    group = np.array([g for g, _ in entries], np.int64)
    kind = np.array([binding_kind(c) for _, c in entries], dtype=str)
    return GroupTable(group, kind)
