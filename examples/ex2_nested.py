"""ex2_nested: jobs that submit jobs share their parent's slots, under every start method.

Demonstrates:

* nesting: a Jobserver can be passed to a job as an argument (it is pickled for
  ``spawn`` and ``forkserver``), and the job submits sub-jobs to the *same* pool;
* that recursion never deadlocks, even with ``slots=1``: a chain of jobs, each waiting on
  one sub-job, reaches any depth;
* the implicit-slot rule that makes this work: like every process make starts, every job
  owns one implicit slot, the one it runs on. A job's *first* concurrent sub-job runs on
  that slot (the job lends it while it waits); every *further* concurrent sub-job needs a
  token from the pool. With ``slots=1`` the pool holds no tokens at all, so a second
  concurrent sub-job is ``Blocked``;
* that all nested work together stays within ``slots``.

The same rule is why ``make -j1`` can run a recursive ``$(MAKE)``: the sub-make runs on
the slot of the recipe that started it.
"""

from __future__ import annotations

import multiprocessing
import time

from makejobs import Blocked, Jobserver


def task_recurse(jobserver: Jobserver, levels: int) -> int:
    """Submit myself one level deeper and wait; return how deep the chain went."""
    if levels == 0:
        return 0
    return 1 + jobserver.submit(task_recurse, (jobserver, levels - 1)).result()


def task_probe_implicit_slot(jobserver: Jobserver) -> tuple[bool, bool]:
    """From inside a job: can a first, and a second, concurrent sub-job start at once?"""
    first = jobserver.submit(time.sleep, (0.2,), timeout=0)  # on my implicit slot
    try:
        second = jobserver.submit(time.sleep, (0.2,), timeout=0)  # needs a pool token
    except Blocked:
        second_started = False
    else:
        second.result()
        second_started = True
    first.result()
    return True, second_started


def task_span(seconds: float) -> tuple[float, float]:
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    time.sleep(seconds)
    return start, time.clock_gettime(time.CLOCK_MONOTONIC)


def task_fan_out(jobserver: Jobserver, width: int) -> list[tuple[float, float]]:
    """Start *width* sub-jobs at once (as many as the pool lets through) and wait."""
    futures = [jobserver.submit(task_span, (0.2,)) for _ in range(width)]
    return [f.result() for f in futures]


def peak_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    peak = level = 0
    for _, delta in events:  # at equal times an end sorts before a start
        level += delta
        peak = max(peak, level)
    return peak


def main() -> None:
    for method in multiprocessing.get_all_start_methods():
        # Process start-up dominates under spawn/forkserver, so recurse less deeply there.
        levels = 20 if method == "fork" else 5
        with Jobserver(method, slots=1) as jobserver:
            started = time.monotonic()
            depth = jobserver.submit(task_recurse, (jobserver, levels), timeout=5).result()
            took = time.monotonic() - started
            print(f"{method:10} slots=1: recursion reached depth {depth} in {took:.2f}s")
            assert depth == levels

            first, second = jobserver.submit(task_probe_implicit_slot, (jobserver,)).result()
            print(
                f"{method:10} slots=1: inside a job, 1st sub-job started={first},"
                f" 2nd concurrent sub-job started={second} (Blocked: no token in the pool)"
            )
            assert first and not second

    # With 3 slots, 2 jobs that each fan out 3 sub-jobs: 2 outer + 6 inner jobs, but the
    # sub-jobs only ever run on the 2 lent implicit slots plus the pool's tokens.
    with Jobserver("fork", slots=3) as jobserver:
        outer = [jobserver.submit(task_fan_out, (jobserver, 3)) for _ in range(2)]
        spans = [span for f in outer for span in f.result()]
    peak = peak_overlap(spans)
    print(f"fork       slots=3: 2 jobs x 3 sub-jobs each; at most {peak} sub-jobs ran at once")
    assert len(spans) == 6
    assert peak <= 3
    print("ex2_nested: OK")


if __name__ == "__main__":
    main()
