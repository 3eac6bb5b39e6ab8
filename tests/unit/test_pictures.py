"""ray_jobs.pictures: query picking, and a plotting failure never fails the training run."""

from __future__ import annotations

import logging

import numpy as np

from ray_jobs.pictures import log_pictures_safely, pick_queries


class RecordingClient:
    def __init__(self) -> None:
        self.logged: list[tuple] = []

    def log_artifact(self, run_id, path, artifact_path=None) -> None:
        self.logged.append((run_id, path, artifact_path))


def test_pick_queries_spread_and_bounded():
    np.testing.assert_array_equal(pick_queries(10, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(pick_queries(2, 4), [0, 1])
    np.testing.assert_array_equal(pick_queries(1, 4), [0])


def test_failure_is_a_warning_not_an_error(tmp_path, caplog):
    client = RecordingClient()
    with caplog.at_level(logging.WARNING, logger="ray_jobs.pictures"):
        out = log_pictures_safely(client, "run-1", tmp_path / "no-such-checkpoint", records=[])
    assert out == [] and client.logged == []
    assert any("pictures for MLflow run run-1 failed" in r.getMessage() for r in caplog.records)
