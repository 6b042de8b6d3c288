"""Shared span log, and the work of one job: every job appends a start and an end line.

Line format (one ``os.write`` each, on a file opened with ``O_APPEND``, so lines from
concurrent processes never interleave)::

    start <seconds> <name> <MiB the job holds>
    end <seconds> <name>

Times come from ``CLOCK_MONOTONIC``, one clock for every process on the machine that
never jumps (unlike the wall clock). A job logs its start only once it holds
its slot and its end before giving the slot back, so the logged spans lie inside the
slots: the peak overlap of the spans can never exceed the slots really in use.

The work is what compiling is like: it holds some memory (MIB MiB, written so that it
is resident) and keeps a CPU busy (it hashes that memory four times). Running more such
jobs at once than there are CPUs makes each of them take longer, and the memory of the
build grows with every job running beside the others: the costs of going beyond ``-jN``
that the demo shows.

Used as a module by ``pystep.py`` and as a command by the shell recipes::

    python3 spanlog.py LOG job NAME MIB      # one job: start, work with MIB MiB, end
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

#: How many times a job hashes its memory: the CPU time it takes, per MiB it holds.
ROUNDS = 4


def log_event(log: str, kind: str, name: str, mib: int | None = None) -> None:
    """Append one ``start``/``end`` line for *name* to *log* (a start says its *mib*)."""
    if kind not in ("start", "end") or not name or any(c.isspace() for c in name):
        raise ValueError(f"bad event {kind!r} {name!r}")
    extra = f" {mib}" if kind == "start" else ""
    line = f"{kind} {time.clock_gettime(time.CLOCK_MONOTONIC):.6f} {name}{extra}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def burn(mib: int) -> str:
    """The work itself: fill *mib* MiB and hash them :data:`ROUNDS` times."""
    data = b"\x01" * (mib << 20)  # written, so every page of it is resident
    digest = hashlib.sha256()
    for _ in range(ROUNDS):
        digest.update(data)
    return digest.hexdigest()


def work(log: str, name: str, mib: int) -> None:
    """One job: log the start, do the work, log the end."""
    log_event(log, "start", name, mib)
    try:
        burn(mib)
    finally:
        log_event(log, "end", name)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[2] != "job":
        sys.exit(f"usage: {sys.argv[0]} LOG job NAME MIB")
    work(sys.argv[1], sys.argv[3], int(sys.argv[4]))
