"""Read a demo span log, draw its timeline, and check the concurrency claims.

    python3 report.py --mode shared|naive LOG

N is make's ``-jN``, read from ``MAKEFLAGS`` (make exports it to every recipe).

For ``--mode shared`` (Python steps on makejobs) it asserts that

* at no moment did more than N jobs run (make recipes and Python jobs together), and
* the pool was really shared: the peak reached N, Python jobs ran at the same time as
  shell recipes, and (given N >= 4, enough room for that) some Python step ran 2 or more
  jobs at once, so it took tokens from make beyond the slot make started it on.

For ``--mode naive`` it only reports how far the run went beyond N.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

try:
    from makejobs import parse_makeflags
except ImportError:  # the demo's most likely first stumble: say what to do
    sys.exit(f"{sys.executable} cannot import makejobs: run 'pip install -e .' in the checkout")

WIDTH = 60  # timeline columns

Span = tuple[float, float]


def read_spans(path: str) -> dict[str, Span]:
    """name -> (start, end); every job must have logged exactly one start and one end."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            kind, stamp, name = line.split()
            table = starts if kind == "start" else ends
            if kind not in ("start", "end") or name in table:
                sys.exit(f"{path}:{number}: unexpected line {line!r}")
            table[name] = float(stamp)
    if starts.keys() != ends.keys():
        sys.exit(f"{path}: jobs without both a start and an end: {starts.keys() ^ ends.keys()}")
    return {name: (starts[name], ends[name]) for name in starts}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("shared", "naive"), required=True)
    parser.add_argument("log")
    args = parser.parse_args()

    n = parse_makeflags(os.environ.get("MAKEFLAGS", "")).jobs
    if n is None:
        sys.exit("report.py: run the demo with 'make -jN', for example: make -j4")
    spans = read_spans(args.log)
    python_jobs = {k: v for k, v in spans.items() if k.startswith("py-")}
    shell_jobs = {k: v for k, v in spans.items() if k.startswith("sh-")}
    total = peak(list(spans.values()))
    took = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())

    if args.mode == "shared":
        print(f"With makejobs: every Python step joins make's pool (make -j{n})")
    else:
        print(f"Without makejobs: every Python step runs its own pool of {n} workers")
    print(
        f"  {len(python_jobs)} Python jobs in {len({lane_of(k) for k in python_jobs})} recipes"
        f" + {len(shell_jobs)} shell recipes, {took:.1f}s"
    )
    draw(spans)

    if args.mode == "naive":
        if total > n:
            verdict = f"oversubscribed: each Python step ran up to {n} workers beside make's jobs"
        else:
            verdict = "not oversubscribed this time"
        print(f"  peak concurrent jobs: {total} of -j{n} ({verdict})")
        return

    print(f"  peak concurrent jobs: {total} of -j{n} (make recipes + Python jobs shared one pool)")
    check(total <= n, f"{total} jobs ran at once under make -j{n}")
    check(
        total == n,
        f"the pool was never full (peak {total} < {n}): too little work for -j{n}? raise PY_JOBS",
    )
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
