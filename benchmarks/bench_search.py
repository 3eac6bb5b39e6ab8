"""`etva search` on the shapes test split: share of captions whose ground-truth clip is in the top 5,
and the cost of building the video index vs re-using it (measured side by side in one run).

    python -m benchmarks.bench_search --checkpoint /tmp/x/runs/<run>/epoch_0007 --root /tmp/x/shapes

The test split's videos are linked into a fresh folder; queries are (a) the split's own caption per video
(the JSFusion-style test csv, what `val t2v R@5` measures) and (b) every caption of those videos.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from etva.data.sources import load_records
from etva.search import load_searcher, search, update_index


def top5_share(searcher, index, queries: list[tuple[str, str]]) -> float:
    hits = search(searcher, index, [q for q, _ in queries], top_k=5)
    return sum(gt in [h.path for h in row] for (_, gt), row in zip(queries, hits)) / len(queries)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--root", required=True, help="shapes dataset (MSRVTT layout)")
    p.add_argument("--subset", default="1k-A")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    searcher = load_searcher(args.checkpoint)
    records = load_records("msrvtt", args.root, "test", args.subset)
    data = json.loads((Path(args.root) / "MSRVTT_data.json").read_text())
    ids = {r.video_id for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        for r in records:
            (Path(tmp) / f"{r.video_id}.mp4").symlink_to(r.video_path)
        t0 = time.perf_counter()
        index, _ = update_index(searcher, tmp, progress=False, workers=args.threads)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        index, stats = update_index(searcher, tmp, progress=False, workers=args.threads)
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
    print(f"index: cold build {cold:.2f} s, cached re-use {warm:.3f} s (ratio {cold / warm:.0f}x); "
          f"{query_s * 1000:.1f} ms per query")  # fmt: skip


if __name__ == "__main__":
    main()
