"""docs/architecture.md is the map of the house: every module of the library, the job layer, the sweeps,
the local cluster and the benchmarks is named in it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOMS = ("etva", "ray_jobs", "tuning", "cluster", "benchmarks")
DOC = REPO / "docs" / "architecture.md"


def _modules() -> list[Path]:
    return sorted(
        p for room in ROOMS for p in (REPO / room).rglob("*.py") if p.name not in ("__init__.py", "__main__.py")
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_module_is_on_the_map(path: Path):
    assert f"{path.name}" in DOC.read_text(), f"{path.relative_to(REPO)} is not named in docs/architecture.md"
