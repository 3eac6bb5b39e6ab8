"""Ablations in the structure of the paper's Tables 4 and 5, on the synthetic "shapes" benchmark.

Table 4 (alignment): global-only, fine-grained-only (local), both.
Table 5 (VLAD encoding, alignment=both): VLAD on text only, separate centres, shared centres.

Every row is a real run with the same budget (epochs, batch, lr) and the same seed set; each seed
fixes the model init and the batch order. The data are the real synthetic dataset
(``etva.data.synth`` MSRVTT layout: H.264/AAC files) read through the project's loaders, decoding
(``etva.data.example.make_video_example``) and SentencePiece tokenizer, decoded once and kept in
memory; training/evaluation use ``etva.train.engine`` in this process (no Ray). Each training step samples
one caption per video; evaluation uses every test caption (multi-caption t2v, v2t by best caption,
ties="average"). Prints mean and std over the seeds of R@1/5/10/MdR in both directions.

Usage: python -m benchmarks.ablation [--num-videos 200 --epochs 8 --seeds 0 1 2 --root /tmp/shapes]
       python -m benchmarks.ablation --quick   # 80 videos, 2 epochs, seed 0 (a smoke run, ~1 minute)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from etva.config import Config, ExpertConfig, TextConfig, load_config
from etva.data.example import make_video_example
from etva.data.sources import load_split
from etva.data.synth import generate_dataset
from etva.data.tokenizer import build_tokenizer, tokenize
from etva.model import build_model
from etva.train.engine import build_optimizer, build_scheduler, evaluate, train_epoch
from etva.train.losses import build_loss

ROWS = {  # name -> ModelConfig overrides
    "T4 global only": {"alignment": "global"},
    "T4 fine-grained only": {"alignment": "local"},
    "T4 both (ETVA)": {"alignment": "both"},
    "T5 VLAD on text only": {"alignment": "both", "vlad_mode": "text"},
    "T5 separate centres": {"alignment": "both", "vlad_mode": "separate"},
    "T5 shared centres (ETVA)": {"alignment": "both", "vlad_mode": "shared"},
}
COLS = ["t2v_R1", "t2v_R5", "t2v_R10", "t2v_MdR", "v2t_R1", "v2t_R5", "v2t_R10", "v2t_MdR"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default="/tmp/etva_ablation_shapes")
    p.add_argument("--num-videos", type=int, default=200)
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--frame-size", type=int, default=48)
    p.add_argument("--num-frames", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", nargs="*", default=list(ROWS), help="subset of row names")
    p.add_argument("--quick", action="store_true", help="80 videos, 2 epochs, seed 0, own root")
    args = p.parse_args()
    if args.quick:
        args.num_videos, args.epochs, args.seeds = 80, 2, [0]
        args.root = args.root.rstrip("/") + "_quick"
    return args


def small_config(args: argparse.Namespace) -> Config:
    """The default config shrunk to a CPU budget (same for every row)."""
    cfg = load_config(None)
    cfg.data.root = args.root
    cfg.data.subset = "full"  # MSRVTT-Full layout: 30% test videos, every caption a query
    cfg.data.synth.num_videos = args.num_videos
    cfg.data.num_frames, cfg.data.frame_size = args.num_frames, args.frame_size
    cfg.data.max_audio_s, cfg.data.vocab_size = 2.0, 300
    cfg.model.d = 64
    cfg.model.text = TextConfig(hidden_size=64, embedding_size=32, num_layers=2, num_heads=2,
                                intermediate_size=128, max_position=cfg.data.max_text_len)  # fmt: skip
    cfg.model.experts = {k: ExpertConfig(kind=k, width=32) for k in ("appearance", "motion", "audio")}
    cfg.model.fusion_heads, cfg.model.num_clusters = 2, 8
    cfg.optim.lr, cfg.optim.warmup_steps = args.lr, 10
    return cfg


def load_arrays(cfg: Config, split: str, tok) -> dict:
    """Decode every clip of a split once; tokenize all its captions."""
    records = load_split(cfg.data, split)
    ex = [make_video_example(r, cfg.data) for r in records]
    caps = [(i, c) for i, r in enumerate(records) for c in r.captions]
    ids, attn = tokenize(tok, [c for _, c in caps], cfg.data.max_text_len)
    return {
        "video": {
            "frames": np.stack([e["frames"] for e in ex]),
            "audio_mel": np.stack([e["audio_mel"] for e in ex]),
            "audio_mask": np.stack([e["audio_mask"] for e in ex]),
            "video_index": np.arange(len(ex)),
        },
        "captions": {
            "input_ids": ids,
            "attention_mask": attn,
            "caption_index": np.arange(len(caps)),
            "video_index": np.array([i for i, _ in caps]),
        },
    }


def train_batches(data: dict, bs: int, rng: np.random.Generator):
    """One random caption per video, shuffled videos, full batches only."""
    vid, cap = data["video"], data["captions"]
    by_video: dict[int, list[int]] = {}
    for j, v in enumerate(cap["video_index"]):
        by_video.setdefault(int(v), []).append(j)
    order = rng.permutation(len(vid["video_index"]))
    for s in range(0, len(order) - bs + 1, bs):
        sel = order[s : s + bs]
        c = np.array([rng.choice(by_video[int(v)]) for v in sel])
        batch = {k: x[sel] for k, x in vid.items()}
        batch.update(input_ids=cap["input_ids"][c], attention_mask=cap["attention_mask"][c],
                     caption_index=cap["caption_index"][c])  # fmt: skip
        yield batch


def chunks(arrays: dict, bs: int):
    n = len(next(iter(arrays.values())))
    for s in range(0, n, bs):
        yield {k: x[s : s + bs] for k, x in arrays.items()}


def run_one(cfg: Config, overrides: dict, seed: int, train: dict, test: dict, vocab: int, epochs: int):
    torch.manual_seed(seed)
    model_cfg = dataclasses.replace(cfg.model, **overrides)
    model = build_model(model_cfg, vocab)
    loss_fn = build_loss(cfg.loss)
    optimizer = build_optimizer(torch.nn.ModuleList([model, loss_fn]), cfg.optim)
    steps = epochs * (len(train["video"]["video_index"]) // cfg.train.batch_size)
    scheduler = build_scheduler(optimizer, cfg.optim, steps)
    for epoch in range(epochs):
        rng = np.random.default_rng([seed, epoch])
        train_epoch(model, loss_fn, optimizer, scheduler,
                    train_batches(train, cfg.train.batch_size, rng), "cpu",
                    epoch=epoch, log_every=0, grad_clip=cfg.optim.grad_clip)  # fmt: skip
    return evaluate(model, chunks(test["video"], 64), chunks(test["captions"], 256), "cpu")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    cfg = small_config(args)
    cfg.train.batch_size = args.batch
    t0 = time.perf_counter()
    summary = generate_dataset(args.root, args.num_videos, args.data_seed, cfg=cfg.data.synth, progress=False)
    train_records = load_split(cfg.data, cfg.data.train_split)
    tok = build_tokenizer(cfg.data, [c for r in train_records for c in r.captions], Path(args.root) / "tok")
    train, test = load_arrays(cfg, cfg.data.train_split, tok), load_arrays(cfg, cfg.data.val_split, tok)
    n_tv, n_q = len(test["video"]["video_index"]), len(test["captions"]["caption_index"])
    print(f"shapes data: {summary['splits']} videos, test {n_tv} videos / {n_q} captions, vocab {len(tok)}; "
          f"prepared in {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(
        f"budget per run: {args.epochs} epochs x {len(train['video']['video_index']) // args.batch} "
        f"steps (batch {args.batch}), lr {args.lr}, seeds {args.seeds}; chance t2v R@1 {100 / n_tv:.1f}"
    )
    results: dict[str, list[dict]] = {}
    for name in args.rows:
        for seed in args.seeds:
            t1 = time.perf_counter()
            m = run_one(cfg, ROWS[name], seed, train, test, len(tok), args.epochs)
            results.setdefault(name, []).append(m)
            print(f"  {name} seed {seed}: t2v R@1 {m['t2v_R1']:.1f} v2t R@1 {m['v2t_R1']:.1f} "
                  f"({time.perf_counter() - t1:.0f} s)", flush=True)  # fmt: skip
    print(f"\n| row | {' | '.join(COLS)} |\n|---|{'---|' * len(COLS)}")
    for name, runs in results.items():
        cells = []
        for c in COLS:
            vals = [r[c] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.1f} ± {sd:.1f}")
        print(f"| {name} | {' | '.join(cells)} |")
    print(
        f"\n(mean ± std over {len(args.seeds)} seeds; ties='average'; total {time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
