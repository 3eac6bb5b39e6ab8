"""``etva data synth`` (generate the synthetic "shapes" benchmark), ``etva data check`` (validate a
dataset: annotations, every video decodable) and ``etva data import-features`` (existing ``.npy``/``.npz``
features into the Parquet feature store). A light module: the generator and the checker are imported
only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from etva.cli.errors import UsageError
from etva.config.choices import ObjectWords, SynthMode

__all__ = [
    "DATA_COMMANDS", "add_parser", "add_synth_parser", "add_check_parser", "add_import_parser", "run_synth",
    "run_check", "run_import",
]  # fmt: skip

_FORMATS = ("msrvtt", "activitynet", "lsmdc")
_DATASETS = ("msrvtt", "activitynet", "lsmdc")


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
    p.add_argument(
        "--mode",
        choices=get_args(SynthMode),
        default=None,
        help="shapes (default) or compositional: bound attributes in groups of distractors (docs/study.md)",
    )
    p.add_argument(
        "--object-words",
        choices=get_args(ObjectWords),
        default=None,
        help="compositional captions: 'a golden disc' (phrase, default) or 'a yellowcircle' (fused)",
    )
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
        ("mode", "mode"),
        ("object_words", "object_words"),
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


def add_import_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``import-features`` to the ``etva data`` subcommands."""
    p = subparsers.add_parser(
        "import-features",
        help="import .npy/.npz features into a Parquet feature store",
        description="Convert existing pre-extracted features into the Parquet feature store that training "
        "reads (data.feature_store): a folder with features_manifest.json and <expert>/<video_id>.npy "
        "files; a folder of <video_id>.npy files of one expert (--expert); or one array per split: a .npz "
        "with 'ids' and 'features', or a .npy with --ids. Shapes and ids are checked (bad entries are "
        "listed and not written); with --root, the dataset's videos that have no features are reported. "
        "A re-run writes only what is not stored yet. Exit code 0 when all is well, 1 when entries were "
        "invalid or videos lack features, 2 for usage mistakes.",
    )
    p.add_argument("source", help="features folder, .npz, or .npy file")
    p.add_argument("--out", required=True, help="store root (set data.feature_store to it)")
    p.add_argument("--expert", default="", help="expert name (model.experts.<name>), without a manifest")
    p.add_argument("--ids", default="", help="for a .npy of one split: its video ids, one per line")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored precision")
    p.add_argument("--shard-size", type=_int_at_least(1), default=256, help="videos per shard (default 256)")
    p.add_argument("--dataset", choices=_FORMATS, default="msrvtt", help="dataset of --root (default msrvtt)")
    p.add_argument("--root", default="", help="dataset folder: report its videos that lack features")
    p.add_argument("--subset", default=None, help="MSRVTT protocol of --root (default 1k-A)")
    p.add_argument("--splits", default="train,test", help="splits of --root to check (default train,test)")
    p.set_defaults(handler=run_import)


def run_import(args: argparse.Namespace) -> int:
    # lazy: a handler's imports (pyarrow, numpy) load when it runs; `etva --help` starts in 0.1 s
    from etva.data.feature_import import import_features
    from etva.data.feature_store import FeatureStoreError
    from etva.data.records import AnnotationError

    try:
        results = import_features(args.source, args.out, expert=args.expert, ids_file=args.ids,
                                  shard_size=args.shard_size, dtype=args.dtype)  # fmt: skip
    except (FeatureStoreError, AnnotationError, OSError) as e:
        raise UsageError(str(e), "see etva data import-features --help for the layouts") from e
    ok = True
    for r in results:
        print(f"{r.expert}: dim {r.dim}, {r.stored} videos stored ({r.written} new) in {r.folder}")
        for where, why in list(r.invalid.items())[:20]:
            print(f"  invalid: {where}: {why}")
        if r.invalid:
            ok = False
            print(f"  {len(r.invalid)} invalid entries not imported")
    if args.root:
        ok = _report_missing(args, results) and ok
    print(f"store: {Path(args.out).expanduser()} (set data.feature_store to it)")
    return 0 if ok else 1


def _report_missing(args: argparse.Namespace, results) -> bool:
    """Print, per expert, the videos of ``--root``'s splits the store lacks; True when none."""
    # lazy: as in run_import
    from etva.data import load_records
    from etva.data.feature_store import open_stores

    ids = sorted({r.video_id for s in args.splits.split(",") if s.strip()
                  for r in load_records(args.dataset, args.root, s.strip(), args.subset)})  # fmt: skip
    stores, ok = open_stores(args.out), True
    for r in results:
        have = stores[r.expert].ids()
        missing = [v for v in ids if v not in have]
        if missing:
            ok = False
            more = ", ..." if len(missing) > 10 else ""
            print(f"{r.expert}: {len(missing)} of {len(ids)} videos have no features: {', '.join(missing[:10])}{more}")
    return ok


# subcommands of ``etva data``: name -> function adding its parser
DATA_COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "synth": add_synth_parser,
    "check": add_check_parser,
    "import-features": add_import_parser,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the top-level ``data`` command and its subcommands (``DATA_COMMANDS``)."""
    p = subparsers.add_parser("data", help="make and check datasets", description="Make and check datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    for add in DATA_COMMANDS.values():
        add(sub)
