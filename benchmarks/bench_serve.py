"""Serving figures in one run: vector search at 10k/100k (exact vs approximate, recall@10), 1M with an
IVF-PQ index (its memory), index build clips/s with the Ray Data job, and HTTP queries/s with p50/p99
latency at 1, 8 and 32 concurrent loopback clients against `etva serve`'s Serve application.

    python -m benchmarks.bench_serve                       # sizes 10000,100000 and 1M
    python -m benchmarks.bench_serve --quick               # 10k/100k, 200k for the IVF-PQ index, 40 clips

Vectors are synthetic, of the shipped model's dimensions (ray_jobs/configs/shapes.yaml: E=3 experts, K=16
clusters, d=128: 2,432 floats per video); 10% of the videos miss the audio expert (a second pattern).
The serving part uses a tiny untrained checkpoint (tiny.yaml) on generated shapes clips and a private
local Ray (no MLflow: the model is a checkpoint directory).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import torch

from etva.index.exact import pattern_key
from etva.index.vectors import PatternIndex

REPO = Path(__file__).resolve().parents[1]
E, K, D = 3, 16, 128


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def synthetic_videos(n: int, seed: int = 0, missing: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """(n, (E+K)*D) float32 video vectors around 256 topics, and their pattern keys."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((256, E + K, D)).astype(np.float32)
    out = np.empty((n, (E + K) * D), np.float32)
    pats = []
    for s in range(0, n, 50_000):
        m = min(50_000, n - s)
        v = topics[rng.integers(0, 256, m)] + 0.5 * rng.standard_normal((m, E + K, D)).astype(np.float32)
        v = _unit(v)
        avail = np.ones((m, E), bool)
        avail[:, 2] = rng.random(m) >= missing
        v[:, :E] *= avail[..., None]
        out[s : s + m] = v.reshape(m, -1)
        pats += [pattern_key(torch.from_numpy(a)) for a in avail]
    return out, pats


class Queries:
    """TextEmbedding-like random queries (experts, logits, local)."""

    def __init__(self, q: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        self.experts = torch.from_numpy(_unit(rng.standard_normal((q, E, D)).astype(np.float32)))
        self.logits = torch.from_numpy(rng.standard_normal((q, E)).astype(np.float32))
        self.local = torch.from_numpy(_unit(rng.standard_normal((q, K, D)).astype(np.float32)))

    def __len__(self) -> int:
        return len(self.logits)


def _timed_search(index: PatternIndex, queries: Queries, k: int = 10) -> tuple[float, np.ndarray]:
    index.search(queries, k)  # warm-up
    t0 = time.perf_counter()
    _, rows = index.search(queries, k)
    return (time.perf_counter() - t0) / len(queries), rows


def vector_figures(sizes: list[int], big: int, spec: str, big_spec: str, nq: int) -> dict:
    out = {}
    queries = Queries(nq)
    for n in sizes:
        vec, pats = synthetic_videos(n)
        t0 = time.perf_counter()
        exact = PatternIndex(vec, pats, 0.5)
        exact_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = PatternIndex(vec, pats, 0.5, spec, nprobe=16)
        approx_build = time.perf_counter() - t0
        te, want = _timed_search(exact, queries)
        ta, got = _timed_search(approx, queries)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))
        out[n] = {"exact_ms_per_query": te * 1e3, "approx_ms_per_query": ta * 1e3, "recall@10": recall,
                  "exact_build_s": exact_build, "approx_build_s": approx_build, "approx_spec": spec,
                  "exact_MiB": exact.nbytes() / 2**20, "approx_MiB": approx.nbytes() / 2**20}  # fmt: skip
        print(f"{n:>9,} vectors: exact {te * 1e3:.2f} ms/query, {spec} {ta * 1e3:.2f} ms/query, "
              f"recall@10 {recall:.3f}; build {exact_build:.1f} s / {approx_build:.1f} s; "
              f"memory {exact.nbytes() / 2**20:.0f} / {approx.nbytes() / 2**20:.0f} MiB", flush=True)  # fmt: skip
        del exact, approx, vec
    if big:
        out["big"] = big_figures(big, big_spec, queries)
    return out


def big_figures(n: int, spec: str, queries: Queries) -> dict:
    """An IVF-PQ index over ``n`` vectors of one pattern, trained on 20k, added in chunks (never all fp32)."""
    import faiss

    dim = (E + K) * D
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    train, _ = synthetic_videos(20_000, seed=5, missing=0.0)
    index.train(train)
    for s in range(0, n, 50_000):
        chunk, _ = synthetic_videos(min(50_000, n - s), seed=10 + s, missing=0.0)
        index.add(chunk)
    build = time.perf_counter() - t0
    faiss.extract_index_ivf(index).nprobe = 16
    from etva.index.exact import query_vectors

    q = query_vectors(queries.experts, queries.logits, queries.local, torch.ones(E, dtype=torch.bool), 0.5)
    q = np.ascontiguousarray(q.numpy())
    index.search(q, 10)
    t0 = time.perf_counter()
    index.search(q, 10)
    per_q = (time.perf_counter() - t0) / len(q)
    mib = len(faiss.serialize_index(index)) / 2**20
    fp32 = n * dim * 4 / 2**20
    print(f"{n:>9,} vectors ({spec}): {per_q * 1e3:.2f} ms/query, index {mib:.0f} MiB (fp32 vectors would be "
          f"{fp32:,.0f} MiB); build {build:.0f} s", flush=True)  # fmt: skip
    return {"n": n, "spec": spec, "ms_per_query": per_q * 1e3, "index_MiB": mib, "fp32_MiB": fp32, "build_s": build}


