"""Driver-side data preparation shared by training, evaluation and Tune trials.

config -> dataset on disk (the shapes benchmark is generated when configured and absent) -> records of
the train and validation splits -> tokenizer (trained on the train captions, or a local ALBERT one) ->
tokenized caption tables -> Ray Datasets.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import ray.data
import ray.train
from ray.train import ScalingConfig

from etva.config import Config, DataConfig, RayConfig
from etva.data import load_records
from etva.data.example import feature_stores_for
from etva.data.feature_store import check_stores
from etva.data.records import ClipRecord
from etva.data.synth import generate_dataset
from etva.data.synth.groups import video_groups
from etva.data.tokenizer import build_tokenizer, load_tokenizer, tokenize
from ray_jobs.data import CaptionTable, build_video_dataset, eval_shard_name
from ray_jobs.driver import storage_path

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Too many clips of a split are unusable (found while preparing, before any worker starts)."""


@dataclass
class PreparedSplit:
    records: list[ClipRecord]
    captions: CaptionTable
    summary: object = None  # etva.data.records.LoadSummary
    dropped: list[str] = field(default_factory=list)  # ids of videos dropped while preparing

    def summary_dict(self) -> dict:
        """What the split holds and what was dropped (for the log and MLflow's data_summary.json)."""
        base = self.summary.to_dict() if self.summary is not None else {}
        return {
            **base,
            "videos": len(self.records),
            "captions": len(self.captions),
            "dropped_video_ids": self.dropped,
        }

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def caption_arrays(self) -> dict:
        c = self.captions
        return {"input_ids": c.input_ids, "attention_mask": c.attention_mask, "video_index": c.video_index}


def ensure_dataset(data: DataConfig) -> None:
    """Generate the shapes benchmark under ``data.root`` when configured and the folder holds no data."""
    root = Path(data.root)
    if not data.root:
        raise ValueError(
            "data.root is empty: set it to the dataset folder (or a folder for the shapes benchmark)"
        )
    has_data = root.is_dir() and any(root.iterdir())
    if has_data:
        return
    if not data.synthesize_if_missing:
        raise FileNotFoundError(
            f"data.root={root}: no dataset there. Point data.root at a {data.dataset} folder "
            "(see README 'Datasets'), or set data.synthesize_if_missing=true to generate the shapes benchmark"
        )

    s = data.synth
    logger.info("generating the shapes benchmark (%d videos, seed %d) in %s", s.num_videos, s.seed, root)
    generate_dataset(root, s.num_videos, s.seed, fmt=data.dataset, cfg=s, progress=False)


def needs_video(cfg: Config) -> bool:
    """Whether any enabled expert reads the raw clip (features experts read only their store)."""
    return cfg.data.decode_clips and any(
        e.enabled and e.kind != "features" for e in cfg.model.experts.values()
    )


def _unusable(path: str) -> bool:
    return not os.path.isfile(path) or not os.access(path, os.R_OK) or os.path.getsize(path) == 0


def drop_unusable(
    records: list[ClipRecord], split: str, data: DataConfig
) -> tuple[list[ClipRecord], list[str]]:
    """Drop records whose video file is missing, unreadable or empty; fail when they are too many.

    Raises:
        DataError: more than ``data.max_skip_fraction`` of the split is unusable (count, first paths,
            how to override).
    """
    bad = [r for r in records if _unusable(r.video_path)]
    if not bad:
        return records, []
    share = len(bad) / len(records)
    first = ", ".join(r.video_path for r in bad[:5])
    if share > data.max_skip_fraction:
        raise DataError(
            f"{data.dataset} split '{split}' under {data.root}: {len(bad)} of {len(records)} video files are "
            f"missing or unreadable ({100 * share:.1f}% > data.max_skip_fraction={100 * data.max_skip_fraction:.1f}%); "
            f"first: {first}. Fix the dataset (etva data check), or accept the loss with "
            f"data.max_skip_fraction={min(1.0, round(share + 0.005, 3))}"
        )
    logger.warning("%s: dropped %d of %d videos whose file is missing or unreadable (first: %s)",
                   split, len(bad), len(records), first)  # fmt: skip
    ids = {r.video_id for r in bad}
    return [r for r in records if r.video_id not in ids], sorted(ids)


