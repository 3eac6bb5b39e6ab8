"""GPU check: ETVA at paper-scale widths on one accelerator. Needs only torch, transformers, numpy, PyYAML
(no Ray, MLflow or PyAV is imported; nothing is downloaded: the text encoder is built with random weights).

Model: ``etva.model.build_model`` with text = ALBERT-base widths (hidden 768, 12 layers, 12 heads,
intermediate 3072, embedding 128, vocab 30,000), three pre-extracted-feature experts of the widths of
CLIP ViT-B/32 (512), a video transformer (768) and an audio transformer (768), d = 512, K = 16 clusters;
batch 128 of 32 text tokens and 32 feature tokens per expert (a quarter of the clips without audio).

Measured in one run, printed as ONE table:

  train fp32 / bf16   a full training step (``etva.train.engine.train_step`` + backward + clip + AdamW), steps/s
                      and peak memory (``torch.cuda.max_memory_allocated``; on CPU the process's peak RSS);
  GEMM peak           a large matmul in fp32 and bf16 (the achievable dense FLOP/s of this device);
  fused eval          MSRVTT-Full shape (59,800 captions x 2,990 videos): ``etva.train.engine.evaluate`` end to
                      end (encode + FusedScorer/score_all + retrieval metrics); then, on the same
                      embeddings, the FusedScorer GEMMs alone (TFLOP/s vs the fp32 GEMM peak), ``score_all``
                      (with the copy to host) and ``retrieval_metrics(query_chunk=...)``;
  resume              model + AdamW stepped, saved with ``etva.train.checkpoint``, loaded into a fresh model moved
                      to the device: every non-scalar optimizer state tensor on its parameter's device, one step.

    python -m benchmarks.gpu_check                      # on the GPU machine (< 6 minutes on an H200)
    python -m benchmarks.gpu_check --device cpu --quick # small sizes, this CPU machine (< 2 minutes)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from benchmarks.gpu_model import QUICK, Sizes, build, model_config, step, sync, text_inputs, video_inputs
from etva.config import Config, LossConfig, OptimConfig
from etva.eval.metrics import retrieval_metrics
from etva.eval.similarity import FusedScorer, score_all
from etva.model import TextEmbedding, VideoEmbedding, build_model
from etva.train.checkpoint import load_checkpoint, save_checkpoint
from etva.train.engine import build_optimizer, build_scheduler, evaluate
from etva.train.losses import build_loss
from etva.train.state import build_training

GIB = 2**30


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM on Linux
        except OSError:
            pass


def _peak_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def bench_train(s: Sizes, device: torch.device, dtype: torch.dtype | None) -> dict[str, float]:
    """Steps/s and peak memory of ``s.steps`` timed training steps after ``s.warmup`` warm-up steps."""
    _peak_reset(device)
    model, loss_fn, opt = build(s, device)
    g = torch.Generator().manual_seed(1)
    batch = {**text_inputs(s.batch, s, device, g), **video_inputs(s.batch, s, device, g)}
    for _ in range(s.warmup):
        step(model, loss_fn, opt, batch, dtype)
    sync(device)
    t0 = time.perf_counter()
    losses = [step(model, loss_fn, opt, batch, dtype) for _ in range(s.steps)]
    sync(device)
    dt = time.perf_counter() - t0
    if not all(np.isfinite(losses)):
        raise RuntimeError(f"training step gave a non-finite loss: {losses}")
    params = sum(p.numel() for p in model.parameters())
    out = {"steps_per_s": s.steps / dt, "peak_gib": _peak_gib(device), "loss": losses[-1], "params": params}
    del model, loss_fn, opt, batch
    return out


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int, reps: int = 5) -> float:
    """Best FLOP/s of an (n x n) @ (n x n) matmul in ``dtype``."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def eval_batches(s: Sizes, device: torch.device) -> tuple[Iterator[dict], Iterator[dict]]:
    """MSRVTT-Full shaped inputs: every video has queries/videos captions (caption i -> video i % V)."""
    g = torch.Generator().manual_seed(2)

    def videos() -> Iterator[dict]:
        for v0 in range(0, s.videos, s.encode_batch):
            n = min(s.encode_batch, s.videos - v0)
            yield {**video_inputs(n, s, device, g), "video_index": torch.arange(v0, v0 + n)}

    def captions() -> Iterator[dict]:
        for q0 in range(0, s.queries, s.encode_batch):
            idx = torch.arange(q0, min(q0 + s.encode_batch, s.queries))
            batch = text_inputs(len(idx), s, device, g)
            yield {**batch, "caption_index": idx, "video_index": idx % s.videos}

    return videos(), captions()


