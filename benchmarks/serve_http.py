"""The HTTP side of ``bench_serve``: a bounded load of GET /search calls from N client threads (queries/s,
p50/p99), the count of requests refused with a 401, the goal rows of docs/serving.md (issue 30), and the
wait for a server's /health."""

from __future__ import annotations

import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["http_load", "refused", "goal_rows", "big_row", "wait_up"]


def http_load(
    base: str, clients: int, requests: int, queries: list[str], headers: dict | None = None
) -> dict:
    """``requests`` GET /search calls shared by ``clients`` threads: queries/s, p50/p99 latency, errors."""
    lat: list[float] = []
    errors: list[str] = []
    todo = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                j = next(todo, None)
            if j is None:
                return
            url = f"{base}/search?" + urllib.parse.urlencode({"q": queries[j % len(queries)], "k": 10})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(
                    urllib.request.Request(url, headers=headers or {}), timeout=120
                ) as r:
                    r.read()
                lat.append(time.perf_counter() - t0)
            except OSError as e:
                errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = (
        statistics.quantiles(lat, n=100, method="inclusive")
        if len(lat) > 1
        else [lat[0] if lat else 0.0] * 99
    )
    return {"clients": clients, "requests": len(lat), "errors": len(errors), "qps": len(lat) / wall,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3, "first_error": errors[0] if errors else ""}  # fmt: skip


def refused(base: str, n: int, headers: dict) -> int:
    """How many of ``n`` GET /search calls sent with ``headers`` are answered 401."""
    count = 0
    for _ in range(n):
        try:
            with urllib.request.urlopen(urllib.request.Request(f"{base}/search?q=red&k=3", headers=headers)):
                pass
        except urllib.error.HTTPError as e:
            count += e.code == 401
    return count


def goal_rows(loads: list[dict], auth: dict) -> list[str]:
    """The issue's goal rows: 401 counts, queries/s at 32 clients against the best level, p99 at 32."""
    best = max(r["qps"] for r in loads)
    rows = [
        f"requests without / with a wrong token, token set: 401 {auth['none']}/{auth['n']} / "
        f"401 {auth['wrong']}/{auth['n']} (goal: all 401)"
    ]
    at32 = next((r for r in loads if r["clients"] == 32), None)
    if at32 is not None:
        rows.append(
            f"queries/s at 32 clients vs the best of {'/'.join(str(r['clients']) for r in loads)}: "
            f"{at32['qps']:.1f} / {best:.1f} = {at32['qps'] / best:.2f}x (goal >= 0.9x)"
        )
        rows.append(
            f"p99 at 32 clients: {at32['p99_ms']:.0f} ms (goal <= 32 / {best:.1f} x 1.5 = "
            f"{32 / best * 1.5e3:.0f} ms)"
        )
    return rows


def big_row(videos: int, dim: int, at32: dict, small: list[dict]) -> str:
    """The goal row of the big index: queries/s at 32 clients against the best at the small index, and the
    exact product's rate that throughput implies (2 x videos x dim flops per query)."""
    best = max(r["qps"] for r in small)
    gflops = 2 * videos * dim * at32["qps"] / 1e9
    return (
        f"exact, {videos:,} videos, 32 clients: {at32['qps']:.1f} queries/s = {at32['qps'] / best:.2f}x the "
        f"best at the small index ({best:.1f}; goal >= 0.6x); p99 {at32['p99_ms']:.0f} ms; search "
        f"{gflops:.1f} GFLOP/s ({at32['errors']} errors)"
    )


def wait_up(base: str, proc: subprocess.Popen, timeout: float = 900.0) -> None:
    """Poll ``base``/health until it answers 200; RuntimeError when ``proc`` exits or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"etva serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"etva serve: {base}/health not up after {timeout:.0f} s")
