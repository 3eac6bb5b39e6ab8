"""Search-space YAML -> validated dimensions -> Tune param space -> trial configs; sweep sizing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from etva.config import ConfigError, load_config
from tuning.space import apply_params, dump_space, load_space, to_tune_space, trial_params

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "ray_jobs/configs/shapes.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(SHAPES)


def _space(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


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
def test_bad_spaces_name_the_file_and_key(tmp_path, cfg, text, message):
    path = _space(tmp_path, text)
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


def test_tune_space_per_search_mode(tmp_path, cfg):
    from ray.tune.search.sample import Categorical, Float, Integer

    text = (
        "model.num_clusters: {grid: [8, 16]}\n"
        "model.experts.audio.enabled: {choice: [true, false]}\n"
        "optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n"
        "train.seed: {randint: [0, 10]}\n"
        "loss.temperature: 0.07\n"
    )
    space = load_space(_space(tmp_path, text), cfg)
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
        _space(
            tmp_path,
            "model.num_clusters: {grid: [8, 16]}\nmodel.experts.audio.enabled: {choice: [true, false]}\n",
        ),
        cfg,
    )
    grid = to_tune_space(finite, "grid")
    assert grid["model.experts.audio.enabled"] == {"grid_search": [True, False]}
    # dump_space round-trips
    again = load_space(_space(tmp_path, dump_space(space)), cfg)
    assert again.dims == space.dims


def test_trial_params_picks_the_space_keys(tmp_path, cfg):
    space = load_space(_space(tmp_path, "model.num_clusters: {grid: [8, 16]}\n"), cfg)
    assert trial_params({"model.num_clusters": 16, "other": 1}, space) == {"model.num_clusters": 16}


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


def test_build_search_options(tmp_path, cfg):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tuning.callbacks import RecordingASHA
    from tuning.sweep import build_search

    space = load_space(_space(tmp_path, "model.num_clusters: {grid: [8, 16]}\n"), cfg)
    c = apply_params(cfg, {"tune.grace_period": 1, "tune.max_epochs": 3, "tune.search": "grid"})
    alg, sched, params, n = build_search(c, space, 2)
    assert isinstance(alg, BasicVariantGenerator) and isinstance(sched, RecordingASHA) and n == 1
    assert sched._max_t == 3
    c.tune.scheduler, c.tune.search = "fifo", "random"
    assert build_search(c, space, 1)[1] is None
    c.tune.search = "bayes"
    with pytest.raises(ConfigError, match="tune.search='bayes'"):
        build_search(c, space, 1)


def _run(name, r1, mdr, sampled, early=False, epochs=2, status="FINISHED"):
    import json
    from types import SimpleNamespace

    metrics = {} if r1 is None else {"best/t2v_R1": r1, "best/t2v_R5": 90.0, "best/t2v_MdR": mdr}
    tags = {
        "etva.sampled": json.dumps(sampled),
        "etva.early_stopped": str(early).lower(),
        "etva.epochs_run": str(epochs),
    }
    return SimpleNamespace(
        info=SimpleNamespace(run_name=name, status=status, run_id=f"id-{name}"),
        data=SimpleNamespace(metrics=metrics, tags=tags),
    )


def test_summary_rows_table_and_plot(tmp_path):
    from tuning.mlflow_sweep import plot_summary, summary_rows, to_csv, to_markdown

    keys = ["model.num_clusters", "model.experts.audio.enabled"]
    runs = [
        _run("a", 40.0, 2.0, {"model.num_clusters": 8, "model.experts.audio.enabled": True}),
        _run("b", 60.0, 1.5, {"model.num_clusters": 32, "model.experts.audio.enabled": False}),
        _run("c", 60.0, 1.0, {"model.num_clusters": 16, "model.experts.audio.enabled": True}),
        _run(
            "d",
            10.0,
            9.0,
            {"model.num_clusters": 64, "model.experts.audio.enabled": False},
            early=True,
            epochs=1,
        ),
        _run(
            "e", None, None, {"model.num_clusters": 8, "model.experts.audio.enabled": True}, status="FAILED"
        ),
    ]
    rows = summary_rows(runs, keys)
    assert [r["trial"] for r in rows] == ["c", "b", "a", "d", "e"]  # R@1 desc, ties by MdR, no result last
    assert rows[3]["stopped_early"] is True and rows[3]["epochs"] == 1
    assert rows[0]["model.num_clusters"] == 16
    md = to_markdown(rows)
    assert md.count("\n") == 2 + len(rows) and "| c | FINISHED | 16 | True | 60 |" in md
    assert to_csv(rows).splitlines()[0].startswith("trial,status,model.num_clusters")
    png = tmp_path / "plot.png"
    assert plot_summary(rows, keys, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_summary(rows[-1:], keys, str(tmp_path / "none.png"))  # nothing finished


def test_best_run_ranking_breaks_ties_by_mdr():
    from tuning.best import _sort_key

    runs = [_run("a", 50.0, 2.0, {}), _run("b", 50.0, 1.5, {}), _run("c", 70.0, 3.0, {})]
    for r, t in zip(runs, (3, 2, 1)):
        r.info.start_time = t
    assert [r.info.run_name for r in sorted(runs, key=_sort_key)] == ["c", "b", "a"]


def test_etva_best_command_is_registered_and_lazy():
    import subprocess
    import sys

    code = (
        "import sys; from etva.cli import build_parser; p = build_parser();"
        "a = p.parse_args(['best', '--experiment', 'x', '--top', '3']);"
        "print(a.experiment, a.top, 'mlflow' in sys.modules, 'ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.stdout.split() == ["x", "3", "False", "False"], out.stderr


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
