"""ex1_basic: submit jobs and collect their results.

Demonstrates:

* ``Jobserver(slots=2)`` as a context manager (leaving the block waits for every job);
* the three ways to submit: ``submit(fn, args, kwargs)``, the shorthand
  ``jobserver(fn, *args, **kwargs)``, and ``map`` over many argument tuples;
* that results may be collected in any order, and ``map`` yields in input order;
* that an exception raised in a job is re-raised by ``result()`` with the job's own
  traceback attached as ``__cause__`` (a ``RemoteTraceback``);
* that at most ``slots`` jobs run at once.

Every job runs in a process of its own; with the ``spawn`` start method used here the
callable and its arguments are pickled, so they must be importable (module level), and
the ``if __name__ == "__main__":`` guard is required.
"""

from __future__ import annotations

import time

from makejobs import Jobserver, RemoteTraceback


def task_sum(numbers: list[int]) -> int:
    """A module-level helper: spawn children import it by name."""
    return sum(numbers)


def task_fail(message: str) -> None:
    raise ValueError(message)


def task_span(seconds: float) -> tuple[float, float]:
    """Sleep, and say when (CLOCK_MONOTONIC is one clock for every process)."""
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    time.sleep(seconds)
    return start, time.clock_gettime(time.CLOCK_MONOTONIC)


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    # Sweep over the start (+1) and end (-1) events; at equal times an end sorts first.
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = level = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


def main() -> None:
    with Jobserver("spawn", slots=2) as jobserver:
        # submit() takes the arguments as a tuple and a dict, like Thread(target=...).
        f_pow = jobserver.submit(pow, (2, 10), {"mod": 1000})
        # The shorthand forwards *args and **kwargs.
        f_len = jobserver(len, (1, 2, 3))
        f_str = jobserver(str, object=42)
        f_sum = jobserver(task_sum, [10, 20, 30])

        # Results can be collected in any order; each result() waits for its own job.
        print("str(object=42)         ->", repr(f_str.result()))
        print("len((1, 2, 3))         ->", f_len.result())
        print("pow(2, 10, mod=1000)   ->", f_pow.result())
        print("task_sum([10, 20, 30]) ->", f_sum.result())
        assert f_str.result() == "42"
        assert f_len.result() == 3
        assert f_pow.result() == 24
        assert f_sum.result() == 60

        # map() yields in input order, however the jobs finish.
        lengths = list(jobserver.map(len, argses=[("ab",), ("cde",), ("f",)]))
        print("map(len, ...)          ->", lengths)
        assert lengths == [2, 3, 1]

        # chunksize groups several calls into one job (one process start per chunk).
        squares = list(jobserver.map(pow, argses=[(n, 2) for n in range(8)], chunksize=4))
        print("map(pow, chunksize=4)  ->", squares)
        assert squares == [n * n for n in range(8)]

        # An exception in the job comes back from result(), with the child's traceback.
        failing = jobserver.submit(task_fail, ("bad input",))
        try:
            failing.result()
        except ValueError as e:
            assert isinstance(e.__cause__, RemoteTraceback)
            where = [ln for ln in str(e.__cause__).splitlines() if "task_fail" in ln]
            print("task_fail raised       ->", repr(e), "| remote frame:", where[0].strip())
        else:
            raise AssertionError("task_fail should have raised")

        # Never more than `slots` jobs at once: 6 sleeps of 0.2 s on 2 slots.
        spans = [f.result() for f in [jobserver.submit(task_span, (0.2,)) for _ in range(6)]]
        peak = peak_overlap(spans)
        print(f"6 jobs on 2 slots      -> at most {peak} ran at once")
        assert peak == 2
    print("ex1_basic: OK")


if __name__ == "__main__":
    main()
