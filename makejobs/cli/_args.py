"""Command-line input shared by the commands: help layout, value types, usage errors.

argparse reports what it can check itself; what only a command can check
(say, ``--max`` below ``--min``) is raised as :class:`UsageError`, which
:func:`makejobs.cli.main` reports the way argparse does (exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence

__all__ = [
    "Formatter",
    "UsageError",
    "check_slots",
    "fill",
    "split_command",
]


def _terminal_columns() -> int:
    """The width help is laid out for: $COLUMNS, else stdout's terminal, else 80."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Every parser keeps the line breaks of its epilog (tables, examples).

    The width is found as :func:`shutil.get_terminal_size` would (argparse's
    default), without importing :mod:`shutil`: argparse makes a formatter for
    every ``add_argument`` call, and shutil's imports are a tenth of a
    command's start-up.
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        if width is None:
            width = max(_terminal_columns() - 2, 11)
        super().__init__(prog, indent_increment, max_help_position, width)


_HELP_WIDTH = 88


class UsageError(Exception):
    """Bad command-line input found after argparse (reported like argparse does)."""


def fill(text: str) -> str:
    """Wrap each paragraph of *text* for --help; indented paragraphs (examples) stay as is."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if p.startswith(" ") else textwrap.fill(p, _HELP_WIDTH) for p in paragraphs
    )


def split_command(words: Sequence[str]) -> list[str]:
    """The ``-- CMD ...`` of ``serve`` and ``exec``, without the ``--``."""
    # argparse.REMAINDER keeps the "--" that separates our options from CMD.
    command = list(words)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError("a command to run is required after the options (use -- CMD ...)")
    return command


def check_slots(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number
