"""benchmarks.bench_sweep: concurrent epochs count once; the start-up split adds up."""

from __future__ import annotations

import pytest

from benchmarks.bench_sweep import SPLIT, startup_split, sweep_command, union_s


def test_union_counts_overlapping_epochs_once():
    assert union_s([]) == 0.0
    assert union_s([(0.0, 10.0), (5.0, 15.0), (20.0, 25.0)]) == pytest.approx(20.0)
    assert union_s([(0.0, 10.0), (2.0, 3.0)]) == pytest.approx(10.0)  # nested
    assert union_s([(20.0, 25.0), (0.0, 10.0), (10.0, 12.0)]) == pytest.approx(17.0)  # unsorted, touching


def test_startup_split_parts_add_up_to_sweep_start_to_first_batch():
    names = [a for _, a, _ in SPLIT] + [SPLIT[-1][2]]
    marks = {name: 100.0 + 3.0 * i for i, name in enumerate(names) if name != "sweep_start"}
    trial = {"marks": marks, "epochs": [(130.0, 140.0), (141.0, 150.0)]}
    split = startup_split(trial, sweep_start=100.0)
    assert sum(split[part] for part, _, _ in SPLIT) == pytest.approx(marks["first_batch"] - 100.0)
    assert split["first_epoch"] == pytest.approx(10.0)
    assert split["fit_to_first_batch"] == pytest.approx(marks["first_batch"] - marks["fit_start"])
    stopped = startup_split({"marks": {"trial_start": 101.0}, "epochs": []}, sweep_start=100.0)
    assert "first_epoch" not in stopped and "setup" not in stopped  # missing marks: left out


def test_the_benchmark_runs_the_readmes_sweep_command():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()

    class Args:
        data, storage, max_epochs, overrides = "$PWD/data/shapes", "$PWD/runs/ray", 4, []

    cmd = sweep_command(Args, "clusters")
    assert cmd[0].endswith(".venv/bin/etva")
    written = " ".join([".venv/bin/etva", *cmd[1:]])
    step = readme.split("### 2.")[1].split("```bash")[1].split("```")[0]
    assert " ".join(step.replace("\\\n", " ").split()) == written
