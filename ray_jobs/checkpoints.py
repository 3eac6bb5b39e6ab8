"""A run's checkpoints on top of Ray Train's checkpoint manager: resume from the newest *good* one, keep
the best plus the most recent few (``ray.keep_recent``), retire the rest.

Ray Train V2 keeps a run under ``<ray.storage_path>/<run name>/``: one folder per reported checkpoint
(named by the recipe: ``epoch_0003``) and ``checkpoint_manager_snapshot.json``, which lists them.
``ray.train.get_checkpoint()`` hands back the latest one listed, whatever its state; the fallback to an
older one is ours: every checkpoint folder of the run, newest name first, is verified
(``etva.train.checkpoint.load_checkpoint``: the manifest's sha256 of every file) until one loads.

Ray refuses to restore a run whose snapshot lists a folder that no longer exists, so a checkpoint is
*retired* instead of deleted: its folder is emptied and holds only ``RETIRED.json`` with the reason. A
pruned checkpoint's files are deleted; an unusable one's files are moved to ``<run>/quarantine/<name>/``
for inspection. Ray's own retention is off (``CheckpointConfig(num_to_keep=None)``): it can only keep the
top N by score plus the latest, not the best plus the N most recent.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pyarrow.fs import FileSelector, FileType
from ray.train import Checkpoint

from etva.train.checkpoint import CheckpointError, load_checkpoint, retained

__all__ = ["RETIRED", "is_retired", "load_resume_state", "prune", "checkpoint_name"]

logger = logging.getLogger("etva.worker")
RETIRED = "RETIRED.json"
QUARANTINE = "quarantine"


def _join(*parts: str) -> str:
    return "/".join(p.rstrip("/") for p in parts)


def _parent(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]


def _name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def is_retired(ckpt) -> bool:
    """Has this checkpoint (a ``ray.train.Checkpoint``) been pruned or set aside as unusable?"""
    return ckpt.filesystem.get_file_info(_join(ckpt.path, RETIRED)).type == FileType.File


def _retire(ckpt, reason: str, keep_files: bool) -> None:
    fs, path = ckpt.filesystem, ckpt.path
    if keep_files:  # evidence of a corrupt checkpoint stays, outside the run's checkpoint folders
        dest = _join(_parent(path), QUARANTINE, f"{_name(path)}-{int(time.time())}")
        fs.create_dir(_parent(dest))
        fs.move(path, dest)
        fs.create_dir(path)
        reason = f"{reason}; its files are in {dest}"
    else:
        fs.delete_dir_contents(path)
    with fs.open_output_stream(_join(path, RETIRED)) as f:
        f.write(json.dumps({"reason": reason, "time": time.time()}).encode())


def _run_checkpoints(ckpt) -> list:
    """Every live checkpoint folder of the run that holds ``ckpt``, newest (by name) first."""
    infos = ckpt.filesystem.get_file_info(FileSelector(_parent(ckpt.path)))
    dirs = sorted(
        (i.path for i in infos if i.type == FileType.Directory and i.base_name.startswith("epoch_")),
        reverse=True,
    )
    found = [Checkpoint(p, filesystem=ckpt.filesystem) for p in dirs]
    return [c for c in found if not is_retired(c)]


def _load(ckpt) -> dict[str, Any]:
    with ckpt.as_directory() as d:
        return load_checkpoint(d)


def load_resume_state(ckpt, retire_bad: bool) -> tuple[dict[str, Any], list[str]]:
    """Load ``ckpt`` (Ray's latest) or, when it fails verification, the newest good checkpoint of its run.

    Args:
        ckpt: the ``ray.train.Checkpoint`` from ``ray.train.get_checkpoint()``.
        retire_bad: set the unusable ones aside (rank 0 only; the other ranks just skip them).
    Returns:
        (the loaded checkpoint, the names of every checkpoint folder in the run, for new unique names).
    Raises:
        CheckpointError: no checkpoint of the run loads (each one named with its reason).
    """
    candidates = [ckpt] + [c for c in _run_checkpoints(ckpt) if c.path.rstrip("/") != ckpt.path.rstrip("/")]
    bad: list[tuple[Any, str]] = []
    for cand in candidates:
        try:
            state = _load(cand)
        except CheckpointError as e:
            bad.append((cand, str(e)))
            continue
        for b, why in bad:
            logger.warning(
                "checkpoint %s is unusable (%s); resuming from %s, the newest good one", b.path, why, cand.path
            )
            if retire_bad:
                _retire(b, f"unusable: {why}", keep_files=True)
        names = {_name(i.path) for i in ckpt.filesystem.get_file_info(FileSelector(_parent(ckpt.path)))}
        return state, sorted(names)
    listing = "; ".join(f"{b.path}: {why}" for b, why in bad)
    raise CheckpointError(
        f"no usable checkpoint in {_parent(ckpt.path)} ({listing}). Start under a new run name, "
        "or restore a checkpoint folder from a backup"
    )


def checkpoint_name(epoch: int, taken: set[str]) -> str:
    """``epoch_0003``, or ``epoch_0003_redo<unix time>`` when an epoch is redone after a fallback."""
    name = f"epoch_{epoch:04d}"
    return name if name not in taken else f"{name}_redo{int(time.time())}"


def prune(reported: list, keep_recent: int) -> list[str]:
    """Retire every committed checkpoint but the best and the ``keep_recent`` most recent.

    Args:
        reported: ``ray.train.get_all_reported_checkpoints()`` (oldest first).
    Returns:
        The paths retired now.
    """
    by_path: dict[str, Any] = {}
    for r in reported:  # a folder reported twice (never by the recipe): its last report counts
        by_path.pop(r.checkpoint.path, None)
        by_path[r.checkpoint.path] = r
    live = [r for r in by_path.values() if not is_retired(r.checkpoint)]
    keep = retained([(r.checkpoint.path, r.metrics) for r in live], keep_recent)
    gone = [r.checkpoint for r in live if r.checkpoint.path not in keep]
    for ckpt in gone:
        _retire(ckpt, f"pruned: not the best, nor one of the {keep_recent} most recent", keep_files=False)
    return [c.path for c in gone]
