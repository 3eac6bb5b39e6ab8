"""``etva index``: encode a video folder or a feature store with a model into an index, as a Ray Data job.

The driver resolves the model (``models:/<name>@<alias>`` is pinned to the version the alias names now,
so a later alias move cannot change the weights mid-build), opens the index for that model's digest
(refusing an index of another model), plans the work (new or changed videos; stale rows dropped), and
runs ``ray.data.from_items(todo).map_batches(VideoEncoder, compute=ActorPoolStrategy(...))``: every actor
loads the checkpoint once and encodes its batches with :func:`etva.index.build.encode_rows`. The driver
commits a Parquet part every ``part_size`` videos, so a stopped build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etva.config import settings
from etva.index.build import (
    Item,
    default_index_dir,
    digest_of,
    encode_rows,
    load_index_model,
    open_for,
    plan,
    source_items,
)
from etva.index.store import IndexError_, rows_table

__all__ = ["ResolvedModel", "resolve_model", "VideoEncoder", "build_index", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolvedModel:
    ckpt_dir: str
    name: str  # registered model name ('' for a directory)
    version: str  # registered version ('' for a directory)
    uri: str  # what the user passed


def resolve_model(uri: str, dst: str | os.PathLike, tracking_uri: str = "") -> ResolvedModel:
    """A local checkpoint for a directory or ``models:/<name>@<alias>`` / ``models:/<name>/<version>``.

    An alias is resolved to its version first and that version is downloaded (into ``dst/<name>-v<N>``,
    reused when already there), so the weights and the version reported always agree.
    """
    if not uri.startswith("models:/"):
        path = Path(uri).expanduser().resolve()
        if not (path / "model.pt").is_file():
            raise IndexError_(f"--model {uri}: not a checkpoint directory (no model.pt)")
        return ResolvedModel(str(path), "", "", uri)
    from ray_jobs.tracking import download_checkpoint, get_client

    tracking_uri = settings.tracking_uri(tracking_uri)
    body = uri.removeprefix("models:/").strip("/")
    client = get_client(tracking_uri)
    if "@" in body:
        name, alias = body.split("@", 1)
        version = str(client.get_model_version_by_alias(name, alias).version)
    else:
        name, _, version = body.rpartition("/")
        if not name:
            raise IndexError_(f"--model {uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    local = Path(dst) / f"{name}-v{version}"
    found = sorted(p.parent for p in local.rglob("MANIFEST.json")) if local.is_dir() else []
    ckpt = (
        found[0] if len(found) == 1 else download_checkpoint(f"models:/{name}/{version}", local, tracking_uri)
    )
    return ResolvedModel(str(ckpt), name, version, uri)


class VideoEncoder:
    """Ray Data actor: one loaded model, encodes batches of index items into index rows."""

    def __init__(self, model: ResolvedModel, digest: str, kind: str, root: str, source: int, batch: int):
        import torch

        torch.set_num_threads(1)
        self.im = load_index_model(model.ckpt_dir, model.name, model.version, model.uri)
        if self.im.id.digest != digest:  # never mix: the actor must hold the driver's weights
            raise IndexError_(f"{model.ckpt_dir}: digest {self.im.id.digest[:12]} != {digest[:12]}")
        self.kind, self.root, self.source, self.batch = kind, root, source, batch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [
            Item(str(k), str(p), str(g), (int(m), int(s)))
            for k, p, g, m, s in zip(
                batch["key"], batch["path"], batch["group"], batch["mtime_ns"], batch["size"]
            )
        ]
        rows, failed = encode_rows(self.im, self.kind, self.root, self.source, items, self.batch)
        ok = {c: rows.column(c).to_pylist() for c in ("key", "path", "group", "pattern", "mtime_ns", "size")}
        vec = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(rows.num_rows, self.im.dim)
        bad = [it for it in items if it.key in failed]
        return {
            "key": np.array(ok["key"] + [it.key for it in bad], dtype=object),
            "path": np.array(ok["path"] + [it.path for it in bad], dtype=object),
            "group": np.array(ok["group"] + [it.group for it in bad], dtype=object),
            "pattern": np.array(ok["pattern"] + [""] * len(bad), dtype=object),
            "mtime_ns": np.array(ok["mtime_ns"] + [it.stat[0] for it in bad], dtype=np.int64),
            "size": np.array(ok["size"] + [it.stat[1] for it in bad], dtype=np.int64),
            "vector": np.concatenate([vec, np.zeros((len(bad), self.im.dim), np.float32)]).astype(np.float32),
            "error": np.array([""] * rows.num_rows + [failed[it.key][2] for it in bad], dtype=object),
        }


def _commit(store, source: int, batch: dict[str, np.ndarray]) -> int:
    ok = batch["error"] == ""
    rows = rows_table(
        list(batch["key"][ok]), source, list(batch["path"][ok]), list(batch["group"][ok]),
        list(batch["pattern"][ok]), np.stack(list(batch["vector"][ok])) if ok.any() else
        np.zeros((0, store.manifest.dim), np.float32),
        list(zip(batch["mtime_ns"][ok].tolist(), batch["size"][ok].tolist())),
    )  # fmt: skip
    failed = {
        str(k): (int(m), int(s), str(e))
        for k, m, s, e in zip(
            batch["key"][~ok], batch["mtime_ns"][~ok], batch["size"][~ok], batch["error"][~ok]
        )
    }
    store.append(rows, source, failed)
    return rows.num_rows


def build_index(
    model: ResolvedModel, index_dir: str | os.PathLike, kind: str, root: str | os.PathLike, *,
    actors: int = 1, batch_size: int = 8, part_size: int = 64, cpus_per_actor: float = 1.0,
) -> dict[str, int]:  # fmt: skip
    """Bring ``index_dir`` up to date with one source (folder/store) for ``model`` on the connected Ray.

    Returns counts: reused, encoded, dropped, failed (all failures of the source so far) and, for a
    feature store, no_split (its videos no split of the model's dataset lists).
    """
    import ray
    from ray.data import ActorPoolStrategy

    im = load_index_model(model.ckpt_dir, model.name, model.version, model.uri)
    store = open_for(im, index_dir)
    root = str(Path(root).resolve())
    source = store.source_id(kind, root)
    items = source_items(kind, root, im.data_cfg)  # a store video's group: its split in the model's dataset
    todo, stale = plan(store, source, items)
    store.drop(source, stale)
    counts = {"reused": len(store.known(source)), "encoded": 0, "dropped": len(stale)}
    if kind == "store":
        counts["no_split"] = sum(1 for it in items if not it.group)
    if todo:
        items = [{"key": i.key, "path": i.path, "group": i.group, "mtime_ns": i.stat[0], "size": i.stat[1]}
                 for i in todo]  # fmt: skip
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64)))
        ds = ds.map_batches(
            VideoEncoder, fn_constructor_args=(model, im.id.digest, kind, root, source, batch_size),
            batch_size=batch_size, compute=ActorPoolStrategy(size=max(1, actors)), num_cpus=cpus_per_actor,
            batch_format="numpy",
        )  # fmt: skip
        for batch in ds.iter_batches(batch_size=part_size, batch_format="numpy"):
            counts["encoded"] += _commit(store, source, batch)
    counts["failed"] = len(store.failed(source))
    log.info("index %s (%s): %s", index_dir, im.id.describe(), counts)
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ray_jobs.index_job", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", default="")
    src.add_argument("--store", default="")
    p.add_argument("--index", default="", help="default: runs/index/<source>-<hash>-<model digest>")
    p.add_argument("--actors", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--part-size", type=int, default=64)
    p.add_argument("--address", default="")
    p.add_argument("--tracking-uri", default="")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point (``etva index`` calls :func:`build_index` through the seam with the same arguments)."""
    import ray

    args = parse_args(argv)
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="etva-index-") as tmp:
        model = resolve_model(args.model, tmp, args.tracking_uri)
        kind, root = ("folder", args.videos) if args.videos else ("store", args.store)
        index = args.index or str(default_index_dir(root, digest_of(model.ckpt_dir)))
        counts = build_index(model, index, kind, root, actors=args.actors, batch_size=args.batch_size,
                             part_size=args.part_size)  # fmt: skip
    print(f"index {index}: {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
