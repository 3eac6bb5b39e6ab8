"""Measurement helpers shared by the evaluation benchmarks (``bench_eval``, ``bench_eval_engine``): peak
resident memory, timing, the float32 GEMM rate of this machine, random unit vectors."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch

GIB = 2**30


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: write 5 to clear_refs); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """High-water resident set size of this process (since the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def gemm_flops(n: int, reps: int = 3) -> float:
    """Best-of-``reps`` float32 (n x n) @ (n x n) FLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b  # warm-up
    best = min(timed(lambda: a @ b)[1] for _ in range(reps))
    return 2.0 * n**3 / best


def unit(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    x = torch.randn(*shape, generator=g)
    return x.div_(x.norm(dim=-1, keepdim=True))
