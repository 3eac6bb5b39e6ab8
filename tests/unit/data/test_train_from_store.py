"""Training from a Parquet feature store alone: features extracted from the shapes benchmark by a tiny
random CLIP tower (plain extraction loop), then the videos folder is moved away and the model learns from
the store (no video file is opened). Missing features mark an expert unavailable, not the clip skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from etva.config import DataConfig, LossConfig, OptimConfig, SynthConfig, load_config
from etva.data import load_records
from etva.data.example import make_video_example
from etva.data.feature_store import FeatureStoreWriter, register_store
from etva.data.sources.features import FeatureError
from etva.data.synth import generate_dataset
from etva.data.tokenizer import tokenize, train_tokenizer
from etva.features.extractor import extract_local, index_rows
from etva.model import build_model
from etva.train.engine import build_optimizer, build_scheduler, evaluate, train_epoch
from etva.train.losses import build_loss

REPO = Path(__file__).resolve().parents[3]
torch.set_num_threads(2)


def _record(vid: str, path: str = "/nowhere/x.mp4"):
    from etva.data.records import ClipRecord

    return ClipRecord(vid, path, ["a caption"], "train")


def test_features_only_opens_no_video_and_masks_missing_expert(tmp_path):
    for name, dim, ids in (("appearance", 3, ["v0", "v1"]), ("audio", 2, ["v0"])):
        folder = tmp_path / name
        FeatureStoreWriter(folder, {"n": name}, dim, expert=name).write_shard(
            ids, [np.ones((2, dim))] * len(ids)
        )
        register_store(tmp_path, name, folder)
    cfg = DataConfig(decode_clips=False, feature_store=str(tmp_path), max_feature_tokens=4)
    ex = make_video_example(_record("v1"), cfg)  # the video file does not exist: never opened
    assert "frames" not in ex and ex["feat_mask/appearance"].sum() == 2
    assert ex["feat/audio"].shape == (4, 2) and not ex["feat_mask/audio"].any()  # unavailable, kept
    with pytest.raises(FeatureError, match="no expert has features"):
        make_video_example(_record("v9"), cfg)
    with pytest.raises(ValueError, match="data.feature_store"):
        make_video_example(_record("v0"), DataConfig(decode_clips=False, feature_store=str(tmp_path / "x")))
    with pytest.raises(ValueError, match="decode_clips=false: set data.feature_store"):
        make_video_example(_record("v0"), DataConfig(decode_clips=False))


def _split_arrays(records, cfg: DataConfig, tok, max_len: int) -> dict[str, np.ndarray]:
    """Every clip's features (from the store) and every caption, as arrays."""
    ex = [make_video_example(r, cfg) for r in records]
    caps = [c for r in records for c in r.captions]
    ids, mask = tokenize(tok, caps, max_len)
    out = {k: np.stack([e[k] for e in ex]) for k in ex[0]}
    out["video_index"] = np.arange(len(records))
    out["cap_video"] = np.repeat(np.arange(len(records)), [len(r.captions) for r in records])
    out["input_ids"], out["attention_mask"] = ids, mask
    return out


def _train_batches(split, bs, rng):
    n = len(split["video_index"])
    first = np.searchsorted(split["cap_video"], np.arange(n))
    counts = np.bincount(split["cap_video"], minlength=n)
    order = rng.permutation(n)
    for s in range(0, n - n % bs, bs):
        sel = order[s : s + bs]
        cap = first[sel] + (rng.random(bs) * counts[sel]).astype(int)
        feats = {k: v[sel] for k, v in split.items() if k.startswith("feat")}
        yield {
            **feats,
            "video_index": sel,
            "input_ids": split["input_ids"][cap],
            "attention_mask": split["attention_mask"][cap],
            "caption_index": cap,
        }


def _eval(model, split):
    n, c = len(split["video_index"]), len(split["cap_video"])
    vids = [
        {
            **{k: v[s : s + 16] for k, v in split.items() if k.startswith("feat")},
            "video_index": np.arange(n)[s : s + 16],
        }
        for s in range(0, n, 16)
    ]
    caps = [
        {
            "input_ids": split["input_ids"][s : s + 32],
            "attention_mask": split["attention_mask"][s : s + 32],
            "caption_index": np.arange(c)[s : s + 32],
            "video_index": split["cap_video"][s : s + 32],
        }
        for s in range(0, c, 32)
    ]
    return evaluate(model, vids, caps, "cpu")


