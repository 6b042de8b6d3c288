"""``makejobs run -l LOAD``: GNU make's rule for not starting a command while the machine is busy.

As in make (``load_too_high`` in ``src/job.c``), the load is only asked
about while at least one command of ours is running, so one command always
runs; a command held back by the load is tried again when another ends, and
once a second (make's ``jobserver_acquire`` wakes up every second for this).

What "the load" is follows make 4.4:

* Where ``/proc/loadavg`` can be read (Linux), the number of runnable
  processes and threads at this moment (its fourth field, before the
  ``/``); the load is too high when that number is above LOAD.
* Elsewhere the 1-minute load average, plus a guess for the commands that
  started too recently to show in it (a quarter per command started this
  second, and a sixteenth per command started the second before); too high
  when that is LOAD or more.

So ``-l 0`` runs one command at a time, as ``make -l 0`` does.
"""

from __future__ import annotations

import os
import time

from ._console import say

__all__ = ["LoadLimit", "runnable_from_loadavg"]

_LOADAVG = "/proc/loadavg"
# make's LOAD_WEIGHT_A and LOAD_WEIGHT_B.
_WEIGHT_NOW = 0.25
_WEIGHT_LAST = 0.25


def runnable_from_loadavg(text: str) -> int | None:
    """The runnable count in a ``/proc/loadavg`` line (``0.5 0.4 0.3 2/345 678``), or None."""
    fields = text.split()
    if len(fields) < 4:
        return None
    running, slash, _total = fields[3].partition("/")
    return int(running) if slash and running.isdigit() else None


class LoadLimit:
    """Whether the machine is too busy to start one more command (see the module docstring)."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._proc: int | None = None
        try:
            self._proc = os.open(_LOADAVG, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        self._second = 0  # the clock second _started_now counts commands of
        self._started_now = 0
        self._started_before = 0.0
        self._broken = False

    def too_high(self) -> bool:
        if self._proc is not None:
            runnable = self._runnable()
            if runnable is not None:
                return runnable > self.limit
        if self._broken:
            return False
        try:
            load = os.getloadavg()[0]
        except OSError:
            say("run", "cannot read the load average here; -l is ignored")
            self._broken = True
            return False
        self._next_second()
        return load + _WEIGHT_NOW * (self._started_now + self._started_before) >= self.limit

    def started(self) -> None:
        """One more command was started (it counts in the estimate until it shows in the load)."""
        self._next_second()
        self._started_now += 1

    def close(self) -> None:
        if self._proc is not None:
            os.close(self._proc)
            self._proc = None

    def _runnable(self) -> int | None:
        assert self._proc is not None
        try:
            text = os.pread(self._proc, 128, 0).decode("ascii", "replace")
        except OSError:
            text = ""
        runnable = runnable_from_loadavg(text)
        if runnable is None:  # as make: give up on this method, use the load average
            os.close(self._proc)
            self._proc = None
        return runnable

    def _next_second(self) -> None:
        now = int(time.time())
        if now != self._second:
            # Commands of the second before still count a little; older ones not at all.
            recent = now == self._second + 1
            self._started_before = _WEIGHT_LAST * self._started_now if recent else 0.0
            self._started_now = 0
            self._second = now
