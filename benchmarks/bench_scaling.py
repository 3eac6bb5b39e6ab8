"""Cost curves as the work grows, each with fitted linear and quadratic growth and where it hits a limit.

  (a) data preparation: MSRVTT-layout annotations (``MSRVTT_data.json`` + ``train_list_full.txt``) for N
      videos x 20 captions, made on the spot (no video files: the loader counts them as missing), then
      ``etva.data.load_records`` + ``etva.data.tokenizer.train_tokenizer`` + ``tokenize``;
  (b) evaluation: random unit embeddings in the default model's shapes for V videos x 20 captions, scored
      as ``etva.train.engine.evaluate`` scores them (``FusedScorer.from_embeddings`` + ``score_all``), then
      ``retrieval_metrics`` (the engine's full-matrix metrics) where it fits in memory, and
      ``retrieval_metrics(query_chunk=...)``; time and peak RSS above the start of the stage;
  (c) epoch time vs number of clips: ``etva.train.engine.train_epoch`` in this process on random inputs of the
      default (tiny) config, batch 32; workers are covered by ``benchmarks.bench_ray_overhead``;
  (d) sweep wall time vs trials and ``max_concurrent_trials``: MODELLED from (c), not measured (a Ray Tune
      sweep on this 2-core machine takes longer than this benchmark's budget).

Writes ``benchmarks/scaling.png`` (or ``--png``) and prints markdown tables.

    python -m benchmarks.bench_scaling            # (a) 1k/10k/100k videos, (b) 1k/3k/10k, (c) 64/128/256 clips
    python -m benchmarks.bench_scaling --quick    # (a) 1k/3k/10k, (b) 250/500/1k, (c) 32/64/128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.measure import peak_rss_gib, reset_peak_rss
from etva.config import DataConfig, LossConfig, ModelConfig, OptimConfig
from etva.data import load_records
from etva.data.tokenizer import tokenize, train_tokenizer
from etva.eval.metrics import retrieval_metrics
from etva.eval.similarity import FusedScorer, score_all
from etva.model import build_model
from etva.train.engine import build_optimizer, build_scheduler, train_epoch
from etva.train.losses import build_loss

GIB = 2**30
CAPTIONS = 20
RAM_GIB = 24.0  # the limit the fits are read against (this machine's RAM)
FULL = {"prep": [1_000, 10_000, 100_000], "eval": [1_000, 3_000, 10_000], "clips": [64, 128, 256]}
QUICK = {"prep": [1_000, 3_000, 10_000], "eval": [250, 500, 1_000], "clips": [32, 64, 128]}


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def make_annotations(root: Path, n: int, seed: int = 0) -> None:
    """MSRVTT_data.json + train_list_full.txt for ``n`` videos x 20 captions of 6-14 Zipf-drawn words."""
    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "pa", "do", "gu", "fe", "ri", "mo"]
    words = np.array(["".join(rng.choice(syll, rng.integers(1, 4))) + str(i % 7) for i in range(3000)])
    probs = 1.0 / np.arange(1, len(words) + 1)
    probs /= probs.sum()
    lengths = rng.integers(6, 15, n * CAPTIONS)
    drawn = rng.choice(len(words), lengths.sum(), p=probs)
    cuts = np.cumsum(lengths)[:-1]
    caps = [" ".join(words[w]) for w in np.split(drawn, cuts)]
    vids = [f"video{i}" for i in range(n)]
    sentences = [{"caption": c, "video_id": vids[i // CAPTIONS], "sen_id": i} for i, c in enumerate(caps)]
    data = {"videos": [{"video_id": v} for v in vids], "sentences": sentences}
    (root / "MSRVTT_data.json").write_text(json.dumps(data))
    (root / "train_list_full.txt").write_text("\n".join(vids) + "\n")


def bench_prep(n: int, vocab: int) -> dict[str, float]:
    """Seconds of each preparation stage for ``n`` videos, and the peak RSS above the start."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_annotations(root, n)
        base = rss_gib()
        reset_peak_rss()
        t0 = time.perf_counter()
        records = load_records("msrvtt", root, "train", subset="full")
        t1 = time.perf_counter()
        captions = [c for r in records for c in r.captions]
        tok = train_tokenizer(captions, root / "tok", vocab)
        t2 = time.perf_counter()
        ids, _ = tokenize(tok, captions, DataConfig().max_text_len)
        t3 = time.perf_counter()
        assert ids.shape == (n * CAPTIONS, DataConfig().max_text_len)
    return {
        "n": n, "load_s": t1 - t0, "tokenizer_s": t2 - t1, "tokenize_s": t3 - t2, "total_s": t3 - t0,
        "peak_gib": peak_rss_gib() - base,
    }  # fmt: skip


