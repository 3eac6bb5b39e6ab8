"""Every shipped manifest that runs a sweep launches the number of trials its comment promises.

The sweep command is parsed with the sweep driver's own argument parser, the config and search space are
loaded with the real ``etva.config`` / ``tuning.space`` code, the search is built by
``tuning.sweep.build_search`` and its trials are counted with Ray Tune's variant generator: the same path
``python -m tuning.sweep`` takes. No cluster, no network.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from etva.config import load_config
from tuning.space import load_space
from tuning.sweep import _space_path, build_search, parse_args

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = sorted(p for p in (REPO / "cluster").rglob("*.yaml") if "tuning.sweep" in p.read_text())
PROMISE = re.compile(r"=\s*(\d+)\s+trials")


def sweep_command(path: Path) -> list[str]:
    """The ``python -m tuning.sweep ...`` arguments of a manifest (a RayJob entrypoint)."""
    for doc in yaml.safe_load_all(path.read_text()):
        entry = (doc or {}).get("spec", {}).get("entrypoint", "")
        if "tuning.sweep" in entry:
            argv = shlex.split(entry)
            return argv[argv.index("tuning.sweep") + 1 :]
    raise AssertionError(f"{path}: no entrypoint runs tuning.sweep")


def promised_trials(path: Path) -> int:
    """The trial count the manifest's header comment promises ("... = N trials")."""
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    found = PROMISE.findall(header)
    assert len(found) == 1, f"{path}: the header comment must say '= N trials' once, found {found}"
    return int(found[0])


def count_trials(argv: list[str]) -> int:
    """The number of Tune trials the sweep driver would start for ``argv``."""
    from ray.tune.search.variant_generator import generate_variants

    args = parse_args(argv)
    cfg = load_config(REPO / args.config, args.overrides)
    space = load_space(REPO / _space_path(args, cfg), cfg)
    _, _, param_space, num_samples = build_search(cfg, space, concurrency=1)
    variants = sum(1 for _ in generate_variants({"config": param_space}))
    return variants * num_samples


def test_there_is_a_shipped_sweep():
    assert MANIFESTS, "no manifest under cluster/ runs tuning.sweep"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_sweep_runs_the_promised_number_of_trials(path):
    assert count_trials(sweep_command(path)) == promised_trials(path)


def test_count_sees_the_random_search_repeats():
    """The bug this guards: without tune.num_samples=1 a random search repeats every grid point."""
    argv = sweep_command(REPO / "cluster/kuberay/rayjob-sweep.yaml")
    plain = [a for a in argv if not a.startswith(("tune.search=", "tune.num_samples="))]
    assert count_trials(plain) == 4 * count_trials(argv)  # default tune.num_samples=4
