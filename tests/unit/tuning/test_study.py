"""tuning.study: the shipped Tables 4-5 space, study space errors, the study's sweep settings, the report's
table on constructed trials; tuning.best skips study trials."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from etva.config import ConfigError, load_config
from etva.eval.stats import hierarchical_bootstrap, t_interval
from tuning.best import is_study_trial
from tuning.space import apply_params, to_tune_space
from tuning.study import load_study, study_config
from tuning.study_report import Trial, to_markdown, variant_table

REPO = Path(__file__).resolve().parents[3]
SPACE = REPO / "tuning/spaces/ablations.yaml"


@pytest.fixture(scope="module")
def study_cfg():
    return study_config(load_config(REPO / "ray_jobs/configs/study.yaml"))


def test_shipped_space_is_the_five_configurations_of_tables_4_and_5_and_a_blind_control(study_cfg):
    space = load_study(SPACE, study_cfg)
    assert space.reference == "shared_centres" and space.seeds == [0, 1, 2, 3, 4]
    want = {"global_only": ("global", "shared"), "local_only": ("local", "shared"), "text_vlad": ("both", "text"),
            "separate_centres": ("both", "separate"), "shared_centres": ("both", "shared")}  # fmt: skip
    for name, (alignment, vlad) in want.items():
        cfg = apply_params(study_cfg, space.resolve({"study.variant": name, "train.seed": 3}))
        assert (cfg.model.alignment, cfg.model.vlad_mode, cfg.train.seed) == (alignment, vlad, 3)
    blind = apply_params(study_cfg, space.resolve({"study.variant": "global_blind", "train.seed": 0}))
    assert (blind.model.alignment, blind.model.fusion_layers) == ("global", 0)
    assert space.paper["shared_centres"] == 51.3 and space.paper["global_only"] == 44.3
    assert "global_blind" not in space.paper  # the control is ours, not the paper's
    grid = to_tune_space(space, "grid")  # every variant x every seed
    assert [len(grid[k]["grid_search"]) for k in ("study.variant", "train.seed")] == [6, 5]
    assert (study_cfg.tune.search, study_cfg.tune.scheduler) == ("grid", "fifo")
    assert study_cfg.data.val_from_train > 0 and study_cfg.data.test_split == "test"
    small = load_study(SPACE, study_cfg, seeds=2, only=["global_only", "shared_centres"])
    assert small.seeds == [0, 1] and list(small.variants) == ["global_only", "shared_centres"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("reference: a\nvariants: {a: {model.nope: 1}, b: {}}\n", "variant 'a'"),
        ("reference: c\nvariants: {a: {}, b: {}}\n", "'reference' = 'c' is not one of"),
        ("reference: a\nvariants: {a: {}}\n", "at least two"),
        ("reference: a\nseeds: 0\nvariants: {a: {}, b: {}}\n", "'seeds' expects"),
        ("reference: a\nvariants: {a: {train.seed: 1}, b: {}}\n", "set by the study"),
        ("reference: a\nvariants: {a: {}, b: {}}\nextra: 1\n", "unknown keys ['extra']"),
        ("reference: a\nvariants: {a: {model.alignment: sideways}, b: {}}\n", "sideways"),
    ],
)
def test_bad_study_space_names_the_file_and_the_problem(study_cfg, tmp_path, text, message):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_study(path, study_cfg)
    assert str(path) in str(e.value) and message in str(e.value)


def test_a_study_needs_a_carved_validation_split_and_a_test_split():
    shapes = REPO / "ray_jobs/configs/shapes.yaml"  # selects on a carved split, reports the test split
    with pytest.raises(ConfigError, match="data.val_from_train"):
        study_config(load_config(shapes, ["data.val_from_train=0"]))
    with pytest.raises(ConfigError, match="data.test_split"):
        study_config(load_config(shapes, ["data.test_split="]))
    assert study_config(load_config(shapes)).tune.search == "grid"


def test_report_table_has_intervals_paper_numbers_and_the_paired_rows():
    trials = [Trial(v, s, f"r{v}{s}", "FINISHED", {"t2v_R1": r1, "t2v_R5": 50.0, "v2t_R1": 10.0})
              for v, rs in (("a", [10.0, 12.0, 14.0]), ("b", [20.0, 21.0, 22.0])) for s, r1 in enumerate(rs)]  # fmt: skip
    trials.append(Trial("a", 3, "x", "FAILED", {}))  # unfinished: not counted
    table = variant_table(trials, ["a", "b"])
    assert table["a"]["t2v_R1"] == t_interval([10.0, 12.0, 14.0]) and table["a"]["t2v_R1"].n == 3
    tests = {"a": hierarchical_bootstrap([[0.0, 100.0]] * 3, [[100.0, 100.0]] * 3, n_boot=100)}
    md = to_markdown(table, tests, "b", ["a", "b"], {"b": 51.3})
    assert "| a | 3 | 12.0 ± 2.0 [7.0, 17.0]" in md and "| 51.3 |" in md
    assert "**paired vs b**" in md and "| a | 3 | 2 | -50.00 |" in md and "| no |" in md
    one = variant_table([t for t in trials if t.seed == 0], ["a", "b"])  # one seed: no interval to compare
    md1 = to_markdown(one, tests, "b", ["a", "b"], {})
    assert "| a | 1 | 10.0 (1 seed)" in md1 and "| n/a (1 seed) |" in md1


def test_best_skips_only_study_trials():
    def run(sampled: str):
        return SimpleNamespace(data=SimpleNamespace(tags={"etva.sampled": sampled}))

    assert is_study_trial(run('{"study.variant": "global_only", "train.seed": 0}'))
    assert not is_study_trial(run('{"model.num_clusters": 8}')) and not is_study_trial(run(""))
