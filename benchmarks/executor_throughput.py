#!/usr/bin/env python3
"""Tiny-task throughput of concurrent.futures executors, side by side in one run.

Usage::

    python benchmarks/executor_throughput.py [--quick] [--json FILE] [-n TASKS]
                                             [--context forkserver|spawn|fork]

Every contender is an executor with the same number of workers (2), built
once, warmed up (all of its workers started) and reused for every sample, so
what is measured is the steady-state cost of one task, not start-up:

* ``ProcessPoolExecutor`` (the baseline): ``concurrent.futures`` on the chosen
  start method.
* ``loky``: ``loky.ProcessPoolExecutor(max_workers=2)`` (its own start method).
* ``makejobs``: ``JobserverExecutor(2, jobserver=Jobserver(pool=TokenPool.create(2)))``
  on the chosen start method: a private pool of 2 slots, so a task holds a
  token while it runs.
* ``jobserver 3.0.1`` (PyPI ``jobserver``):
  ``JobserverExecutor(Jobserver(context, slots=2))``. It starts one process
  per task (and stalls on freed slots and large results), so it gets far fewer
  tasks per sample; its figure is still per task.

Modes (the task is a builtin, so no worker has to import this file):

* ``submit``: ``[ex.submit(abs, i) for i in range(n)]``, then every ``result()``.
* ``map``: ``list(ex.map(abs, range(n), chunksize=100))``.
* ``1MB``: ``submit(bytes, 1 << 20)`` n times, then every ``result()``: each
  task returns one megabyte, so the cost is mostly copying it.

Samples are interleaved: each round runs one sample of every contender for
every mode, in an order rotated from round to round, so drift in machine speed
hits all rows alike. The table shows per row the median over rounds of
microseconds per task and the median over rounds of its ratio to the
ProcessPoolExecutor sample of the same mode in the same round. The
target: makejobs at most 1.2x ProcessPoolExecutor per task, and far ahead of
jobserver 3.0.1.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Measure the working tree even when makejobs is not installed.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks._common import command_line, progress, report  # noqa: E402

__all__ = ["BASELINE", "CONTENDERS", "MODES", "TARGET_RATIO", "main", "run", "to_markdown"]

#: The contender every ratio is taken against.
BASELINE = "ProcessPoolExecutor"
#: Row order in the table.
CONTENDERS = ("ProcessPoolExecutor", "loky", "makejobs", "jobserver 3.0.1")
MODES = ("submit", "map", "1MB")
#: The goal: makejobs costs at most this many ProcessPoolExecutor tasks.
TARGET_RATIO = 1.2
WORKERS = 2
CHUNKSIZE = 100
BIG = 1 << 20

#: Tasks per sample: (mode) -> (ordinary contenders, jobserver 3.0.1), and rounds.
_FULL: tuple[dict[str, tuple[int, int]], int] = (
    {"submit": (10_000, 100), "map": (10_000, 2_000), "1MB": (200, 4)},
    5,
)
_QUICK: tuple[dict[str, tuple[int, int]], int] = (
    {"submit": (1_000, 20), "map": (2_000, 400), "1MB": (40, 2)},
    2,
)


@dataclass
class Contender:
    name: str
    executor: Any  # a concurrent.futures.Executor
    note: str


def _warm_up(executor: Any) -> None:
    """Start every worker (two tasks at once that each outlast a worker start)."""
    list(executor.map(time.sleep, [0.2] * WORKERS))
    executor.submit(abs, -1).result()


@contextmanager
def _contenders(context_name: str) -> Iterator[tuple[list[Contender], list[dict[str, Any]]]]:
    """Build every contender that can run here; the others become skipped rows."""
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context(context_name)
    ready: list[Contender] = []
    skipped: list[dict[str, Any]] = []
    with ExitStack() as stack:
        ppe = ProcessPoolExecutor(WORKERS, mp_context=context)
        stack.callback(ppe.shutdown)
        ready.append(Contender("ProcessPoolExecutor", ppe, f"{context_name}, reused workers"))

        try:
            import loky  # type: ignore[import-untyped]

            executor = loky.ProcessPoolExecutor(max_workers=WORKERS)
            stack.callback(executor.shutdown)
            ready.append(Contender("loky", executor, f"loky {loky.__version__}, own context"))
        except ImportError as e:
            skipped.append({"contender": "loky", "reason": f"not installed ({e})"})

        from makejobs import Jobserver, JobserverExecutor, TokenPool

        pool = TokenPool.create(WORKERS)
        stack.callback(pool.close)
        js = Jobserver(pool=pool)
        stack.callback(js.close)
        mj = JobserverExecutor(WORKERS, jobserver=js, mp_context=context)
        stack.callback(mj.shutdown)
        ready.append(Contender("makejobs", mj, f"{context_name}, pool of {WORKERS} slots"))

        try:
            import jobserver as pypi_jobserver

            version = getattr(pypi_jobserver, "__version__", "?")
            pjs = pypi_jobserver.Jobserver(context=context_name, slots=WORKERS)
            pex = pypi_jobserver.JobserverExecutor(pjs)
            stack.callback(pex.shutdown)
            ready.append(
                Contender("jobserver 3.0.1", pex, f"{version}, {context_name}, process per task")
            )
        except ImportError as e:
            skipped.append({"contender": "jobserver 3.0.1", "reason": f"not installed ({e})"})

        for contender in ready:
            _warm_up(contender.executor)
        # Shut down in reverse order of creation (ExitStack), after the samples.
        yield ready, skipped


def _sample(executor: Any, mode: str, n: int) -> float:
    """Seconds for *n* tasks of *mode* on *executor*."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        if mode == "submit":
            futures = [executor.submit(abs, -i) for i in range(n)]
            for future in futures:
                future.result()
        elif mode == "map":
            for _ in executor.map(abs, range(n), chunksize=CHUNKSIZE):
                pass
        elif mode == "1MB":
            futures = [executor.submit(bytes, BIG) for _ in range(n)]
            for future in futures:
                if len(future.result()) != BIG:
                    raise AssertionError("short result")
        else:
            raise ValueError(mode)
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def run(
    quick: bool,
    n: int | None = None,
    *,
    rounds: int | None = None,
    context: str = "forkserver",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Measure every contender in every mode; return one row per (mode, contender).

    *n* replaces every task count (jobserver 3.0.1's too, but capped at its
    --quick counts, so that it never takes minutes). Rows carry ``name``
    ("mode: contender"), ``mode``,
    ``contender``, ``n``, ``rounds``, ``us_per_task`` (median), ``us_min``,
    ``us_max``, ``ratio`` (median per-round ratio to ProcessPoolExecutor),
    ``note`` and ``skipped`` (a reason, or None).
    """
    counts, default_rounds = _QUICK if quick else _FULL
    rounds = rounds if rounds is not None else default_rounds
    if rounds < 1:
        raise ValueError("rounds must be at least 1")

    def tasks(mode: str, contender: str) -> int:
        ordinary, slow = counts[mode]
        if contender == "jobserver 3.0.1":
            # A process per task (and a 1 s stall per large result): never more than --quick.
            return slow if n is None else max(1, min(n, _QUICK[0][mode][1]))
        return ordinary if n is None else n

    samples: dict[tuple[str, str], list[float]] = {}
    ratios: dict[tuple[str, str], list[float]] = {}
    with _contenders(context) as (ready, skipped):
        for r in range(rounds):
            for mode in MODES:
                # Rotate the order so no contender always runs first (or right after another).
                shift = (r + MODES.index(mode)) % len(ready)
                order = ready[shift:] + ready[:shift]
                per_task: dict[str, float] = {}
                for contender in order:
                    k = tasks(mode, contender.name)
                    per_task[contender.name] = _sample(contender.executor, mode, k) / k
                for name, seconds in per_task.items():
                    samples.setdefault((mode, name), []).append(seconds)
                    ratios.setdefault((mode, name), []).append(seconds / per_task[BASELINE])
            if log is not None:
                log(f"round {r + 1}/{rounds} done")
        notes = {c.name: c.note for c in ready}
    reasons = {s["contender"]: s["reason"] for s in skipped}

    rows: list[dict[str, Any]] = []
    for mode in MODES:
        for name in CONTENDERS:
            row: dict[str, Any] = {
                "name": f"{mode}: {name}",
                "mode": mode,
                "contender": name,
                "n": tasks(mode, name),
                "rounds": rounds,
                "us_per_task": None,
                "us_min": None,
                "us_max": None,
                "ratio": None,
                "note": notes.get(name, ""),
                "skipped": reasons.get(name),
            }
            values = samples.get((mode, name))
            if values:
                row["us_per_task"] = statistics.median(values) * 1e6
                row["us_min"] = min(values) * 1e6
                row["us_max"] = max(values) * 1e6
                row["ratio"] = statistics.median(ratios[(mode, name)])
            rows.append(row)
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "skipped" if value is None else format(value, spec)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, one line per (mode, contender)."""
    lines = [
        "| mode | contender | tasks/sample | µs/task (median) | min-max | ratio to PPE | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        spread = "—" if row["us_min"] is None else f"{row['us_min']:.1f}-{row['us_max']:.1f}"
        note = row["skipped"] if row["skipped"] else row["note"]
        lines.append(
            f"| {row['mode']} | {row['contender']} | {row['n']} | "
            f"{_fmt(row['us_per_task'], '.1f')} | {spread} | {_fmt(row['ratio'], '.2f')}x | "
            f"{note} |"
        )
    return "\n".join(lines)


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per mode: makejobs against the target and against jobserver 3.0.1."""
    out = []
    by = {(row["mode"], row["contender"]): row for row in rows}
    for mode in MODES:
        mj = by[(mode, "makejobs")]
        if mj["ratio"] is None:
            continue
        verdict = "meets" if mj["ratio"] <= TARGET_RATIO else "MISSES"
        line = f"{mode}: makejobs {mj['ratio']:.2f}x PPE ({verdict} the {TARGET_RATIO}x target)"
        old = by[(mode, "jobserver 3.0.1")]
        if old["us_per_task"] is not None:
            line += f"; {old['us_per_task'] / mj['us_per_task']:.0f}x faster than jobserver 3.0.1"
        out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__, quick="about 10 s instead of a minute")
    parser.add_argument("-n", type=int, default=None, help="tasks per sample for every row")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument(
        "--context",
        default="forkserver",
        choices=multiprocessing.get_all_start_methods(),
        help="start method for ProcessPoolExecutor, makejobs and jobserver 3.0.1",
    )
    args = parser.parse_args(argv)
    return report(
        args,
        "executor_throughput",
        lambda: run(args.quick, args.n, rounds=args.rounds, context=args.context, log=progress),
        lambda rows: "\n".join([to_markdown(rows), "", *verdicts(rows)]),
        facts={"context": args.context, "workers": WORKERS},
        baseline=BASELINE,
        target_ratio=TARGET_RATIO,
    )


if __name__ == "__main__":
    sys.exit(main())