def carve_validation(
    records: list[ClipRecord], n: int, groups: dict[str, int] | None = None
) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Split ``n`` videos off the training records as a validation split: the ``n`` with the smallest
    sha1 of their id, so the choice does not depend on file order. Returns (train, val).

    ``groups`` (``{video_id: group}``, the compositional benchmark's targets with their distractors): whole
    groups are carved, in the order of their smallest member sha1, until at least ``n`` videos are taken."""
    if n >= len(records):
        raise DataError(f"data.val_from_train={n}: the training split has only {len(records)} videos")
    order = sorted(records, key=lambda r: hashlib.sha1(r.video_id.encode()).hexdigest())
    if groups is None:
        val_ids = {r.video_id for r in order[:n]}
    else:
        group_order = list(dict.fromkeys(groups.get(r.video_id, r.video_id) for r in order))
        members: dict[object, list[str]] = {}  # a video without a group is a group of its own
        for r in records:
            members.setdefault(groups.get(r.video_id, r.video_id), []).append(r.video_id)
        val_ids = set()
        for g in group_order:
            if len(val_ids) >= n:
                break
            val_ids.update(members[g])
        if len(val_ids) >= len(records):
            raise DataError(f"data.val_from_train={n}: carving whole groups leaves no training video")
    return [r for r in records if r.video_id not in val_ids], [r for r in records if r.video_id in val_ids]


def training_splits(cfg: Config) -> dict[str, str]:
    """The splits a training run prepares: {"train": ..., "val": ...} (val carved from train when
    ``data.val_from_train`` > 0, see :func:`prepare_splits`)."""
    if cfg.data.val_from_train > 0:
        return {"train": cfg.data.train_split}
    return {"train": cfg.data.train_split, "val": cfg.data.val_split}


def selection_split(cfg: Config) -> str:
    """Where the checkpoint is selected, in words (for the printed table and the MLflow run)."""
    if cfg.data.val_from_train > 0:
        return f"{cfg.data.val_from_train} videos held out of '{cfg.data.train_split}'"
    return f"'{cfg.data.val_split}'"


def selects_on_test(cfg: Config) -> bool:
    """True when the checkpoint is chosen on the split that is also reported as the result."""
    if cfg.data.val_from_train > 0:
        return False
    return cfg.data.val_split == (cfg.data.test_split or cfg.data.val_split) and "test" in cfg.data.val_split


def _load(data: DataConfig, split: str) -> tuple[list[ClipRecord], object]:
    out = load_records(
        data.dataset,
        data.root,
        split,
        subset=data.subset,
        return_summary=True,
        max_caption_chars=data.max_caption_chars,
    )
    records, summary = out
    if not records:
        raise ValueError(f"{data.dataset} {data.subset} split '{split}' under {data.root}: no usable records")
    return records, summary


TOKENIZER_CACHE = "tokenizer-cache"  # <cache root>/tokenizer-cache/<key>/: trained tokenizers, shared


def tokenizer_cache_dir(data: DataConfig, captions: list[str], cache_root: str) -> Path | None:
    """Where the tokenizer trained on ``captions`` is shared (runs, sweep trials, later sweeps), keyed
    like the decoded cache: by what training depends on (vocabulary size and the captions, in order).
    None when there is nothing to share (a pretrained tokenizer, no local cache root)."""
    if not cache_root or "://" in cache_root or data.tokenizer_path:
        return None
    h = hashlib.sha256(json.dumps({"vocab_size": data.vocab_size, "captions": captions}).encode())
    return Path(cache_root) / TOKENIZER_CACHE / h.hexdigest()[:24]


def _publish(src: Path, folder: Path) -> None:
    """Copy the tokenizer files of ``src`` into ``folder``, renamed into place only when complete."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    shutil.copytree(src, tmp)
    if folder.exists():  # another run published it first: keep theirs (the same bytes)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, folder)


def prepare_tokenizer(
    data: DataConfig, train_records: list[ClipRecord], out_dir: Path, cache_root: str = ""
) -> tuple[object, str]:
    """The run's tokenizer and where it came from: ``"resumed"`` (the run's own folder), ``"shared"``
    (trained earlier on the same captions, ``<cache_root>/tokenizer-cache/<key>``), ``"pretrained"``
    (``data.tokenizer_path``) or ``"trained"`` (now, then shared under ``cache_root`` when given)."""
    if (out_dir / "spiece.model").exists() and not data.tokenizer_path:
        return load_tokenizer(out_dir), "resumed"
    captions = [c for r in train_records for c in r.captions]
    shared = tokenizer_cache_dir(data, captions, cache_root)
    if shared is not None and (shared / "spiece.model").is_file():
        logger.info("reusing the tokenizer trained on the same captions: %s", shared)
        shutil.copytree(shared, out_dir, dirs_exist_ok=True)
        return load_tokenizer(out_dir), "shared"
    tok = build_tokenizer(data, captions, out_dir)
    if shared is not None:
        shared.parent.mkdir(parents=True, exist_ok=True)
        _publish(out_dir, shared)
    return tok, ("pretrained" if data.tokenizer_path else "trained")


def tokenizer_files(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}


def check_feature_store(cfg: Config) -> None:
    """Before any Ray work: every enabled features expert has a store in ``data.feature_store`` of the
    config's dim; the mismatch is named otherwise."""
    wanted = {n: e.dim for n, e in cfg.model.experts.items() if e.enabled and e.kind == "features"}
    if not cfg.data.feature_store:
        if wanted:
            raise ValueError(
                f"model.experts {sorted(wanted)} are features experts: set data.feature_store to the "
                "store that holds them (etva extract, or etva data import-features)"
            )
        return
    try:
        check_stores(feature_stores_for(cfg.data), wanted, f"data.feature_store={cfg.data.feature_store}")
    except ValueError as e:
        raise DataError(str(e)) from e


def load_splits(cfg: Config, splits: dict[str, str]) -> dict[str, tuple[list[ClipRecord], object, list[str]]]:
    """The named splits' records (e.g. {"train": "train", "val": "test"}), unusable videos dropped and a
    validation split carved from train when configured: {name: (records, summary, dropped ids)}."""
    check_feature_store(cfg)
    loaded, dropped = {}, {}
    for name, split in splits.items():
        records, summary = _load(cfg.data, split)
        if needs_video(cfg):
            records, dropped[name] = drop_unusable(records, split, cfg.data)
        loaded[name] = (records, summary)
    if cfg.data.val_from_train > 0 and "train" in loaded and "val" not in loaded:
        train, summary = loaded["train"]
        groups = video_groups(cfg.data.root)  # compositional benchmark: groups stay whole (else None)
        train, val = carve_validation(train, cfg.data.val_from_train, groups)
        loaded["train"], loaded["val"] = (train, summary), (val, None)
        dropped["val"] = []
    return {name: (records, summary, dropped.get(name, [])) for name, (records, summary) in loaded.items()}


def tokenize_splits(cfg: Config, tok, loaded: dict) -> dict[str, PreparedSplit]:
    """:class:`PreparedSplit` per loaded split: captions tokenized with ``tok``."""

    def tokenize_fn(texts, max_len):
        return tokenize(tok, texts, max_len)

    return {
        name: PreparedSplit(records, CaptionTable(records, tokenize_fn, cfg.data.max_text_len), summary, dropped)
        for name, (records, summary, dropped) in loaded.items()
    }


def prepare_splits(cfg: Config, tokenizer_dir: Path, splits: dict[str, str]):
    """Load the named splits (e.g. {"train": "train", "val": "test"}), build/load the tokenizer, tokenize.

    Returns (tokenizer, {name: PreparedSplit}).
    """
    loaded = load_splits(cfg, splits)
    if "train" in loaded:
        tok, _ = prepare_tokenizer(cfg.data, loaded["train"][0], tokenizer_dir)
    else:
        tok = load_tokenizer(tokenizer_dir)
    return tok, tokenize_splits(cfg, tok, loaded)


def scaling_config(ray_cfg: RayConfig):
    """Ray Train's ScalingConfig: ``num_workers`` workers of ``cpus_per_worker`` (+ GPUs when used)."""
    resources = {"CPU": ray_cfg.cpus_per_worker}
    if ray_cfg.use_gpu:
        resources["GPU"] = ray_cfg.gpus_per_worker
    return ScalingConfig(
        num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu, resources_per_worker=resources
    )


def build_datasets(cfg: Config, prepared: dict[str, PreparedSplit]) -> dict:
    """Ray Datasets: train (shuffled, carries caption ids) and, per evaluation split, one dataset per rank
    (``eval_shard_name(split, rank)``: videos only)."""
    # the workers print one progress line per epoch; Ray Data's per-operator bars would flood job logs
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False  # "Starting execution of Dataset ..." every epoch, per split

    out, world, storage = {}, cfg.ray.num_workers, storage_path(cfg)
    for name, split in prepared.items():
        if name == "train":
            out[name] = build_video_dataset(
                split.records,
                cfg.data,
                cfg.ray,
                captions=split.captions,
                shuffle=True,
                seed=cfg.train.seed,
                storage=storage,
                name=name,
                groups=train_groups(cfg, split.records) if cfg.train.group_batches else None,
                group_batch=cfg.train.batch_size,
            )
            continue
        for rank in range(world):  # evaluation splits: one exact shard per rank, nothing dropped
            shard = eval_shard_name(name, rank)
            out[shard] = build_video_dataset(
                split.records, cfg.data, cfg.ray, shard=(rank, world), storage=storage, name=shard
            )
    return out


def train_groups(cfg: Config, records) -> list[int]:
    """Each training record's group id (``train.group_batches``), from the benchmark's manifest."""
    groups = video_groups(cfg.data.root)
    if groups is None:
        raise ValueError(
            f"train.group_batches: {cfg.data.root} holds no grouped benchmark (a compositional "
            "shapes_manifest.json); set train.group_batches=false"
        )
    missing = [r.video_id for r in records if r.video_id not in groups]
    if missing:
        raise ValueError(
            f"train.group_batches: {len(missing)} training videos have no group in {cfg.data.root}'s "
            f"manifest (first: {missing[0]!r})"
        )
    return [groups[r.video_id] for r in records]


def dataset_config():
    """Ray Train's DataConfig: only the training set is split (``streaming_split(equal=True)`` may drop
    up to ``world_size - 1`` rows); evaluation splits come as one exact shard per rank."""
    return ray.train.DataConfig(datasets_to_split=["train"])
