"""tuning.study_report on constructed trials: intervals cut to [0, 100], the binding table, the paired
hierarchical comparison on R@1 and group R@1 beside the seed t-interval, chance levels, the picture."""

from __future__ import annotations

import numpy as np
import pytest

from etva.eval.stats import hierarchical_bootstrap, t_interval
from tuning.study_report import (
    Trial,
    chance_levels,
    paired_tests,
    plot,
    seed_differences,
    to_markdown,
    variant_table,
)

BINDING = {
    "group_R1": 40.0,
    "group_R1_chance": 25.0,
    "pair_acc": 60.0,
    "pair_acc_colour": 70.0,
    "pair_acc_order": 50.0,
    "num_videos": 90.0,
}


def _trials() -> list[Trial]:
    r1 = {"a": [1.0, 9.0], "b": [5.0, 6.0]}  # a: a spread whose t-interval would reach below 0
    return [
        Trial(
            v, s, f"{v}{s}", "FINISHED", {"t2v_R1": x, "t2v_MdR": 20.0, **BINDING, "group_R1": 30.0 + 10 * s}
        )
        for v, xs in r1.items()
        for s, x in enumerate(xs)
    ]


def _outcomes(rng) -> dict:
    """Two variants x two seeds x 20 videos x 2 captions; a's hits are b's plus 50 on half the queries."""
    out = {}
    for s in (0, 1):
        base = 100.0 * (rng.random(40) < 0.3)
        group = 100.0 * (rng.random(40) < 0.5)
        group[:4] = np.nan  # captions whose group had one scored video
        common = {"caption_index": np.arange(40), "video_index": np.repeat(np.arange(20), 2)}
        out[("b", s)] = {**common, "t2v_R1": base, "group_R1": group}
        out[("a", s)] = {**common, "t2v_R1": np.where(np.arange(40) % 2 == 0, 100.0, base), "group_R1": group}
    return out


def test_intervals_stay_in_the_metric_range_and_binding_metrics_are_tabled():
    table = variant_table(_trials(), ["a", "b"])
    assert table["a"]["t2v_R1"].low == 0.0 and t_interval([1.0, 9.0]).low < 0  # cut, not reported below 0
    assert table["a"]["t2v_MdR"].low == 20.0 and table["a"]["group_R1"] == t_interval(
        [30.0, 40.0], bounds=(0, 100)
    )
    assert "pair_acc_order" in table["b"] and "pair_acc_motion" not in table["b"]
    chance = chance_levels(_trials())
    assert chance == pytest.approx({"t2v_R1": 100 / 90, "group_R1": 25.0, "pair_acc": 50.0})


def test_paired_tests_on_r1_and_group_r1_with_the_seed_interval_beside():
    outcomes = _outcomes(np.random.default_rng(0))
    r1 = paired_tests(outcomes, "b", ["a", "b"], "t2v_R1")
    a = np.stack([outcomes[("a", s)]["t2v_R1"] for s in (0, 1)])
    b = np.stack([outcomes[("b", s)]["t2v_R1"] for s in (0, 1)])
    assert r1["a"] == hierarchical_bootstrap(a, b, clusters=np.repeat(np.arange(20), 2))
    group = paired_tests(outcomes, "b", ["a", "b"], "group_R1")
    assert group["a"].num_queries == 36 and group["a"].diff == 0.0  # NaN queries left out
    diffs = seed_differences(_trials(), "b", ["a", "b"], "t2v_R1")
    assert diffs["a"] == t_interval([-4.0, 3.0], bounds=(-100.0, 100.0)) and "b" not in diffs
    table = variant_table(_trials(), ["a", "b"])
    seed_diffs = {"t2v_R1": diffs, "group_R1": seed_differences(_trials(), "b", ["a", "b"], "group_R1")}
    md = to_markdown(table, r1, "b", ["a", "b"], {}, group, seed_diffs, chance_levels(_trials()))
    assert "**binding**" in md and "chance: group R@1 25.0, pairwise 50.0" in md
    assert f"| a | 2 | 40 | {r1['a'].diff:+.2f} | [{r1['a'].low:+.2f}, {r1['a'].high:+.2f}] |" in md
    assert f"| [{diffs['a'].low:+.2f}, {diffs['a'].high:+.2f}] | yes |" in md
    assert "**paired vs b** **on group R@1**" in md and "| a | 2 | 36 | +0.00 |" in md
    plain = to_markdown(variant_table([t for t in _trials() if t.seed == 0], ["a"]), {}, "b", ["a"], {})
    assert "**binding**" in plain and "**on group R@1**" not in plain


def test_picture_has_a_panel_per_metric(tmp_path):
    trials = _trials()
    path = tmp_path / "study.png"
    assert plot(trials, variant_table(trials, ["a", "b"]), ["a", "b"], {"b": 51.3}, str(path))
    wide = path.stat().st_size
    bare = [Trial(t.variant, t.seed, t.run_id, t.status, {"t2v_R1": t.metrics["t2v_R1"]}) for t in trials]
    assert plot(bare, variant_table(bare, ["a", "b"]), ["a", "b"], {}, str(tmp_path / "r1.png"))
    from PIL import Image

    assert Image.open(path).size[0] > 2 * Image.open(tmp_path / "r1.png").size[0]  # three panels against one
    assert wide > 0 and not plot([], {}, ["a"], {}, str(tmp_path / "none.png"))
