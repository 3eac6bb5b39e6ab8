"""Shared fixtures of the tuning unit tests: the shapes config, a space-file writer, fake MLflow runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from etva.config import Config, load_config

SHAPES = Path(__file__).resolve().parents[3] / "ray_jobs/configs/shapes.yaml"


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(SHAPES)


@pytest.fixture
def write_space(tmp_path: Path) -> Callable[[str], Path]:
    """``write_space(text)`` -> path of a space YAML holding ``text`` (overwritten by each call)."""

    def write(text: str) -> Path:
        p = tmp_path / "space.yaml"
        p.write_text(text)
        return p

    return write


@pytest.fixture
def make_run() -> Callable[..., SimpleNamespace]:
    """``make_run(name, r1, mdr, sampled, early=False, epochs=2, status="FINISHED")``: a fake MLflow run."""

    def run(name, r1, mdr, sampled, early=False, epochs=2, status="FINISHED"):
        metrics = {} if r1 is None else {"best/t2v_R1": r1, "best/t2v_R5": 90.0, "best/t2v_MdR": mdr}
        tags = {
            "etva.sampled": json.dumps(sampled),
            "etva.early_stopped": str(early).lower(),
            "etva.epochs_run": str(epochs),
        }
        return SimpleNamespace(
            info=SimpleNamespace(run_name=name, status=status, run_id=f"id-{name}"),
            data=SimpleNamespace(metrics=metrics, tags=tags),
        )

    return run
