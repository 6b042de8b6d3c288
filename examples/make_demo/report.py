"""Read a demo span log, draw its timeline, check the concurrency claims, show the cost.

    python3 report.py --mode shared|naive LOG

N is make's ``-jN``, read from ``MAKEFLAGS`` (make exports it to every recipe). Every run
reports its peak of concurrent jobs, the most memory its jobs held at one moment (each
job's start line says how many MiB it holds), its makespan (first start to last end) and
how long a job took (the median Python job and shell recipe). A naive run is compared
with the makejobs run whose log (``shared.log``) lies next to its own, when there is one.

For ``--mode shared`` (Python steps on makejobs) it asserts that

* at no moment did more than N jobs run (make recipes and Python jobs together), and
* the pool was really shared: the peak reached N, Python jobs ran at the same time as
  shell recipes, and (given N >= 4, enough room for that) some Python step ran 2 or more
  jobs at once, so it took tokens from make beyond the slot make started it on.

For ``--mode naive`` it reports how far the run went beyond N and what that cost; it
asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict

try:
    from makejobs import parse_makeflags
except ImportError:  # the demo's most likely first stumble: say what to do
    sys.exit(f"{sys.executable} cannot import makejobs: run 'pip install -e .' in the checkout")

WIDTH = 60  # timeline columns

Span = tuple[float, float]


def read_spans(path: str) -> tuple[dict[str, Span], dict[str, int]]:
    """name -> (start, end), and name -> MiB held; every job must have logged exactly one
    start and one end."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    mib: dict[str, int] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            kind, stamp, name, *held = line.split()
            table = starts if kind == "start" else ends
            if kind not in ("start", "end") or name in table or len(held) != (kind == "start"):
                sys.exit(f"{path}:{number}: unexpected line {line!r}")
            table[name] = float(stamp)
            if held:
                mib[name] = int(held[0])
    if starts.keys() != ends.keys():
        sys.exit(f"{path}: jobs without both a start and an end: {starts.keys() ^ ends.keys()}")
    return {name: (starts[name], ends[name]) for name in starts}, mib


def peak(spans: list[Span], begin: float = float("-inf"), stop: float = float("inf")) -> int:
    """Most spans running at one instant within [begin, stop)."""
    level = sum(1 for s, e in spans if s <= begin < e)
    best = level
    # Sweep the events inside the window; at equal times an end sorts before a start, so
    # a job that starts exactly when another ends does not count as overlapping it.
    events = sorted(
        [(s, 1) for s, _ in spans if begin < s < stop]
        + [(e, -1) for _, e in spans if begin < e < stop]
    )
    for _, delta in events:
        level += delta
        best = max(best, level)
    return best


def peak_memory(spans: dict[str, Span], mib: dict[str, int]) -> int:
    """The most MiB that jobs running at one instant held together."""
    events = sorted(
        [(s, 1, mib[name]) for name, (s, _) in spans.items()]
        + [(e, 0, -mib[name]) for name, (_, e) in spans.items()]
    )  # at equal times an end (0) sorts before a start (1), as in peak()
    held = most = 0
    for _, _, change in events:
        held += change
        most = max(most, held)
    return most


def cell(count: int, shell: bool) -> str:
    if count == 0:
        return " "
    if shell:
        return "#"
    return str(count) if count < 10 else "+"


def lane_of(name: str) -> str:
    return name.split(".", 1)[0]  # "py-a.3" -> "py-a"; shell recipes are their own lane


