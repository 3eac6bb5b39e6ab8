"""Sweep sizing and search/scheduler options (tuning.sweep)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from etva.config import ConfigError
from tuning.space import apply_params, load_space

REPO = Path(__file__).resolve().parents[3]


def test_max_concurrent_trials_from_cluster_resources(cfg):
    from tuning.sweep import max_concurrent_trials, trial_resources

    c = apply_params(cfg, {"ray.num_workers": 2, "ray.cpus_per_worker": 0.5, "ray.decode_cpus": 0.25})
    c.ray.decode_concurrency = 2
    need = trial_resources(c)
    assert math.isclose(need["CPU"], 2 * 0.5 + 0.1 + 0.25 * 2)  # workers + driver + decode
    assert max_concurrent_trials(c, {"CPU": 4.0}) == 2
    assert max_concurrent_trials(c, {"CPU": 3.2}) == 2
    assert max_concurrent_trials(c, {"CPU": 3.19}) == 1
    with pytest.raises(ConfigError, match="one trial needs"):
        max_concurrent_trials(c, {"CPU": 1.0})
    c.tune.max_concurrent_trials = 1
    assert max_concurrent_trials(c, {"CPU": 16.0}) == 1
    c.tune.max_concurrent_trials = 0
    c.ray.use_gpu, c.ray.gpus_per_worker = True, 1.0
    assert max_concurrent_trials(c, {"CPU": 16.0, "GPU": 4.0}) == 2  # GPUs bound it
    with pytest.raises(ConfigError):
        max_concurrent_trials(c, {"CPU": 16.0})  # no GPU at all


def test_build_search_options(write_space, cfg):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuning.callbacks import RecordingASHA
    from tuning.sweep import build_search

    space = load_space(write_space("model.num_clusters: {grid: [8, 16]}\n"), cfg)
    c = apply_params(cfg, {"tune.grace_period": 1, "tune.max_epochs": 3, "tune.search": "grid"})
    alg, sched, params, n = build_search(c, space, 2)
    assert isinstance(alg, BasicVariantGenerator) and isinstance(sched, RecordingASHA) and n == 1
    assert sched._max_t == 3
    c.tune.scheduler, c.tune.search = "fifo", "random"
    assert build_search(c, space, 1)[1] is None
    c.tune.search = "bayes"
    with pytest.raises(ConfigError, match="tune.search='bayes'"):
        build_search(c, space, 1)


def test_optuna_search_suggests_configs_that_load(cfg):
    pytest.importorskip("optuna")
    from tuning.sweep import build_search

    c = apply_params(cfg, {"tune.search": "optuna"})
    space = load_space(REPO / "tuning/spaces/default.yaml", c)
    alg, _, params, _ = build_search(c, space, 1)
    assert alg.set_search_properties("val/t2v_R1", "max", params)
    for i in range(3):
        suggested = alg.suggest(f"t{i}")
        assert set(suggested) == set(space.keys)
        trial_cfg = apply_params(c, suggested)
        assert trial_cfg.model.num_clusters in (8, 16, 32, 64) and 1e-4 <= trial_cfg.optim.lr <= 3e-3
        alg.on_trial_complete(f"t{i}", {"val/t2v_R1": float(i)})
