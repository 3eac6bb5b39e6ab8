"""Checkpoint files: written atomically, verified by checksum, loaded without unpickling objects.

Layout of a checkpoint directory::

    model.pt        state_dict of the model (tensors only)
    optimizer.pt    optimizer + scheduler state (tensors and plain containers only)
    meta.json       epoch, metrics, anything JSON-serialisable
    config.yaml     the resolved config
    tokenizer/      the tokenizer files used for training
    MANIFEST.json   sha256 of every other file; written last, so its presence marks a complete checkpoint

Weights are read with ``torch.load(weights_only=True)``: a file holding arbitrary pickled objects is
refused, and any byte changed after writing fails the checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint"]

MANIFEST = "MANIFEST.json"


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        torch.save(model_state, tmp / "model.pt")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=float))
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        for name, data in (tokenizer_files or {}).items():
            dest = tmp / "tokenizer" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
        manifest = {str(p.relative_to(tmp)): _sha256(p) for p in _files(tmp)}
        with open(tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