def draw(spans: dict[str, Span]) -> None:
    t0 = min(s for s, _ in spans.values())
    t1 = max(e for _, e in spans.values())
    step = (t1 - t0) / WIDTH
    lanes: dict[str, list[Span]] = defaultdict(list)
    for name, span in sorted(spans.items()):
        lanes[lane_of(name)].append(span)
    ruler = "".join(f"{i * step * 10:<10.1f}" for i in range(WIDTH // 10))
    print(f"  {'seconds':9} {ruler}".rstrip())
    rows = [*lanes.items(), ("running", list(spans.values()))]
    for lane, lane_spans in rows:
        shell = lane.startswith("sh-")
        columns = (
            cell(peak(lane_spans, t0 + i * step, t0 + (i + 1) * step), shell) for i in range(WIDTH)
        )
        print(f"  {lane:9}|{''.join(columns)}|")
    print("  (digits: jobs running at once; #: a shell recipe running; +: 10 or more)")


class Run:
    """What one run cost: its peaks of jobs and memory, its makespan and the median time of
    a job of each kind."""

    def __init__(self, path: str) -> None:
        spans, mib = read_spans(path)
        self.spans = spans
        self.python = {k: v for k, v in spans.items() if k.startswith("py-")}
        self.shell = {k: v for k, v in spans.items() if k.startswith("sh-")}
        self.peak = peak(list(spans.values()))
        self.memory = peak_memory(spans, mib)
        self.makespan = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
        self.python_job = statistics.median(e - s for s, e in self.python.values())
        self.shell_job = statistics.median(e - s for s, e in self.shell.values())

    def cost(self) -> str:
        return (
            f"  peak memory held by jobs: {self.memory} MiB; makespan {self.makespan:.1f} s;"
            f" a Python job took {self.python_job:.2f} s, a shell recipe"
            f" {self.shell_job:.2f} s (medians)"
        )


def compare(naive: Run, shared: Run, n: int, source: str) -> str:
    """The naive run against the makejobs run: what running beyond -jN bought and cost."""
    ratio = naive.makespan / shared.makespan
    if ratio > 1.05:
        outcome = "it finished later"
    elif ratio >= 0.95:
        outcome = "it finished no sooner"
    else:
        outcome = f"it finished {1 - ratio:.0%} sooner"
    return (
        f"  against the makejobs run ({source}): {naive.peak} jobs at once instead of"
        f" {shared.peak} (-j{n}) held {naive.memory / shared.memory:.1f}x the memory, a Python"
        f" job took {naive.python_job / shared.python_job:.1f}x as long and a shell recipe"
        f" {naive.shell_job / shared.shell_job:.1f}x; {outcome} (makespan {ratio:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("shared", "naive"), required=True)
    parser.add_argument("log")
    args = parser.parse_args()

    n = parse_makeflags(os.environ.get("MAKEFLAGS", "")).jobs
    if n is None:
        sys.exit("report.py: run the demo with 'make -jN', for example: make -j4")
    run = Run(args.log)
    cpus = os.cpu_count() or 1

    if args.mode == "shared":
        print(f"With makejobs: every Python step joins make's pool (make -j{n}, {cpus} CPUs)")
    else:
        print(
            f"Without makejobs: every Python step runs its own pool of {n} workers"
            f" (make -j{n}, {cpus} CPUs)"
        )
    print(
        f"  {len(run.python)} Python jobs in {len({lane_of(k) for k in run.python})} recipes"
        f" + {len(run.shell)} shell recipes"
    )
    draw(run.spans)

    if args.mode == "naive":
        if run.peak > n:
            verdict = f"oversubscribed: each Python step ran up to {n} workers beside make's jobs"
        else:
            verdict = "not oversubscribed this time"
        print(f"  peak concurrent jobs: {run.peak} of -j{n} ({verdict})")
        print(run.cost())
        shared_log = os.path.join(os.path.dirname(args.log), "shared.log")
        if os.path.exists(shared_log):
            print(compare(run, Run(shared_log), n, shared_log))
        return

    total = run.peak
    print(f"  peak concurrent jobs: {total} of -j{n} (make recipes + Python jobs shared one pool)")
    print(run.cost())
    check(total <= n, f"{total} jobs ran at once under make -j{n}")
    check(
        total == n,
        f"the pool was never full (peak {total} < {n}): too little work for -j{n}? raise PY_JOBS",
    )
    python_jobs, shell_jobs = run.python, run.shell
    steps = {lane_of(k) for k in python_jobs}
    per_step = {s: peak([v for k, v in python_jobs.items() if lane_of(k) == s]) for s in steps}
    if n > len(steps) + 1:
        # With room for more than one job per Python step plus a shell recipe, the Python
        # jobs must have run beside shell recipes, and some step must have taken tokens
        # from make (its first job runs on the slot make started the step on).
        mixed = any(
            ps < se and ss < pe
            for ps, pe in python_jobs.values()
            for ss, se in shell_jobs.values()
        )
        check(mixed, "Python jobs never ran alongside shell recipes")
        check(
            max(per_step.values(), default=0) >= 2,
            f"no Python step ever ran 2 jobs at once, so none took a token from make: {per_step}",
        )
    else:
        print(f"  (with -j{n} the Python steps need not take tokens from make; try -j4 or more)")


def check(condition: bool, failure: str) -> None:
    """Like assert, but also under python -O, and with a plain message."""
    if not condition:
        sys.exit(f"report.py: FAILED: {failure}")


if __name__ == "__main__":
    main()
