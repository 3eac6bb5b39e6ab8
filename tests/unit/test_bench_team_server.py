"""benchmarks.bench_team_server: what its table counts (metric values, HTTP answers, retries, trials)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.bench_team_server import (
    REQUIRED_KEYS,
    client_counts,
    metric_counts,
    parse_args,
    server_counts,
    space_yaml,
    sweep_command,
    table,
    trial_counts,
)

REPO = Path(__file__).resolve().parents[2]
ACCESS_LOG = """\
2026/12/01 21:40:01 INFO:     127.0.0.1:40312 - "POST /api/2.0/mlflow/runs/log-batch HTTP/1.1" 200
2026/12/01 21:40:01 INFO:     127.0.0.1:40314 - "GET /api/2.0/mlflow/experiments/get-by-name?experiment_name=x HTTP/1.1" 404
2026/12/01 21:40:02 INFO:     127.0.0.1:40316 - "POST /api/2.0/mlflow/runs/create HTTP/1.1" 503
2026/12/01 21:40:02 INFO:     127.0.0.1:40318 - "GET /health HTTP/1.1" 200
2026/12/01 21:40:03 ERROR:    Exception in ASGI application
"""


def test_server_counts_read_uvicorns_access_lines():
    assert server_counts(ACCESS_LOG) == {"requests": 4, "4xx": 1, "5xx": 1}
    assert server_counts("") == {"requests": 0, "4xx": 0, "5xx": 0}


def test_client_counts_find_retries_give_ups_and_5xx_in_the_sweep_output():
    out = (
        "WARNING urllib3.connectionpool: Retrying (JitteredRetry(total=6, connect=7)) after connection broken "
        "by 'ProtocolError('Connection aborted.')': /api/2.0/mlflow/runs/log-batch\n"
        "(TrainWorker pid=1) MLflow unreachable (MlflowException: x); 40 metric values buffered, retrying in 10 s\n"
        "mlflow.exceptions.MlflowException: API request to endpoint /api/2.0/mlflow/runs/create failed with "
        "error code 503 != 200. Response body: ''\n"
        "requests.exceptions.RetryError: Max retries (7) exceeded: too many 503 error responses\n"
        "epoch 0: loss 3.2\n"
    )
    assert client_counts(out) == {"retries": 2, "gave_up": 1, "5xx": 1}
    assert client_counts("trial finished\n") == {"retries": 0, "gave_up": 0, "5xx": 0}


def test_metric_counts_every_epoch_metric_of_every_trial_exactly_once():
    keys = {k: [0, 1] for k in (*REQUIRED_KEYS, "val/t2v_R5", "epoch")}
    good = {"a": dict(keys), "b": dict(keys)}
    assert metric_counts(good, trials=2, epochs=2) == {
        "logged": 20, "expected": 20, "keys": 5, "duplicates": 0, "missing": 0,
    }  # fmt: skip
    # not per-epoch metrics (best/*, trial/*) are not counted
    assert metric_counts({"a": {**keys, "best/t2v_R1": [1]}}, 1, 2)["expected"] == 10
    twice = {"a": {**keys, "train/loss": [0, 1, 1]}, "b": dict(keys)}
    assert metric_counts(twice, 2, 2) == {"logged": 21, "expected": 20, "keys": 5, "duplicates": 1, "missing": 0}
    short = {"a": {**keys, "val/t2v_R5": [0]}, "b": dict(keys)}  # a key another trial logged is expected too
    assert metric_counts(short, 2, 2)["missing"] == 1
    # a trial without a child run: all its values missing; one that logged nothing: the required keys
    assert metric_counts({"a": dict(keys)}, 2, 2)["missing"] == 10
    assert metric_counts({"a": {}}, 1, 1) == {"logged": 0, "expected": 3, "keys": 3, "duplicates": 0, "missing": 3}


def test_trial_counts():
    assert trial_counts(["FINISHED"] * 6 + ["FAILED", "KILLED"], 8) == {"finished": 6, "errored": 2, "missing": 0}
    assert trial_counts(["FINISHED", "RUNNING"], 4) == {"finished": 1, "errored": 1, "missing": 2}


def test_table_has_one_row_per_server():
    row = {"name": "postgresql", "wall_s": 312.44, "exit": 0, "load_before": (9.0, 8.5, 7.25),
           "load_after": (11.0, 9.0, 8.0), "trials": {"finished": 8, "errored": 0, "missing": 0},
           "metrics": {"logged": 96, "expected": 96, "keys": 12, "duplicates": 0, "missing": 0},
           "server": {"requests": 900, "4xx": 3, "5xx": 0}, "client": {"retries": 0, "gave_up": 0, "5xx": 0}}  # fmt: skip
    lines = table([row, {**row, "name": "sqlite"}]).splitlines()
    assert len(lines) == 4 and lines[0].count("|") == lines[2].count("|") == lines[3].count("|")
    assert "| postgresql | 312.4 | 0 | 8/0/0 | 96/96 (12 keys) | 0/0 | 900 | 3 | 0 | 0/0/0 | 9.0/8.5/7.2" in lines[2]


def test_the_sweep_is_a_grid_of_one_trial_per_seed_on_the_tiny_config(tmp_path):
    from etva.config import load_config
    from tuning.space import load_space

    args = parse_args(["--trials", "8", "--", "data.cache=none"])
    assert args.servers == ["sqlite", "postgresql"]
    space = tmp_path / "space.yaml"
    space.write_text(space_yaml(args.trials))
    cfg = load_config(REPO / "ray_jobs/configs/tiny.yaml")
    (dim,) = load_space(space, cfg).dims
    assert (dim.key, dim.kind, dim.values) == ("train.seed", "grid", tuple(range(8)))
    cmd = sweep_command(args, space, tmp_path / "data", tmp_path / "runs", "bench", "127.0.0.1:6380")
    assert cmd[1:3] == ["-m", "tuning.sweep"] and cmd[-1] == "data.cache=none"
    assert {"tune.max_epochs=1", "tune.max_concurrent_trials=2", "ray.num_workers=1"} <= set(cmd)


def test_unknown_server_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--servers", "sqlite,mysql"])
    assert "mysql" in capsys.readouterr().err

