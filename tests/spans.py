"""Timestamped job spans shared between processes, and their peak overlap.

A *job* is a unit of work that holds one jobserver slot (an implicit slot or a token) for
its whole duration. Every job appends a start line and an end line to a shared log file::

    S <ns> <name>
    E <ns> <name>

Each line is one ``os.write`` on a descriptor opened with ``O_APPEND``, so lines written by
many processes at once never interleave. Timestamps come from ``CLOCK_MONOTONIC``, which
is one clock for every process on the machine (``time.monotonic`` only promises
differences within one process), and cannot jump backwards like the wall clock.

A job logs its start only after it holds its slot and its end before it gives the slot
back, so the logged spans lie inside the slot holdings: the measured peak of overlapping
spans can never exceed the number of slots in use, and a peak above the pool size proves
oversubscription.

The writer side (:func:`now_ns`, :func:`append_event`, :func:`run_job`) is imported by the
recipe scripts in ``recipes/`` and uses only the standard library.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LogError",
    "Span",
    "append_event",
    "now_ns",
    "peak_overlap",
    "read_spans",
    "run_job",
]


def now_ns() -> int:
    """A timestamp comparable across processes on this machine."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def append_event(log: str | os.PathLike[str], kind: str, name: str) -> None:
    """Append one ``S``/``E`` line for job *name* to *log*, atomically."""
    if kind not in ("S", "E"):
        raise ValueError(f"kind must be 'S' or 'E', not {kind!r}")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"job names must be non-empty and blank-free: {name!r}")
    line = f"{kind} {now_ns()} {name}\n".encode()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        # A single write with O_APPEND: the kernel places the whole line at the end of the
        # file, so concurrent writers cannot split or overwrite each other's lines.
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):
        raise OSError(f"short write to {log}: {written} of {len(line)} bytes")


def run_job(log: str | os.PathLike[str], name: str, seconds: float) -> None:
    """One job: log the start, work for *seconds* (a sleep), log the end.

    Call it only while holding a slot. The sleep is the work being measured, never a way
    to order events between processes.
    """
    append_event(log, "S", name)
    try:
        time.sleep(seconds)
    finally:
        append_event(log, "E", name)


class LogError(ValueError):
    """The span log is malformed: a torn line, a job without start or end, a duplicate."""


@dataclass(frozen=True)
class Span:
    """One job's lifetime, in nanoseconds of ``CLOCK_MONOTONIC``."""

    name: str
    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / 1e9


def read_spans(log: str | os.PathLike[str]) -> list[Span]:
    """Parse *log* into spans, sorted by start time.

    Raises:
        LogError: a line is malformed, a job logged two starts or two ends, a start has no
            end (the job died or is still running), or an end precedes its start.
    """
    starts: dict[str, int] = {}
    ends: dict[str, int] = {}
    text = Path(log).read_text(encoding="ascii") if Path(log).exists() else ""
    for number, line in enumerate(text.splitlines(), 1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] not in ("S", "E") or not parts[1].isdigit():
            raise LogError(f"{log}:{number}: malformed line {line!r}")
        kind, stamp, name = parts[0], int(parts[1]), parts[2]
        table = starts if kind == "S" else ends
        if name in table:
            raise LogError(f"{log}:{number}: job {name!r} logged {kind!r} twice")
        table[name] = stamp
    if starts.keys() != ends.keys():
        unfinished = sorted(starts.keys() - ends.keys())
        unstarted = sorted(ends.keys() - starts.keys())
        raise LogError(f"{log}: jobs without end {unfinished}, without start {unstarted}")
    spans = [Span(name, starts[name], ends[name]) for name in starts]
    for span in spans:
        if span.end < span.start:
            raise LogError(f"{log}: job {span.name!r} ends before it starts")
    return sorted(spans, key=lambda s: (s.start, s.end, s.name))


def peak_overlap(spans: Iterable[Span]) -> int:
    """The largest number of spans running at one instant.

    Events are swept in time order; at equal timestamps ends come before starts, so a job
    that starts exactly when another ends (a slot handed over) is not counted twice.
    """
    events: list[tuple[int, int]] = []
    for span in spans:
        events.append((span.start, 1))
        events.append((span.end, 0))
    # (time, 0) sorts before (time, 1): ends first at ties.
    events.sort()
    running = peak = 0
    for _stamp, is_start in events:
        if is_start:
            running += 1
            peak = max(peak, running)
        else:
            running -= 1
    return peak
