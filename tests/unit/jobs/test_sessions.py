"""ray_jobs.sessions.LocalSession: checkpoints committed into the run folder, found again by a new
session of the same run (a retried or resumed warm trial), retention and selection on what it lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_jobs.checkpoints import load_resume_state, prune
from ray_jobs.sessions import REPORTED_FILE, LocalSession


def _ckpt(tmp: Path, epoch: int) -> Path:
    """A real checkpoint folder of the project's format (manifest + checksums)."""
    import torch

    from etva.train.checkpoint import save_checkpoint

    return save_checkpoint(tmp / f"src{epoch}", {"w": torch.full((2,), float(epoch))}, {"epoch": epoch})


def _metrics(epoch: int, r1: float) -> dict:
    return {"epoch": epoch, "val/t2v_R1": r1, "val/t2v_MdR": 3.0}


def test_a_committed_checkpoint_is_found_by_the_next_session_of_the_run(tmp_path):
    run = tmp_path / "runs" / "sweep-trial_00001"
    first = LocalSession(run, datasets={})
    assert first.checkpoint() is None  # a new run starts fresh
    for epoch, r1 in enumerate([10.0, 30.0, 20.0]):
        reported = first.report(_metrics(epoch, r1), _ckpt(tmp_path, epoch), f"epoch_{epoch:04d}")
    assert [Path(r.checkpoint.path).name for r in reported] == ["epoch_0000", "epoch_0001", "epoch_0002"]
    assert not list(run.glob(".partial-*")) and not list(run.glob(f".{REPORTED_FILE}.tmp"))
    assert json.loads((run / REPORTED_FILE).read_text())[1]["metrics"]["val/t2v_R1"] == 30.0

    again = LocalSession(run, datasets={})  # the trial's process died: Tune runs it again
    latest = again.checkpoint()
    assert Path(latest.path).name == "epoch_0002"
    state, names = load_resume_state(latest, retire_bad=True)
    assert state["meta"]["epoch"] == 2 and "epoch_0001" in names
    assert again.best()[0]["val/t2v_R1"] == 30.0 and again.best()[1].endswith("epoch_0001")


def test_retention_and_selection_see_only_live_checkpoints(tmp_path):
    run = tmp_path / "run"
    session = LocalSession(run, datasets={})
    for epoch, r1 in enumerate([50.0, 10.0, 20.0, 30.0]):
        reported = session.report(_metrics(epoch, r1), _ckpt(tmp_path, epoch), f"epoch_{epoch:04d}")
    gone = prune(reported, keep_recent=1)  # best (epoch 0) + the most recent (epoch 3) stay
    assert sorted(Path(p).name for p in gone) == ["epoch_0001", "epoch_0002"]
    assert session.best()[1].endswith("epoch_0000")
    assert Path(LocalSession(run, datasets={}).checkpoint().path).name == "epoch_0003"


def test_an_unknown_dataset_is_named(tmp_path):
    with pytest.raises(KeyError, match="'val_shard0' was not given to this run"):
        LocalSession(tmp_path, datasets={"train": object()}).dataset("val_shard0")
