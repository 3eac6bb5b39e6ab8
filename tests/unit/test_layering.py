"""Layering: the pure library never imports the Ray/MLflow glue."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_etva_package_never_imports_ray_or_mlflow():
    import re

    pattern = re.compile(r"^\s*(import|from)\s+(ray|mlflow)\b", re.M)
    offenders = [str(p) for p in (REPO / "etva").rglob("*.py") if pattern.search(p.read_text())]
    assert not offenders
