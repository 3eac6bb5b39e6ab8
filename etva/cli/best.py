"""``etva best``: pick the best checkpoint of an MLflow experiment and register it as ``champion``.

A light module: etva/ never imports mlflow or ray, so the implementation (``tuning.best``) is reached
through :mod:`etva.cli.seam` only when the command runs.
"""

from __future__ import annotations

import argparse

from etva.cli import seam
from etva.cli.errors import UsageError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the top-level ``best`` command."""
    p = subparsers.add_parser(
        "best",
        help="register the best checkpoint of an MLflow experiment as 'champion'",
        description="Rank every run of an MLflow experiment (sweep trials included) by best/t2v_R1 "
        "(ties: lower best/t2v_MdR) and print the top runs; register the best run's logged model (or the "
        "--run-id run's) as a version of a registered model, the same kind of version the UI's Register "
        "model button makes (a run that already has one reuses it), and set its alias 'champion'.",
    )
    p.add_argument("--experiment", default="", help="MLflow experiment name (default: --run-id's)")
    p.add_argument("--run-id", default="", help="register this run instead of the top-ranked one")
    p.add_argument("--dry-run", action="store_true", help="print the ranking only; register nothing")
    p.add_argument("--model-name", default="", help="registered model name (default: the experiment name)")
    p.add_argument("--top", type=int, default=10, help="runs to list (default 10)")
    p.add_argument("--include-studies", action="store_true",
                   help="also rank the trials of ablation studies (etva study), skipped by default")  # fmt: skip
    p.add_argument("--tracking-uri", default="", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``etva best``: ``tuning.best.main``'s exit code; its BestError is a UsageError."""
    if not (args.experiment or args.run_id):
        raise UsageError("etva best: give --experiment (rank its runs) or --run-id (register that run)")
    best_error = seam.best_error_type()
    try:
        return seam.best_main(
            args.experiment, args.model_name, args.top, args.tracking_uri, args.run_id, args.dry_run,
            args.include_studies,
        )
    except best_error as e:
        raise UsageError(str(e), "check --experiment and --tracking-uri (or $MLFLOW_TRACKING_URI)") from e
