"""``etva data check``: validate a dataset (annotations, every video decodable); a light module."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_parser", "run"]

_DATASETS = ("msrvtt", "activitynet", "lsmdc", "features")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check`` to the ``etva data`` subcommands."""
    p = subparsers.add_parser(
        "check",
        help="validate a dataset: annotations and every video",
        description="Load every split's annotations (malformed files are reported with file, line/key and "
        "what was expected), check them for consistency (duplicates, train/test overlap, dropped captions) "
        "and decode every referenced video with the training transform. Prints a report; exit code 0 when "
        "all is well, 1 when annotation errors or bad files exist, 2 for usage mistakes.",
    )
    p.add_argument("--dataset", choices=_DATASETS, default="msrvtt", help="source format (default msrvtt)")
    p.add_argument("--root", required=True, help="dataset folder (annotation files + videos)")
    p.add_argument("--subset", default=None, help="MSRVTT protocol: 1k-A (default), 1k-B, full, 7k")
    p.add_argument("--config", default="", help="take decode settings (frames, size, audio) from this config")
    p.add_argument("--workers", type=int, default=2, help="decode threads (default 2)")
    p.add_argument("--report", default="", help="also write the report as JSON here")
    p.add_argument("--no-decode", action="store_true", help="check annotations only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from etva.cli import UsageError
    from etva.config import DataConfig, load_config
    from etva.data.check import check_dataset

    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise UsageError(
            f"--root {root}: no such directory",
            f"generate the shapes data with: etva data synth --out {root}",
        )
    data_cfg = load_config(args.config).data if args.config else DataConfig()
    data_cfg.dataset, data_cfg.root = args.dataset, str(root)
    if args.subset:
        data_cfg.subset = args.subset
    try:
        report = check_dataset(
            args.dataset, root, args.subset, data_cfg,
            workers=args.workers, progress=not args.no_progress, decode=not args.no_decode,
        )  # fmt: skip
    except ValueError as e:
        raise UsageError(str(e), "see --help for datasets and subsets") from e
    print(report.format())
    if args.report:
        Path(args.report).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.ok else 1
