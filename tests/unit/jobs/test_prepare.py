"""Driver-side data preparation: unusable video files are found and dropped before any worker starts."""

from __future__ import annotations

import logging

import pytest

from etva.config import DataConfig
from etva.data.records import ClipRecord
from ray_jobs.prepare import DataError, drop_unusable


def _records(tmp_path, n: int, bad: dict[int, str]) -> list[ClipRecord]:
    out = []
    for i in range(n):
        path = tmp_path / f"video{i}.mp4"
        kind = bad.get(i)
        if kind == "empty":
            path.write_bytes(b"")
        elif kind != "missing":
            path.write_bytes(b"x" * 16)
        out.append(ClipRecord(f"video{i}", str(path), [f"caption {i}"], "test"))
    return out


def test_too_many_unusable_files_fail_at_once_with_count_paths_and_override(tmp_path):
    records = _records(tmp_path, 20, {3: "missing", 7: "empty", 11: "missing"})
    data = DataConfig(root=str(tmp_path), max_skip_fraction=0.1)
    with pytest.raises(DataError) as err:
        drop_unusable(records, "test", data)
    msg = str(err.value)
    assert "3 of 20 video files" in msg and "15.0% > data.max_skip_fraction=10.0%" in msg
    assert str(tmp_path / "video3.mp4") in msg and str(tmp_path / "video7.mp4") in msg
    assert "data.max_skip_fraction=0.155" in msg  # how to accept the loss


def test_a_few_unusable_files_are_dropped_counted_and_logged_once(tmp_path, caplog):
    records = _records(tmp_path, 20, {2: "missing", 5: "empty"})
    with caplog.at_level(logging.WARNING, logger="ray_jobs.prepare"):
        kept, dropped = drop_unusable(records, "train", DataConfig(max_skip_fraction=0.2))
    assert dropped == ["video2", "video5"]
    assert [r.video_id for r in kept] == [f"video{i}" for i in range(20) if i not in (2, 5)]
    assert len([r for r in caplog.records if "dropped 2 of 20" in r.getMessage()]) == 1


def test_nothing_unusable_keeps_every_record(tmp_path):
    records = _records(tmp_path, 5, {})
    kept, dropped = drop_unusable(records, "train", DataConfig(max_skip_fraction=0.0))
    assert kept == records and dropped == []


def test_validation_carved_from_train_is_deterministic_and_disjoint(tmp_path):
    from ray_jobs.prepare import carve_validation

    records = _records(tmp_path, 30, {})
    train, val = carve_validation(records, 7)
    assert len(val) == 7 and len(train) == 23
    assert not {r.video_id for r in train} & {r.video_id for r in val}
    _, val_again = carve_validation(list(reversed(records)), 7)  # file order does not matter
    assert sorted(r.video_id for r in val_again) == sorted(r.video_id for r in val)
    with pytest.raises(DataError, match="val_from_train=30"):
        carve_validation(records, 30)


def test_selection_protocol_of_the_shipped_configs():
    from pathlib import Path

    from etva.config import load_config
    from ray_jobs.prepare import selects_on_test, training_splits

    configs = Path(__file__).resolve().parents[3] / "ray_jobs" / "configs"
    for name in ("msrvtt_1k_a", "msrvtt_1k_b", "msrvtt_full", "lsmdc", "activitynet", "shapes", "features"):
        cfg = load_config(configs / f"{name}.yaml")
        assert not selects_on_test(cfg), name  # no shipped config picks the epoch on its test split
        assert cfg.data.test_split, name
    a = load_config(configs / "msrvtt_1k_a.yaml")
    assert training_splits(a) == {"train": "train"} and a.data.val_from_train == 500
    shapes = load_config(configs / "shapes.yaml")  # the quickstart: 40 of its 360 training videos held out
    assert training_splits(shapes) == {"train": "train"} and shapes.data.val_from_train == 40
    assert selects_on_test(load_config(configs / "shapes.yaml", ["data.val_from_train=0", "data.val_split=test"]))
