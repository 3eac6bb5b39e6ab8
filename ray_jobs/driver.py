"""What every job driver (train, evaluate, sweep, extract) does before its own work, in one place.

- :func:`setup_logging`: one log format, library chatter quiet (one line per epoch plus errors);
- :func:`job_parser`: ``--config`` (default :data:`etva.config.settings.DEFAULT_CONFIG`) and ``a.b=c`` overrides;
- :func:`load_job_config`: load the config and make its data paths absolute (workers run elsewhere);
- :func:`init_ray`: connect to the cluster (or start a local one), with the environment our jobs need;
- :func:`storage_path`: where Ray Train / Tune keep runs and checkpoints.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

import ray

from etva.config import Config, load_config, settings

__all__ = [
    "setup_logging",
    "job_parser",
    "load_job_config",
    "resolve_paths",
    "init_ray",
    "storage_path",
    "disable_mlflow_telemetry",
]


# MLflow's per-download progress bars and the run links it prints whenever a fluent run ends
QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def setup_logging(level: int = logging.INFO) -> None:
    """The project's log format on the root logger, libraries quiet: one line per epoch plus warnings and
    errors in a job log (idempotent: safe in every worker and driver). The library's
    :func:`etva.config.settings.setup_logging`, plus MLflow's printing and Ray Train's per-report lines."""
    _quiet_train_reports(level)  # first: importing Ray Train imports Ray Data, which sets its logger to DEBUG
    settings.setup_logging(level)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def _quiet_train_reports(level: int) -> None:
    """Ray Train 2.60 logs every ``ray.train.report`` with all its metrics at INFO ("Reporting training
    result ..."), from a logger named after its source file, so no dotted name reaches it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray version, or no Ray in this process
        return
    logging.getLogger(context.__file__).setLevel(max(level, logging.WARNING))


def disable_mlflow_telemetry() -> None:
    """mlflow 3.17's telemetry thread sets/unsets an environment variable while HTTP requests iterate
    ``os.environ``: with many processes starting at once a request failed with KeyError
    '_MLFLOW_TELEMETRY_SESSION_ID'. There is no network here anyway; call before importing mlflow."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A job's argument parser with ``--config`` and trailing ``section.key=value`` overrides.

    The caller adds its own options; ``overrides`` is added last so it collects the positional rest.
    """
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--config", default=str(settings.REPO / settings.DEFAULT_CONFIG), help="YAML config file")
    return p


def add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. model.num_clusters=32")


def resolve_paths(cfg: Config) -> Config:
    """Make data paths absolute (jobs and workers run in other folders)."""
    places = [(cfg.data, n) for n in ("root", "tokenizer_path", "feature_store")]
    places += [(cfg.extract, "output_dir"), (cfg.model.text, "pretrained_path")]
    places += [(e, "pretrained_path") for e in cfg.model.experts.values()]
    for section, name in places:
        value = getattr(section, name)
        if value and "://" not in value:
            setattr(section, name, str(Path(value).expanduser().resolve()))
    return cfg


def load_job_config(config: str | Path | None, overrides: list[str]) -> Config:
    """The job's config: file (or defaults) + overrides, data paths absolute."""
    return resolve_paths(load_config(config, overrides))


def init_ray(address: str, **kwargs) -> None:
    """``ray.init`` for a job driver: ``""``/``"local"`` starts a local cluster, else connect.

    Outside ``ray job submit`` (a local run) the job's processes get the environment our jobs rely on:
    Train's controller polls every 0.1 s instead of 2 s (each report otherwise takes about 2 s) and MLflow
    telemetry is off (see :func:`disable_mlflow_telemetry`). Under ``ray job submit`` the job's runtime
    environment is the cluster's and is left alone.
    """
    disable_mlflow_telemetry()
    if address == "local" or (address == "" and not os.environ.get("RAY_ADDRESS")):
        _isolate_private_cluster(kwargs)
    if not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        env = {
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        env.update({k: v for k, v in os.environ.items() if k.startswith("ETVA_")})
        kwargs.setdefault("runtime_env", {"env_vars": env})
    ray.init(address=None if address in ("", "local") else address, **kwargs)


def _isolate_private_cluster(kwargs: dict) -> None:
    """Make the cluster this process is about to start findable by its own processes only.

    Ray's state API, which Ray Train calls from inside the cluster (its placement-group cleaner asks
    whether the controller actor is alive), finds its cluster through ``RAY_API_SERVER_ADDRESS`` or
    ``RAY_ADDRESS``, else by scanning the machine for GCS processes. Beside another head (the quickstart's,
    with ``runs/local/env.sh`` sourced) it then asks the other cluster, or fails with "Found multiple active
    Ray instances". So: the other cluster's ``RAY_ADDRESS`` is dropped (``ray.init`` would join it), the
    dashboard gets a free port, and ``RAY_API_SERVER_ADDRESS`` names it before the head starts: the raylet
    and every worker inherit this process's environment.
    """
    os.environ.pop("RAY_ADDRESS", None)
    if kwargs.get("include_dashboard") is False:  # no state API at all; nothing to point at
        os.environ.pop("RAY_API_SERVER_ADDRESS", None)
        return
    if not kwargs.get("dashboard_port"):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            kwargs["dashboard_port"] = sock.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{kwargs['dashboard_port']}"


def storage_path(cfg: Config) -> str:
    """Absolute storage path (or URI) of Ray Train / Tune runs: ``ray.storage_path``,
    ``$ETVA_STORAGE_PATH`` or ``~/etva-runs``."""
    path = cfg.ray.storage_path or os.environ.get("ETVA_STORAGE_PATH") or str(Path.home() / "etva-runs")
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())
