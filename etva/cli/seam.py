"""The one place where the ``etva`` command reaches the job layer (``ray_jobs``, ``tuning``).

etva/ is the pure library: it never imports ray, mlflow, ``ray_jobs`` or ``tuning`` — except here. Every
function imports its job-layer module lazily (inside the function), so ``etva --help`` and the data
commands start without Ray or MLflow, and a missing job layer (etva installed without the repository's
``ray_jobs``/``tuning`` packages) is a one-line :class:`~etva.cli.errors.UsageError`, not a traceback.
tests/unit/test_layering.py enforces that no other etva module imports these packages.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from etva.cli.errors import UsageError

__all__ = [
    "load_space",
    "load_study",
    "best_main",
    "best_error_type",
    "fetch_checkpoint",
    "check_mlflow_login",
    "index_main",
    "serve_main",
]

_HINT = "run it from the repository root"  # where the ray_jobs/ and tuning/ packages live


def _missing(what: str, e: ImportError) -> UsageError:
    return UsageError(f"{what} ({e})", _HINT)


def load_space(path: str | Path, cfg: Any) -> Any:
    """``tuning.space.load_space(path, cfg)``: the ``tuning.space.SearchSpace`` of a YAML file, validated
    against the resolved config ``cfg`` (an :class:`etva.config.Config`).

    Raises:
        UsageError: the ``tuning`` package cannot be imported.
        etva.config.ConfigError: a key of the space is not a config key (from ``tuning.space``).
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from tuning.space import load_space as _load_space
    except ModuleNotFoundError as e:
        raise _missing("'etva tune' needs the tuning package", e) from e
    return _load_space(path, cfg)


def load_study(path: str | Path, cfg: Any, seeds: int | None = None, only: list[str] | None = None) -> Any:
    """``tuning.study.load_study(...)``: the validated study space (variants x seeds) of a YAML file;
    ``check_config(cfg)`` first (a study needs ``data.val_from_train`` and ``data.test_split``).

    Raises:
        UsageError: the ``tuning`` package cannot be imported.
        etva.config.ConfigError: a bad space file or config (from ``tuning.study``).
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from tuning.study import check_config
        from tuning.study import load_study as _load_study
    except ModuleNotFoundError as e:
        raise _missing("'etva study' needs the tuning package", e) from e
    check_config(cfg)
    return _load_study(path, cfg, seeds, only)


def best_error_type() -> type[Exception]:
    """``tuning.best.BestError``: the user-facing error of ``best_main`` (no experiment, no runs, ...).

    Raises:
        UsageError: the ``tuning`` package cannot be imported.
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from tuning.best import BestError
    except ModuleNotFoundError as e:
        raise _missing("'etva best' needs the tuning.best module", e) from e
    return BestError


def best_main(
    experiment: str,
    model_name: str,
    top: int,
    tracking_uri: str,
    run_id: str = "",
    dry_run: bool = False,
    include_studies: bool = False,
) -> int:
    """``tuning.best.main(...)``: register the best run of ``experiment`` (or ``run_id``) as
    '<model_name>@champion'; ``dry_run`` prints the ranking only; ``include_studies`` also ranks the
    trials of ablation studies (skipped by default).

    Returns the exit code. Raises :func:`best_error_type` errors for user mistakes, and
    UsageError when the ``tuning`` package cannot be imported.
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from tuning.best import main
    except ModuleNotFoundError as e:
        raise _missing("'etva best' needs the tuning.best module", e) from e
    return main(experiment, model_name, top, tracking_uri, run_id, dry_run, include_studies)


def fetch_checkpoint(uri: str, dst: Path) -> Path:
    """``ray_jobs.evaluate.fetch_checkpoint``: a local checkpoint dir for a path or an MLflow URI.

    An MLflow URI (``models:/``, ``runs:/``, ``mlflow-artifacts:/``) is downloaded into ``dst`` (needs
    ``MLFLOW_TRACKING_URI``). MLflow's own errors pass through; UsageError when ``ray_jobs`` cannot be
    imported.
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from ray_jobs.driver import QUIET_ENV
        from ray_jobs.evaluate import fetch_checkpoint as _fetch
    except ModuleNotFoundError as e:
        raise _missing("MLflow URIs need the ray_jobs.evaluate module", e) from e
    for key, value in QUIET_ENV.items():  # no per-file download progress bar in the command's output
        os.environ.setdefault(key, value)
    return _fetch(uri, dst)


def check_mlflow_login(uri: str) -> dict[str, str]:
    """``ray_jobs.credentials.check_login(uri)``: refuse a job whose tracking server asks for a login this
    shell lacks (or rejects). Returns what a submitted job's environment may carry: the credentials
    file's path when ``$ETVA_MLFLOW_CREDENTIALS`` names one (a path on the cluster's nodes), else nothing.

    Raises:
        UsageError: no login, a rejected one, an unsafe credentials file, or no ``ray_jobs`` package.
    """
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from ray_jobs.credentials import CREDENTIALS_ENV, LoginError, check_login
    except ModuleNotFoundError as e:
        raise _missing("a job needs the ray_jobs package", e) from e
    try:
        check_login(uri)
    except LoginError as e:
        raise UsageError(str(e), "cluster/mlflow/README.md: users and job credentials") from e
    path = os.environ.get(CREDENTIALS_ENV, "")
    return {CREDENTIALS_ENV: path} if path else {}


def index_main(argv: list[str]) -> int:
    """``ray_jobs.index_job.main(argv)``: build/update an index with a Ray Data actor pool on the Ray head
    named by ``--address`` or ``$RAY_ADDRESS``. Raises UsageError when ``ray_jobs`` cannot be imported."""
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from ray_jobs.index_job import main
    except ModuleNotFoundError as e:
        raise _missing("'etva index' needs the ray_jobs.index_job module", e) from e
    return main(argv)


def serve_main(argv: list[str]) -> int:
    """``ray_jobs.serve_driver.main(argv)``: serve the model's index with Ray Serve until interrupted.
    Raises UsageError when ``ray_jobs`` cannot be imported, for a bad token (file) and when Serve on the
    head belongs to somebody else (other HTTP options, or the application already runs)."""
    # lazy: the job layer loads only when this command needs it (module docstring)
    try:
        from ray_jobs.serve_auth import TokenError
        from ray_jobs.serve_driver import ServeConflict, main
    except ModuleNotFoundError as e:
        raise _missing("'etva serve' needs the ray_jobs.serve_driver module", e) from e
    try:
        return main(argv)
    except (TokenError, ServeConflict) as e:
        raise UsageError(str(e), "docs/serving.md: tokens, and one Serve per Ray head") from e
