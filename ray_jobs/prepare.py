"""Driver-side data preparation shared by training, evaluation and Tune trials.

config -> dataset on disk (the shapes benchmark is generated when configured and absent) -> records of
the train and validation splits -> tokenizer (trained on the train captions, or a local ALBERT one) ->
tokenized caption tables -> Ray Datasets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from etva.config import Config, DataConfig
from etva.data import load_records
from etva.data.records import ClipRecord
from etva.data.tokenizer import build_tokenizer, load_tokenizer, tokenize
from ray_jobs.data import CaptionTable, build_video_dataset

logger = logging.getLogger(__name__)


@dataclass
class PreparedSplit:
    records: list[ClipRecord]
    captions: CaptionTable
    summary: dict = field(default_factory=dict)

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.records]

    def caption_arrays(self) -> dict:
        c = self.captions
        return {"input_ids": c.input_ids, "attention_mask": c.attention_mask, "video_index": c.video_index}


def resolve_paths(cfg: Config) -> Config:
    """Make data paths absolute (workers and jobs run in other folders)."""
    for name in ("root", "tokenizer_path", "features_dir"):
        value = getattr(cfg.data, name)
        if value and "://" not in value:
            setattr(cfg.data, name, str(Path(value).expanduser().resolve()))
    return cfg


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
    from etva.data.synth import generate_dataset

    s = data.synth
    logger.info("generating the shapes benchmark (%d videos, seed %d) in %s", s.num_videos, s.seed, root)
    generate_dataset(root, s.num_videos, s.seed, fmt=data.dataset, cfg=s, progress=False)


def _load(data: DataConfig, split: str) -> tuple[list[ClipRecord], dict]:
    out = load_records(
        data.dataset,
        data.root,
        split,
        subset=data.subset,
        return_summary=True,
        max_caption_chars=data.max_caption_chars,
        features_dir=data.features_dir or None,
    )
    records, summary = out
    if not records:
        raise ValueError(f"{data.dataset} {data.subset} split '{split}' under {data.root}: no usable records")
    return records, summary


def prepare_tokenizer(data: DataConfig, train_records: list[ClipRecord], out_dir: Path):
    """Reuse the run's tokenizer when it exists (resume), else build it from the config."""
    if (out_dir / "spiece.model").exists() and not data.tokenizer_path:
        return load_tokenizer(out_dir)
    captions = [c for r in train_records for c in r.captions]
    return build_tokenizer(data, captions, out_dir)


def tokenizer_files(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir()) if p.is_file()}


def prepare_splits(cfg: Config, tokenizer_dir: Path, splits: dict[str, str]):
    """Load the named splits (e.g. {"train": "train", "val": "test"}), build/load the tokenizer, tokenize.

    Returns (tokenizer, {name: PreparedSplit}).
    """
    loaded = {name: _load(cfg.data, split) for name, split in splits.items()}
    train_records = loaded["train"][0] if "train" in loaded else None
    if train_records is not None:
        tok = prepare_tokenizer(cfg.data, train_records, tokenizer_dir)
    else:
        tok = load_tokenizer(tokenizer_dir)

    def tokenize_fn(texts, max_len):
        return tokenize(tok, texts, max_len)

    out = {
        name: PreparedSplit(records, CaptionTable(records, tokenize_fn, cfg.data.max_text_len), summary)
        for name, (records, summary) in loaded.items()
    }
    return tok, out


def build_datasets(cfg: Config, prepared: dict[str, PreparedSplit]) -> dict:
    """Ray Datasets: train (shuffled, carries caption ids) and the evaluation splits (videos only)."""
    import ray.data

    # the workers print one progress line per epoch; Ray Data's per-operator bars would flood job logs
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {}
    for name, split in prepared.items():
        is_train = name == "train"
        out[name] = build_video_dataset(
            split.records, cfg.data, cfg.ray, captions=split.captions if is_train else None, shuffle=is_train
        )
    return out
