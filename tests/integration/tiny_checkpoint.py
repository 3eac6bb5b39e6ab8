"""A tiny untrained ETVA checkpoint (tiny.yaml model) on a tiny generated shapes dataset, for MLflow tests."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from etva.config import config_to_dict, load_config
from etva.data.synth import generate_dataset
from etva.model import build_model
from etva.train.checkpoint import save_checkpoint
from ray_jobs.prepare import prepare_splits, tokenizer_files

REPO = Path(__file__).resolve().parents[2]


def tiny_checkpoint(tmp: Path, *overrides: str) -> tuple[Path, list]:
    """(checkpoint dir, validation records) in ``tmp``; the dataset is generated once per ``tmp``."""
    root = tmp / "shapes"
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={root}", *overrides])
    if not root.exists():
        generate_dataset(root, 40, 0, cfg=cfg.data.synth, workers=1, progress=False)
    tok, prepared = prepare_splits(cfg, tmp / "tok", {"train": "train", "val": "test"})
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tok))
    ckpt = tmp / f"ckpt-{cfg.model.alignment}"
    save_checkpoint(
        ckpt,
        {"model": model.state_dict()},
        {"epoch": 0, "vocab_size": len(tok)},
        config_yaml=yaml.safe_dump(config_to_dict(cfg), sort_keys=False),
        tokenizer_files=tokenizer_files(tmp / "tok"),
    )
    return ckpt, prepared["val"].records
