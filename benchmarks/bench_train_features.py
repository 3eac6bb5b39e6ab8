"""Epoch time training from a Parquet feature store vs from raw clips, same model otherwise.

Shapes benchmark (1k-A train split), plain process (no Ray), one epoch = every train video once with one
random caption, batch 16, ``etva.train.engine.train_epoch``. Data loading is serial and included in both:

  raw       ``make_video_example`` decodes each clip (PyAV frames + log-mel); built-in CNN experts
  features  ``make_video_example`` with ``data.decode_clips=false`` reads the store (videos moved away);
            features experts (CLIP per-frame, VideoMAE time tokens, AST time tokens from tiny random
            encoders, extracted first by ``etva.features.extractor.extract_local``)

    python -m benchmarks.bench_train_features --num-videos 160 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from etva.config import load_config
from etva.data import load_records
from etva.data.example import make_video_example
from etva.data.synth import generate_dataset
from etva.data.tokenizer import tokenize, train_tokenizer
from etva.features.extractor import extract_local, index_rows
from etva.model import build_model
from etva.train.engine import build_optimizer, train_epoch
from etva.train.losses import build_loss

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128)


def _save_encoders(root: Path) -> dict[str, str]:
    from transformers import (
        ASTConfig,
        ASTModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        VideoMAEConfig,
        VideoMAEModel,
    )

    torch.manual_seed(0)
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(**TINY, image_size=64, patch_size=16, projection_dim=64)
    ).save_pretrained(root / "clip")
    VideoMAEModel(VideoMAEConfig(**TINY, image_size=64, patch_size=16, num_frames=8)).save_pretrained(
        root / "videomae"
    )
    ASTModel(
        ASTConfig(**TINY, patch_size=16, num_mel_bins=64, max_length=400, frequency_stride=16, time_stride=16)
    ).save_pretrained(root / "ast")
    return {k: str(root / k) for k in ("clip", "videomae", "ast")}


def _epoch_batches(records, data_cfg, ids, mask, first, counts, bs, rng):
    """Yield training batches, loading (decoding or reading features of) each clip on the way."""
    order = rng.permutation(len(records))
    for s in range(0, len(order) - len(order) % bs, bs):
        sel = order[s : s + bs]
        ex = [make_video_example(records[i], data_cfg) for i in sel]
        cap = first[sel] + (rng.random(len(sel)) * counts[sel]).astype(int)
        batch = {k: np.stack([e[k] for e in ex]) for k in ex[0]}
        batch.update(input_ids=ids[cap], attention_mask=mask[cap], video_index=sel, caption_index=cap)
        yield batch


def _time_epochs(cfg, records, tok, epochs: int) -> list[float]:
    caps = [c for r in records for c in r.captions]
    ids, mask = tokenize(tok, caps, cfg.data.max_text_len)
    counts = np.array([len(r.captions) for r in records])
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    torch.manual_seed(0)
    model = build_model(cfg.model, len(tok))
    loss_fn = build_loss(cfg.loss)
    opt = build_optimizer(torch.nn.ModuleList([model, loss_fn]), cfg.optim)
    out = []
    for epoch in range(epochs):
        rng = np.random.default_rng(epoch)
        t0 = time.perf_counter()
        it = _epoch_batches(records, cfg.data, ids, mask, first, counts, 16, rng)
        train_epoch(model, loss_fn, opt, None, it, "cpu", epoch=epoch)
        out.append(round(time.perf_counter() - t0, 3))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-videos", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = tmp / "shapes"
        raw = load_config(REPO / "ray_jobs/configs/shapes.yaml", [f"data.root={root}"])
        generate_dataset(root, args.num_videos, 0, cfg=raw.data.synth, progress=False)
        records = load_records("msrvtt", root, "train", "1k-A")
        tok = train_tokenizer([c for r in records for c in r.captions], tmp / "tok", raw.data.vocab_size)
        enc = _save_encoders(tmp)
        e = "{kind: features, dim: 64, encoder: %s, pooling: %s, pretrained_path: %s}"
        experts = (
            f"model.experts={{appearance: {e % ('clip', 'proj', enc['clip'])}, "
            f"motion: {e % ('videomae', 'time', enc['videomae'])}, audio: {e % ('ast', 'time', enc['ast'])}}}"
        )
        feat = load_config(
            REPO / "ray_jobs/configs/shapes.yaml",
            [
                f"data.root={root}",
                experts,
                f"extract.output_dir={tmp / 'store'}",
                "extract.splits=[train]",
                f"extract.num_frames={raw.data.num_frames}",
                f"extract.frame_size={raw.data.frame_size}",
                f"extract.max_audio_s={raw.data.max_audio_s}",
                "data.decode_clips=false",
                f"data.feature_store={tmp / 'store'}",
                "data.max_feature_tokens=16",
            ],
        )
        t0 = time.perf_counter()
        extract_local(feat, index_rows(records))
        extract_s = time.perf_counter() - t0
        raw_times = _time_epochs(raw, records, tok, args.epochs)
        (root / "videos").rename(tmp / "videos_away")  # the features run must not need them
        feat_times = _time_epochs(feat, records, tok, args.epochs)
    summary = {
        "args": vars(args),
        "train_videos": len(records),
        "extract_s": round(extract_s, 3),
        "raw_epoch_s": raw_times,
        "features_epoch_s": feat_times,
        "speedup_best": round(min(raw_times) / min(feat_times), 2),
        "load_avg": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
