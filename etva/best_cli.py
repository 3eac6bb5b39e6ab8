"""``etva best``: pick the best checkpoint of an MLflow experiment and register it as ``champion``.

A light module: etva/ never imports mlflow or ray, so the implementation (``tuning.best``) is imported
by name only when the command runs.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["add_parser", "run"]

IMPL = "tuning.best"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the top-level ``best`` command."""
    p = subparsers.add_parser(
        "best",
        help="register the best checkpoint of an MLflow experiment as 'champion'",
        description="Rank every run of an MLflow experiment (sweep trials included) by best/t2v_R1 "
        "(ties: lower best/t2v_MdR), register the best run's checkpoint artifact as a new version of a "
        "registered model, set its alias 'champion', and print the top runs.",
    )
    p.add_argument("--experiment", required=True, help="MLflow experiment name")
    p.add_argument("--model-name", default="", help="registered model name (default: the experiment name)")
    p.add_argument("--top", type=int, default=10, help="runs to list (default 10)")
    p.add_argument("--tracking-uri", default="", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from etva.cli import UsageError

    try:
        impl = importlib.import_module(IMPL)
    except ModuleNotFoundError as e:
        raise UsageError(
            f"'etva best' needs the {IMPL} module ({e})", "run it from the repository root"
        ) from e
    try:
        return impl.main(args.experiment, args.model_name, args.top, args.tracking_uri)
    except impl.BestError as e:
        raise UsageError(str(e), "check --experiment and --tracking-uri (or $MLFLOW_TRACKING_URI)") from e
