"""Exception types raynas raises for problems a user can fix.

The CLI prints any ``RaynasError`` as one line on stderr and exits with status 2; every other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class RaynasError(Exception):
    """Base class for user-facing errors (bad input, missing files, mismatched artifacts)."""


class ConfigError(RaynasError):
    """A job or search-space file, or a command-line override, is invalid."""


class ArchError(RaynasError):
    """An architecture does not belong to its search space."""


class CheckpointError(RaynasError):
    """A checkpoint is missing, unreadable, or was trained for another space or family."""


def describe_value(value: object) -> str:
    """Short repr of a user value for error messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
