"""The project's defaults and shared rules, each written once.

Every entry point (the ``etva`` command, the Ray jobs, the sweeps, the local cluster script) asks this
module instead of repeating a rule:

- :data:`REPO`, :data:`DEFAULT_CONFIG`, :data:`DEFAULT_SPACE`: where the code and the default config and
  search space are (the two paths are relative to a checkout, since a submitted job runs from its copy);
- :func:`tracking_uri`: the MLflow server, a given value or ``$MLFLOW_TRACKING_URI``;
- :func:`is_loopback`: whether a bind address is reachable from this machine only (``etva serve``);
- :func:`git_commit`: the commit of a checkout (``$ETVA_GIT_COMMIT`` inside a container);
- :func:`setup_logging`: one log format, libraries quiet.

(The selection rule and its MLflow ``order_by`` live beside each other in :mod:`etva.eval.metrics`.)
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess
from pathlib import Path

__all__ = [
    "REPO",
    "DEFAULT_CONFIG",
    "DEFAULT_SPACE",
    "UNKNOWN_COMMIT",
    "LOG_FORMAT",
    "CLI_LOG_FORMAT",
    "tracking_uri",
    "is_loopback",
    "git_commit",
    "setup_logging",
]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "ray_jobs/configs/shapes.yaml"  # relative to a checkout (REPO or a job's working dir)
DEFAULT_SPACE = "tuning/spaces/default.yaml"  # relative to a checkout
UNKNOWN_COMMIT = "unknown"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # jobs and workers: their logs get times
CLI_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"  # a terminal: the user sees the time
# libraries that log at INFO on every call or epoch; their warnings and errors still show
QUIET_LOGGERS = ("urllib3", "alembic", "mlflow", "ray.data", "ray.train", "filelock", "matplotlib")


def tracking_uri(given: str = "") -> str:
    """The MLflow tracking server: ``given`` (an argument or config value), else ``$MLFLOW_TRACKING_URI``,
    else "" (no tracking server)."""
    return given or os.environ.get("MLFLOW_TRACKING_URI", "")


def is_loopback(host: str) -> bool:
    """True for a bind address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def git_commit(repo: str | Path = REPO) -> str:
    """The commit checked out in ``repo``: ``$ETVA_GIT_COMMIT`` when set (a container, or a job whose
    upload has no ``.git``), else ``git rev-parse HEAD``; :data:`UNKNOWN_COMMIT` when neither answers."""
    if os.environ.get("ETVA_GIT_COMMIT"):
        return os.environ["ETVA_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=repo, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN_COMMIT
    return (out.stdout.strip() if out.returncode == 0 else "") or UNKNOWN_COMMIT


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """The project's log format on the root logger, chatty libraries at WARNING (idempotent)."""
    logging.basicConfig(level=level, format=fmt)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
