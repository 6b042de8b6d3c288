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
recipe scripts in ``integration/recipes/`` and uses only the standard library; run as a
program, ``python spans.py LOG NAME SECONDS`` is one such job.

Jobs that run inside Python (a ``Jobserver`` or executor task) return their span instead:
:func:`span` is such a job, and :func:`peak_overlap` takes ``(start, end)`` pairs as well
as :class:`Span` records. This is the one home of span measuring for tests/, integration/
and the benchmarks that import it.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LogError",
    "Span",
    "append_event",
    "logged_peak",
    "now_ns",
    "peak_overlap",
    "read_spans",
    "run_job",
    "span",
    "span_commands",
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


def span_commands(directory: Path, count: int, seconds: float) -> tuple[str, Path]:
    """Shell command lines for *count* jobs of *seconds* each, and the log they write.

    Each line runs this file as a program (one job, named ``j0``, ``j1``...); the log is
    ``spans.log`` in *directory*.
    """
    log = directory / "spans.log"
    here = str(Path(__file__).resolve())
    program = f"{shlex.quote(sys.executable)} {shlex.quote(here)} {shlex.quote(str(log))}"
    return "".join(f"{program} j{i} {seconds}\n" for i in range(count)), log


def span(seconds: float) -> tuple[float, float]:
    """A job that works (sleeps) for *seconds*; its interval in ``time.monotonic()`` seconds.

    On Linux that clock is ``CLOCK_MONOTONIC``, so spans returned by different job
    processes compare.
    """
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic()


def peak_overlap(spans: Iterable[Span] | Iterable[tuple[float, float]]) -> int:
    """The largest number of spans (or ``(start, end)`` pairs) running at one instant.

    Events are swept in time order; at equal timestamps ends come before starts, so a job
    that starts exactly when another ends (a slot handed over) is not counted twice.
    """
    events: list[tuple[float, int]] = []
    for item in spans:
        start, end = (item.start, item.end) if isinstance(item, Span) else item
        events.append((start, 1))
        events.append((end, 0))
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


def logged_peak(log: str | os.PathLike[str], names: Iterable[str]) -> int:
    """The peak overlap of the spans in *log*, which must be exactly the jobs *names*."""
    spans = read_spans(log)
    assert sorted(s.name for s in spans) == sorted(names), (log, [s.name for s in spans])
    return peak_overlap(spans)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(f"usage: {sys.argv[0]} LOG NAME SECONDS")
    run_job(sys.argv[1], sys.argv[2], float(sys.argv[3]))
