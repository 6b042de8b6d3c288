"""Shared span log: every job appends a start and an end line, from any process.

Line format (one ``os.write`` each, on a file opened with ``O_APPEND``, so lines from
concurrent processes never interleave)::

    start <seconds> <name>
    end <seconds> <name>

Times come from ``CLOCK_MONOTONIC``, one clock for every process on the machine that
never jumps (unlike the wall clock). A job logs its start only once it holds its slot
and its end before giving the slot back, so the logged spans lie inside the slots: the
peak overlap of the spans can never exceed the slots really in use.

Used as a module by ``pystep.py`` and as a command by the shell recipes::

    python3 spanlog.py LOG start|end NAME
"""

from __future__ import annotations

import os
import sys
import time


def log_event(log: str, kind: str, name: str) -> None:
    """Append one ``start``/``end`` line for *name* to *log*."""
    if kind not in ("start", "end") or not name or any(c.isspace() for c in name):
        raise ValueError(f"bad event {kind!r} {name!r}")
    line = f"{kind} {time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {name}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def work(log: str, name: str, seconds: float) -> None:
    """One unit of work: log the start, sleep (the "work"), log the end."""
    log_event(log, "start", name)
    try:
        time.sleep(seconds)
    finally:
        log_event(log, "end", name)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} LOG start|end NAME")
    log_event(*sys.argv[1:])
