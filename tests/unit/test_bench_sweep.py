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


def test_a_warm_trial_has_no_negative_parts_and_is_marked_reused():
    from benchmarks.bench_sweep import reused

    # the second trial ran in the first one's process: its "worker process" started long before it
    first = {"trial_process_start": 50.0, "trial_start": 60.0, "process_start": 50.0, "first_batch": 80.0}
    second = {"trial_process_start": 50.0, "trial_start": 90.0, "imports_done": 90.0, "child_run_ready": 90.5,
              "data_ready": 90.6, "fit_start": 90.7, "process_start": 50.0, "loop_start": 90.8,
              "setup_done": 91.5, "first_batch": 92.0}  # fmt: skip
    trials = [{"marks": first, "epochs": [(80.0, 85.0)]}, {"marks": second, "epochs": [(92.0, 94.0)]}]
    assert reused(trials) == [False, True]
    side_by_side = {**second, "trial_start": 61.0}  # started before the first one's epochs ended
    assert reused([trials[0], {"marks": side_by_side, "epochs": []}]) == [False, False]
    split = startup_split(trials[1], sweep_start=40.0)
    assert all(v >= 0 for v in split.values()), split
    assert not {"fit_to_worker", "worker_to_loop", "fit_to_first_batch"} & set(split)
    assert split["trial_start_to_first_batch"] == pytest.approx(2.0)
