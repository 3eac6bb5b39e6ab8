"""ray_jobs.run_record: source tags, dataset digests, the run note, the captured job log."""

from __future__ import annotations

import getpass
import logging
import sys
from types import SimpleNamespace

from etva.data.records import ClipRecord
from ray_jobs.run_record import captured_log, note, source_tags, split_digest


def _split(*captions: str) -> SimpleNamespace:
    return SimpleNamespace(
        records=[ClipRecord(f"v{i}", f"/d/v{i}.mp4", [c], "train") for i, c in enumerate(captions)]
    )


def test_source_tags_are_mlflows_standard_ones():
    assert source_tags("ray_jobs.train", "abc1234") == {
        "mlflow.source.name": "ray_jobs.train",
        "mlflow.source.type": "JOB",
        "mlflow.source.git.commit": "abc1234",
        "mlflow.user": getpass.getuser(),
    }
    assert "mlflow.source.git.commit" not in source_tags("ray_jobs.train", "unknown")


def test_split_digest_follows_the_content():
    a = split_digest(_split("a red circle", "a blue box"))
    assert a == split_digest(_split("a red circle", "a blue box")) and len(a) == 16
    assert a != split_digest(_split("a red circle", "a green box"))
    assert a != split_digest(_split("a blue box", "a red circle"))


def test_note_has_the_table_selection_and_data():
    text = note(
        "run x: best epoch 2 of 4",
        "R@1 50.0",
        "selected on 'val'",
        {"train": {"videos": 3, "dropped_video_ids": ["a", "b"]}},
    )
    assert text.startswith("### run x") and "R@1 50.0" in text and "selected on 'val'" in text
    assert "| train | - | 3 | - | 2 | - |" in text and "dropped_video_ids" not in text


def test_captured_log_copies_prints_and_log_records(tmp_path, capsys):
    log = tmp_path / "logs" / "job.log"
    with captured_log(log) as path:
        print("epoch 1/2 done")
        print("oops", file=sys.stderr)
        logging.getLogger("etva.test").warning("a warning")
    print("after")  # not captured any more
    text = path.read_text()
    assert "epoch 1/2 done" in text and "oops" in text and "WARNING etva.test: a warning" in text
    assert "after" not in text
    assert "epoch 1/2 done" in capsys.readouterr().out  # the console still gets everything
