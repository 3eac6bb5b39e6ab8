"""benchmarks.bench_scaling: generated annotations load through the real loader; fits and limits are right."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import bench_scaling as bs
from etva.data import load_records


def test_generated_annotations_load_as_msrvtt_full(tmp_path):
    bs.make_annotations(tmp_path, 30)
    records, summary = load_records("msrvtt", tmp_path, "train", subset="full", return_summary=True)
    assert len(records) == 30 and all(len(r.captions) == bs.CAPTIONS for r in records)
    assert summary.missing_video_files == 30  # no video files: counted, not fatal
    words = [len(c.split()) for r in records for c in r.captions]
    assert min(words) >= 6 and max(words) <= 14


def test_prep_and_eval_stages_run_at_small_sizes():
    prep = bs.bench_prep(40, vocab=200)
    assert prep["total_s"] == pytest.approx(prep["load_s"] + prep["tokenizer_s"] + prep["tokenize_s"])
    ev = bs.bench_eval(30, full_metrics=True)  # asserts chunked == full-matrix metrics inside
    assert ev["q"] == 30 * bs.CAPTIONS and ev["score_s"] > 0 and np.isfinite(ev["full_s"])


def test_fits_recover_known_growth_and_limits():
    x = [1.0, 2.0, 4.0, 8.0]
    f = bs.fit(x, [3 * v * v + 2 for v in x])
    np.testing.assert_allclose(f["quadratic"], [3, 0, 2], atol=1e-9)
    assert bs.solve(f["quadratic"], 302.0) == pytest.approx(10.0)
    two = bs.fit([1.0, 2.0], [5.0, 14.0])  # two points: a*n^2 + c
    np.testing.assert_allclose(two["quadratic"], [3, 0, 2], atol=1e-9)
    assert bs.solve(np.array([-1.0, 5.0]), 10.0) == float("inf")  # falling line never reaches it


def test_sweep_model_waves_and_shared_cores():
    m = bs.sweep_model(0.1, 100, 2, trials=[4], conc=[1, 2, 4], cores=2)
    assert m[(4, 1)] == pytest.approx(80.0)  # 4 waves of 20 s
    assert m[(4, 2)] == pytest.approx(40.0)  # 2 waves, one trial per core
    assert m[(4, 4)] == pytest.approx(40.0)  # 1 wave, 4 trials share 2 cores: no gain
