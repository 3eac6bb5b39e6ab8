"""`etva search` on the shapes test split: share of captions whose ground-truth clip is in the top 5,
and the cost of building the video index vs re-using it (measured side by side in one run).

    python -m benchmarks.bench_search --checkpoint /tmp/x/runs/<run>/epoch_0007 --root /tmp/x/shapes
    python -m benchmarks.bench_search --quick   # no checkpoint needed: see below

``--quick`` makes its own checkpoint: 120 shapes clips at the ``ray_jobs/configs/tiny.yaml`` settings, a
SentencePiece tokenizer on the train captions, the tiny model trained in this process (``etva.train.engine``,
15 epochs of the 1k-A train split, one random caption per clip), saved with ``etva.train.checkpoint``.

The test split's videos are linked into a fresh folder; queries are (a) the split's own caption per video
(the JSFusion-style test csv, what `val t2v R@5` measures) and (b) every caption of those videos.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from etva.config import config_to_dict, load_config
from etva.data.example import make_video_example
from etva.data.sources import load_records
from etva.data.synth import generate_dataset
from etva.data.tokenizer import tokenize, train_tokenizer
from etva.index.build import load_index_model
from etva.model import build_model
from etva.search import load_index, search, update_index
from etva.train.checkpoint import save_checkpoint
from etva.train.engine import build_optimizer, build_scheduler, train_epoch
from etva.train.losses import build_loss


def top5_share(searcher, index, queries: list[tuple[str, str]]) -> float:
    hits = search(searcher, index, [q for q, _ in queries], top_k=5)
    return sum(gt in [h.key for h in row] for (_, gt), row in zip(queries, hits)) / len(queries)


REPO = Path(__file__).resolve().parents[1]


def quick_checkpoint(tmp: Path, num_videos: int = 120, epochs: int = 15) -> tuple[Path, Path]:
    """(checkpoint dir, dataset root): a tiny model trained in this process on fresh shapes clips."""
    root = tmp / "shapes"
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml", [f"data.root={root}"])
    generate_dataset(root, num_videos, 0, cfg=cfg.data.synth, progress=False)
    records = load_records("msrvtt", root, "train", "1k-A")
    tok = train_tokenizer([c for r in records for c in r.captions], tmp / "tok", cfg.data.vocab_size)
    exs = [make_video_example(r, cfg.data) for r in records]
    clips = {
        k: torch.from_numpy(np.stack([e[k] for e in exs])) for k in ("frames", "audio_mel", "audio_mask")
    }
    caps = [tokenize(tok, r.captions, cfg.data.max_text_len) for r in records]  # per clip: (ids, mask)
    torch.manual_seed(0)
    model, loss_fn = build_model(cfg.model, len(tok)), build_loss(cfg.loss)
    opt = build_optimizer(torch.nn.ModuleList([model, loss_fn]), cfg.optim)
    bs, n = cfg.train.batch_size, len(records)
    sched = build_scheduler(opt, cfg.optim, epochs * (n // bs))
    rng = np.random.default_rng(0)

    def batches():
        order = rng.permutation(n)
        for s in range(0, n - bs + 1, bs):
            sel = order[s : s + bs]
            pick = [rng.integers(len(caps[i][0])) for i in sel]
            ids = np.stack([caps[i][0][j] for i, j in zip(sel, pick)])
            mask = np.stack([caps[i][1][j] for i, j in zip(sel, pick)])
            yield {**{k: v[sel] for k, v in clips.items()}, "input_ids": ids, "attention_mask": mask}

    for epoch in range(epochs):
        train_epoch(model, loss_fn, opt, sched, batches(), "cpu", epoch=epoch, log_every=0)
    ckpt = save_checkpoint(
        tmp / "ckpt",
        {"model": model.state_dict()},
        {"vocab_size": len(tok)},
        config_yaml=yaml.safe_dump(config_to_dict(cfg)),
        tokenizer_files={f.name: f.read_bytes() for f in (tmp / "tok").iterdir() if f.is_file()},
    )
    return ckpt, root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a training checkpoint directory (required unless --quick)")
    p.add_argument("--root", help="shapes dataset (MSRVTT layout; required unless --quick)")
    p.add_argument("--subset", default="1k-A")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="train a tiny checkpoint here on 120 shapes clips")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            args.checkpoint, args.root = quick_checkpoint(Path(tmp))
            print(f"quick: trained a tiny checkpoint on 120 shapes clips in {time.perf_counter() - t0:.0f} s")
            measure(args)
        return
    if not args.checkpoint or not args.root:
        p.error("--checkpoint and --root are required (or use --quick)")
    measure(args)


def measure(args: argparse.Namespace) -> None:
    """Top-5 shares and index build/re-use cost for the test split of ``args.root``."""
    searcher = load_index_model(args.checkpoint)
    records = load_records("msrvtt", args.root, "test", args.subset)
    data = json.loads((Path(args.root) / "MSRVTT_data.json").read_text())
    ids = {r.video_id for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        videos, where = Path(tmp) / "videos", Path(tmp) / "index"
        videos.mkdir()
        for r in records:
            (videos / f"{r.video_id}.mp4").symlink_to(r.video_path)
        t0 = time.perf_counter()
        update_index(searcher, where, "folder", videos, progress=False, workers=args.threads)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        stats = update_index(searcher, where, "folder", videos, progress=False, workers=args.threads)
        index = load_index(searcher, where)
        warm = time.perf_counter() - t0
        assert stats.encoded == 0
        split_q = [(r.captions[0], f"{r.video_id}.mp4") for r in records]
        all_q = [(s["caption"], f"{s['video_id']}.mp4") for s in data["sentences"] if s["video_id"] in ids]
        t0 = time.perf_counter()
        a, b = top5_share(searcher, index, split_q), top5_share(searcher, index, all_q)
        query_s = (time.perf_counter() - t0) / (len(split_q) + len(all_q))
    n = len(records)
    print(f"videos: {n}; chance of top-5: {min(5, n) / n:.3f}")
    print(f"top-5 share, split captions ({len(split_q)} queries): {a:.3f}")
    print(f"top-5 share, all captions of the split's videos ({len(all_q)} queries): {b:.3f}")
    print(f"index: cold build {cold:.2f} s, up-to-date check + load {warm:.3f} s (ratio {cold / warm:.0f}x); "
          f"{query_s * 1000:.1f} ms per query")  # fmt: skip


if __name__ == "__main__":
    main()
