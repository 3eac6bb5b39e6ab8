"""The ``etva`` command line: ``etva <command> [<subcommand>] ...`` (also ``python -m etva``).

Commands are registered, not hard-coded: a command module exposes ``add_parser(subparsers)``, which
adds its parser and sets ``handler=<function(args) -> int>`` as a default. Top-level commands go in
``COMMANDS``; subcommands of ``etva data`` go in ``DATA_COMMANDS`` (each entry is
``"module.path:add_parser"``, imported when the CLI starts; keep those modules light and import heavy
libraries inside the handler). A handler signals a user mistake by raising :class:`UsageError`
(or an error type listed in ``USER_ERRORS``): the CLI prints one line plus a hint and exits with 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

__all__ = ["UsageError", "COMMANDS", "DATA_COMMANDS", "build_parser", "main"]

# "module:function" entries; others add e.g. "etva.data.check_cli:add_parser" here
DATA_COMMANDS: list[str] = ["etva.data.synth_cli:add_parser", "etva.data.check_cli:add_parser"]


class UsageError(Exception):
    """A user mistake (bad argument, bad path): printed as one line + hint, exit code 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def _load(entry: str) -> Callable[[argparse._SubParsersAction], None]:
    module, func = entry.split(":")
    return getattr(importlib.import_module(module), func)


def _add_data(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="make and check datasets", description="Make and check datasets.")
    sub = p.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    for entry in DATA_COMMANDS:
        _load(entry)(sub)


# top-level commands: name -> function adding its parser; others add "train", "eval", "best", ...
COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "data": _add_data,
    "train": lambda sub: _load("etva.jobs_cli:add_train_parser")(sub),
    "tune": lambda sub: _load("etva.jobs_cli:add_tune_parser")(sub),
    "eval": lambda sub: _load("etva.jobs_cli:add_eval_parser")(sub),
    "best": lambda sub: _load("etva.best_cli:add_parser")(sub),
    "search": lambda sub: _load("etva.search_cli:add_parser")(sub),
}


def _user_errors() -> tuple[type[BaseException], ...]:
    """Error types that mean a user mistake (reported without a traceback)."""
    errors: list[type[BaseException]] = [UsageError]
    for entry in (
        "etva.config:ConfigError",
        "etva.data.synth:SynthError",
        "etva.checkpoint:CheckpointError",
        "etva.search:SearchError",
    ):
        module, name = entry.split(":")
        if module in sys.modules:  # only types a handler actually imported
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def build_parser() -> argparse.ArgumentParser:
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
