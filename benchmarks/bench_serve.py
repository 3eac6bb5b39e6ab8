"""Serving figures in one run: vector search at 10k/100k (exact vs approximate with its candidates re-ranked
exactly: recall@10, speed-up of a 1-query call), 1M with an IVF-PQ index re-ranked from memory-mapped
float16 vectors (its memory and recall@10; --big 0 skips it), index build clips/s with the `etva index`
Ray Data job, HTTP queries/s with p50/p99 latency at 1, 8 and 32 concurrent loopback clients against
`etva serve` (400 clips), and queries/s at 32 clients once the served index holds 100k videos (synthetic
vectors added beside the clips; --big-videos 0 skips it).

    python -m benchmarks.bench_serve              # 10k/100k IVF64,Flat; 1M IVF64,PQ64x4fs; 400 clips
    python -m benchmarks.bench_serve --quick      # 10k/50k; 200k for the IVF-PQ index; 40 clips, fewer requests

Vectors are synthetic, of the shipped model's dimensions (ray_jobs/configs/shapes.yaml: E=3 experts, K=16
clusters, d=128: 2,432 floats per video), around 256 topics plus noise drawn from two fixed banks (cheap
to make a million), unit-norm per expert/cluster block; 10% miss the audio expert (a second pattern).
Recall@10 is against exact inner-product search over the same vectors (streamed in chunks at 1M, so the
fp32 vectors never sit in memory together). faiss runs on one thread (on a shared 2-core machine its
OpenMP threads only contend).

The serving part starts its own private Ray head (``cluster.local`` on free ports, state under /tmp, like
the integration fixtures; no MLflow: the model is a checkpoint directory), runs the real `etva index` and
`etva serve` commands as subprocesses in their own process groups (`etva serve` with a token in a 0600
file), and stops all of it (process groups, then the head) even after an error. It prints the goal rows
of docs/serving.md: how many requests without a token and with a wrong one are refused (401), and
queries/s and p99 at 32 clients against the best of the client levels. The model is a tiny untrained checkpoint (tiny.yaml) and the videos
the generated shapes clips.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.serve_http import big_row, goal_rows, http_load, refused, wait_up
from benchmarks.serve_setup import private_head, stop_group
from etva.index.store import IndexStore, rows_table
from etva.index.vectors import RERANK, PatternIndex

REPO = Path(__file__).resolve().parents[1]
E, K, D = 3, 16, 128
FULL_KEY, NO_AUDIO_KEY = "111", "110"


def _unit_blocks(v: np.ndarray) -> np.ndarray:
    """(m, E+K, D) -> each block unit-norm, in place."""
    v /= np.linalg.norm(v, axis=-1, keepdims=True)
    return v


class Synth:
    """Synthetic video vectors: topic + noise from two fixed banks (2^26 noise combinations per topic)."""

    def __init__(self, seed: int = 0, topics: int = 256, bank: int = 8192) -> None:
        rng = np.random.default_rng(seed)
        self.topics = rng.standard_normal((topics, E + K, D), dtype=np.float32)
        self.banks = [0.35 * rng.standard_normal((bank, E + K, D), dtype=np.float32) for _ in range(2)]

    def chunk(self, m: int, seed: int, missing: float = 0.1) -> tuple[np.ndarray, list[str]]:
        """(m, (E+K)*D) float32 vectors and their pattern keys."""
        rng = np.random.default_rng(seed)
        v = self.topics[rng.integers(0, len(self.topics), m)]
        for b in self.banks:
            v += b[rng.integers(0, len(b), m)]
        _unit_blocks(v)
        audio = rng.random(m) >= missing
        v[~audio, 2] = 0.0  # no audio: the stored vector holds no embedding for it
        return v.reshape(m, -1), [FULL_KEY if a else NO_AUDIO_KEY for a in audio]


def synthetic_videos(n: int, seed: int = 0, missing: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """(n, (E+K)*D) float32 video vectors and their pattern keys."""
    return Synth(seed, bank=min(8192, n)).chunk(n, seed + 1, missing)


class Queries:
    """TextEmbedding-like queries (experts, logits, local).

    ``topics=None``: random directions, unrelated to any video (the worst case of an approximate index:
    a random query's neighbours are spread over every inverted list). With the videos' ``topics``
    (:attr:`Synth.topics`): each query is a topic plus noise of the videos' own spread, as the text of a
    trained model sits near the videos it describes (the case the goal row measures)."""

    def __init__(self, q: int, seed: int = 1, topics: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        if topics is None:
            blocks = rng.standard_normal((q, E + K, D), dtype=np.float32)
        else:
            noise = 0.5 * rng.standard_normal((q, E + K, D), dtype=np.float32)  # ~ two 0.35 banks
            blocks = topics[rng.integers(0, len(topics), q)] + noise
        _unit_blocks(blocks)
        self.experts = torch.from_numpy(np.ascontiguousarray(blocks[:, :E]))
        self.logits = torch.from_numpy(rng.standard_normal((q, E), dtype=np.float32))
        self.local = torch.from_numpy(np.ascontiguousarray(blocks[:, E:]))

    def __len__(self) -> int:
        return len(self.logits)


def recall_at_10(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, want)]))


def _timed_search(index: PatternIndex, queries: Queries, k: int = 10) -> tuple[float, np.ndarray]:
    index.search(queries, k)  # warm-up
    t0 = time.perf_counter()
    _, rows = index.search(queries, k)
    return (time.perf_counter() - t0) / len(queries), rows


def vector_figures(sizes: list[int], spec: str, nq: int, nprobe: int = 8, rerank: int = RERANK) -> dict:
    """Exact vs ``spec`` (its candidates re-ranked exactly) at each size: ms/query in a ``nq``-query call
    and in a 1-query call, recall@10 for queries near the videos' topics (the goal) and for random ones
    (the worst case), the exact product's GFLOP/s, build time and memory."""
    out = {}
    topics = Synth(0).topics  # the topics synthetic_videos(n) draws from (seed 0)
    near, one = Queries(nq, topics=topics), Queries(1, seed=5, topics=topics)
    worst = Queries(nq)
    for n in sizes:
        vec, pats = synthetic_videos(n)
        t0 = time.perf_counter()
        exact = PatternIndex(vec, pats, 0.5)
        exact_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        approx = PatternIndex(vec, pats, 0.5, spec, nprobe=nprobe, rerank=rerank)
        approx_build = time.perf_counter() - t0
        te, want = _timed_search(exact, near)
        ta, got = _timed_search(approx, near)
        recall_worst = recall_at_10(_timed_search(approx, worst)[1], _timed_search(exact, worst)[1])
        te1, ta1 = _timed_search(exact, one)[0], _timed_search(approx, one)[0]
        recall, gflops = recall_at_10(got, want), 2 * n * vec.shape[1] / te / 1e9  # multiply-adds per query
        out[n] = {
            "exact_ms_per_query": te * 1e3,
            "approx_ms_per_query": ta * 1e3,
            "recall@10": recall,
            "recall@10_random_queries": recall_worst,
            "exact_ms_1_query": te1 * 1e3,
            "approx_ms_1_query": ta1 * 1e3,
            "exact_GFLOPs": gflops,
            "exact_build_s": exact_build,
            "approx_build_s": approx_build,
            "approx_spec": spec,
            "nprobe": nprobe,
            "rerank": rerank,
            "exact_MiB": exact.nbytes() / 2**20,
            "approx_MiB": approx.nbytes() / 2**20,
        }
        print(
            f"{n:>9,} vectors: exact {te * 1e3:.2f} ms/query ({nq}-query call, {gflops:.1f} GFLOP/s), {spec} "
            f"(nprobe {nprobe}, {rerank} candidates re-ranked) {ta * 1e3:.2f} ms/query, recall@10 {recall:.3f} "
            f"(random queries: {recall_worst:.3f}); build {exact_build:.1f} s / {approx_build:.1f} s; memory "
            f"{exact.nbytes() / 2**20:.0f} / {approx.nbytes() / 2**20:.0f} MiB",
            flush=True,
        )
        print(
            f"approximate + exact re-rank, {n:,} videos: recall@10 {recall:.3f} vs exact (queries near the "
            f"videos' topics); 1-query search call {te1 * 1e3:.2f} -> {ta1 * 1e3:.2f} ms = {te1 / ta1:.1f}x "
            f"faster (goal >= 0.95 and >= 5x)",
            flush=True,
        )
        del exact, approx, vec
    return out


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rerank_rows(half: np.ndarray, q: np.ndarray, cand: np.ndarray, k: int = 10) -> np.ndarray:
    """Each query's top ``k`` of its candidate rows (-1 = none) by the exact inner product with the
    (memory-mapped) float16 vectors ``half``: (Q, k) rows."""
    out = np.full((len(q), k), -1, np.int64)
    for i, rows in enumerate(cand):
        rows = np.sort(rows[rows >= 0])  # in file order: one pass over the mapped pages
        s = half[rows].astype(np.float32) @ q[i]
        top = rows[np.argsort(-s, kind="stable")[:k]]
        out[i, : len(top)] = top
    return out


def _add_streamed(
    index, synth: Synth, q: np.ndarray, half: np.ndarray, chunk: int
) -> tuple[np.ndarray, float]:
    """Add ``len(half)`` synthetic vectors to ``index`` ``chunk`` at a time, writing their float16 copy into
    ``half``; returns the exact top-10 rows of ``q`` over all of them and the seconds spent adding."""
    n, nq, add_s = len(half), len(q), 0.0
    best_s, best_i = np.full((nq, 10), -np.inf, np.float32), np.zeros((nq, 10), np.int64)
    for start in range(0, n, chunk):
        vec, _ = synth.chunk(min(chunk, n - start), seed=100 + start, missing=0.0)
        t1 = time.perf_counter()
        index.add(vec)
        add_s += time.perf_counter() - t1
        half[start : start + len(vec)] = vec
        s = np.concatenate([best_s, q @ vec.T], axis=1)  # exact top-10 so far (numpy BLAS)
        i = np.concatenate([best_i, np.arange(start, start + len(vec))[None].repeat(nq, 0)], axis=1)
        top = np.argsort(-s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(s, top, 1), np.take_along_axis(i, top, 1)
    half.flush()
    return best_i, add_s


def big_figures(
    n: int, spec: str, nq: int, nprobe: int = 8, chunk: int = 50_000, rerank: int = RERANK
) -> dict:
    """An approximate index (e.g. IVF-PQ) over ``n`` all-expert vectors, trained on a sample and added in
    chunks, whose ``rerank`` candidates per query are re-ranked exactly from memory-mapped float16 vectors
    written beside it; its serialised size, the process RSS it added, ms/query (candidates + re-rank) and
    recall@10 of the codes alone and re-ranked, against a streamed exact top-10 (the fp32 vectors are never
    all in memory). The queries are fresh vectors of the videos' distribution (a caption lies near its
    clips; a random direction would have no meaningful top-10)."""
    import faiss

    synth = Synth(7, bank=min(8192, n))
    q = np.ascontiguousarray(synth.chunk(nq, seed=99, missing=0.0)[0])
    index = faiss.index_factory((E + K) * D, spec, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.train(synth.chunk(min(n, 20_000), seed=3, missing=0.0)[0])
    train_s = time.perf_counter() - t0
    rss0 = _rss_bytes()
    with tempfile.TemporaryDirectory(prefix="etva-bench-half-") as tmp:
        half = np.lib.format.open_memmap(Path(tmp) / "vectors.npy", "w+", np.float16, (n, (E + K) * D))
        best_i, add_s = _add_streamed(index, synth, q, half, chunk)
        rss_delta = _rss_bytes() - rss0
        faiss.extract_index_ivf(index).nprobe = nprobe
        codes_only = index.search(q, 10)[1]
        t0 = time.perf_counter()
        got = _rerank_rows(half, q, index.search(q, max(10, rerank))[1])
        per_q = (time.perf_counter() - t0) / nq
    size = len(faiss.serialize_index(index))
    recall, raw = recall_at_10(got, best_i), recall_at_10(codes_only, best_i)
    print(
        f"{n:>9,} vectors ({spec}, nprobe {nprobe}, {rerank} candidates re-ranked from float16 on disk): "
        f"{per_q * 1e3:.2f} ms/query, recall@10 {recall:.3f} (codes alone {raw:.3f}); index "
        f"{size / 2**20:.1f} MiB serialised + {n * (E + K) * D * 2 / 2**20:,.0f} MiB float16 mapped, RSS "
        f"+{rss_delta / 2**20:.0f} MiB; train {train_s:.0f} s, add {add_s:.0f} s",
        flush=True,
    )
    return {
        "n": n,
        "spec": spec,
        "nprobe": nprobe,
        "rerank": rerank,
        "ms_per_query": per_q * 1e3,
        "recall@10": recall,
        "recall@10_codes_only": raw,
        "index_bytes": size,
        "rss_delta_bytes": rss_delta,
        "train_s": train_s,
        "add_s": add_s,
    }


def add_synthetic_rows(index: Path, extra: int, empty: Path, chunk: int = 20_000) -> None:
    """Append ``extra`` synthetic video vectors (the shipped width, 10% without audio) to the index at
    ``index`` under a second folder source, the empty folder ``empty``: `etva serve` brings only its
    ``--videos`` source up to date, so these rows stay and are searched with the real ones."""
    store = IndexStore.read(index)
    if store.manifest.dim != (E + K) * D:
        raise ValueError(
            f"{index}: vectors of {store.manifest.dim} floats, the synthetic ones have {(E + K) * D}"
        )
    source = store.source_id("folder", empty)
    synth = Synth(11, bank=min(8192, extra))
    for start in range(0, extra, chunk):
        vec, pats = synth.chunk(min(chunk, extra - start), seed=500 + start)
        n = len(vec)
        keys = [f"synthetic-{i:07d}" for i in range(start, start + n)]
        store.append(rows_table(keys, source, [""] * n, [""] * n, pats, vec, [(0, 0)] * n), source)


def _serve_and_load(cmd: list[str], env: dict, tmp: Path, port: int, levels: dict[int, int], queries) -> dict:
    """Start `etva serve` (``cmd``), count the 401s, load it at each of ``levels``; always stop it."""
    log = open(tmp / f"serve-{len(list(tmp.glob('serve-*.log')))}.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    base, token = f"http://127.0.0.1:{port}", (tmp / "token").read_text()
    try:
        t0 = time.perf_counter()
        wait_up(base, proc)
        up_s = time.perf_counter() - t0
        wrong = {"Authorization": f"Bearer {secrets.token_urlsafe(24)}"}
        auth = {"n": 20, "none": refused(base, 20, {}), "wrong": refused(base, 20, wrong)}
        auth_header = {"Authorization": f"Bearer {token}"}
        loads = [http_load(base, c, n, queries, auth_header) for c, n in levels.items()]
    finally:
        stop_group(proc)
        log.close()
    for r in loads:
        print(f"{r['clients']:>2} clients: {r['qps']:.1f} queries/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
              f"({r['requests']} requests, {r['errors']} errors {r['first_error'][:80]})", flush=True)  # fmt: skip
    return {"serve_up_s": up_s, "auth_401": auth, "http": loads}


def serving_figures(num_videos: int, requests: dict[int, int], tmp: Path, big_videos: int = 0) -> dict:
    """`etva index` clips/s (Ray Data job, 2 actors) and HTTP load on `etva serve`, on a private head, with
    an untrained checkpoint of the shipped model's width (2,432 floats per video); then, with
    ``big_videos``, the same index grown to that many videos with synthetic vectors, served again and
    loaded by 32 clients."""
    import shutil

    from cluster.local_state import free_ports
    from etva.index.build import default_index_dir, digest_of
    from tests.integration.tiny_checkpoint import tiny_checkpoint

    ckpt, records = tiny_checkpoint(tmp, f"model.d={D}", f"model.num_clusters={K}")  # 40 clips, copied below
    clips = sorted(Path(records[0].video_path).parent.glob("*.mp4"))
    videos = tmp / "videos"
    videos.mkdir()
    for i in range(num_videos):
        shutil.copy(clips[i % len(clips)], videos / f"c{i:05d}.mp4")
    index_root = tmp / "index"
    index = default_index_dir(videos, digest_of(ckpt), index_root)  # where `etva serve` looks: reused there
    (tmp / "token").write_text(secrets.token_urlsafe(24))
    (tmp / "token").chmod(0o600)
    queries = [c for r in records for c in r.captions][:200]
    with private_head() as cluster:
        env = {**cluster.subprocess_env(), "PYTHONPATH": str(REPO)}
        etva = [sys.executable, "-m", "etva"]
        t0 = time.perf_counter()
        built = subprocess.run([*etva, "index", "--model", str(ckpt), "--videos", str(videos), "--index", str(index),
                                "--actors", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)  # fmt: skip
        build_s = time.perf_counter() - t0
        if built.returncode:
            raise RuntimeError(f"etva index failed: {built.stderr[-2000:]}")
        print(f"etva index (Ray Data, 2 actors): {num_videos} clips in {build_s:.1f} s = "
              f"{num_videos / build_s:.2f} clips/s (whole command: connect, model load, encode, commit)", flush=True)  # fmt: skip
        cmd = [*etva, "serve", "--model", str(ckpt), "--videos", str(videos), "--index-root", str(index_root)]
        cmd += ["--poll-s", "3600", "--token-file", str(tmp / "token"), "--port"]
        port = free_ports(1)[0]
        out = _serve_and_load([*cmd, str(port)], env, tmp, port, requests, queries)
        for row in goal_rows(out["http"], out["auth_401"]):
            print(row, flush=True)
        if big_videos > num_videos:
            (tmp / "synthetic").mkdir()
            add_synthetic_rows(index, big_videos - num_videos, tmp / "synthetic")
            big = [*cmd, str(port), "--replace"]  # Serve keeps its port; --replace: the app if it was left
            out["big"] = _serve_and_load(big, env, tmp, port, {32: requests.get(32, 240)}, queries)
            print(big_row(big_videos, (E + K) * D, out["big"]["http"][0], out["http"]), flush=True)
    return {"videos": num_videos, "index_s": build_s, "index_clips_per_s": num_videos / build_s, **out}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="10k/50k, 200k IVF-PQ, 40 clips, fewer requests")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--spec", default="IVF64,Flat", help="approximate index at --sizes")
    p.add_argument("--nprobe", type=int, default=8, help="inverted lists visited per query")
    p.add_argument("--rerank", type=int, default=RERANK, help="candidates per query re-ranked exactly")
    p.add_argument("--big", type=int, default=1_000_000, help="vectors for the IVF-PQ index")
    p.add_argument("--big-spec", default="IVF64,PQ64x4fs", help="approximate index at --big (4-bit PQ codes)")
    p.add_argument("--queries", type=int, default=32)
    p.add_argument("--videos", type=int, default=400, help="clips for the index build and the HTTP figures")
    p.add_argument(
        "--big-videos",
        type=int,
        default=100_000,
        help="then the index grown to this many videos "
        "(synthetic vectors) and loaded by 32 clients; 0 skips it",
    )
    p.add_argument("--requests", default="1:40,8:120,32:240", help="clients:requests per level")
    p.add_argument("--no-serving", action="store_true", help="vector search figures only")
    p.add_argument("--no-vectors", action="store_true", help="index build and HTTP figures only")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.big, args.requests, args.videos = "10000,50000", 200_000, "1:20,8:60,32:120", 40
        args.big_videos = 10_000
    import faiss

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    figures: dict = {}
    if not args.no_vectors:
        sizes = [int(s) for s in args.sizes.split(",")]
        figures["vectors"] = vector_figures(sizes, args.spec, args.queries, args.nprobe, args.rerank)
        if args.big:
            figures["big"] = big_figures(
                args.big, args.big_spec, args.queries, args.nprobe, rerank=args.rerank
            )
    if not args.no_serving:
        levels = {int(c): int(n) for c, n in (x.split(":") for x in args.requests.split(","))}
        with tempfile.TemporaryDirectory(prefix="etva-bench-serve-") as tmp:
            figures["serving"] = serving_figures(args.videos, levels, Path(tmp), args.big_videos)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1, default=str))
    return figures


if __name__ == "__main__":
    main()