def _load(base: str, clients: int, seconds: float, queries: list[str]) -> dict:
    lat: list[float] = []
    errors = [0]
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        j = i
        while time.monotonic() < stop:
            url = f"{base}/search?" + urllib.parse.urlencode({"q": queries[j % len(queries)], "k": 10})
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(url, timeout=120) as r:
                    r.read()
                lat.append(time.perf_counter() - t0)
            except OSError:
                errors[0] += 1
            j += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0]] * 99
    return {"clients": clients, "requests": len(lat), "errors": errors[0], "qps": len(lat) / wall,
            "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3}  # fmt: skip


def _free_ports(n: int) -> list[int]:
    ports = []
    for _ in range(n):
        with socket.socket() as sk:
            sk.bind(("127.0.0.1", 0))
            ports.append(sk.getsockname()[1])
    return ports


def serving_figures(num_videos: int, seconds: float, tmp: Path) -> dict:
    """Index build clips/s (Ray Data job) and HTTP load on a private Ray with Serve on a free port."""
    import shutil
    from argparse import Namespace

    import ray
    from ray import serve

    from ray_jobs.serve_app import Deployer
    from tests.integration.tiny_checkpoint import tiny_checkpoint

    ckpt, records = tiny_checkpoint(tmp)  # 40 generated clips; copied under new names up to num_videos
    clips = sorted(Path(records[0].video_path).parent.glob("*.mp4"))
    videos = tmp / "videos"
    videos.mkdir()
    for i in range(num_videos):
        shutil.copy(clips[i % len(clips)], videos / f"c{i:05d}.mp4")
    n = num_videos
    port, *ports = _free_ports(6)  # Serve's HTTP port; a private head's ports (never the user's defaults)
    import os
    import sys

    sys.path.insert(0, str(REPO))
    from cluster import local

    settings = local.LocalSettings(tmp / "head", ray_port=ports[0], dashboard_port=ports[1], mlflow_port=ports[2],
                                   ray_client_port=ports[3], dashboard_agent_port=ports[4], num_cpus=4,
                                   start_timeout_s=600)  # fmt: skip
    try:
        cluster = local.start_all(settings, ray=True, mlflow=False)  # what `etva serve` runs against
        os.environ.update(cluster.env)
        ray.init(address=cluster.ray_address, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        args = Namespace(model=str(ckpt), videos=str(videos), store="", index_root=str(tmp / "index"),
                         tracking_uri="", actors=2, batch_size=8, replicas=1)  # fmt: skip
        dep = Deployer(args)
        t0 = time.perf_counter()
        counts = dep.deploy(dep.resolve())
        deploy_s = time.perf_counter() - t0
        print(f"index build + deploy: {counts['encoded']} clips in {deploy_s:.1f} s "
              f"({counts['encoded'] / deploy_s:.1f} clips/s incl. Serve start)", flush=True)  # fmt: skip
        from ray_jobs.index_job import build_index

        t0 = time.perf_counter()
        build_index(dep.current, tmp / "again", "folder", str(videos), actors=2, batch_size=8)
        build_s = time.perf_counter() - t0
        print(f"index build alone (Ray Data, 2 actors): {n} clips in {build_s:.1f} s = {n / build_s:.1f} clips/s",
              flush=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        queries = [c for r in records for c in r.captions][:200]
        loads = [_load(base, c, seconds, queries) for c in (1, 8, 32)]
        for r in loads:
            print(f"{r['clients']:>2} clients: {r['qps']:.1f} queries/s, p50 {r['p50_ms']:.0f} ms, "
                  f"p99 {r['p99_ms']:.0f} ms ({r['requests']} requests, {r['errors']} errors)", flush=True)  # fmt: skip
        return {"videos": n, "build_clips_per_s": n / build_s, "http": loads}
    finally:
        serve.shutdown()
        ray.shutdown()
        local.stop_all(settings, ray=True, mlflow=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k/100k, 200k IVF-PQ, 40 clips, 10 s per load")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--big", type=int, default=1_000_000, help="vectors for the IVF-PQ index (0: skip)")
    p.add_argument("--spec", default="IVF256,Flat", help="approximate index at --sizes")
    p.add_argument("--big-spec", default="IVF1024,PQ64", help="approximate index at --big")
    p.add_argument("--queries", type=int, default=64)
    p.add_argument("--videos", type=int, default=120, help="clips for the serving figures")
    p.add_argument("--seconds", type=float, default=20.0, help="per concurrency level")
    p.add_argument("--no-serving", action="store_true", help="vector search figures only")
    p.add_argument("--no-vectors", action="store_true", help="index build and HTTP figures only")
    p.add_argument("--json", default="")
    args = p.parse_args()
    if args.quick:
        args.big, args.videos, args.seconds = 200_000, 40, 10.0
    torch.set_num_threads(2)
    figures = {}
    if not args.no_vectors:
        figures["vectors"] = vector_figures([int(s) for s in args.sizes.split(",")], args.big, args.spec,
                                            args.big_spec, args.queries)  # fmt: skip
    if not args.no_serving:
        with tempfile.TemporaryDirectory(prefix="etva-bench-serve-") as tmp:
            figures["serving"] = serving_figures(args.videos, args.seconds, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