def test_training_from_store_with_videos_moved_away_learns(tmp_path):
    root = tmp_path / "shapes"
    synth = SynthConfig(width=64, height=48, fps=8, duration_s=1.0, captions_per_video=4)
    generate_dataset(root, 240, 0, cfg=synth, workers=2, progress=False)
    torch.manual_seed(0)
    clip_cfg = CLIPVisionConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    CLIPVisionModelWithProjection(clip_cfg).save_pretrained(tmp_path / "clip")
    cfg = load_config(
        REPO / "ray_jobs/configs/tiny.yaml",
        [
            f"data.root={root}",
            "model.experts={appearance: {kind: features, dim: 32, encoder: clip, pooling: mean, layer: 0, "
            f"pretrained_path: {tmp_path / 'clip'}}}}}",
            f"extract.output_dir={tmp_path / 'store'}",
            "extract.num_frames=4",
            "extract.frame_size=32",
            "extract.splits=[train, test]",
        ],
    )
    records = {s: load_records("msrvtt", root, s, "1k-A") for s in ("train", "test")}
    extract_local(cfg, index_rows(records["train"] + records["test"]))
    (root / "videos").rename(tmp_path / "videos_away")  # training must not need them

    data = DataConfig(decode_clips=False, feature_store=str(tmp_path / "store"), max_feature_tokens=4)
    tok = train_tokenizer([c for r in records["train"] for c in r.captions], tmp_path / "tok", 200)
    train = _split_arrays(records["train"], data, tok, 16)
    test = _split_arrays(records["test"], data, tok, 16)
    torch.manual_seed(0)
    cfg.model.dropout = 0.0
    model = build_model(cfg.model, len(tok))
    loss_fn = build_loss(LossConfig(temperature=0.1))
    optim_cfg = OptimConfig(lr=3e-3, warmup_steps=5)
    optimizer = build_optimizer(torch.nn.ModuleList([model, loss_fn]), optim_cfg)
    epochs, bs = 30, 16
    steps = epochs * (len(train["video_index"]) // bs)
    scheduler = build_scheduler(optimizer, optim_cfg, total_steps=steps)
    before = _eval(model, test)
    for epoch in range(epochs):
        train_epoch(
            model,
            loss_fn,
            optimizer,
            scheduler,
            _train_batches(train, bs, np.random.default_rng(epoch)),
            "cpu",
            epoch=epoch,
        )
    after = _eval(model, test)
    chance = 100.0 / len(test["video_index"])
    print(
        f"test videos {len(test['video_index'])}: t2v_R1 {before['t2v_R1']:.1f} -> {after['t2v_R1']:.1f}, "
        f"R5 {after['t2v_R5']:.1f} (chance R1 {chance:.1f})"
    )
    assert after["t2v_R1"] >= 3 * chance, after
    assert after["t2v_R1"] > before["t2v_R1"]


def test_mixing_raw_clip_and_store_experts(tmp_path):
    """decode_clips=true + a feature store: frames/audio for the built-in experts and features for the
    store's, in one example and one model forward."""
    from etva.config import ExpertConfig

    from .conftest import write_video

    path = write_video(tmp_path / "v0.mp4", num_frames=12)
    folder = tmp_path / "store" / "clip"
    FeatureStoreWriter(folder, {"n": 1}, 5, expert="clip").write_shard(["v0"], [np.ones((6, 5))])
    register_store(tmp_path / "store", "clip", folder)
    data = DataConfig(num_frames=4, frame_size=32, num_mel_bins=16, max_audio_s=1.0)
    data.feature_store, data.max_feature_tokens = str(tmp_path / "store"), 4
    ex = make_video_example(_record("v0", str(path)), data)
    assert ex["frames"].shape == (4, 32, 32, 3) and ex["feat_mask/clip"].all()
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml").model
    cfg.experts = {
        "appearance": ExpertConfig(kind="appearance", width=8),
        "clip": ExpertConfig(kind="features", dim=5),
    }
    model = build_model(cfg, 50)
    lacking = make_video_example(_record("v1", str(path)), data)  # the store lacks v1: clip expert off
    assert not lacking["feat_mask/clip"].any()
    batch = {k: torch.from_numpy(np.stack([v, lacking[k]])) for k, v in ex.items()}
    video = model.encode_video(batch)
    assert video.available.tolist() == [[True, True], [True, False]]
