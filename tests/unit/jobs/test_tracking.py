"""The MLflow helpers' own logic (ray_jobs.tracking), against a real client: a SQLite store, or a port
where no server listens (an outage)."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest

from etva.config import Config
from ray_jobs.tracking import (
    MAX_PARAM_LEN,
    PARAMS_PER_CALL,
    EpochLogger,
    fail_fast,
    get_client,
    job_submission_id,
    log_params,
    metric_items,
    run_url,
    tracking_uri,
)


def test_tracking_uri_needs_a_server_address(monkeypatch):
    cfg = Config()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(cfg) == ""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(cfg) == "http://127.0.0.1:5000"
    cfg.mlflow.tracking_uri = "sqlite:///mlflow.db"
    with pytest.raises(ValueError, match="mlflow.tracking_uri='sqlite:///mlflow.db'.*http://"):
        tracking_uri(cfg)


def test_job_submission_id_from_rays_job_environment(monkeypatch):
    monkeypatch.delenv("RAY_JOB_SUBMISSION_ID", raising=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"metadata": {"job_submission_id": "raysubmit_1"}}))
    assert job_submission_id() == "raysubmit_1"
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{not json")
    assert job_submission_id() == ""
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.setenv("RAY_JOB_SUBMISSION_ID", "raysubmit_2")
    assert job_submission_id() == "raysubmit_2"


def test_run_url_opens_the_model_training_view():
    url = run_url("http://h:5000/", "3", "abc")
    assert url == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"


def test_metric_items_keep_finite_numbers_with_one_timestamp():
    items = metric_items({"a": 1, "b": 2.5, "nan": math.nan, "inf": math.inf, "s": "x"}, step=4)
    assert sorted((m.key, m.value, m.step) for m in items) == [("a", 1.0, 4), ("b", 2.5, 4)]
    assert len({m.timestamp for m in items}) == 1


def test_log_params_in_batches_with_long_values_cut(tmp_path):
    client = get_client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    params = {f"p{i}": i for i in range(PARAMS_PER_CALL + 5)}
    params.update(listed=[1, 2], long="x" * (MAX_PARAM_LEN + 10))
    log_params(client, run_id, params)
    got = client.get_run(run_id).data.params
    assert len(got) == len(params) and got["p94"] == "94" and got["listed"] == "[1, 2]"
    assert len(got["long"]) == MAX_PARAM_LEN


def test_fail_fast_restores_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with fail_fast(3):
        assert (os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"], os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) == ("3", "0")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "120"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_epoch_logger_keeps_metrics_through_an_outage():
    logger = EpochLogger(f"http://127.0.0.1:{_closed_port()}", "run", retry_s=3600)
    logger.log({"val/t2v_R1": 10.0}, step=0)  # connection refused: buffered, no exception
    logger.log({"val/t2v_R1": 12.0}, step=1)  # within retry_s: not even tried
    assert [(m.key, m.step) for m in logger.pending] == [("val/t2v_R1", 0), ("val/t2v_R1", 1)]
    assert logger.outages == 1
    assert logger.close(wait_s=0) is False and len(logger.pending) == 2
    assert EpochLogger("", "").close() is True  # no run: nothing to lose
