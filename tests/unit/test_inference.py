"""etva.inference: a checkpoint round trip into (model, config, tokenizer), and the text/video encoders
agree with the model called directly, whatever the batching; undecodable clips are skipped and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from etva.config import ConfigError, config_to_dict, load_config
from etva.data.records import ClipRecord
from etva.data.sources import load_records
from etva.data.synth import generate_dataset
from etva.data.tokenizer import tokenize, train_tokenizer
from etva.inference import (
    decode_example,
    encode_records,
    encode_texts,
    encode_tokens,
    encode_video_batches,
    encode_videos,
    load_trained,
    read_trained,
    stack_examples,
)
from etva.model import build_model
from etva.train.checkpoint import CheckpointError, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
NUM_VIDEOS = 12


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """(checkpoint dir, the model that was saved, its config, records of the shapes clips)."""
    tmp = tmp_path_factory.mktemp("inference")
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={tmp / 'data'}"])
    generate_dataset(tmp / "data", NUM_VIDEOS, 0, cfg=cfg.data.synth, workers=2, progress=False)
    records = load_records("msrvtt", tmp / "data", "train", "full")
    tok = train_tokenizer([c for r in records for c in r.captions], tmp / "tok", cfg.data.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tok))
    path = save_checkpoint(
        tmp / "ckpt",
        {"model": model.state_dict()},
        {"vocab_size": len(tok)},
        config_yaml=yaml.safe_dump(config_to_dict(cfg)),
        tokenizer_files={p.name: p.read_bytes() for p in (tmp / "tok").iterdir() if p.is_file()},
    )
    return path, model.eval(), cfg, records


def test_load_trained_restores_model_config_and_tokenizer(ckpt):
    path, saved, cfg, records = ckpt
    model, loaded_cfg, tok = load_trained(path)
    assert not model.training and config_to_dict(loaded_cfg) == config_to_dict(cfg)
    for name, tensor in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)
    state = read_trained(path, ["data.max_text_len=7"])
    assert state.cfg.data.max_text_len == 7 and state.vocab_size == len(tok)
    assert state.tokenizer_dir == path / "tokenizer"


def test_bad_checkpoints_are_named(ckpt, tmp_path):
    path, saved, _, _ = ckpt
    bare = save_checkpoint(tmp_path / "bare", {"model": saved.state_dict()}, {"vocab_size": 10})
    with pytest.raises(CheckpointError, match=f"{bare}: the checkpoint has no config.yaml or tokenizer/"):
        load_trained(bare)
    with pytest.raises(CheckpointError, match="MANIFEST"):
        load_trained(tmp_path)
    with pytest.raises(ConfigError, match="model.nope"):
        read_trained(path, ["model.nope=1"])


def test_text_encoding_matches_the_model_in_any_batch_size(ckpt):
    path, _, cfg, records = ckpt
    model, _, tok = load_trained(path)
    texts = [c for r in records[:4] for c in r.captions[:3]]  # 12 captions
    ids, mask = tokenize(tok, texts, cfg.data.max_text_len)  # (12, L)
    with torch.no_grad():
        direct = model.encode_text(torch.from_numpy(ids), torch.from_numpy(mask))
    for bs in (1, 5, 256):
        emb = encode_texts(model, tok, texts, cfg.data.max_text_len, batch_size=bs)
        assert len(emb) == len(texts)
        for f in ("experts", "logits", "local"):
            if getattr(direct, f) is not None:
                torch.testing.assert_close(getattr(emb, f), getattr(direct, f), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encode_tokens(model, ids, mask, 4).local, direct.local, atol=1e-5, rtol=1e-4)


def test_video_encoding_matches_the_model_and_skips_broken_clips(ckpt, tmp_path):
    path, _, cfg, records = ckpt
    model, _, _ = load_trained(path)
    recs = records[:5]
    examples = [decode_example(r, cfg.data) for r in recs]
    assert all(isinstance(e, dict) for e in examples)
    with torch.no_grad():
        direct = model.encode_video(stack_examples(examples))
    batched = encode_videos(model, iter(examples), batch_size=2)  # 2 + 2 + 1
    torch.testing.assert_close(batched.experts, direct.experts, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched.local, direct.local, atol=1e-5, rtol=1e-4)
    assert torch.equal(batched.available, direct.available)
    arrays = {k: v.numpy() for k, v in stack_examples(examples).items()}
    ray_batch = arrays | {"video_index": np.arange(5), "video_id": np.array([r.video_id for r in recs])}
    halves = [{k: v[:3] for k, v in ray_batch.items()}, {k: v[3:] for k, v in ray_batch.items()}]
    from_batches = encode_video_batches(model, halves)  # string columns ignored
    torch.testing.assert_close(from_batches.local, direct.local, atol=1e-5, rtol=1e-4)

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video")
    mixed = [recs[0], ClipRecord("broken", str(broken), [], ""), *recs[1:]]
    seen: list[int] = []
    enc = encode_records(model, mixed, cfg.data, batch_size=2, workers=2, on_batch=seen.append)
    assert enc.kept == [0, 2, 3, 4, 5] and list(enc.failed) == [1]
    assert enc.failed[1].split(":")[0] in ("DecodeError", "FeatureError", "OSError"), enc.failed
    assert isinstance(decode_example(mixed[1], cfg.data), str) and seen == [2, 2, 2]
    torch.testing.assert_close(enc.video.local, direct.local, atol=1e-5, rtol=1e-4)
    assert encode_records(model, mixed[1:2], cfg.data).video is None
    with pytest.raises(ValueError, match="no video"):
        encode_videos(model, [])
