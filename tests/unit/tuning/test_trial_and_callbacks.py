"""The pure logic of a trial (tuning.trial) and of the sweep driver's MLflow finisher (tuning.callbacks)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from etva.config import ConfigError, config_to_dict
from tuning.callbacks import CHECKPOINT_KEY, SweepMlflowCallback, stop_verdict
from tuning.space import load_space
from tuning.trial import SweepContext, trial_config

REPO = Path(__file__).resolve().parents[3]


def _context(cfg, space) -> SweepContext:
    return SweepContext(
        base=config_to_dict(cfg), space=space, sweep_name="clusters", train_storage="/runs/ray",
        mlflow_uri="", exp_id="", parent_id="", max_epochs=3,
    )  # fmt: skip


def test_trial_config_is_the_base_with_the_sampled_values_and_its_own_train_run(cfg):
    space = load_space(REPO / "tuning/spaces/clusters_laptop.yaml", cfg)
    ctx = _context(cfg, space)
    out = trial_config(ctx, {"model.num_clusters": 16}, "abc_00001")
    assert out.model.num_clusters == 16
    assert (out.train.epochs, out.ray.storage_path, out.ray.run_name) == (3, "/runs/ray", "clusters-abc_00001")
    assert ctx.base == config_to_dict(cfg)  # the base stays as it was for the next trial
    with pytest.raises(ConfigError, match="abc_00002"):  # a bad value names the trial
        trial_config(ctx, {"model.num_clusters": "many"}, "abc_00002")


@pytest.mark.parametrize(
    "early,epochs,expected",
    [
        (True, 1, ("KILLED", "asha")),
        (True, 3, ("KILLED", "asha")),  # ASHA's verdict wins even on the last epoch
        (False, 3, ("FINISHED", "completed")),
        (False, 2, ("KILLED", "interrupted")),  # time budget or interrupted sweep
    ],
)
def test_stop_verdict(early, epochs, expected):
    assert stop_verdict(early, epochs, max_epochs=3) == expected


def test_callback_keeps_each_trials_best_report_and_epoch_count():
    cb = SweepMlflowCallback("", "", "clusters", "val/t2v_R1", max_epochs=3)
    a, b = SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    reports = [
        (a, {"epoch": 0, "val/t2v_R1": 10.0, "val/t2v_MdR": 9.0, CHECKPOINT_KEY: "/c/0", "train/loss": 3.0}),
        (a, {"epoch": 1, "val/t2v_R1": 30.0, "val/t2v_MdR": 4.0, CHECKPOINT_KEY: "/c/1"}),
        (a, {"epoch": 2, "val/t2v_R1": 30.0, "val/t2v_MdR": 5.0, CHECKPOINT_KEY: "/c/2"}),  # tie, worse MdR
        (b, {"epoch": 0, "val/t2v_R1": 5.0, "val/t2v_MdR": 20.0, CHECKPOINT_KEY: "/d/0"}),
        (b, {"epoch": 1}),  # a report without metrics still counts the epoch
    ]
    for trial, result in reports:
        cb.on_trial_result(0, [], trial, result)
    assert cb.best["a"] == {"val/t2v_R1": 30.0, "val/t2v_MdR": 4.0, CHECKPOINT_KEY: "/c/1"}
    assert cb.best["b"][CHECKPOINT_KEY] == "/d/0"
    assert cb.epochs == {"a": 3, "b": 2}
    cb.on_trial_complete(0, [], a)  # no tracking server: nothing to finish, no error
    assert cb.client is None
