"""``etva data synth``: generate the synthetic "shapes" benchmark (a light module; the generator
is imported only when the command runs)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

_FORMATS = ("msrvtt", "activitynet", "lsmdc")


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


def add_parser(subparsers: argparse._SubParsersAction) -> None:
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
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
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
