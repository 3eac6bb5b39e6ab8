"""Model forward+backward on CPU: time per clip, peak memory, per-module breakdown.

Default ``ModelConfig`` (tiny ALBERT preset, appearance/motion/audio experts, d=128, K=16) on a random
batch in the data defaults' shapes: 8 frames 64x64, 4 s of audio = 400 log-mel frames x 40 bins,
32 text tokens, batch 32. Measured side by side in one run:

  full     one training step's forward + loss + backward (``etva.train.engine.train_step``), no optimizer;
  modules  each module's forward+backward alone, on inputs of the shapes it sees in the full step
           (detached, so nothing upstream runs): text encoder, each expert (incl. its projection),
           fusion transformer, global alignment (gated units + mixture + all-pairs score), VLAD
           (projections + NetVLAD both sides + all-pairs score), losses (on the 3 similarity matrices).
The module shares are of the full step; their sum vs the full step shows the glue overhead.
Peak memory: the process's high-water RSS (VmHWM) over the full steps, reset first where Linux allows.

Usage: python -m benchmarks.bench_model [--batch 32 --threads 2 --reps 5]
       python -m benchmarks.bench_model --quick   # --reps 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from etva.config import DataConfig, LossConfig, ModelConfig
from etva.model import build_model
from etva.train.engine import train_step
from etva.train.losses import build_loss

MIB = 2**20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="--reps 2")
    args = p.parse_args()
    if args.quick:
        args.reps = 2
    return args


def make_batch(b: int, data: DataConfig, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t, s, a = data.num_frames, data.frame_size, round(100 * data.max_audio_s)
    lens = torch.randint(8, data.max_text_len + 1, (b,), generator=g)
    attn = (torch.arange(data.max_text_len)[None] < lens[:, None]).long()
    mask = torch.ones(b, a, dtype=torch.bool)
    mask[: b // 4] = False  # a quarter of the clips are silent
    return {
        "frames": torch.randint(0, 256, (b, t, s, s, 3), generator=g, dtype=torch.uint8),
        "audio_mel": torch.randn(b, a, data.num_mel_bins, generator=g),
        "audio_mask": mask,
        "input_ids": torch.randint(1, vocab, (b, data.max_text_len), generator=g) * attn,
        "attention_mask": attn,
    }


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _fb(make_out: Callable[[], object]) -> Callable[[], None]:
    """forward + backward of the sum of every float tensor in the output."""

    def run() -> None:
        out = make_out()
        tensors = out if isinstance(out, (list, tuple)) else [out]
        flat = []
        for t in tensors:
            flat += list(vars(t).values()) if hasattr(t, "__dataclass_fields__") else [t]
        total = sum(x.float().sum() for x in flat if isinstance(x, torch.Tensor) and x.is_floating_point())
        total.backward()

    return run


def module_fns(model, loss_fn, batch) -> dict[str, Callable[[], None]]:
    """Each module's forward+backward on detached inputs of the shapes of the full step."""
    with torch.no_grad():
        feats = model.text(batch["input_ids"], batch["attention_mask"])
        toks, masks = model._fused_tokens(batch)
        raw = [model.expert_proj[n](model.experts[n](batch)[0]) for n in model.expert_names]
        t, v = model(batch)
        sims = model.similarity(t, v)
    tok_all, mask_all = torch.cat(raw, 1), torch.cat(masks, 1)
    leaf = lambda x: x.detach().clone().requires_grad_(True)  # noqa: E731
    fns: dict[str, Callable[[], None]] = {
        "text encoder (ALBERT)": _fb(lambda: model.text(batch["input_ids"], batch["attention_mask"]).tokens),
    }
    for n in model.expert_names:
        fns[f"expert: {n}"] = _fb(lambda n=n: model.expert_proj[n](model.experts[n](batch)[0]))
    fns["fusion transformer"] = _fb(lambda: model.fusion(leaf(tok_all), mask_all))
    ga, la = model.global_align, model.local_align

    def global_part():
        te, lg = ga.encode_text(leaf(feats.pooled))
        ve, av = ga.encode_video([leaf(x) for x in toks], masks)
        return ga.similarity(te, lg, ve, av)

    def vlad_part():
        tl = la.encode_text(leaf(feats.tokens), feats.mask)
        vl = la.encode_video(leaf(torch.cat(toks, 1)), mask_all)
        return la.similarity(tl, vl)

    fns["global alignment"] = _fb(global_part)
    fns["VLAD (fine-grained)"] = _fb(vlad_part)
    fns["losses"] = _fb(lambda: loss_fn({k: leaf(s) for k, s in sims.items()})[0])
    return fns


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, data = ModelConfig(), DataConfig()
    model = build_model(cfg, args.vocab).train()
    loss_fn = build_loss(LossConfig())
    batch = make_batch(args.batch, data, args.vocab)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ModelConfig defaults: d={cfg.d} K={cfg.num_clusters} experts={list(model.expert_names)} "
          f"params={n_params / 1e6:.2f}M; batch {args.batch}: frames {tuple(batch['frames'].shape)} "
          f"audio {tuple(batch['audio_mel'].shape)} text {tuple(batch['input_ids'].shape)}; "
          f"threads={args.threads}")  # fmt: skip

    def full() -> None:
        model.zero_grad(set_to_none=True)
        train_step(model, loss_fn, batch)[0].backward()

    fns = {"full step": full, **module_fns(model, loss_fn, batch)}
    for fn in fns.values():  # warm-up (and first-touch allocations) before measuring memory
        model.zero_grad(set_to_none=True)
        fn()
    rss_before = _rss_mib()
    reset = _reset_peak()
    # interleaved rounds: on a shared machine, contention hits every row alike
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.reps):
        for name, fn in fns.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    peak = _peak_rss_mib()
    med = {k: statistics.median(v) for k, v in times.items()}
    t_full = med.pop("full step")
    print(f"\nfull step fwd+bwd: {t_full * 1e3:.0f} ms/batch = {t_full / args.batch * 1e3:.2f} ms/clip "
          f"({args.batch / t_full:.1f} clips/s); min {min(times['full step']) * 1e3:.0f} ms")  # fmt: skip
    print(f"peak RSS: {peak:.0f} MiB (RSS after warm-up: {rss_before:.0f} MiB"
          f"{'' if reset else '; peak not reset, includes setup'})")  # fmt: skip
    print(f"\n{'module (median of ' + str(args.reps) + ')':<24}{'ms/batch':>10}{'ms/clip':>10}{'share':>8}")
    for name, t in med.items():
        print(f"{name:<24}{t * 1e3:>10.1f}{t / args.batch * 1e3:>10.2f}{t / t_full:>8.1%}")
    total = sum(med.values())
    print(f"{'sum of modules':<24}{total * 1e3:>10.1f}{total / args.batch * 1e3:>10.2f}"
          f"{total / t_full:>8.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
