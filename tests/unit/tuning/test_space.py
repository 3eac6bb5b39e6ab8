"""Search-space YAML -> validated dimensions -> Tune param space -> trial configs (tuning.space)."""

from __future__ import annotations

from pathlib import Path

import pytest

from etva.config import ConfigError, load_config
from tuning.space import apply_params, dump_space, load_space, to_tune_space, trial_params

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["default.yaml", "clusters.yaml"])
def test_shipped_spaces_load_against_every_shipped_config(name):
    for config in sorted((REPO / "ray_jobs/configs").glob("*.yaml")):
        space = load_space(REPO / "tuning/spaces" / name, load_config(config))
        assert "model.num_clusters" in space.keys
        assert next(d for d in space.dims if d.key == "model.num_clusters").values == (8, 16, 32, 64)


def test_default_space_covers_the_issue_dimensions(cfg):
    space = load_space(REPO / "tuning/spaces/default.yaml", cfg)
    keys = set(space.keys)
    assert {
        "model.num_clusters",
        "optim.lr",
        "loss.lambda_global",
        "loss.lambda_local",
        "loss.lambda_fused",
    } <= keys
    assert any(k.startswith("model.experts.") and k.endswith((".enabled", ".prior")) for k in keys)
    assert keys & {"loss.temperature", "loss.margin"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("model.num_clustrs: {grid: [8, 16]}", "unknown key 'model.num_clustrs'"),
        ("model.experts.video.enabled: {choice: [true]}", "unknown key 'model.experts.video.enabled'"),
        ("model.num_clusters: {grid: [8, 16.5]}", "value 16.5 does not fit"),
        ("model.num_clusters: {uniform: [8, 64]}", "does not fit"),
        ("optim.lr: {loguniform: [0, 0.1]}", "low > 0"),
        ("optim.lr: {uniform: [0.1, 0.01]}", "low < high"),
        ("optim.lr: {normal: [0, 1]}", "unknown spec 'normal'"),
        ("optim.lr: {uniform: [0.1, 0.2], choice: [1]}", "expects one spec"),
        ("model.num_clusters: {grid: []}", "non-empty list"),
        ("ray.num_workers: {grid: [1, 2]}", "cannot be swept"),
        ("tune.max_epochs: {grid: [1, 2]}", "cannot be swept"),
        ("[1, 2]", "non-empty mapping"),
        ("a: [", "not valid YAML"),
    ],
)
def test_bad_spaces_name_the_file_and_key(write_space, cfg, text, message):
    path = write_space(text)
    with pytest.raises(ConfigError) as err:
        load_space(path, cfg)
    assert message in str(err.value)
    assert str(path.resolve()) in str(err.value)


def test_missing_space_file_is_a_config_error(tmp_path, cfg):
    with pytest.raises(ConfigError, match="cannot read search space"):
        load_space(tmp_path / "nope.yaml", cfg)


def test_apply_params_sets_leaves_and_keeps_the_rest(cfg):
    out = apply_params(
        cfg, {"model.num_clusters": 32, "model.experts.audio.enabled": False, "optim.lr": 2e-4}
    )
    assert out.model.num_clusters == 32 and out.optim.lr == 2e-4
    assert out.model.experts["audio"].enabled is False
    assert out.model.experts["audio"].kind == "audio"  # other fields of the expert kept
    assert cfg.model.num_clusters == 16 and cfg.model.experts["audio"].enabled  # input untouched
    with pytest.raises(ConfigError, match="unknown key 'model.nope'"):
        apply_params(cfg, {"model.nope": 1})


def test_apply_params_accepts_numpy_scalars_from_tune(cfg):
    np = pytest.importorskip("numpy")
    out = apply_params(cfg, {"model.num_clusters": np.int64(8), "optim.lr": np.float64(1e-3)})
    assert type(out.model.num_clusters) is int and out.model.num_clusters == 8


def test_tune_space_per_search_mode(write_space, cfg):
    from ray.tune.search.sample import Categorical, Float, Integer

    text = (
        "model.num_clusters: {grid: [8, 16]}\n"
        "model.experts.audio.enabled: {choice: [true, false]}\n"
        "optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "train.seed: {randint: [0, 10]}\n"
        "loss.temperature: 0.07\n"
    )
    space = load_space(write_space(text), cfg)
    assert space.swept == ["model.num_clusters", "model.experts.audio.enabled", "optim.lr", "train.seed"]
    rnd = to_tune_space(space, "random")
    assert rnd["model.num_clusters"] == {"grid_search": [8, 16]}
    assert isinstance(rnd["model.experts.audio.enabled"], Categorical)
    assert isinstance(rnd["optim.lr"], Float) and isinstance(rnd["train.seed"], Integer)
    assert rnd["loss.temperature"] == 0.07
    opt = to_tune_space(space, "optuna")
    assert isinstance(opt["model.num_clusters"], Categorical)  # Optuna has no grid
    with pytest.raises(ConfigError, match="'optim.lr' is 'loguniform'"):
        to_tune_space(space, "grid")
    finite = load_space(
        write_space(
            "model.num_clusters: {grid: [8, 16]}\nmodel.experts.audio.enabled: {choice: [true, false]}\n",
        ),
        cfg,
    )
    grid = to_tune_space(finite, "grid")
    assert grid["model.experts.audio.enabled"] == {"grid_search": [True, False]}
    # dump_space round-trips
    again = load_space(write_space(dump_space(space)), cfg)
    assert again.dims == space.dims


def test_trial_params_picks_the_space_keys(write_space, cfg):
    space = load_space(write_space("model.num_clusters: {grid: [8, 16]}\n"), cfg)
    assert trial_params({"model.num_clusters": 16, "other": 1}, space) == {"model.num_clusters": 16}
