"""benchmarks.bench_serve at toy sizes: the synthetic vectors, exact vs approximate search with recall@10,
the chunked big index with its streamed exact top-10, the HTTP load loop and the 401 count (against a local
stub server that wants a token), and the goal rows it prints.
The Ray head, `etva index` and `etva serve` part runs only in the benchmark itself (tests/integration/
test_serve.py covers those commands)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from benchmarks import bench_serve as bs
from benchmarks.serve_http import goal_rows, http_load, refused

GOOD = {"Authorization": "Bearer good"}


def test_synthetic_vectors_are_unit_blocks_with_a_missing_audio_pattern():
    vec, pats = bs.synthetic_videos(400)
    blocks = vec.reshape(400, bs.E + bs.K, bs.D)
    full = np.array([p == bs.FULL_KEY for p in pats])
    assert vec.dtype == np.float32 and 0 < (~full).sum() < 100
    np.testing.assert_allclose(np.linalg.norm(blocks[full], axis=-1), 1.0, rtol=1e-5)
    assert not blocks[~full, 2].any()  # no audio: zero audio block
    np.testing.assert_allclose(
        np.linalg.norm(blocks[~full][:, [0, 1, *range(3, bs.E + bs.K)]], axis=-1), 1.0, rtol=1e-5
    )


def test_queries_near_the_topics_are_unit_blocks_that_score_their_topic_highest():
    synth = bs.Synth(0, topics=8, bank=64)
    q = bs.Queries(16, seed=3, topics=synth.topics)
    assert q.experts.shape == (16, bs.E, bs.D) and q.local.shape == (16, bs.K, bs.D)
    np.testing.assert_allclose(np.linalg.norm(q.local.numpy(), axis=-1), 1.0, rtol=1e-5)
    blocks = np.concatenate([q.experts.numpy(), q.local.numpy()], axis=1)  # (16, E+K, D)
    scores = np.einsum("qbd,tbd->qt", blocks, synth.topics)  # each query against each topic
    rng = np.random.default_rng(3)
    rng.standard_normal((16, bs.E + bs.K, bs.D), dtype=np.float32)  # the noise, drawn first
    assert (scores.argmax(1) == rng.integers(0, 8, 16)).all()  # the topic it was drawn from


def test_vector_figures_recall_is_one_when_every_list_is_probed():
    got = bs.vector_figures([1500], "IVF8,Flat", nq=4, nprobe=8)[1500]  # every list probed: exact
    assert got["recall@10"] == 1.0 and got["recall@10_random_queries"] == 1.0
    assert got["exact_ms_per_query"] > 0 and got["approx_MiB"] > 0
    assert got["exact_ms_1_query"] > 0 and got["approx_ms_1_query"] > 0 and got["exact_GFLOPs"] > 0


def test_big_index_streamed_exact_top10_matches_a_flat_ivf_probing_everything():
    got = bs.big_figures(1200, "IVF4,Flat", nq=4, nprobe=4, chunk=500)  # three chunks, the last short
    assert got["recall@10"] == 1.0 and got["index_bytes"] > 1200 * (bs.E + bs.K) * bs.D * 4
    pq = bs.big_figures(1200, "IVF4,PQ16x4fs", nq=4, nprobe=4, chunk=500)
    assert 0.0 <= pq["recall@10"] <= 1.0 and pq["index_bytes"] < got["index_bytes"] / 20
    assert pq["recall@10"] >= pq["recall@10_codes_only"]  # re-ranked from the float16 copy on disk


@pytest.fixture
def stub_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.path.startswith("/search?")
            body = json.dumps({"results": []}).encode()
            authorized = self.headers.get("Authorization") == GOOD["Authorization"]
            self.send_response(404 if not ok else 200 if authorized else 401)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_load_makes_exactly_the_requests_asked(stub_server):
    for clients, n in ((1, 5), (4, 21)):
        got = http_load(stub_server, clients, n, ["a red circle", "a blue square"], GOOD)
        assert (got["requests"], got["errors"]) == (n, 0) and got["qps"] > 0
        assert 0 < got["p50_ms"] <= got["p99_ms"]
    bad = http_load(stub_server + "/nowhere", 2, 3, ["x"], GOOD)
    assert (bad["requests"], bad["errors"]) == (0, 3) and "404" in bad["first_error"]
    assert (refused(stub_server, 4, {}), refused(stub_server, 4, GOOD)) == (4, 0)


def test_goal_rows_compare_32_clients_with_the_best_level():
    loads = [
        {"clients": 1, "qps": 40.0, "p99_ms": 30.0},
        {"clients": 8, "qps": 50.0, "p99_ms": 200.0},
        {"clients": 32, "qps": 45.0, "p99_ms": 900.0},
    ]
    rows = goal_rows(loads, {"n": 20, "none": 20, "wrong": 19})
    assert (
        rows[0] == "requests without / with a wrong token, token set: 401 20/20 / 401 19/20 (goal: all 401)"
    )
    assert "45.0 / 50.0 = 0.90x (goal >= 0.9x)" in rows[1] and "best of 1/8/32" in rows[1]
    assert rows[2] == "p99 at 32 clients: 900 ms (goal <= 32 / 50.0 x 1.5 = 960 ms)"


def test_synthetic_rows_join_the_index_and_outlive_an_update_of_the_real_folder(tmp_path):
    """bench_serve grows a served index with synthetic vectors under a second (empty) folder source; the
    update `etva serve` runs for its --videos folder plans that folder's rows only, so they stay."""
    from etva.index.build import plan
    from etva.index.store import IndexStore, ModelId, rows_table

    dim = (bs.E + bs.K) * bs.D
    store = IndexStore.open(
        tmp_path / "index", ModelId("0" * 64), 0.5, ["appearance", "motion", "audio"], dim
    )
    videos = store.source_id("folder", tmp_path)
    store.append(
        rows_table(["real.mp4"], videos, ["real.mp4"], [""], ["111"], np.ones((1, dim)), [(1, 2)]), videos
    )
    (tmp_path / "synthetic").mkdir()
    bs.add_synthetic_rows(tmp_path / "index", 45, tmp_path / "synthetic", chunk=20)  # three parts
    store = IndexStore.read(tmp_path / "index")
    t = store.table(["key", "source", "pattern"]).to_pydict()
    assert len(t["key"]) == 46 and t["source"].count(1) == 45 and set(t["pattern"]) == {"111", "110"}
    assert plan(store, videos, [])[1] == {"real.mp4"}  # the folder emptied: only its own row is stale
    with pytest.raises(ValueError, match="floats"):
        other = IndexStore.open(tmp_path / "small", ModelId("1" * 64), 0.5, ["a"], 8)
        bs.add_synthetic_rows(other.root, 5, tmp_path / "synthetic")
