"""The pure logic of a trial (tuning.trial) and of the sweep driver's MLflow finisher (tuning.callbacks)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from etva.config import ConfigError, config_to_dict
from tuning.callbacks import SweepMlflowCallback, _epochs_reported, stop_verdict
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


def test_callback_takes_the_epochs_from_the_trials_last_result():
    """No per-trial state in the callback: the epoch count comes from Tune's last result, which a
    resumed sweep driver restores (a driver restarted mid-sweep knows as much as the one before)."""
    cb = SweepMlflowCallback("", "", "clusters", "val/t2v_R1", max_epochs=3)
    done = SimpleNamespace(trial_id="a", last_result={"epoch": 2, "val/t2v_R1": 30.0})
    cut = SimpleNamespace(trial_id="b", last_result={"epoch": 0})
    fresh = SimpleNamespace(trial_id="c", last_result=None)
    assert [_epochs_reported(t) for t in (done, cut, fresh)] == [3, 1, 0]
    assert stop_verdict(False, _epochs_reported(cut), cb.max_epochs) == ("KILLED", "interrupted")
    cb.on_trial_complete(0, [], done)  # no tracking server: nothing to record, no error
    assert cb.client is None and not hasattr(cb, "epochs")
