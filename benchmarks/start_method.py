#!/usr/bin/env python3
"""What a Jobserver job costs with each start method, and what the default picks.

Usage::

    python benchmarks/start_method.py [--quick] [--json FILE]

The figures behind makejobs' default start method (``"auto"``: fork while the
process has a single thread, the fork server otherwise). Rows, each a
``Jobserver(..., slots=2)`` running ``add_one(i)`` one job after another:

* ``fork``, ``forkserver``, ``spawn``: that start method, asked for by name.
* ``default, 1 thread``: ``Jobserver()`` in a process with one thread.
* ``default, 2 threads`` and ``fork, 2 threads``: the same while a second
  thread of this process sits waiting, as a library's helper thread would.
  On Python 3.12+ every fork of such a process warns (``DeprecationWarning:
  This process ... is multi-threaded, use of fork() may lead to deadlocks``);
  the ``fork() warnings`` column counts those the row's jobs caused.

and two modes: ``serial`` (``submit(add_one, (i,)).result()``, the per-job
latency) and ``nested`` (a job that submits one job of its own on the same
Jobserver and returns its result: per outer job).

Rows are interleaved: each round times one sample of every row, in an order
rotated from round to round, and every ratio is taken against the ``fork``
sample of the same mode in the same round, so that load on a shared machine
hits a row and its baseline alike. The table shows medians over rounds.
The fork server is started once, by the first row that needs it, and imports
makejobs before it forks any job (a Jobserver sees to that).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
import warnings

# Measure the working tree even when makejobs is not installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

__all__ = ["BASELINE", "add_one", "main", "run", "to_markdown"]

BASELINE = "fork"
SERIAL = "serial"
NESTED = "nested"
#: (row, context given to Jobserver, second thread running), in table order.
ROWS = (
    ("fork", "fork", False),
    ("default, 1 thread", None, False),
    ("default, 2 threads", None, True),
    ("fork, 2 threads", "fork", True),
    ("forkserver", "forkserver", False),
    ("spawn", "spawn", False),
)
#: Jobs per sample, by the start method the row's jobs use, and per mode.
_JOBS = {
    SERIAL: {"fork": 16, "forkserver": 4, "spawn": 2},
    NESTED: {"fork": 8, "forkserver": 2, "spawn": 1},
}
_FORK_WARNING = "is multi-threaded, use of fork()"


def add_one(x: int) -> int:
    """The job: trivial on purpose, so that only the cost of starting it is left."""
    return x + 1


def nested(js: Any, x: int) -> int:
    """A job that runs one job of its own (on its implicit slot) and returns its result."""
    result: int = js.submit(add_one, (x,)).result()
    return result


def _method_of(context: str | None, threaded: bool) -> str:
    """The start method the row's jobs use (for the default: what it picks)."""
    if context is not None:
        return context
    return "forkserver" if threaded else "fork"


def _sample(context: str | None, threaded: bool, mode: str, jobs: int) -> tuple[float, int]:
    """Milliseconds per job over *jobs* jobs, and how many fork() warnings they caused."""
    from makejobs import Jobserver
    from makejobs.jobserver import threads

    # A helper thread joined a moment ago may not be gone from the kernel's count yet.
    deadline = time.monotonic() + 5
    while not threaded and threads() > 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    release = threading.Event()
    helper = threading.Thread(target=release.wait) if threaded else None
    if helper is not None:
        helper.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DeprecationWarning)
            with Jobserver(context, slots=2) as js:
                js.submit(add_one, (0,)).result()  # untimed: the first job starts the engine
                submit = js.submit
                t0 = time.perf_counter()
                for i in range(jobs):
                    if mode == SERIAL:
                        value = submit(add_one, (i,)).result()
                    else:
                        value = submit(nested, (js, i)).result()
                    if value != i + 1:
                        raise AssertionError(f"wrong result {value!r}")
                elapsed = time.perf_counter() - t0
        forks = sum(_FORK_WARNING in str(w.message) for w in caught)
    finally:
        release.set()
        if helper is not None:
            helper.join()
    return elapsed / jobs * 1000, forks


def run(quick: bool = False, rounds: int | None = None) -> list[dict[str, Any]]:
    """Measure every row in both modes; one dict per (row, mode)."""
    if rounds is None:
        rounds = 3 if quick else 8
    scale = 0.5 if quick else 1.0
    rows: list[dict[str, Any]] = []
    for mode in (SERIAL, NESTED):
        samples: dict[str, list[float]] = {name: [] for name, _, _ in ROWS}
        ratios: dict[str, list[float]] = {name: [] for name, _, _ in ROWS}
        warned = dict.fromkeys(samples, 0)
        for r in range(rounds):
            order = list(ROWS[r % len(ROWS) :] + ROWS[: r % len(ROWS)])
            this_round: dict[str, float] = {}
            for name, context, threaded in order:
                jobs = max(1, int(_JOBS[mode][_method_of(context, threaded)] * scale))
                ms, forks = _sample(context, threaded, mode, jobs)
                this_round[name] = ms
                warned[name] += forks
            for name in samples:
                samples[name].append(this_round[name])
                ratios[name].append(this_round[name] / this_round[BASELINE])
        for name, context, threaded in ROWS:
            rows.append(
                {
                    "name": name,
                    "mode": mode,
                    "method": _method_of(context, threaded),
                    "threads": 2 if threaded else 1,
                    "ms_per_job": statistics.median(samples[name]),
                    "ratio_to_fork": statistics.median(ratios[name]),
                    "fork_warnings": warned[name],
                    "rounds": rounds,
                }
            )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| row | mode | start method used | ms/job (median) | ratio to fork | fork() warnings |",
        "|---|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['mode']} | {row['method']} | {row['ms_per_job']:.2f}"
            f" | {row['ratio_to_fork']:.2f}x | {row['fork_warnings']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import command_line, report

    args = command_line(__doc__, quick="fewer rounds and jobs").parse_args(argv)
    return report(args, "start_method", lambda: run(args.quick), to_markdown, baseline=BASELINE)


if __name__ == "__main__":
    sys.exit(main())
