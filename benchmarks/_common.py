"""What every benchmark script shares: its command line, its report and ``--json`` document.

Each script runs on its own (``python benchmarks/NAME.py``) and is imported by
``harness.py``; both put the repository root on ``sys.path`` first, so this
module is ``benchmarks._common``. Only the standard library is imported here:
``scheduling.py`` re-imports its own file in every Python recipe.

A script's ``main()`` is::

    parser = command_line(__doc__, quick="about 3 s instead of 20 s")
    ...  # the script's own options
    args = parser.parse_args(argv)
    return report(args, "name", lambda: run(args.quick, ...), to_markdown, ...)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import argparse
    import subprocess
    from pathlib import Path

__all__ = [
    "command_line",
    "environment",
    "fmt",
    "makespans",
    "progress",
    "report",
    "run_build",
    "write_json",
]

#: A benchmark's rows: one dict per row of its table.
Rows = list[dict[str, Any]]


def fmt(value: float | None, spec: str, suffix: str = "", *, missing: str = "n/a") -> str:
    """*value* formatted by *spec* with *suffix*, or *missing* for a row not measured."""
    return missing if value is None else f"{value:{spec}}{suffix}"


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and interpreter a run measured, plus the script's own *extra* facts."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **extra,
    }


def write_json(
    path: str,
    benchmark: str,
    *,
    quick: bool,
    seconds: float,
    rows: list[dict[str, Any]],
    environment: dict[str, Any],
    **fields: Any,
) -> None:
    """Write a run to *path* as ``{"benchmark", "quick", **fields, "seconds", ...}``.

    The document ends with ``"environment"`` and ``"rows"``; *fields* are the
    script's own (its baseline, its target).
    """
    doc = {
        "benchmark": benchmark,
        "quick": quick,
        **fields,
        "seconds": seconds,
        "environment": environment,
        "rows": rows,
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2) + "\n")


def run_build(
    argv: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict[str, float]]:
    """Run a build, *argv* (a make), to its end with no input and its output as text.

    Returns the finished process and ``{"makespan", "cpus"}``: its wall time in seconds
    and the CPUs it used, CPU seconds of it and all it ran (once reaped) per second.
    """
    import subprocess

    def children_cpu() -> float:
        times = os.times()
        return times.children_user + times.children_system

    t0, cpu0 = time.perf_counter(), children_cpu()
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    makespan = time.perf_counter() - t0
    return proc, {"makespan": makespan, "cpus": (children_cpu() - cpu0) / makespan}


def makespans(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """A row's columns for its rounds' *outcomes* (each with a ``makespan``): ``rounds``,
    ``makespan_s`` (the median), ``makespan_min`` and ``makespan_max``."""
    import statistics

    values = [o["makespan"] for o in outcomes]
    return {
        "rounds": len(outcomes),
        "makespan_s": statistics.median(values),
        "makespan_min": min(values),
        "makespan_max": max(values),
    }


def command_line(doc: str | None, quick: str) -> argparse.ArgumentParser:
    """A parser with the options every script takes: ``--quick`` and ``--json FILE``.

    Its description is the first paragraph of *doc* (the script's docstring); *quick*
    says what ``--quick`` runs instead (its help).
    """
    import argparse  # here: the recipes that import this module never parse a command line

    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    return parser


def progress(line: str) -> None:
    """Say *line* on standard error at once: how a long run shows it is getting on."""
    print(line, file=sys.stderr, flush=True)


def report(
    args: argparse.Namespace,
    benchmark: str,
    measure: Callable[[], Rows],
    describe: Callable[[Rows], str],
    *,
    facts: dict[str, Any] | None = None,
    load_average: bool = False,
    **fields: Any,
) -> int:
    """Run a script's benchmark and report it: the end of every ``main()``; returns 0.

    Times *measure* (the run, which returns the rows), then prints *describe(rows)* (the
    table, and whatever the script says about it) and one line on the run: how long it
    took, on how many CPUs, with which Python. With *load_average*, a line before that one
    gives the machine's 1-minute load average before and after the run: on a shared
    machine, how busy the others kept it. With ``--json FILE``, also writes the run to FILE
    (see :func:`write_json`): :func:`environment` with the script's own *facts* (and
    ``load_average``), and the script's *fields* (its baseline, its target).
    """
    load = [os.getloadavg()[0]] if load_average else []
    started = time.monotonic()
    rows = measure()
    seconds = time.monotonic() - started
    if load:
        load.append(os.getloadavg()[0])
        facts = {**(facts or {}), "load_average": load}
    print(describe(rows))
    if load:
        print(f"\n1-minute load average: {load[0]:.1f} before, {load[1]:.1f} after the run")
    print(
        f"\n({seconds:.1f} s, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {platform.platform()})"
    )
    if args.json:
        write_json(
            args.json,
            benchmark,
            quick=args.quick,
            seconds=seconds,
            rows=rows,
            environment=environment(**(facts or {})),
            **fields,
        )
    return 0
