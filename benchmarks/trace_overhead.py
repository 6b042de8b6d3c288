#!/usr/bin/env python3
"""What ``makejobs serve --trace`` costs: a C build's makespan with and without tracing.

Usage::

    python benchmarks/trace_overhead.py [--quick] [--json FILE] [--rounds R] [--files F]

The benchmark build: F generated C files (default 48; 16 with ``--quick``), each a few
hundred lines of arithmetic functions that ``gcc -O2 -c`` takes a tenth of a second or so
to compile, built by make 4.3 (the system make) from a generated Makefile with a pattern
rule, under ``makejobs serve -j N`` (N = the usable CPUs): make joins serve's pool and
runs N compiles at a time, so the CPUs are busy and a tracer's CPU time shows.

Contenders, run in interleaved rounds (order alternating), each as
``python -m makejobs serve -j N [--trace FILE] -- make -B -f Makefile`` (``-B``: every
object is built every time):

* ``serve`` (the baseline): no tracing;
* ``serve --trace``: the busy-slot counter sampled every 5 ms and the process table
  every 20 ms by a thread of serve, and the JSON written at the end.

The figure is the makespan (wall time of the serve process, start to exit), and the
target is tracing adding at most 2% to it: the table gives the median makespan
of each and the median over rounds of the traced/untraced ratio of the same round, with
the traced runs' span and sample counts as a check that tracing did record the build.
Because a shared machine makes single makespans noisy (other processes take the CPUs
in bursts), each run's CPU time is measured too: user + system seconds of serve, make
and every compiler, from ``getrusage(RUSAGE_CHILDREN)`` around the run. On a build
that keeps every CPU busy, the makespan grows by the CPU time tracing adds divided by
N, and CPU time depends less on what else the machine runs. The table gives the
median traced/untraced CPU ratio of the same round, and the recorder thread's own CPU
time (``otherData.recorder_cpu_s``) as a share of the untraced build's CPU time and of
N x the traced makespan: the latter is the makespan tracing adds to a build that keeps
every CPU busy on a machine of its own, the figure least disturbed by other load.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BASELINE = "serve"
TRACED = "serve --trace"
TARGET_RATIO = 1.02
FUNCTIONS_PER_FILE = 15

_POOL_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKEJOBS_LEDGER")


def _c_source(index: int) -> str:
    """A C file with enough optimisable arithmetic to keep gcc -O2 busy for a while."""
    lines = ["#include <stdint.h>"]
    for f in range(FUNCTIONS_PER_FILE):
        lines.append(f"uint64_t f{index}_{f}(uint64_t x, uint64_t n) {{")
        lines.append("    uint64_t acc = x;")
        lines.append("    for (uint64_t i = 0; i < n; i++) {")
        for k in range(6):
            lines.append(
                f"        acc = acc * {2 * k + 3}u + (acc >> {k + 1}) ^ (i * {f + k + 7}u);"
            )
        lines.append("        if (acc % 7u == 3u) acc += i; else acc ^= n;")
        lines.append("    }")
        lines.append("    return acc;")
        lines.append("}")
    return "\n".join(lines) + "\n"


def write_build(directory: Path, files: int) -> None:
    """The benchmark build in *directory*: F C files and a Makefile that compiles them."""
    objects = []
    for i in range(files):
        (directory / f"unit{i}.c").write_text(_c_source(i))
        objects.append(f"unit{i}.o")
    (directory / "Makefile").write_text(
        f"all: {' '.join(objects)}\n\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n"
    )


def _environ() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _POOL_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["LC_ALL"] = "C"
    return env


def _cpu_of_children() -> float:
    """User + system seconds of every waited-for descendant so far."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _one(directory: Path, slots: int, trace: Path | None) -> tuple[float, float]:
    """One build under serve: (makespan, CPU seconds of serve and everything it ran)."""
    argv = [sys.executable, "-m", "makejobs", "serve", "-j", str(slots)]
    if trace is not None:
        argv += ["--trace", str(trace)]
    argv += ["--", "/usr/bin/make", "-s", "-B", "-f", "Makefile"]
    cpu = _cpu_of_children()
    started = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=directory,
        env=_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the build failed ({done.returncode}):\n{done.stderr}")
    return elapsed, _cpu_of_children() - cpu


def _trace_facts(trace: Path) -> tuple[int, int, float]:
    """Spans and counter samples in a trace, and the CPU seconds its recorder used."""
    import json

    document = json.loads(trace.read_text())
    events = document["traceEvents"]
    return (
        sum(1 for e in events if e.get("ph") == "X"),
        sum(1 for e in events if e.get("ph") == "C"),
        float(document["otherData"]["recorder_cpu_s"]),
    )


