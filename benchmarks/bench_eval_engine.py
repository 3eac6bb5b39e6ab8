"""``python -m benchmarks.bench_eval --engine``: the evaluation's rank-0 path at MSRVTT-Full shape.

Every rank builds its share of the split as the encoders would hand it over (float32 embedding chunks
of ``--eval-batch`` rows, in the real ETVA shapes for ``d``, ``K`` clusters and ``E`` experts), then
runs ``etva.eval.scoring.score_streams`` (concatenate, gather to rank 0, dedupe, FusedScorer + score_all +
chunked metrics). With ``--world N`` the ranks are real gloo processes (``torch.multiprocessing``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmarks.measure import gemm_flops, peak_rss_gib, reset_peak_rss, unit
from etva.config import ModelConfig
from etva.eval.scoring import EncodedStream, score_streams
from etva.model import build_model
from etva.model.etva import TextEmbedding, VideoEmbedding


def _rows(n: int, rank: int, world: int) -> range:
    """This rank's contiguous share of ``n`` rows."""
    return range(rank * n // world, (rank + 1) * n // world)


def make_streams(args: argparse.Namespace, rank: int, world: int) -> tuple[EncodedStream, EncodedStream]:
    """This rank's encoded chunks: captions (Q/world) and videos (V/world), 10% without the last expert."""
    g = torch.Generator().manual_seed(rank)
    e, k, d, bs = args.experts, args.clusters, args.d, args.eval_batch
    videos, captions = EncodedStream(cols=[[]]), EncodedStream(cols=[[], []])
    rows = _rows(args.videos, rank, world)
    for v0 in range(rows.start, rows.stop, bs):
        n = min(bs, rows.stop - v0)
        avail = torch.ones(n, e, dtype=torch.bool)
        avail[torch.rand(n, generator=g) < args.missing_frac, -1] = False
        videos.parts.append(VideoEmbedding(unit((n, e, d), g), avail, unit((n, k, d), g)))
        videos.cols[0].append(torch.arange(v0, v0 + n))
    rows = _rows(args.queries, rank, world)
    for q0 in range(rows.start, rows.stop, bs):
        n = min(bs, rows.stop - q0)
        captions.parts.append(
            TextEmbedding(unit((n, e, d), g), torch.randn(n, e, generator=g), unit((n, k, d), g))
        )
        captions.cols[0].append(torch.arange(q0, q0 + n))
        captions.cols[1].append(torch.arange(q0, q0 + n) % args.videos)  # ~Q/V captions per video
    return videos, captions


def _one_round(core, args: argparse.Namespace, rank: int) -> dict:
    """Build this rank's share, time score_streams on it; peak RSS since the share was built."""
    reset_peak_rss()
    videos, captions = make_streams(args, rank, args.world)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    metrics = score_streams(core, videos, captions, "cpu", query_chunk=args.query_chunk, timings=phases)
    wall = time.perf_counter() - t0
    return {"peak_rss_gib": peak_rss_gib(), "time_s": wall, "metrics": metrics, **phases}


def _rank(rank: int, args: argparse.Namespace, port: int, out_dir: str) -> None:
    """One rank: ``--rounds`` x (GEMM peak on rank 0, score_streams); write the best round as JSON."""
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    if args.world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=args.world)
    try:
        cfg = ModelConfig(d=args.d, num_clusters=args.clusters, alpha=args.alpha)
        cfg.experts = dict(list(cfg.experts.items())[: args.experts])  # scoring needs only alpha
        core = build_model(cfg, vocab_size=64).eval()
        gemm, rounds = [], []
        for _ in range(args.rounds):  # interleaved: a shared machine's load hits both alike
            gemm.append(gemm_flops(args.gemm_n) if rank == 0 else 0.0)
            rounds.append(_one_round(core, args, rank))
        best = min(rounds, key=lambda r: r["time_s"])
        out = {"rank": rank, **best, "gemm_flops": gemm, "all_times_s": [r["time_s"] for r in rounds]}
        # round 1 runs in a fresh process; later rounds start with the heap the earlier ones left behind
        out["peak_rss_gib"] = rounds[0]["peak_rss_gib"]
        out["all_peaks_gib"] = [r["peak_rss_gib"] for r in rounds]
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        if args.world > 1:
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_engine(args: argparse.Namespace) -> None:
    q, v, e, k, d = args.queries, args.videos, args.experts, args.clusters, args.d
    flops = 2.0 * q * v * (e + k) * d
    text_gib = q * (e + k) * d * 4 / 2**30
    print(f"engine path: {q} captions x {v} videos, E={e} K={k} d={d}, world={args.world}, "
          f"threads/rank={args.threads or torch.get_num_threads()}, scoring {flops / 1e9:.0f} GFLOP, "
          f"caption embeddings {text_gib:.2f} GiB, score matrix {q * v * 4 / 2**30:.2f} GiB")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if args.world > 1:
            mp.spawn(_rank, args=(args, _free_port(), tmp), nprocs=args.world, join=True)
        else:
            _rank(0, args, 0, tmp)
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(args.world)]
    for r in ranks:
        times = " ".join(f"{t:.2f}" for t in r["all_times_s"])
        peaks = " ".join(f"{p:.2f}" for p in r["all_peaks_gib"])
        print(f"rank {r['rank']}: peak RSS {r['peak_rss_gib']:.2f} GiB in round 1 (rounds: {peaks}), "
              f"score_streams best {r['time_s']:.2f} s (rounds: {times})")  # fmt: skip
    r0 = ranks[0]
    peak = max(r0["gemm_flops"])
    achieved = flops / r0["time_s"]
    print(
        f"GEMM peak {args.gemm_n}^3 fp32, per round: "
        + " / ".join(f"{f / 1e9:.1f}" for f in r0["gemm_flops"])
        + " GFLOP/s"
    )
    print(f"score_streams on rank 0: {achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.1%} of the best GEMM "
          f"(whole call: concatenation, gather, scoring, metrics)")  # fmt: skip
    scoring = flops / r0["score_s"]
    print(f"phases on rank 0: concatenate+gather+dedupe {r0['gather_s']:.2f} s, scoring {r0['score_s']:.2f} s "
          f"({scoring / 1e9:.1f} GFLOP/s = {scoring / peak:.1%} of the best GEMM), metrics {r0['metrics_s']:.2f} s")  # fmt: skip
    m = r0["metrics"]
    print(
        f"scored {m['num_queries']:.0f} x {m['num_videos']:.0f}; t2v R1 {m['t2v_R1']:.3f} MdR {m['t2v_MdR']:.0f}"
    )
