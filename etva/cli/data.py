"""``etva data synth`` (generate the synthetic "shapes" benchmark) and ``etva data check`` (validate a
dataset: annotations, every video decodable). A light module: the generator and the checker are imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from etva.cli.errors import UsageError

__all__ = ["DATA_COMMANDS", "add_parser", "add_synth_parser", "add_check_parser", "run_synth", "run_check"]

_FORMATS = ("msrvtt", "activitynet", "lsmdc")
_DATASETS = ("msrvtt", "activitynet", "lsmdc", "features")


def _int_at_least(minimum: int) -> type:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_synth_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``synth`` to the ``etva data`` subcommands."""
    p = subparsers.add_parser(
        "synth",
        help="generate the synthetic shapes text-video benchmark",
        description="Generate the synthetic 'shapes' text-video benchmark (H.264/AAC mp4 clips + the "
        "annotation files of MSRVTT, ActivityNet Captions or LSMDC + shapes_manifest.json). The same "
        "arguments give identical files; re-running into the same directory only completes it.",
    )
    p.add_argument("--out", required=True, help="output directory (new, empty, or a previous synth output)")
    p.add_argument("--num-videos", type=_int_at_least(1), default=160, help="number of videos (default 160)")
    p.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default 0)")
    p.add_argument("--format", choices=_FORMATS, default="msrvtt", help="dataset layout (default msrvtt)")
    p.add_argument("--workers", type=_int_at_least(1), default=None, help="processes (default: all cores)")
    p.add_argument("--width", type=_int_at_least(16), default=None, help="frame width (default 160)")
    p.add_argument("--height", type=_int_at_least(16), default=None, help="frame height (default 120)")
    p.add_argument("--fps", type=_int_at_least(1), default=None, help="frames per second (default 15)")
    p.add_argument("--duration", type=float, default=None, help="clip length in seconds (default 4)")
    p.add_argument("--captions-per-video", type=_int_at_least(1), default=None, help="default 10")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    # lazy: the generator loads PyAV and numpy; the etva command itself starts in 0.09 s of CPU
    from etva.config import SynthConfig
    from etva.data.synth import generate_dataset

    cfg = SynthConfig()
    for arg, name in (
        ("width", "width"),
        ("height", "height"),
        ("fps", "fps"),
        ("duration", "duration_s"),
        ("captions_per_video", "captions_per_video"),
    ):
        value = getattr(args, arg)
        if value is not None:
            setattr(cfg, name, value)
    summary = generate_dataset(
        args.out,
        args.num_videos,
        args.seed,
        fmt=args.format,
        cfg=cfg,
        workers=args.workers,
        progress=not args.no_progress,
    )
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def add_check_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    # lazy: the checks load PyAV and numpy; the etva command itself starts in 0.09 s of CPU
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


# subcommands of ``etva data``: name -> function adding its parser
DATA_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "synth": add_synth_parser,
    "check": add_check_parser,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the top-level ``data`` command and its subcommands (``DATA_COMMANDS``)."""
    p = subparsers.add_parser("data", help="make and check datasets", description="Make and check datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    for add in DATA_COMMANDS.values():
        add(sub)
