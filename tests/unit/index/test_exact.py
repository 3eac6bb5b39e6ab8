"""etva.index: ranking through the per-pattern inner product (faiss, exact) equals the model's own scoring.

A tiny untrained model on random clips, some without audio (a missing expert) and one with no expert at
all in the global-only case: the index's top-k and scores must be the engine's ``model.similarity``
fused scores, in every alignment and NetVLAD mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etva.index.exact import pattern_from_key, pattern_key, query_vectors, video_vectors
from etva.index.vectors import PatternIndex
from etva.model import build_model
from tests.unit.model.conftest import VOCAB, random_batch, tiny_model_config

torch.set_num_threads(1)
NUM_V, NUM_Q = 12, 5


def _encoded(alignment: str, vlad_mode: str = "shared", alpha: float = 0.3):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(alignment=alignment, alpha=alpha, vlad_mode=vlad_mode), VOCAB).eval()
    batch = random_batch(b=NUM_V, seed=1)
    batch["audio_mask"][[2, 5, 6]] = False  # three clips without audio: a second availability pattern
    queries = random_batch(b=NUM_Q, seed=2)
    with torch.no_grad():
        video = model.encode_video(batch)
        text = model.encode_text(queries["input_ids"], queries["attention_mask"])
        ref = model.similarity(text, video)["fused"]  # (Q, V): the engine's own score
    return model, text, video, ref


def _index(model, video, spec="Flat") -> PatternIndex:
    vec, pat = video_vectors(video.experts, video.available, video.local)
    return PatternIndex(vec.numpy(), [pattern_key(p) for p in pat], model.alpha, spec)


@pytest.mark.parametrize(
    "alignment, vlad_mode", [("both", "shared"), ("both", "separate"), ("both", "text"), ("global", "shared"),
                             ("local", "shared")]
)  # fmt: skip
def test_index_ranking_equals_engine_scoring(alignment, vlad_mode):
    model, text, video, ref = _encoded(alignment, vlad_mode)
    index = _index(model, video)
    if alignment != "local":
        assert len(index.parts) == 2  # all experts / no audio
    for k in (1, 5, NUM_V):
        scores, rows = index.search(text, k)
        want_scores, want_rows = ref.topk(k, dim=1)
        np.testing.assert_allclose(scores, want_scores.numpy(), atol=1e-5, rtol=1e-5)
        # same videos (ties aside): the engine's score of every returned row is the returned score
        np.testing.assert_allclose(np.take_along_axis(ref.numpy(), rows, 1), scores, atol=1e-5, rtol=1e-5)
        if k == 1:
            assert rows[:, 0].tolist() == want_rows[:, 0].tolist()


def test_filter_keeps_allowed_rows_only_and_is_exact_within_them():
    model, text, video, ref = _encoded("both")
    index = _index(model, video)
    allowed = np.array([1, 2, 7, 9], dtype=np.int64)  # 2 has no audio: both parts are searched
    scores, rows = index.search(text, 3, allowed)
    assert set(rows.ravel().tolist()) <= set(allowed.tolist())
    sub = ref[:, allowed].topk(3, dim=1)
    np.testing.assert_allclose(scores, sub.values.numpy(), atol=1e-5, rtol=1e-5)
    empty_scores, empty_rows = index.search(text, 3, np.array([], dtype=np.int64))
    assert empty_scores.shape == (NUM_Q, 0) and empty_rows.shape == (NUM_Q, 0)


def test_video_with_no_expert_scores_zero_globally():
    model, text, video, ref = _encoded("global")
    video.available[4] = False  # no expert at all: its global score is 0 (the model's rule)
    ref = model.similarity(text, video)["fused"]
    index = _index(model, video)
    scores, rows = index.search(text, NUM_V)
    got = np.take_along_axis(scores, np.argsort(rows, 1), 1)
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5, rtol=1e-5)
    assert np.allclose(got[:, 4], 0.0)


def test_query_vectors_weights_sum_over_the_pattern():
    model, text, video, _ = _encoded("global")
    pattern = torch.tensor([True, False, True])
    q = query_vectors(text.experts, text.logits, None, pattern, model.alpha).reshape(NUM_Q, 3, -1)
    weights = (q * text.experts).sum(-1)  # (Q, E): w_e * <t_e, t_e> = w_e (unit vectors)
    torch.testing.assert_close(weights.sum(1), torch.ones(NUM_Q), atol=1e-5, rtol=1e-5)
    assert torch.all(weights[:, 1] == 0)
    assert pattern_key(pattern) == "101" and pattern_from_key("101").tolist() == pattern.tolist()
    with pytest.raises(ValueError, match="string of 0 and 1"):
        pattern_from_key("1x1")


def test_approximate_index_finds_most_of_the_exact_top10():
    """IVF over clustered vectors: recall@10 against the exact index is high (the figure is in RESULTS)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((32, 64)).astype(np.float32)
    vec = centres[rng.integers(0, 32, 4000)] + 0.3 * rng.standard_normal((4000, 64)).astype(np.float32)
    exact = PatternIndex(vec, [""] * len(vec), 1.0)
    approx = PatternIndex(vec, [""] * len(vec), 1.0, "IVF32,Flat", nprobe=8)
    text = type("T", (), {"experts": None, "logits": None, "local": torch.from_numpy(vec[:50, None] * 1.0),
                          "__len__": lambda self: 50})()  # fmt: skip
    _, want = exact.search(text, 10)
    _, got = approx.search(text, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)])
    assert recall >= 0.9


def _clustered(n: int = 4000, dim: int = 64) -> tuple[np.ndarray, object]:
    """Clustered vectors and 50 of them as local-only queries (a TextEmbedding-like object)."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((32, dim)).astype(np.float32)
    vec = centres[rng.integers(0, 32, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    fields = {"experts": None, "logits": None, "local": torch.from_numpy(vec[:50, None] * 1.0)}
    return vec, type("T", (), {**fields, "__len__": lambda self: 50})()


def test_approximate_candidates_are_reranked_with_the_exact_score():
    """A lossy index (4-bit PQ) only proposes candidates; their order and scores come from the stored vectors
    (float16): the returned scores are the rows' true inner products, and with enough candidates (a
    cluster here holds ~125 near-equidistant vectors) recall@10 is that of an index with exact scores in
    the same probed lists (IVF-Flat), far above the codes' own ranking."""
    vec, text = _clustered()
    _, want = PatternIndex(vec, [""] * len(vec), 1.0).search(text, 10)
    raw = PatternIndex(vec, [""] * len(vec), 1.0, "IVF32,PQ16x4fs", nprobe=8, rerank=0)
    reranked = PatternIndex(vec, [""] * len(vec), 1.0, "IVF32,PQ16x4fs", nprobe=8, rerank=400)
    flat = PatternIndex(vec, [""] * len(vec), 1.0, "IVF32,Flat", nprobe=8)
    scores, got = reranked.search(text, 10)
    exact_scores = np.take_along_axis(vec[:50] @ vec.T, got, 1)  # the true inner products of those rows
    np.testing.assert_allclose(scores, exact_scores, rtol=2e-3, atol=2e-2)  # float16 vectors
    assert (np.diff(scores, axis=1) <= 0).all()

    def recall(index):
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(index.search(text, 10)[1], want)])

    assert recall(reranked) >= recall(flat) - 0.02 and recall(reranked) > recall(raw) + 0.1
    assert reranked.nbytes() >= raw.nbytes() + vec.size * 2  # the float16 copy is counted
