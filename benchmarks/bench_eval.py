"""Evaluation at MSRVTT-Full shape: all-pairs ETVA scoring + retrieval metrics, time / memory / FLOP/s.

Random embeddings in the shapes the model produces (text: per-expert unit vectors (Q, E, d) + mixture
logits (Q, E) + VLAD descriptors (Q, K, d); video: (V, E, d) + availability (V, E) + (V, K, d)),
59,800 captions x 2,990 videos by default, d / K / experts / alpha from ``ModelConfig``. A share of
the videos lacks the last expert (no audio), so two availability patterns are scored.

Measured side by side in one run:
  peak     a large float32 torch.matmul (this machine's dense GEMM FLOP/s), before and after;
  fused    ``etva.eval.similarity.FusedScorer`` through ``score_all`` (one GEMM per pattern and block);
  model    the model's own similarity functions (per-expert matmuls + elementwise mixing), same chunks;
  metrics  ``retrieval_metrics(query_chunk=...)`` and the full-matrix ``retrieval_metrics`` on the scores.
FLOPs counted: 2 * Q * V * (E + K) * d (the multiply-adds of all cosines and cluster products).
Peak memory: the process's high-water RSS (VmHWM), reset before each stage where Linux allows.

``--engine``: instead, the evaluation's real rank-0 path, ``etva.eval.scoring.score_streams`` (what
``etva.train.engine.evaluate`` runs after encoding): every rank holds its share of the split as float32
``TextEmbedding``/``VideoEmbedding`` chunks of ``--eval-batch`` rows (as the encoders return them), the
chunks are concatenated, gathered to rank 0 (``--world 2``: real gloo processes), deduplicated and
scored with ``FusedScorer`` + ``score_all`` + ``retrieval_metrics(query_chunk=...)``. Reported per rank: peak
RSS (the embeddings included) and wall time; rank 0: GFLOP/s of the whole call vs a float32 GEMM
measured in the same process just before and after.

Usage: python -m benchmarks.bench_eval [--queries 59800 --videos 2990 --threads 2]
       python -m benchmarks.bench_eval --engine --d 512 [--world 2]
       python -m benchmarks.bench_eval --quick   # 6,000 x 300, 1 round, 1024^3 GEMM
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from benchmarks.bench_eval_engine import run_engine
from benchmarks.measure import GIB, gemm_flops, peak_rss_gib, reset_peak_rss, timed, unit
from etva.config import ModelConfig
from etva.eval.metrics import retrieval_metrics
from etva.eval.similarity import FusedScorer, score_all


def parse_args() -> argparse.Namespace:
    cfg = ModelConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--queries", type=int, default=59_800)
    p.add_argument("--videos", type=int, default=2_990)
    p.add_argument("--d", type=int, default=cfg.d)
    p.add_argument("--clusters", type=int, default=cfg.num_clusters)
    p.add_argument("--experts", type=int, default=sum(e.enabled for e in cfg.experts.values()))
    p.add_argument("--alpha", type=float, default=cfg.alpha)
    p.add_argument("--missing-frac", type=float, default=0.1, help="videos without the last expert")
    p.add_argument("--query-chunk", type=int, default=2048)
    p.add_argument("--gemm-n", type=int, default=4096, help="size of the peak matmul")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--skip-model", action="store_true", help="skip the model-similarity baseline")
    p.add_argument("--engine", action="store_true", help="run etva.eval.scoring.score_streams instead")
    p.add_argument("--world", type=int, default=1, help="--engine: gloo processes (ranks)")
    p.add_argument("--eval-batch", type=int, default=64, help="--engine: rows per encoded chunk")
    p.add_argument("--quick", action="store_true", help="6,000 queries x 300 videos, 1 round, GEMM 1024")
    args = p.parse_args()
    if args.quick:
        args.queries, args.videos, args.rounds, args.gemm_n = 6_000, 300, 1, 1024
    return args


def make_embeddings(args: argparse.Namespace) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    q, v, e, k, d = args.queries, args.videos, args.experts, args.clusters, args.d
    avail = torch.ones(v, e, dtype=torch.bool)
    avail[torch.rand(v, generator=g) < args.missing_frac, -1] = False  # no audio
    return {
        "text_global": unit((q, e, d), g),
        "text_logits": torch.randn(q, e, generator=g),
        "video_global": unit((v, e, d), g),
        "video_avail": avail,
        "text_local": unit((q, k, d), g),
        "video_local": unit((v, k, d), g),
    }


def model_score_fn(emb: dict[str, torch.Tensor], alpha: float) -> Callable | None:
    """The model owner's similarity (etva.model) as a block scorer, or None if not importable."""
    try:
        from etva.model.alignment import GlobalAlignment
        from etva.model.netvlad import LocalAlignment
    except ImportError:
        return None

    def score(qs: slice, vs: slice) -> torch.Tensor:
        s_g = GlobalAlignment.similarity(
            emb["text_global"][qs],
            emb["text_logits"][qs],
            emb["video_global"][vs],
            emb["video_avail"][vs],
        )
        s_l = LocalAlignment.similarity(emb["text_local"][qs], emb["video_local"][vs])
        return alpha * s_g + (1.0 - alpha) * s_l

    return score


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.engine:
        run_engine(args)
        return
    q, v = args.queries, args.videos
    flops = 2.0 * q * v * (args.experts + args.clusters) * args.d
    qv = np.repeat(np.arange(v), -(-q // v))[:q]  # ~Q/V captions per video
    print(f"shape: {q} queries x {v} videos, E={args.experts} K={args.clusters} d={args.d}, "
          f"threads={torch.get_num_threads()}, scoring FLOPs={flops / 1e9:.1f} G")  # fmt: skip
    emb = make_embeddings(args)
    # first pass alone: the evaluation's own memory (scores + chunked metrics)
    can_reset = reset_peak_rss()
    scorer = FusedScorer(**emb, alpha=args.alpha, normalized=True)
    sim = score_all(scorer, q, v, query_chunk=args.query_chunk)
    metrics, t_chunked = timed(lambda: retrieval_metrics(sim, qv, query_chunk=4096))
    rss_eval = peak_rss_gib()
    model_fn = None if args.skip_model else model_score_fn(emb, args.alpha)
    ref = np.empty_like(sim) if model_fn is not None else None
    times: dict[str, list[float]] = {"peak": [], "fused": [], "model": []}
    for r in range(args.rounds):  # interleaved rounds: a shared machine's load hits all alike
        times["peak"].append(2.0 * args.gemm_n**3 / gemm_flops(args.gemm_n))
        stages = [("fused", scorer), ("model", model_fn)]
        for name, fn in stages if r % 2 == 0 else stages[::-1]:
            if fn is not None:
                out = sim if name == "fused" else ref
                times[name].append(timed(partial(score_all, fn, q, v, args.query_chunk, out=out))[1])
    max_diff = float(np.abs(ref - sim).max()) if ref is not None else float("nan")
    del ref
    reset_peak_rss()
    naive, t_naive = timed(lambda: retrieval_metrics(sim, qv))
    rss_naive = peak_rss_gib()
    assert naive == metrics, "chunked metrics differ from the full-matrix metrics"
    report(args, flops, times, t_chunked, t_naive, max_diff)
    note = "" if can_reset else " (VmHWM reset unavailable: whole-process peak)"
    print(f"peak RSS, scoring + chunked metrics: {rss_eval:.2f} GiB (whole process, goal < 4){note}")
    print(f"peak RSS, full-matrix metrics:       {rss_naive:.2f} GiB (whole process during that stage)")
    print(f"sim matrix: {sim.nbytes / GIB:.2f} GiB; metrics identical chunked vs full: True")
    print("t2v R1 {t2v_R1:.3f} MdR {t2v_MdR:.1f} | v2t R1 {v2t_R1:.3f} MdR {v2t_MdR:.1f}".format(**metrics))


def report(args, flops, times, t_chunked, t_naive, max_diff) -> None:
    """Best-of-rounds times; FLOP/s as a fraction of the best dense GEMM of the same run."""
    peak_t = min(times["peak"])
    gemm = 2.0 * args.gemm_n**3
    print(f"\npeak float32 GEMM ({args.gemm_n}^3), per round: "
          + ", ".join(f"{gemm / t / 1e9:.1f}" for t in times["peak"]) + " GFLOP/s")  # fmt: skip
    print(f"{'stage (best of ' + str(args.rounds) + ' rounds)':44s} {'time s':>8s} {'GFLOP/s':>9s} "
          f"{'of peak':>8s}  all rounds s")  # fmt: skip
    labels = {"fused": "fused scoring (score_all + FusedScorer)",
              "model": "model similarity (per-expert matmuls)"}  # fmt: skip
    for name, label in labels.items():
        if times[name]:
            t = min(times[name])
            ratio = (flops / t) / (gemm / peak_t)
            runs = " ".join(f"{x:.2f}" for x in times[name])
            print(f"{label:44s} {t:8.2f} {flops / t / 1e9:9.1f} {ratio:8.1%}  {runs}")
    print(f"{'retrieval_metrics chunked':44s} {t_chunked:8.2f}")
    print(f"{'retrieval_metrics (full-matrix reference)':44s} {t_naive:8.2f}")
    if times["model"]:
        speed = min(times["model"]) / min(times["fused"])
        print(f"\nfused vs model similarity: {speed:.2f}x (model time / fused time), "
              f"max |diff| {max_diff:.2e}")  # fmt: skip


if __name__ == "__main__":
    main()
