"""How every ``makejobs`` command reports to its caller: exit statuses, stderr lines, variables.

The exit statuses and :data:`SLOTS_VARIABLE` are part of the command line's interface (see
:mod:`makejobs.cli`) and are re-exported there.
"""

from __future__ import annotations

import os
import sys

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "SLOTS_VARIABLE",
    "say",
    "silence_closed_output",
]

EXIT_USAGE = 2
#: ``exec --wait`` passed before ``--min`` slots were held (as timeout(1)).
EXIT_TIMEOUT = 124
#: makejobs itself failed (as env(1)/timeout(1)).
EXIT_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: The variable ``makejobs exec`` sets to the number of slots it holds, unless
#: ``--env`` names others.
SLOTS_VARIABLE = "MAKEJOBS_SLOTS"


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed like ``makejobs serve: ...``."""
    sys.stderr.write(f"makejobs {command}: {message}\n")
    sys.stderr.flush()


def silence_closed_output() -> None:
    """Send what stdout and stderr still hold to /dev/null when their reader went away.

    After a :class:`BrokenPipeError` the stream keeps its unwritten buffer,
    and every later flush (one at interpreter exit included) would fail
    again, loudly. A stream whose flush fails this way gets /dev/null on its
    descriptor, so that buffer, and anything written later, goes nowhere.
    """
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except (OSError, ValueError):
            continue  # closed or unusable for another reason: leave it alone
        else:
            continue
        try:
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, stream.fileno())
            finally:
                os.close(null)
            stream.flush()
        except (OSError, ValueError):
            pass