@torch.no_grad()
def encode_all(model, s: Sizes, device: torch.device) -> tuple[TextEmbedding, VideoEmbedding]:
    model.eval()
    vids, caps = eval_batches(s, device)
    video = VideoEmbedding.cat([model.encode_video(b) for b in vids])
    text = TextEmbedding.cat([model.encode_text(b["input_ids"], b["attention_mask"]) for b in caps])
    return text, video


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def bench_eval(s: Sizes, device: torch.device) -> dict[str, float]:
    """The fused evaluation at MSRVTT-Full shape, end to end and by stage."""
    model, _, _ = build(s, device)
    vids, caps = eval_batches(s, device)
    metrics, t_engine = timed(lambda: evaluate(model, vids, caps, device, query_chunk=s.query_chunk), device)
    (text, video), t_encode = timed(lambda: encode_all(model, s, device), device)
    scorer = FusedScorer.from_embeddings(text, video, alpha=model.alpha, normalized=True)
    q, v = s.queries, s.videos

    def kernels() -> None:  # the GEMMs alone, results left on the device
        for q0 in range(0, q, s.query_chunk):
            scorer(slice(q0, min(q0 + s.query_chunk, q)), slice(0, v))

    kernels()  # warm-up
    _, t_kernels = timed(kernels, device)
    sim, t_score = timed(lambda: score_all(scorer, q, v, query_chunk=s.query_chunk), device)
    qv = np.arange(q) % v
    chunked, t_metrics = timed(lambda: retrieval_metrics(sim, qv, query_chunk=4096), device)
    flops = 2.0 * q * v * (len(s.experts) + s.clusters) * s.d
    return {
        "t_engine": t_engine, "t_encode": t_encode, "t_kernels": t_kernels, "t_score": t_score,
        "t_metrics": t_metrics, "flops": flops, "t2v_R1": metrics["t2v_R1"],
        "same_metrics": float(all(np.isclose(chunked[k], metrics[k]) for k in chunked)),
    }  # fmt: skip


def _state_devices(opt: torch.optim.Optimizer) -> tuple[int, list[str]]:
    """(number of non-scalar state tensors checked, [mismatches]) for every parameter's optimizer state."""
    checked, bad = 0, []
    for group in opt.param_groups:
        for p in group["params"]:
            for key, t in opt.state.get(p, {}).items():
                if isinstance(t, torch.Tensor) and t.dim() > 0:
                    checked += 1
                    if t.device != p.device:
                        bad.append(f"{key}: {t.device} vs param {p.device}")
    return checked, bad


def _resume(ckpt: dict, s: Sizes, device: torch.device, load_then_move: bool, batch: dict):
    """A fresh model resumed from ``ckpt`` onto ``device``.

    ``load_then_move=False``: the training code's path, ``etva.train.state.build_training`` (modules on the
    device first, then the optimizer state loaded); ``True``: for contrast, everything loaded on the CPU,
    then the modules moved (the order torch warns about). Returns ``(state tensors checked, [misplaced],
    loss or error text)``.
    """
    if load_then_move:
        torch.manual_seed(1)
        model = build_model(model_config(s), vocab_size=s.vocab)
        both = torch.nn.ModuleList([model, build_loss(LossConfig())])
        both.load_state_dict(ckpt["model"])
        opt = build_optimizer(both, OptimConfig())
        build_scheduler(opt, OptimConfig(), total_steps=100).load_state_dict(ckpt["optimizer"]["scheduler"])
        opt.load_state_dict(ckpt["optimizer"]["optimizer"])
        both.to(device)
        loss_fn = both[1]
    else:
        cfg = Config(model=model_config(s), loss=LossConfig(), optim=OptimConfig())
        state = {**ckpt, "model": {"model": _sub(ckpt["model"], "0."), "loss": _sub(ckpt["model"], "1.")}}
        ts = build_training(cfg, s.vocab, 100, device, state)
        model, loss_fn, opt = ts.model, ts.loss_fn, ts.optimizer
    checked, bad = _state_devices(opt)
    try:
        loss: float | str = step(model, loss_fn, opt, batch, None)
        sync(device)
    except RuntimeError as e:
        loss = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
    return checked, bad, loss


