"""etva.config.settings: the defaults and shared rules every entry point asks for."""

from __future__ import annotations

import logging
import math
import re
import subprocess

import pytest

from etva.config import settings
from etva.eval.metrics import ranking_order_by, selection_key


def test_tracking_uri_is_the_given_value_else_the_environment(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert settings.tracking_uri("http://given:5000") == "http://given:5000"
    assert settings.tracking_uri("") == "http://env:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert settings.tracking_uri() == ""


def test_git_commit_of_a_checkout_an_override_and_a_plain_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("ETVA_GIT_COMMIT", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=settings.REPO)
    if head.returncode == 0:
        assert settings.git_commit() == head.stdout.strip()
    assert settings.git_commit(tmp_path) == settings.UNKNOWN_COMMIT  # not a git checkout
    monkeypatch.setenv("ETVA_GIT_COMMIT", "abc1234")
    assert settings.git_commit(tmp_path) == "abc1234"


def test_default_paths_exist_in_the_repository():
    assert (settings.REPO / settings.DEFAULT_CONFIG).is_file()
    assert (settings.REPO / settings.DEFAULT_SPACE).is_file()


def test_setup_logging_quiets_chatty_libraries():
    settings.setup_logging(logging.INFO)
    assert logging.getLogger("urllib3").level == logging.WARNING
    settings.setup_logging(logging.ERROR)
    assert logging.getLogger("mlflow").level == logging.ERROR


def _mlflow_sort(runs: list[dict[str, float]], order_by: list[str]) -> list[dict[str, float]]:
    """What the tracking server does with ``order_by``: sort by each clause in turn (stable), missing
    and NaN values last whatever the direction."""
    out = list(runs)
    for clause in reversed(order_by):
        m = re.fullmatch(r"metrics\.`(.+)` (ASC|DESC)", clause)
        assert m, clause
        key, desc = m.group(1), m.group(2) == "DESC"

        def present(r, key=key):
            return key in r and not math.isnan(r[key])

        out.sort(key=lambda r, key=key, desc=desc: (-r[key] if desc else r[key]) if present(r) else 0.0)
        out.sort(key=lambda r: not present(r))
    return out


@pytest.mark.parametrize("prefix", ["best/", "val/"])
def test_ranking_order_by_is_the_selection_rule(prefix):
    rows = [(50.0, 2.0), (50.0, 1.5), (70.0, 3.0), (10.0, 1.0), (70.0, 1.0), (50.0, 2.5)]
    runs = [{f"{prefix}t2v_R1": r1, f"{prefix}t2v_MdR": mdr} for r1, mdr in rows]
    by_rule = sorted(runs, key=lambda r: selection_key(r, prefix=prefix), reverse=True)
    assert _mlflow_sort(runs, ranking_order_by(prefix)) == by_rule
