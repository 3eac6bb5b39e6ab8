"""The ``etva`` command line: ``etva <command> [<subcommand>] ...`` (also ``python -m etva``).

Commands are registered, not hard-coded: a command module exposes an ``add_parser(subparsers)`` function,
which adds its parser and sets ``handler=<function(args) -> int>`` as a default; ``COMMANDS`` maps each
top-level name to that function (subcommands of ``etva data`` are registered in :mod:`etva.cli.data`).
Command modules are light: heavy libraries are imported inside the handler. A handler signals a user
mistake by raising :class:`UsageError` (or an error type listed in ``_user_errors``): the CLI prints one
line plus a hint and exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from etva.cli import best, data, jobs, search, serving
from etva.cli.errors import UsageError
from etva.config.settings import CLI_LOG_FORMAT, setup_logging

__all__ = ["UsageError", "COMMANDS", "build_parser", "main"]

# top-level commands: name -> function adding its parser
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "data": data.add_parser,
    "train": jobs.add_train_parser,
    "tune": jobs.add_tune_parser,
    "study": jobs.add_study_parser,
    "eval": jobs.add_eval_parser,
    "extract": jobs.add_extract_parser,
    "best": best.add_parser,
    "search": search.add_parser,
    "index": serving.add_index_parser,
    "serve": serving.add_serve_parser,
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean a user mistake (reported without a traceback)."""
    errors: list[type[BaseException]] = [UsageError]
    for entry in (
        "etva.config:ConfigError",
        "etva.data.synth:SynthError",
        "etva.train.checkpoint:CheckpointError",
        "etva.index.store:IndexError_",
    ):
        module, name = entry.split(":")
        if module in sys.modules:  # only types a handler actually imported
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
    """The ``etva`` parser with every command of ``COMMANDS``."""
    parser = argparse.ArgumentParser(
        prog="etva", description="ETVA text-video retrieval: data, training, evaluation."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for add in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command's handler; returns the exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `a.b=c` overrides may follow options: `etva train data.root=x --local train.epochs=2`
        if not hasattr(args, "overrides") or any(e.startswith("-") or "=" not in e for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    setup_logging(logging.DEBUG if args.verbose else logging.INFO, CLI_LOG_FORMAT)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("etva: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        print(f"etva: error: {e}", file=sys.stderr)
        hint = getattr(e, "hint", "")
        print(f"hint: {hint or 'run with --help for usage'}", file=sys.stderr)
        return 2
