"""``etva index`` and ``etva serve``: build the index of a model with Ray Data; serve it with Ray Serve.

Both run against a running Ray head (``--address`` or ``$RAY_ADDRESS``; ``source runs/local/env.sh`` sets
it) and reach the job layer only through :mod:`etva.cli.seam`. The arguments are checked here first, so a
user mistake is one line plus a hint (docs/serving.md).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from etva.cli import seam
from etva.cli.errors import UsageError
from etva.cli.jobs import MLFLOW_HINT, START_HINT, check_url
from etva.config.settings import is_loopback, tracking_uri

__all__ = ["add_index_parser", "add_serve_parser"]


def _add_model_and_source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="models:/<name>@<alias>, models:/<name>/<version> or a "
                   "checkpoint dir")  # fmt: skip
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--videos", default="", help="folder of videos (searched recursively)")
    src.add_argument("--store", default="", help="Parquet feature store (etva extract) instead of videos")
    p.add_argument("--address", default="", help="Ray head (default: $RAY_ADDRESS)")
    p.add_argument("--tracking-uri", default="", help="MLflow server (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--actors", type=int, default=1, help="encoder actors of the Ray Data job (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="videos per encoder batch (default 8)")


def add_index_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "index", help="encode a video folder (or feature store) into a search index (Ray Data)",
        description="Encode every video of --videos (or --store) with the model in a Ray Data actor pool and "
        "write the video vectors as Parquet with a manifest (model version, digest, sources). Re-running "
        "adds new videos, re-encodes changed ones, drops deleted ones and resumes a stopped build; an index "
        "never mixes two models.",
    )  # fmt: skip
    _add_model_and_source(p)
    p.add_argument("--index", default="", help="index directory (default: runs/index/<folder>-<digest>, "
                   "the one 'etva search --videos' uses)")  # fmt: skip
    p.add_argument("--part-size", type=int, default=64, help="videos per committed Parquet part (default 64)")
    p.set_defaults(handler=run_index)


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve text->video search for a model alias with Ray Serve",
        description="Start a Ray Serve application on the Ray head: GET/POST /search, /health and a search "
        "page over the index of the model the alias names (built first when missing). When the alias moves, "
        "the new version's index is built and the deployment is updated without dropping requests.",
    )  # fmt: skip
    _add_model_and_source(p)
    p.add_argument("--index-root", default="runs/index", help="where the per-model indexes live")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    p.add_argument(
        "--token-file",
        default="",
        help="require the bearer token in this file (readable by you only; default: $ETVA_SERVE_TOKEN); "
        "required when --host is not a loopback address",
    )
    p.add_argument("--token", default="", help=argparse.SUPPRESS)  # refused: ps and shell history show it
    p.add_argument(
        "--replace",
        action="store_true",
        help="restart a Serve that runs with other HTTP options, or take over the application of another "
        "etva serve (default: refuse)",
    )
    p.add_argument("--replicas", type=int, default=1, help="replicas of the search deployment (default 1)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per replica (default: the cluster's CPUs over the replicas, capped by the "
        "replica's node)",
    )
    p.add_argument("--poll-s", type=float, default=30.0, help="seconds between alias checks (default 30)")
    p.set_defaults(handler=run_serve)


def _check(args: argparse.Namespace) -> list[str]:
    """Validate the common arguments; returns the shared argv of the job-layer entry points."""
    address = args.address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise UsageError("no Ray head: --address unset and $RAY_ADDRESS unset", START_HINT)
    source = args.videos or args.store
    if not Path(source).exists():
        raise UsageError(f"--{'videos' if args.videos else 'store'} {source}: no such file or directory")
    if args.actors < 1 or args.batch_size < 1:
        raise UsageError("--actors and --batch-size must be >= 1")
    argv = ["--model", args.model, "--address", address, "--actors", str(args.actors)]
    argv += ["--batch-size", str(args.batch_size)]
    argv += ["--videos", args.videos] if args.videos else ["--store", args.store]
    if args.model.startswith("models:/"):
        uri = tracking_uri(args.tracking_uri)
        if not uri:
            raise UsageError(f"--model {args.model}: an MLflow URI needs a tracking server",
                             "set MLFLOW_TRACKING_URI (source runs/local/env.sh) or pass --tracking-uri")  # fmt: skip
        check_url(f"{uri.rstrip('/')}/health", f"the MLflow server ({uri})", MLFLOW_HINT)
        argv += ["--tracking-uri", uri]
    elif not (Path(args.model) / "model.pt").is_file():
        raise UsageError(f"--model {args.model}: not a checkpoint directory (no model.pt)")
    return argv


def run_index(args: argparse.Namespace) -> int:
    """Handler of ``etva index``."""
    argv = _check(args)
    argv += ["--index", args.index] if args.index else []
    return seam.index_main([*argv, "--part-size", str(args.part_size)])


def run_serve(args: argparse.Namespace) -> int:
    """Handler of ``etva serve`` (blocks until interrupted). The token stays in this process: the driver
    reads ``--token-file`` or ``$ETVA_SERVE_TOKEN`` itself and hands the replicas its digest."""
    if args.token:
        raise UsageError(
            "--token: a token on the command line is visible to every user (ps) and kept in "
            "the shell's history",
            "put it in a file only you can read and pass --token-file FILE, or export ETVA_SERVE_TOKEN",
        )
    if not is_loopback(args.host) and not (args.token_file or os.environ.get("ETVA_SERVE_TOKEN")):
        raise UsageError(
            f"--host {args.host}: serving beyond this machine needs a token",
            "pass --token-file FILE or set ETVA_SERVE_TOKEN",
        )
    if args.replicas < 1 or args.threads < 0:
        raise UsageError("--replicas must be >= 1 and --threads >= 0 (0: from the cluster's CPUs)")
    argv = _check(args)
    argv += ["--index-root", args.index_root, "--host", args.host, "--port", str(args.port)]
    argv += ["--poll-s", str(args.poll_s), "--replicas", str(args.replicas), "--threads", str(args.threads)]
    argv += ["--token-file", args.token_file] if args.token_file else []
    return seam.serve_main([*argv, "--replace"] if args.replace else argv)
