"""The error a command handler raises for a user mistake (kept apart so every command module can import it)."""

from __future__ import annotations

__all__ = ["UsageError"]


class UsageError(Exception):
    """A user mistake (bad argument, bad path): printed as one line + hint, exit code 2."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint
