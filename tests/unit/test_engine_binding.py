"""engine.evaluate with a group table: the binding metric joins the retrieval metrics, computed on the
scored videos only (a skipped clip leaves its group smaller), and the per-caption group counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etva.eval.binding import GroupTable, group_counts, metrics_from_group_counts
from etva.train.engine import evaluate, move_batch
from tests.unit.test_engine import CAPTION_KEYS, VIDEO_KEYS, _setup, batches, make_split


def test_evaluate_adds_the_binding_metric_of_the_scored_videos():
    split = make_split(12, seed=4)
    model, *_ = _setup(seed=6)
    model.eval()
    with torch.no_grad():
        t, v = model(move_batch(split, "cpu"))
        sim = model.similarity(t, v)["fused"].numpy()  # (12, 12): caption i describes video i
    kinds = ["", "colour", "order", "sound_moment"] * 3
    table = GroupTable(np.repeat(np.arange(3), 4), np.array(kinds))
    kept = np.array([i for i in range(12) if i != 5])  # video 5 was skipped: its caption goes, group 1 has 3
    videos = [{k: split[k][kept] for k in VIDEO_KEYS}]
    per_query: dict = {}
    captions = batches(split, 5, keys=CAPTION_KEYS)
    got = evaluate(model, videos, captions, "cpu", query_chunk=4, per_query=per_query, groups=table)
    sub = sim[np.ix_(kept, kept)]
    want = binding_metrics(sub, np.arange(11), table.take(kept))
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-6)
    assert want["group_R1_chance"] == pytest.approx(100 * (8 * 0.25 + 3 / 3) / 11)
    counts = group_counts(sub, np.arange(11), table.take(kept))
    np.testing.assert_array_equal(per_query["group_h"], counts.h)
    np.testing.assert_array_equal(per_query["group_size"], [4] * 4 + [3] * 3 + [4] * 4)
    plain = evaluate(model, videos, batches(split, 5, keys=CAPTION_KEYS), "cpu")
    assert "group_R1" not in plain and plain["t2v_R1"] == got["t2v_R1"]


def binding_metrics(sim, query_to_video, groups, ties="average", query_chunk=None) -> dict:
    """What evaluation computes (etva.eval.scoring): the within-group counts, then the metrics."""
    return metrics_from_group_counts(group_counts(sim, query_to_video, groups, query_chunk), ties)