def run(
    quick: bool,
    *,
    rounds: int | None = None,
    files: int | None = None,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Measure; one row per contender (dicts, for --json and a harness)."""
    from makejobs._posix import usable_cpus

    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed for the benchmark build")
    rounds = rounds if rounds is not None else (3 if quick else 7)
    files = files if files is not None else (16 if quick else 48)
    slots = usable_cpus()
    times: dict[str, list[float]] = {BASELINE: [], TRACED: []}
    cpus: dict[str, list[float]] = {BASELINE: [], TRACED: []}
    ratios: list[float] = []
    cpu_ratios: list[float] = []
    spans: list[int] = []
    samples: list[int] = []
    shares: list[float] = []
    capacity: list[float] = []
    with tempfile.TemporaryDirectory(prefix="makejobs-trace-bench-") as tmp:
        directory = Path(tmp)
        write_build(directory, files)
        trace = directory / "trace.json"
        _one(directory, slots, None)  # warm the page cache and gcc
        for r in range(rounds):
            order = [BASELINE, TRACED] if r % 2 == 0 else [TRACED, BASELINE]
            for name in order:
                wall, cpu = _one(directory, slots, trace if name == TRACED else None)
                times[name].append(wall)
                cpus[name].append(cpu)
            ratios.append(times[TRACED][-1] / times[BASELINE][-1])
            cpu_ratios.append(cpus[TRACED][-1] / cpus[BASELINE][-1])
            count_spans, count_samples, recorder = _trace_facts(trace)
            spans.append(count_spans)
            samples.append(count_samples)
            shares.append(recorder / cpus[BASELINE][-1])
            capacity.append(recorder / (slots * times[TRACED][-1]))
            if log is not None:
                log(
                    f"round {r + 1}/{rounds}: makespan {times[BASELINE][-1]:.3f} s plain,"
                    f" {times[TRACED][-1]:.3f} s traced ({ratios[-1]:.3f}x); CPU"
                    f" {cpus[BASELINE][-1]:.3f} s plain, {cpus[TRACED][-1]:.3f} s traced"
                    f" ({cpu_ratios[-1]:.3f}x); {count_spans} spans, {count_samples} counter"
                    f" samples, recorder {recorder * 1000:.0f} ms CPU"
                )
    common = {"files": files, "slots": slots, "rounds": rounds}
    return [
        {
            "contender": BASELINE,
            **common,
            "makespan_s": statistics.median(times[BASELINE]),
            "ratio": 1.0,
            "cpu_s": statistics.median(cpus[BASELINE]),
            "cpu_ratio": 1.0,
        },
        {
            "contender": TRACED,
            **common,
            "makespan_s": statistics.median(times[TRACED]),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "cpu_s": statistics.median(cpus[TRACED]),
            "cpu_ratio": statistics.median(cpu_ratios),
            "recorder_share": statistics.median(shares),
            "recorder_capacity_share": statistics.median(capacity),
            "spans": statistics.median(spans),
            "counter_samples": statistics.median(samples),
        },
    ]


def to_markdown(rows: list[dict[str, Any]]) -> str:
    from benchmarks._common import fmt

    lines = [
        "| contender | files | -j | makespan (median) | ratio (median of rounds) | range |"
        " CPU (median) | CPU ratio | spans | counter samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['contender']} | {row['files']} | {row['slots']} |"
            f" {fmt(row['makespan_s'], '.3f', ' s')} | {fmt(row['ratio'], '.3f', 'x')} |"
            f" {fmt(row.get('ratio_min'), '.3f')}-{fmt(row.get('ratio_max'), '.3f')} |"
            f" {fmt(row['cpu_s'], '.3f', ' s')} | {fmt(row['cpu_ratio'], '.3f', 'x')} |"
            f" {row.get('spans', '')} | {row.get('counter_samples', '')} |"
        )
    traced = rows[-1]
    verdict = "PASS" if traced["ratio"] <= TARGET_RATIO else "MISS"
    lines.append(
        f"\n{verdict}: makespan with tracing {traced['ratio']:.3f}x (target <= {TARGET_RATIO}x);"
        f" CPU time {traced['cpu_ratio']:.3f}x; the recorder thread alone used"
        f" {traced['recorder_share']:.2%} of the build's CPU time and"
        f" {traced['recorder_capacity_share']:.2%} of N x makespan (what it can add to the"
        " makespan of a build that keeps every CPU busy on a machine of its own)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import command_line, progress, report

    parser = command_line(__doc__, quick="16 files, 3 rounds")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--files", type=int, default=None, help="C files in the build")
    args = parser.parse_args(argv)
    return report(
        args,
        "trace_overhead",
        lambda: run(args.quick, rounds=args.rounds, files=args.files, log=progress),
        to_markdown,
        baseline=BASELINE,
        target_ratio=TARGET_RATIO,
    )


if __name__ == "__main__":
    sys.exit(main())
