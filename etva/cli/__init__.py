"""The ``etva`` command line (``etva <command> ...``, also ``python -m etva``); one module per command.

``main`` holds the registry and the entry point; ``jobs`` (train/tune/eval), ``best``, ``search`` and
``data`` (synth/check) add their parsers; ``seam`` is the only module that reaches ``ray_jobs``/``tuning``.
"""

from etva.cli.errors import UsageError
from etva.cli.main import COMMANDS, build_parser, main

__all__ = ["UsageError", "COMMANDS", "build_parser", "main"]