def unit(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    x = torch.randn(*shape, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def bench_eval(v: int, full_metrics: bool) -> dict[str, float]:
    """Score V videos x 20 captions as the engine does; metrics full-matrix (if asked) and chunked."""
    cfg = ModelConfig()
    e, k, d, q = len(cfg.experts), cfg.num_clusters, cfg.d, v * CAPTIONS
    g = torch.Generator().manual_seed(0)
    avail = torch.ones(v, e, dtype=torch.bool)
    avail[torch.rand(v, generator=g) < 0.1, -1] = False  # a tenth of the clips silent
    text = dict(text_global=unit((q, e, d), g), text_logits=torch.randn(q, e, generator=g))
    video = dict(video_global=unit((v, e, d), g), video_avail=avail, video_local=unit((v, k, d), g))
    text["text_local"] = unit((q, k, d), g)
    q2v = np.arange(q) // CAPTIONS
    base = rss_gib()
    reset_peak_rss()
    t0 = time.perf_counter()
    scorer = FusedScorer(**text, **video, alpha=cfg.alpha, normalized=True)
    sim = score_all(scorer, q, v, query_chunk=2048)
    t1 = time.perf_counter()
    chunked = retrieval_metrics(sim, q2v, query_chunk=4096)
    t2 = time.perf_counter()
    out = {
        "v": v,
        "q": q,
        "score_s": t1 - t0,
        "chunked_s": t2 - t1,
        "peak_chunked_gib": peak_rss_gib() - base,
    }
    out.update(full_s=float("nan"), peak_full_gib=float("nan"))
    if full_metrics:
        reset_peak_rss()
        t3 = time.perf_counter()
        full = retrieval_metrics(sim, q2v)
        out.update(full_s=time.perf_counter() - t3, peak_full_gib=peak_rss_gib() - base)
        assert full == chunked, "chunked and full-matrix metrics differ"
    return out


def bench_epoch(clips: int, batch: int = 32) -> dict[str, float]:
    """One ``train_epoch`` over ``clips`` random clips of the default data/model shapes (after a warm-up)."""
    data, mcfg = DataConfig(), ModelConfig()
    g = torch.Generator().manual_seed(0)
    a = int(data.max_audio_s * 100)  # 10 ms log-mel hop

    def batches(n: int):
        for _ in range(n // batch):
            yield {
                "frames": torch.randint(0, 256, (batch, data.num_frames, data.frame_size, data.frame_size, 3),
                                        generator=g, dtype=torch.uint8),
                "audio_mel": torch.randn(batch, a, data.num_mel_bins, generator=g),
                "audio_mask": torch.ones(batch, a, dtype=torch.bool),
                "input_ids": torch.randint(5, data.vocab_size, (batch, data.max_text_len), generator=g),
                "attention_mask": torch.ones(batch, data.max_text_len, dtype=torch.long),
            }  # fmt: skip

    torch.manual_seed(0)
    model, loss_fn = build_model(mcfg, data.vocab_size), build_loss(LossConfig())
    opt = build_optimizer(torch.nn.ModuleList([model, loss_fn]), OptimConfig())
    sched = build_scheduler(opt, OptimConfig(), total_steps=clips // batch + 1)
    train_epoch(model, loss_fn, opt, sched, batches(batch), "cpu", epoch=0, log_every=0)  # warm-up
    r = train_epoch(model, loss_fn, opt, sched, batches(clips), "cpu", epoch=1, log_every=0)
    return {"clips": clips, "epoch_s": r["epoch_time_s"], "clips_per_s": r["clips_per_s"]}


def run_epochs(sizes: list[int], rounds: int) -> list[dict[str, float]]:
    """Best of ``rounds`` interleaved rounds per size (load from other jobs hits the sizes alike)."""
    best: dict[int, dict[str, float]] = {}
    for _ in range(rounds):
        for n in sizes:
            r = bench_epoch(n)
            if n not in best or r["epoch_s"] < best[n]["epoch_s"]:
                best[n] = r
    return [best[n] for n in sizes]


def fit(x: list[float], y: list[float]) -> dict[str, np.ndarray]:
    """Linear and quadratic least-squares fits (numpy polyfit; highest power first). With only two
    points the quadratic is ``a*n^2 + c`` (no linear term), so it still says how a square law grows."""
    if len(x) >= 3:
        return {"linear": np.polyfit(x, y, 1), "quadratic": np.polyfit(x, y, 2)}
    a, c = np.polyfit(np.square(np.asarray(x, dtype=float)), y, 1)
    return {"linear": np.polyfit(x, y, 1), "quadratic": np.array([a, 0.0, c])}


def solve(coef: np.ndarray, limit: float) -> float:
    """Smallest positive x where the polynomial reaches ``limit`` (inf if never)."""
    roots = np.roots(np.concatenate([coef[:-1], [coef[-1] - limit]]))
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
    return min(real) if real else float("inf")


def fmt_fit(name: str, x: list[float], y: list[float], unit_: str, limit: float, at: float) -> str:
    """One line per fit: coefficients, the value at ``at``, where it reaches ``limit``."""
    lines = []
    for kind, c in fit(x, y).items():
        terms = " + ".join(f"{v:.3g}*n^{len(c) - 1 - i}" for i, v in enumerate(c))
        lines.append(
            f"| {name} | {kind} | {terms} | {np.polyval(c, at):.3g} {unit_} at n={at:g} | "
            f"n={solve(c, limit):.3g} reaches {limit:g} {unit_} |"
        )
    return "\n".join(lines)


def sweep_model(epoch_s_per_clip: float, clips: int, epochs: int, trials: list[int], conc: list[int],
                cores: int) -> dict[tuple[int, int], float]:  # fmt: skip
    """Modelled sweep wall time: trials run in waves of ``c``; on ``cores`` CPUs, c > cores shares them."""
    trial_s = epoch_s_per_clip * clips * epochs
    return {(t, c): int(np.ceil(t / c)) * trial_s * max(1.0, c / cores) for t in trials for c in conc}


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return RAM_GIB


def run_eval_sizes(sizes: list[int]) -> list[dict[str, float]]:
    """Each size, unless 1.2x the float32 score matrix exceeds 60% of the free memory; the full-matrix
    metrics (~4.5x the matrix, bench_eval) only where that fits in 60% too."""
    out = []
    for v in sizes:
        matrix = v * CAPTIONS * v * 4 / GIB
        free = mem_available_gib()
        if 1.2 * matrix > 0.6 * free:
            print(f"eval: {v} videos skipped, matrix {matrix:.1f} GiB vs {free:.1f} GiB free")
            continue
        out.append(bench_eval(v, full_metrics=4.5 * matrix < 0.6 * free))
    return out


def print_tables(prep, ev, ep, sweep, trials, conc) -> None:
    print("\n(a) data preparation, N videos x 20 captions (load + tokenizer training + tokenization)\n")
    print("| videos | captions | load s | tokenizer s | tokenize s | total s | peak RSS above start GiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in prep:
        print(f"| {r['n']:,} | {r['n'] * CAPTIONS:,} | {r['load_s']:.2f} | {r['tokenizer_s']:.2f} | "
              f"{r['tokenize_s']:.2f} | {r['total_s']:.2f} | {r['peak_gib']:.2f} |")  # fmt: skip
    print("\n(b) evaluation, V videos x 20 captions (FusedScorer + score_all, then metrics)\n")
    print("| videos | queries | score s | chunked metrics s | full metrics s | peak GiB (chunked) | "
          "peak GiB (full) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in ev:
        print(f"| {r['v']:,} | {r['q']:,} | {r['score_s']:.2f} | {r['chunked_s']:.2f} | {r['full_s']:.2f} | "
              f"{r['peak_chunked_gib']:.2f} | {r['peak_full_gib']:.2f} |")  # fmt: skip
    print("\n(c) one epoch, plain process, default (tiny) config, batch 32, best of the rounds\n")
    print("| clips | epoch s | clips/s |\n|---:|---:|---:|")
    for r in ep:
        print(f"| {r['clips']} | {r['epoch_s']:.2f} | {r['clips_per_s']:.1f} |")
    print(
        "\n(d) sweep wall time, MODELLED from (c) (median s/clip): 4 epochs of 256 clips per trial, 2 cores, no start-up\n"
    )
    print("| trials | " + " | ".join(f"concurrency {c}" for c in conc) + " |")
    print("|---:|" + "---:|" * len(conc))
    for t in trials:
        print(f"| {t} | " + " | ".join(f"{sweep[(t, c)]:.0f} s" for c in conc) + " |")


def print_fits(prep, ev, ep) -> None:
    print("\nFits (n = videos for (a)/(b), clips for (c)); limits: 1 h of time, 24 GiB of RAM\n")
    print("| curve | fit | coefficients | value | limit |\n|---|---|---|---|---|")
    if len(prep) >= 2:
        x = [r["n"] for r in prep]
        print(fmt_fit("(a) prep time", x, [r["total_s"] for r in prep], "s", 3600, 10_000))
        print(fmt_fit("(a) prep memory", x, [r["peak_gib"] for r in prep], "GiB", RAM_GIB, 10_000))
    if len(ev) >= 2:
        x = [r["v"] for r in ev]
        print(fmt_fit("(b) eval time", x, [r["score_s"] + r["chunked_s"] for r in ev], "s", 3600, 2990))
        print(fmt_fit("(b) eval memory", x, [r["peak_chunked_gib"] for r in ev], "GiB", RAM_GIB, 2990))
        full = [r for r in ev if np.isfinite(r["peak_full_gib"])]
        if len(full) >= 2:
            xs, ys = [r["v"] for r in full], [r["peak_full_gib"] for r in full]
            print(fmt_fit("(b) eval memory, full metrics", xs, ys, "GiB", RAM_GIB, 2990))
    if len(ep) >= 2:
        x = [r["clips"] for r in ep]
        print(fmt_fit("(c) epoch time", x, [r["epoch_s"] for r in ep], "s", 3600, 9000))


def _fit_line(ax, x: list[float], y: list[float], upto: float, style: str = "k:") -> None:
    """The quadratic fit of (x, y), drawn from min(x) to ``upto`` (extrapolation shown dotted)."""
    if len(x) >= 2:
        xs = np.linspace(min(x), max(upto, max(x)), 100)
        ax.plot(xs, np.polyval(fit(x, y)["quadratic"], xs), style, lw=1, label="quadratic fit")


def plot(prep, ev, ep, sweep, trials, conc, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(11, 8))
    for key, label in (("load_s", "load"), ("tokenizer_s", "tokenizer"), ("tokenize_s", "tokenize"),
                       ("total_s", "total")):  # fmt: skip
        ax[0, 0].plot([r["n"] for r in prep], [r[key] for r in prep], "o-", label=label)
    ax[0, 0].set(xlabel="videos (x20 captions)", ylabel="s", title="(a) data prep")
    if prep:
        ax[0, 0].set(xscale="log", yscale="log")
    xv = [r["v"] for r in ev]
    t_ev = [r["score_s"] + r["chunked_s"] for r in ev]
    ax[0, 1].plot(xv, t_ev, "o-", label="score + chunked metrics, s")
    _fit_line(ax[0, 1], xv, t_ev, 10_000)
    a2 = ax[0, 1].twinx()
    a2.plot(xv, [r["peak_chunked_gib"] for r in ev], "s--", color="C3", label="peak GiB")
    ax[0, 1].set(xlabel="videos (x20 captions)", ylabel="s", title="(b) evaluation (dotted: fit to 10k)")
    a2.set_ylabel("peak RSS above start, GiB (red)")
    xc, yc = [r["clips"] for r in ep], [r["epoch_s"] for r in ep]
    ax[1, 0].plot(xc, yc, "o-", label="measured")
    _fit_line(ax[1, 0], xc, yc, max(xc, default=0))
    ax[1, 0].set(xlabel="clips", ylabel="epoch s", title="(c) epoch, plain process")
    for c in conc:
        ax[1, 1].plot(trials, [sweep[(t, c)] for t in trials], "o-", label=f"concurrency {c}")
    ax[1, 1].set(xlabel="trials", ylabel="wall s", title="(d) sweep wall time (MODELLED from (c))")
    for a in (ax[0, 0], ax[0, 1], ax[1, 0], ax[1, 1]):
        a.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"\npicture: {path}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (about 2 minutes)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=DataConfig().vocab_size)
    p.add_argument("--png", default=str(Path(__file__).with_name("scaling.png")))
    p.add_argument("--json", default="", help="also write the raw results here (default: next to --png)")
    p.add_argument(
        "--replot", nargs="*", default=[], help="redraw from such JSON files (later non-empty parts win)"
    )
    p.add_argument("--epoch-rounds", type=int, default=3, help="interleaved rounds for (c), best kept")
    p.add_argument("--skip", nargs="*", default=[], choices=["prep", "eval", "epoch"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    if args.replot:
        parts: dict[str, list] = {"prep": [], "eval": [], "epoch": []}
        for f in args.replot:
            parts.update({k: v for k, v in json.loads(Path(f).read_text()).items() if v})
        prep, ev, ep = parts["prep"], parts["eval"], parts["epoch"]
    else:
        prep = [] if "prep" in args.skip else [bench_prep(n, args.vocab) for n in sizes["prep"]]
        ev = [] if "eval" in args.skip else run_eval_sizes(sizes["eval"])
        ep = [] if "epoch" in args.skip else run_epochs(sizes["clips"], rounds=args.epoch_rounds)
        out = Path(args.json or Path(args.png).with_suffix(".json"))
        out.write_text(json.dumps({"prep": prep, "eval": ev, "epoch": ep}, indent=1))
    trials, conc = [2, 4, 8, 16], [1, 2, 4]
    per_clip = float(np.median([r["epoch_s"] / r["clips"] for r in ep])) if ep else 0.0
    sweep = sweep_model(per_clip, 256, 4, trials, conc, cores=2)
    print_tables(prep, ev, ep, sweep, trials, conc)
    print_fits(prep, ev, ep)
    plot(prep, ev, ep, sweep, trials, conc, Path(args.png))
    print(f"wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
