"""What every job driver does first (ray_jobs.driver): parser, config, paths, storage, logging."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from etva.config import ConfigError, settings
from ray_jobs.driver import add_overrides, job_parser, load_job_config, setup_logging, storage_path


def test_job_parser_defaults_to_the_shipped_config_and_collects_overrides():
    p = job_parser("python -m ray_jobs.train", "train")
    p.add_argument("--run-name", default="")
    add_overrides(p)
    args = p.parse_args(["--run-name", "x", "model.num_clusters=8", "train.epochs=1"])
    assert Path(args.config) == settings.REPO / settings.DEFAULT_CONFIG and Path(args.config).is_file()
    assert args.overrides == ["model.num_clusters=8", "train.epochs=1"]


def test_load_job_config_makes_data_paths_absolute_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_job_config(
        settings.REPO / settings.DEFAULT_CONFIG,
        ["data.root=shapes", "data.feature_store=s3://bucket/store", "model.num_clusters=8"],
    )
    assert cfg.data.root == str(tmp_path / "shapes")
    assert cfg.data.feature_store == "s3://bucket/store"
    assert cfg.model.num_clusters == 8
    with pytest.raises(ConfigError, match="model.nope"):
        load_job_config(None, ["model.nope=1"])


def test_storage_path_from_config_environment_or_home(tmp_path, monkeypatch):
    cfg = load_job_config(None, [])
    monkeypatch.setenv("ETVA_STORAGE_PATH", str(tmp_path / "env"))
    assert storage_path(cfg) == str(tmp_path / "env")
    cfg.ray.storage_path = "s3://bucket/runs"
    assert storage_path(cfg) == "s3://bucket/runs"
    cfg.ray.storage_path = ""
    monkeypatch.delenv("ETVA_STORAGE_PATH")
    assert storage_path(cfg) == str(Path.home() / "etva-runs")


def test_setup_logging_quiets_libraries_and_mlflow_printing(monkeypatch):
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    setup_logging()
    assert logging.getLogger("ray.data").level == logging.WARNING
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
