"""Retrieval metrics: hand-made cases, a Monte Carlo tie-break reference, the three tie policies."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from etva.eval.metrics import (
    METRIC_NAMES,
    SELECTION_METRIC,
    TIE_BREAK_METRIC,
    count_ranks,
    format_table,
    rank_outcomes,
    retrieval_metrics,
    selection_key,
)

KEYS = [f"{d}_{m}" for d in ("t2v", "v2t") for m in ("R1", "R5", "R10", "MdR", "MnR")]


def test_perfect_diagonal() -> None:
    sim = np.eye(6, dtype=np.float32)
    out = retrieval_metrics(sim)
    assert sorted(out) == sorted(KEYS)
    for d in ("t2v", "v2t"):
        assert out[f"{d}_R1"] == 100.0 and out[f"{d}_MdR"] == 1.0 and out[f"{d}_MnR"] == 1.0


def test_hand_made_ranks_no_ties() -> None:
    # query 0: gt (col 0) ranked 0; query 1: gt (col 1) below cols 0 and 2 -> rank 2;
    # query 2: gt (col 2) below col 0 -> rank 1
    sim = np.array([[0.9, 0.1, 0.2], [0.8, 0.3, 0.7], [0.6, 0.0, 0.5]], dtype=np.float32)
    out = retrieval_metrics(sim, ks=(1, 2))
    assert out["t2v_R1"] == pytest.approx(100 / 3)
    assert out["t2v_R2"] == pytest.approx(200 / 3)
    assert out["t2v_MdR"] == 2.0 and out["t2v_MnR"] == pytest.approx(2.0)
    # v2t: col 0: gt row 0 (0.9) best -> 0; col 1: gt row 1 (0.3) above 0.1, 0.0 -> 0;
    # col 2: gt row 2 (0.5) below 0.7 -> 1
    assert out["v2t_R1"] == pytest.approx(200 / 3)
    assert out["v2t_MnR"] == pytest.approx(4 / 3)


@pytest.mark.parametrize("n", [1, 4, 7, 12])
def test_constant_matrix_is_chance(n: int) -> None:
    out = retrieval_metrics(np.zeros((n, n), dtype=np.float32))
    for d in ("t2v", "v2t"):
        for k in (1, 5, 10):
            assert out[f"{d}_R{k}"] == pytest.approx(100.0 * min(k, n) / n, abs=1e-9)
        assert out[f"{d}_MnR"] == pytest.approx((n - 1) / 2 + 1)
        assert out[f"{d}_MdR"] == pytest.approx((n - 1) / 2 + 1)


def test_constant_matrix_multi_caption_v2t_chance() -> None:
    # 4 videos x 3 captions: best of 3 ground truths among 12 candidates
    qv = np.repeat(np.arange(4), 3)
    out = retrieval_metrics(np.ones((12, 4)), qv)
    assert out["v2t_R1"] == pytest.approx(100 * 3 / 12)
    assert out["v2t_MnR"] == pytest.approx(9 / 4 + 1)  # e / (m + 1) = 9 / 4
    # P(rank < 5) = 1 - C(9, 5) / C(12, 5)
    assert out["v2t_R5"] == pytest.approx(100 * (1 - math.comb(9, 5) / math.comb(12, 5)))
    assert out["t2v_R1"] == pytest.approx(25.0)


def test_tie_policies_hand_made() -> None:
    # one query, gt col 0 tied with 2 others, one candidate above: h=1, e=2, m=1
    sim = np.array([[0.5, 0.5, 0.9, 0.5, 0.1]], dtype=np.float32)
    qv = np.array([0])
    avg = retrieval_metrics(sim, qv, ks=(1, 2, 3, 4))
    assert avg["t2v_R1"] == 0.0
    assert avg["t2v_R2"] == pytest.approx(100 / 3)
    assert avg["t2v_R3"] == pytest.approx(200 / 3)
    assert avg["t2v_R4"] == 100.0
    assert avg["t2v_MnR"] == pytest.approx(1 + 2 / 2 + 1)
    opt = retrieval_metrics(sim, qv, ks=(1, 2, 3), ties="optimistic")
    assert (opt["t2v_R1"], opt["t2v_R2"], opt["t2v_MnR"]) == (0.0, 100.0, 2.0)
    pes = retrieval_metrics(sim, qv, ks=(3, 4), ties="pessimistic")
    assert (pes["t2v_R3"], pes["t2v_R4"], pes["t2v_MnR"]) == (0.0, 100.0, 4.0)


def test_mdr_is_median_of_expected_ranks() -> None:
    # ranks: q0 exactly 0; q1, q2 each tied with one negative (rank 0 or 1, E = 0.5).
    # median of E[rank] = 0.5 -> MdR 1.5; the expected median of sampled ranks would be 0.25.
    sim = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.7, 0.7]], dtype=np.float32)
    out = retrieval_metrics(sim)
    assert out["t2v_MdR"] == pytest.approx(1.5)
    assert out["t2v_MnR"] == pytest.approx(1 + 1 / 3)


def _mc_reference(sim: np.ndarray, qv: np.ndarray, ks, trials: int, seed: int):
    """Average ranks / hits over random tie-break orders, by sorting every candidate list."""
    rng = np.random.default_rng(seed)
    num_q, num_v = sim.shape
    t_rank = np.zeros(num_q)
    v_rank = np.zeros(num_v)
    t_hit = {k: 0.0 for k in ks}
    v_hit = {k: 0.0 for k in ks}
    for _ in range(trials):
        key = rng.random(sim.shape)
        tr = np.empty(num_q)
        for i in range(num_q):
            order = np.lexsort((key[i], -sim[i]))  # descending score, random among ties
            tr[i] = np.flatnonzero(order == qv[i])[0]
        vr = np.empty(num_v)
        for j in range(num_v):
            order = np.lexsort((key[:, j], -sim[:, j]))
            vr[j] = np.flatnonzero(qv[order] == j)[0]  # best-placed caption of video j
        t_rank += tr
        v_rank += vr
        for k in ks:
            t_hit[k] += 100 * np.mean(tr < k)
            v_hit[k] += 100 * np.mean(vr < k)
    ref = {f"t2v_R{k}": t_hit[k] / trials for k in ks}
    ref.update({f"v2t_R{k}": v_hit[k] / trials for k in ks})
    ref["t2v_MnR"] = t_rank.mean() / trials + 1
    ref["v2t_MnR"] = v_rank.mean() / trials + 1
    ref["t2v_MdR"] = np.median(t_rank / trials) + 1
    ref["v2t_MdR"] = np.median(v_rank / trials) + 1
    return ref


@pytest.mark.parametrize("seed", [0, 1])
def test_average_ties_match_monte_carlo(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_v, caps = 5, 3
    qv = rng.permutation(np.repeat(np.arange(num_v), caps))
    sim = rng.integers(0, 3, size=(num_v * caps, num_v)).astype(np.float32)  # heavy ties
    ks = (1, 2, 5)
    exact = retrieval_metrics(sim, qv, ks=ks)
    ref = _mc_reference(sim, qv, ks, trials=1500, seed=seed)
    for key, val in ref.items():
        tol = 3.0 if "_R" in key else 0.08  # percent for R@K, rank units otherwise
        assert exact[key] == pytest.approx(val, abs=tol), key


def test_optimistic_pessimistic_bound_average() -> None:
    rng = np.random.default_rng(3)
    qv = np.repeat(np.arange(6), 2)
    sim = rng.integers(0, 2, size=(12, 6)).astype(np.float64)
    opt = retrieval_metrics(sim, qv, ties="optimistic")
    avg = retrieval_metrics(sim, qv, ties="average")
    pes = retrieval_metrics(sim, qv, ties="pessimistic")
    for d in ("t2v", "v2t"):
        assert opt[f"{d}_R1"] >= avg[f"{d}_R1"] >= pes[f"{d}_R1"]
        assert opt[f"{d}_MnR"] < avg[f"{d}_MnR"] < pes[f"{d}_MnR"]
    # without ties all policies agree
    sim = rng.standard_normal((12, 6))
    assert retrieval_metrics(sim, qv, ties="optimistic") == retrieval_metrics(sim, qv)
    assert retrieval_metrics(sim, qv, ties="pessimistic") == retrieval_metrics(sim, qv)


def test_rank_outcomes_formula() -> None:
    h, e, m = np.array([0, 2, 1, 0]), np.array([3, 1, 4, 0]), np.array([2, 1, 1, 1])
    rank, p = rank_outcomes(h, e, m, ks=(1, 3))
    np.testing.assert_allclose(rank, [1.0, 2.5, 3.0, 0.0])
    np.testing.assert_allclose(p[1], [1 - 3 / 5, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(p[3], [1 - 1 / 10, 0.5, 1 - 6 / 10, 1.0])


def test_torch_input_and_bf16() -> None:
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(8, 8)).astype(np.float32)
    ref = retrieval_metrics(sim)
    assert retrieval_metrics(torch.from_numpy(sim)) == ref
    assert retrieval_metrics(torch.from_numpy(sim).bfloat16()) == ref  # small ints are exact
    assert retrieval_metrics(sim, torch.arange(8)) == ref


def test_missing_video_excluded_or_error(caplog: pytest.LogCaptureFixture) -> None:
    sim = np.array([[0.9, 0.1, 0.8], [0.2, 0.7, 0.9]], dtype=np.float32)
    qv = np.array([0, 1])  # video 2 has no caption
    with caplog.at_level(logging.WARNING, logger="etva.eval.metrics"):
        out = retrieval_metrics(sim, qv)
    assert "1 of 3 videos have no caption" in caplog.text and "[2]" in caplog.text
    assert out["v2t_R1"] == 100.0  # videos 0 and 1 rank their caption first
    assert out["t2v_R1"] == 50.0  # video 2 still a t2v candidate (beats query 1's gt)
    with pytest.raises(ValueError, match="1 of 3 videos have no caption"):
        retrieval_metrics(sim, qv, missing="error")


@pytest.mark.parametrize(
    ("sim", "qv", "kwargs", "match"),
    [
        (np.zeros((3, 4)), None, {}, "not square"),
        (np.zeros((3, 4)), np.array([0, 1]), {}, r"expected shape \(3,\)"),
        (np.zeros((3, 4)), np.array([0, 1, 4]), {}, "outside"),
        (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), {}, "integer"),
        (np.zeros(3), None, {}, "2-D"),
        (np.zeros((0, 0)), None, {}, "empty"),
        (np.zeros((2, 2)), None, {"ties": "random"}, "ties"),
        (np.zeros((2, 2)), None, {"ks": (0,)}, "ks"),
        (np.array([[0.0, np.nan], [1.0, 0.0]]), None, {}, "NaN.*query 0, video 1"),
    ],
)
def test_bad_input_errors(sim, qv, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(sim, qv, **kwargs)


# --------------------------------------------------------------------------------------------------
# the one rank counter, the metric names, the selection rule and the table


def _naive_counts(sim: np.ndarray, qv: np.ndarray):
    """h, e (t2v per caption) and h, e, m (v2t per video) by explicit loops over the candidates."""
    num_q, num_v = sim.shape
    t2v = [
        (
            sum(sim[i, j] > sim[i, qv[i]] for j in range(num_v)),
            sum(sim[i, j] == sim[i, qv[i]] for j in range(num_v) if j != qv[i]),
        )
        for i in range(num_q)
    ]
    v2t = []
    for j in range(num_v):
        gts = [i for i in range(num_q) if qv[i] == j]
        if not gts:
            v2t.append((None, None, 0))
            continue
        best = max(sim[i, j] for i in gts)
        m = sum(sim[i, j] == best for i in gts)
        h = sum(sim[i, j] > best for i in range(num_q))
        e = sum(sim[i, j] == best for i in range(num_q) if i not in gts)
        v2t.append((h, e, m))
    return t2v, v2t


@pytest.mark.parametrize("chunk", [None, 1, 3, 100])
def test_count_ranks_matches_naive_loops(chunk) -> None:
    rng = np.random.default_rng(3)
    qv = np.array([0, 0, 1, 2, 2, 2, 4, 1, 0, 4], dtype=np.int64)  # video 3 has no caption
    sim = (rng.integers(0, 3, size=(10, 5)) / 3).astype(np.float32)  # many ties
    c = count_ranks(sim, qv, chunk)
    t2v, v2t = _naive_counts(sim, qv)
    assert c.t2v_h.tolist() == [h for h, _ in t2v] and c.t2v_e.tolist() == [e for _, e in t2v]
    assert c.v2t_m.tolist() == [m for _, _, m in v2t]
    has = c.v2t_m > 0
    assert c.v2t_h[has].tolist() == [h for h, _, m in v2t if m]
    assert c.v2t_e[has].tolist() == [e for _, e, m in v2t if m]
    torch_c = count_ranks(torch.from_numpy(sim), qv, chunk)
    for name in ("t2v_h", "t2v_e", "v2t_h", "v2t_e", "v2t_m"):
        np.testing.assert_array_equal(getattr(torch_c, name), getattr(c, name))


def test_metric_names_are_the_retrieval_metrics_keys_in_table_order() -> None:
    out = retrieval_metrics(np.eye(4))
    assert list(METRIC_NAMES) == KEYS and set(out) == set(METRIC_NAMES)
    assert (SELECTION_METRIC, TIE_BREAK_METRIC) == ("t2v_R1", "t2v_MdR")


def test_retrieval_metrics_query_chunk_gives_identical_numbers() -> None:
    rng = np.random.default_rng(4)
    sim = (rng.integers(0, 4, size=(13, 6)) / 4).astype(np.float32)
    qv = rng.integers(0, 6, size=13)
    full = retrieval_metrics(sim, qv, query_chunk=None)
    for chunk in (1, 5, 13):
        assert retrieval_metrics(sim, qv, query_chunk=chunk) == full
    with pytest.raises(ValueError, match="query_chunk"):
        retrieval_metrics(sim, qv, query_chunk=0)


def is_better(a, b, prefix: str = "val/") -> bool:
    """Strictly better by selection_key (anything beats None): how runs are compared for selection."""
    return b is None or selection_key(a, prefix) > selection_key(b, prefix)


def test_selection_key_max_r1_then_lower_mdr() -> None:
    a = {"val/t2v_R1": 30.0, "val/t2v_MdR": 4.0}
    b = {"val/t2v_R1": 30.0, "val/t2v_MdR": 3.0}  # same R@1, lower MdR: better
    c = {"val/t2v_R1": 31.0, "val/t2v_MdR": 9.0}  # higher R@1 wins whatever the MdR
    assert selection_key(a) == (30.0, -4.0)
    assert max([a, b, c], key=selection_key) is c
    assert max([a, b], key=selection_key) is b
    assert is_better(b, a) and not is_better(a, b) and not is_better(a, dict(a))
    assert is_better(a, None)


def test_selection_key_missing_values_rank_last_and_prefix() -> None:
    present = {"best/t2v_R1": 0.0, "best/t2v_MdR": 50.0}
    assert is_better(present, {}, prefix="best/")
    assert is_better(present, {"best/t2v_R1": math.nan}, prefix="best/")
    no_mdr = {"best/t2v_R1": 0.0}
    assert is_better(present, no_mdr, prefix="best/") and not is_better(no_mdr, present, prefix="best/")
    assert selection_key({"t2v_R1": 5.0, "t2v_MdR": 2.0}, prefix="") == (5.0, -2.0)
    assert selection_key(present) == (-math.inf, -math.inf)  # wrong prefix: nothing there


def test_format_table() -> None:
    m = {f"val/{k}": float(i) + 0.25 for i, k in enumerate(METRIC_NAMES)}
    assert format_table(m) == (
        "direction         R@1      R@5     R@10      MdR      MnR\n"
        "text->video       0.2      1.2      2.2      3.2      4.2\n"
        "video->text       5.2      6.2      7.2      8.2      9.2"
    )
    lines = format_table({"t2v_R1": 12.34}, prefix="").splitlines()
    assert lines[1].split() == ["text->video", "12.3", "nan", "nan", "nan", "nan"]
    assert lines[2].split() == ["video->text"] + ["nan"] * 5
