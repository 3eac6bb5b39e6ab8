"""Checkpoint files: written atomically, verified by checksum, loaded without unpickling objects.

Layout of a checkpoint directory::

    model.pt        state_dict of the model (tensors only)
    optimizer.pt    optimizer + scheduler state (tensors and plain containers only)
    meta.json       epoch, metrics, anything JSON-serialisable
    config.yaml     the resolved config
    tokenizer/      the tokenizer files used for training
    MANIFEST.json   sha256 of every other file; written last, so its presence marks a complete checkpoint

Weights are read with ``torch.load(weights_only=True)``: a file holding arbitrary pickled objects is
refused, and any byte changed after writing fails the checksum. A full disk while writing raises
:class:`CheckpointError` naming the folder and leaves nothing behind (earlier checkpoints are untouched).
:func:`retained` is the retention rule of a run's checkpoints: the best one plus the most recent few.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from etva.eval.metrics import selection_key

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "retained"]

MANIFEST = "MANIFEST.json"
FULL_DISK_FAULT_ENV = "ETVA_FAULT_FULL_DISK"
FULL_DISK_FAULT_AT_ENV = "ETVA_FAULT_FULL_DISK_AT"


class CheckpointError(RuntimeError):
    """A checkpoint is incomplete, tampered with, or not in the expected format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)


def _no_space(out: Path, e: OSError) -> CheckpointError:
    return CheckpointError(
        f"{out}: no space left on the device while writing this checkpoint ({e}); nothing was written "
        f"there and earlier checkpoints are intact. Free space under {out.parent} (or set "
        "ray.storage_path elsewhere) and resubmit with the same run name to resume"
    )


def _write(path: Path, write: Callable[[Any], Any]) -> None:
    """Write one file through ``write(file)``, flushed and fsync'ed (a full disk raises here, not later).

    Fault injection for tests (never set by users): with ``$ETVA_FAULT_FULL_DISK`` naming a marker file
    that does not exist yet, the first file is written to ``/dev/full`` (a real ENOSPC from the kernel)
    and the marker is created, so the fault fires once; with ``$ETVA_FAULT_FULL_DISK_AT`` also set, only
    a file whose path contains that text counts (e.g. ``epoch_0001``: the second epoch's checkpoint).
    """
    marker = os.environ.get(FULL_DISK_FAULT_ENV, "")
    target: str | Path = path
    if marker and os.environ.get(FULL_DISK_FAULT_AT_ENV, "") in str(path) and not os.path.exists(marker):
        Path(marker).write_text(f"full disk injected while writing {path} (pid {os.getpid()})\n")
        target = "/dev/full"
    with open(target, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(
    out_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    *,
    optimizer_state: dict | None = None,
    config_yaml: str | None = None,
    tokenizer_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint to ``out_dir`` atomically (temp dir + rename; manifest written last).

    ``out_dir`` must not exist yet or be an empty directory.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: refusing to overwrite a non-empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(out, e) from e
        raise
    try:
        _write(tmp / "model.pt", lambda f: torch.save(model_state, f))
        if optimizer_state is not None:
            _write(tmp / "optimizer.pt", lambda f: torch.save(optimizer_state, f))
        meta_json = json.dumps(meta, indent=2, sort_keys=True, default=float).encode()
        _write(tmp / "meta.json", lambda f: f.write(meta_json))
        if config_yaml is not None:
            _write(tmp / "config.yaml", lambda f: f.write(config_yaml.encode()))
        for name, data in (tokenizer_files or {}).items():
            dest = tmp / "tokenizer" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            _write(dest, lambda f, data=data: f.write(data))
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)}
        manifest_json = json.dumps(manifest, indent=2, sort_keys=True).encode()
        _write(tmp / MANIFEST, lambda f: f.write(manifest_json))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _no_space(out, e) from e
        raise
    return out


def verify_checkpoint(ckpt_dir: str | Path) -> dict[str, str]:
    """Check that every file listed in the manifest exists with its recorded checksum."""
    root = Path(ckpt_dir)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise CheckpointError(f"{root}: no {MANIFEST}; the checkpoint is incomplete (interrupted write?)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{mpath}: not valid JSON ({e})") from e
    for rel, digest in manifest.items():
        p = root / rel
        if not p.is_file():
            raise CheckpointError(f"{root}: file '{rel}' listed in {MANIFEST} is missing")
        if _sha256(p) != digest:
            raise CheckpointError(f"{p}: checksum mismatch; the file was modified after it was written")
    extra = {str(p.relative_to(root)) for p in _files(root)} - set(manifest)
    if "model.pt" in extra or "optimizer.pt" in extra:
        raise CheckpointError(f"{root}: weights not listed in {MANIFEST}: {sorted(extra)}")
    return manifest


def _load_tensors(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or others) for non-weights content
        raise CheckpointError(
            f"{path}: refused to load (only tensors and plain containers are allowed): {e}"
        ) from e


def load_checkpoint(ckpt_dir: str | Path, *, load_optimizer: bool = True) -> dict[str, Any]:
    """Verify and load a checkpoint directory.

    Returns:
        dict with ``model`` (state_dict), ``optimizer`` (or None), ``meta`` (dict), ``config_yaml``
        (str or None) and ``tokenizer_dir`` (Path or None).
    """
    root = Path(ckpt_dir)
    verify_checkpoint(root)
    out: dict[str, Any] = {
        "model": _load_tensors(root / "model.pt"),
        "optimizer": None,
        "meta": json.loads((root / "meta.json").read_text()),
        "config_yaml": (root / "config.yaml").read_text() if (root / "config.yaml").exists() else None,
        "tokenizer_dir": root / "tokenizer" if (root / "tokenizer").is_dir() else None,
    }
    if load_optimizer and (root / "optimizer.pt").exists():
        out["optimizer"] = _load_tensors(root / "optimizer.pt")
    return out


def retained(reports: Sequence[tuple[str, Mapping[str, float]]], keep_recent: int) -> set[str]:
    """The checkpoints a run keeps: the best by :func:`etva.eval.metrics.selection_key` (the earliest among
    equals) plus the ``keep_recent`` most recent.

    Args:
        reports: ``(checkpoint id, metrics)`` in the order they were written, oldest first.
        keep_recent: how many of the newest to keep besides the best (``ray.keep_recent``).
    Returns:
        The ids to keep; every other one may be deleted.
    """
    if not reports:
        return set()
    best = max(range(len(reports)), key=lambda i: (selection_key(reports[i][1]), -i))
    recent = reports[len(reports) - keep_recent :] if keep_recent > 0 else []
    return {reports[best][0]} | {cid for cid, _ in recent}