def _sub(state: dict, prefix: str) -> dict:
    """The entries of a ModuleList state dict under ``prefix`` (``0.`` = model, ``1.`` = loss)."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def bench_resume(s: Sizes, device: torch.device) -> dict:
    """Train a step, checkpoint with ``etva.train.checkpoint``, resume onto ``device`` in both orders."""
    g = torch.Generator().manual_seed(3)
    batch = {**text_inputs(s.batch, s, device, g), **video_inputs(s.batch, s, device, g)}
    model, loss_fn, opt = build(s, device)
    sched = build_scheduler(opt, OptimConfig(), total_steps=100)
    step(model, loss_fn, opt, batch, None)
    sched.step()
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.nn.ModuleList([model, loss_fn]).state_dict()
        opt_state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        save_checkpoint(Path(tmp) / "ckpt", state, {"epoch": 0, "history": {}}, optimizer_state=opt_state)
        del model, loss_fn, opt, state, opt_state
        t0 = time.perf_counter()
        ckpt = load_checkpoint(Path(tmp) / "ckpt")  # tensors land on the CPU
    checked, bad, loss = _resume(ckpt, s, device, False, batch)
    t_resume = time.perf_counter() - t0
    if bad or checked == 0 or not isinstance(loss, float) or not np.isfinite(loss):
        raise RuntimeError(f"resume: {checked} state tensors checked, misplaced {bad[:3]}, step loss {loss}")
    job = _resume(ckpt, s, device, True, batch)
    return {"checked": checked, "t_resume": t_resume, "loss": loss, "job_order": job}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda | cuda:N | cpu")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU smoke run)")
    p.add_argument("--threads", type=int, default=0, help="CPU torch threads (0 = torch default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible; use --device cpu --quick for a CPU smoke run")
    s = QUICK if args.quick else Sizes()
    t_start = time.perf_counter()
    rows = run_checks(s, device)
    print_table(rows, s, device, time.perf_counter() - t_start)


def run_checks(s: Sizes, device: torch.device) -> list[tuple[str, str, str]]:
    """Every measurement, as (check, result, detail) rows."""
    rows: list[tuple[str, str, str]] = []
    train = {}
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        r = train[name] = bench_train(s, device, dtype)
        detail = f"batch {s.batch}, {r['params'] / 1e6:.1f} M params, loss {r['loss']:.3f}"
        rows.append(
            (f"train step {name}", f"{r['steps_per_s']:.2f} steps/s, peak {r['peak_gib']:.2f} GiB", detail)
        )
    speed = train["bf16 autocast"]["steps_per_s"] / train["fp32"]["steps_per_s"]
    rows.append(("bf16 / fp32 speed", f"{speed:.2f}x", ""))
    peaks = {
        name: gemm_peak(device, dt, s.gemm_n)
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    for name, f in peaks.items():
        rows.append(
            (
                f"GEMM peak {name}",
                f"{f / 1e12:.3g} TFLOP/s",
                f"{s.gemm_n}^3 matmul, best of 5; fp32 matmul precision {torch.get_float32_matmul_precision()!r}",
            )
        )
    e = bench_eval(s, device)
    shape = f"{s.queries} x {s.videos}"
    rows.append(
        ("eval end to end (engine.evaluate)", f"{e['t_engine']:.2f} s", f"{shape}: encode + score + metrics")
    )
    rows.append(("  encode captions + videos", f"{e['t_encode']:.2f} s", f"batches of {s.encode_batch}"))
    tf = e["flops"] / e["t_kernels"]
    rows.append((
        "  FusedScorer GEMMs", f"{e['t_kernels']:.3f} s, {tf / 1e12:.3g} TFLOP/s",
        f"{tf / peaks['fp32']:.0%} of fp32 peak, {tf / peaks['bf16']:.0%} of bf16; {e['flops'] / 1e12:.3g} TFLOP",
    ))  # fmt: skip
    rows.append(("  score_all (+ copy to host)", f"{e['t_score']:.2f} s", "float32 Q x V matrix on the host"))
    same = "equal to the engine's" if e["same_metrics"] else "DIFFER from the engine's"
    rows.append(("  retrieval_metrics (chunked)", f"{e['t_metrics']:.2f} s", f"metrics {same}"))
    r = bench_resume(s, device)
    rows.append((
        "resume: etva.train.state.build_training", f"ok, {r['t_resume']:.2f} s",
        f"{r['checked']} state tensors on the device, step loss {r['loss']:.3f}",
    ))  # fmt: skip
    checked, bad, loss = r["job_order"]
    result = "state on the device" if not bad else f"{len(bad)}/{checked} state tensors NOT on the device"
    after = f"step loss {loss:.3f}" if isinstance(loss, float) else f"step fails: {loss}"
    rows.append(("resume: load, then to(device) (contrast)", result, after))
    return rows


def print_table(rows: list[tuple[str, str, str]], s: Sizes, device: torch.device, wall: float) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(f"\nETVA GPU check on {name} (torch {torch.__version__}); total {wall:.0f} s")
    print(f"text ALBERT {s.hidden}x{s.layers}, experts {dict(s.experts)}, d={s.d}, K={s.clusters}\n")
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    print(f"| {'check':{w[0]}} | {'result':{w[1]}} | {'detail':{w[2]}} |")
    print(f"|{'-' * (w[0] + 2)}|{'-' * (w[1] + 2)}|{'-' * (w[2] + 2)}|")
    for r in rows:
        print(f"| {r[0]:{w[0]}} | {r[1]:{w[1]}} | {r[2]:{w[2]}} |")


if __name__ == "__main__":
    main()
