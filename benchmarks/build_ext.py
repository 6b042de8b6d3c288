#!/usr/bin/env python3
"""A 24-file C extension under ``make -jN``: stock setuptools against makejobs.setuptools.

Usage::

    python benchmarks/build_ext.py [--quick] [--json FILE] [--rounds R]

The extension has 24 generated C files that take the compiler about 0.2 s each (the
number of functions per file is calibrated on this machine before the run, compiling
with setuptools' own flags) and a module init. A ``+`` recipe runs ``python setup.py
build_ext`` from a clean build directory, with either setuptools' own ``build_ext``
(**stock**, the baseline) or ``makejobs.setuptools.build_ext`` (**makejobs**).
setuptools' ``CC`` is ``integration/recipes/cc_span.py``, which logs a span around
every compiler and linker run (``tests/spans.py``), so the **compiler peak** (most
compilers at once) is measured, and must not exceed N.

Scenarios:

* ``make -j2``: the build alone. **speed-up** is the stock makespan over makejobs', per
  round (the issue's target: at least 1.7x on a 2-core machine).
* ``make -j3 beside shell recipes``: two shell recipes of 1.5 s (sleeping, each holding
  one of make's slots) next to the build. The **peak** counts compilers and recipes
  together and must not exceed 3.

The **makespan** is the wall time of the whole make run, Python and setuptools start-up
included; **build** is the time from the first compiler's start to the link's end; **CPUs
used** is the CPU time of the whole run over its makespan. On a machine shared with other
busy sessions (Linux's autogroup scheduling gives each session a fair share, however many
processes it runs) a parallel build cannot use more than its share: when makejobs' rows
show about 1 CPU used, the speed-up measured that share, not the build. Every
run must end without make's ``INTERNAL`` line (a lost or extra token). Rounds are
interleaved (every case once per round, order rotated); the table gives medians and the
largest peaks. A full run uses make 4.3 (pipe) and make 4.4.1 (fifo), 3 rounds (about 3
minutes on 2 cores); ``--quick`` make 4.4.1 and one round.

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
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "integration"), str(ROOT / "tests")]

import spans  # noqa: E402  (tests/spans.py)
from benchmarks._common import command_line, makespans, report, run_build  # noqa: E402
from c_extension import part_source, write_sources  # noqa: E402  (tests/c_extension.py)
from peers import PeerMissing, clean_environ, find_peer  # noqa: E402

__all__ = ["FILES", "TARGET_SPEEDUP", "main", "run", "to_markdown"]

FILES = 24
COMPILE_SECONDS = 0.2
TARGET_SPEEDUP = 1.7
SHELL_SECONDS = 1.5
#: name -> (make -jN, shell recipes beside the build)
SCENARIOS = {"make -j2": (2, 0), "make -j3 beside shell recipes": (3, 2)}
VARIANTS = ("stock", "makejobs")
CC_SPAN = ROOT / "integration" / "recipes" / "cc_span.py"
JOB = ROOT / "integration" / "recipes" / "job.py"
_TIMEOUT = 600

SETUP = """\
import glob, os
from setuptools import Extension, setup

cmdclass = {}
if os.environ["VARIANT"] == "makejobs":
    from makejobs.setuptools import build_ext

    cmdclass["build_ext"] = build_ext
setup(
    name="bench",
    version="0",
    ext_modules=[Extension("bench", sorted(glob.glob("src/*.c")))],
    cmdclass=cmdclass,
)
"""


def write_project(root: Path, functions: int) -> None:
    write_sources(root / "src", "bench", FILES, functions)
    (root / "setup.py").write_text(SETUP)


def _compile_flags() -> list[str]:
    import sysconfig

    cflags = (sysconfig.get_config_var("CFLAGS") or "").split()
    return [*cflags, "-fPIC", "-c"]


def calibrate(work_dir: Path, log: Callable[[str], None]) -> tuple[int, float]:
    """Functions per file for about COMPILE_SECONDS of compiling, and the time measured."""
    cc = os.environ.get("CC_SPAN_REAL", "cc")

    def seconds(functions: int) -> float:
        source = work_dir / f"calibrate{functions}.c"
        source.write_text(part_source(0, functions))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run(
                [cc, *_compile_flags(), str(source), "-o", str(source.with_suffix(".o"))],
                check=True,
            )
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    functions, measured = 4, seconds(4)
    for _ in range(6):  # compile time grows about linearly with the functions
        functions = max(1, round(functions * COMPILE_SECONDS / measured))
        measured = seconds(functions)
        if abs(measured - COMPILE_SECONDS) < 0.15 * COMPILE_SECONDS:
            break
    log(f"calibrated: {functions} functions per file compile in {measured:.3f} s")
    return functions, measured


def makefile(shells: int) -> str:
    names = " ".join(f"sh-{k}" for k in range(1, shells + 1))
    text = f"all: ext {names}\next:\n\t+$(PYTHON) setup.py -q build_ext\n"
    if shells:
        text += f"{names}:\n\t$(PYTHON) {JOB} $(LOG) $@ {SHELL_SECONDS}\n"
    return text


def _run_case(
    make: str, jobs: int, variant: str, case: Path, env: dict[str, str]
) -> dict[str, Any]:
    shutil.rmtree(case / "build", ignore_errors=True)
    log = case / "spans.log"
    if log.exists():
        log.unlink()
    run_env = {
        **env,
        "VARIANT": variant,
        "CC": f"{sys.executable} -S {CC_SPAN} {log}",
    }
    argv = [make, f"-j{jobs}", f"PYTHON={sys.executable}", f"LOG={log}"]
    proc, timing = run_build(argv, case, run_env, _TIMEOUT)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{make} -j{jobs} ({variant}) exited {proc.returncode}:\n{output}")
    logged = spans.read_spans(log)
    compiles = [s for s in logged if s.name.startswith("compile-")]
    links = [s for s in logged if s.name.startswith("link-")]
    if len(compiles) != FILES + 1 or len(links) != 1:
        raise RuntimeError(f"expected {FILES + 1} compiles and a link, found {len(logged)} spans")
    return {
        **timing,
        "build": (links[0].end - min(s.start for s in compiles)) / 1e9,
        "compile_peak": spans.peak_overlap(compiles),
        "peak": spans.peak_overlap(logged),
        "internal": "INTERNAL" in output,
    }


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (make, scenario, variant) case over interleaved rounds; one row per case.

    Row keys: ``make``, ``scenario``, ``jobs``, ``variant``, ``rounds``, ``makespan_s``
    (median), ``makespan_min``, ``makespan_max``, ``build_s`` (median), ``speedup``
    (makejobs rows: median over rounds of stock makespan / this one), ``cpus`` (median
    CPU seconds of the whole run per second of makespan: how many CPUs it got; the
    stock build can use one, a parallel one as many as slots), ``compile_peak``
    and ``peak`` (maxima over rounds), ``internal`` (make printed INTERNAL in some
    round), ``functions`` and ``compile_s`` (the calibration).
    """
    say = log or (lambda line: None)
    rounds = (1 if quick else 3) if rounds is None else rounds
    make_keys = ("make441",) if quick else ("make43", "make441")
    makes = {}
    for key in make_keys:
        try:
            peer = find_peer(key)
        except PeerMissing as e:
            raise SystemExit(e.message) from None
        makes[f"make {peer.version_string}"] = peer.path
    cases = [(m, s, v) for m in makes for s in SCENARIOS for v in VARIANTS]
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="makejobs-bench-ext-") as tmp:
        functions, compile_s = calibrate(Path(tmp), say)
        env = clean_environ(PYTHONPATH=str(ROOT))
        dirs = {}
        for case in cases:
            d = Path(tmp) / "-".join(part.replace(" ", "_") for part in case)
            write_project(d, functions)
            (d / "Makefile").write_text(makefile(SCENARIOS[case[1]][1]))
            dirs[case] = d
        for r in range(rounds):
            for case in cases[r % len(cases) :] + cases[: r % len(cases)]:
                make_name, scenario, variant = case
                jobs = SCENARIOS[scenario][0]
                outcome = _run_case(makes[make_name], jobs, variant, dirs[case], env)
                results[case].append(outcome)
                say(
                    f"round {r + 1}/{rounds} {make_name} {scenario:<30} {variant:<8}"
                    f" {outcome['makespan']:6.2f} s  build {outcome['build']:5.2f} s"
                    f"  CPUs {outcome['cpus']:4.2f}"
                    f"  compilers {outcome['compile_peak']}  peak {outcome['peak']}"
                )
    rows = []
    for make_name, scenario, variant in cases:
        outcomes = results[(make_name, scenario, variant)]
        stock = results[(make_name, scenario, "stock")]
        rows.append(
            {
                "make": make_name,
                "scenario": scenario,
                "jobs": SCENARIOS[scenario][0],
                "variant": variant,
                **makespans(outcomes),
                "build_s": statistics.median(o["build"] for o in outcomes),
                "cpus": statistics.median(o["cpus"] for o in outcomes),
                "speedup": statistics.median(
                    s["makespan"] / o["makespan"] for s, o in zip(stock, outcomes)
                ),
                "compile_peak": max(o["compile_peak"] for o in outcomes),
                "peak": max(o["peak"] for o in outcomes),
                "internal": any(o["internal"] for o in outcomes),
                "functions": functions,
                "compile_s": compile_s,
            }
        )
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| make | scenario | build_ext | makespan s (min-max) | build s | CPUs used"
        " | speed-up vs stock | compilers at once (max) | peak with recipes | INTERNAL |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        speedup = "1.00 (baseline)" if row["variant"] == "stock" else f"{row['speedup']:.2f}"
        lines.append(
            f"| {row['make']} | {row['scenario']} | {row['variant']}"
            f" | {row['makespan_s']:.2f} ({row['makespan_min']:.2f}-{row['makespan_max']:.2f})"
            f" | {row['build_s']:.2f} | {row['cpus']:.2f} | {speedup}"
            f" | {row['compile_peak']} of {row['jobs']}"
            f" | {row['peak']} | {'yes' if row['internal'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__, quick="make 4.4.1 only, one round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)

    def describe(rows: list[dict[str, Any]]) -> str:
        speedups = [r["speedup"] for r in rows if r["variant"] == "makejobs" and r["jobs"] == 2]
        return (
            f"\n{to_markdown(rows)}\n\nspeed-up under make -j2:"
            f" {', '.join(f'{s:.2f}x' for s in speedups)} (target >= {TARGET_SPEEDUP}x)"
        )

    return report(
        args,
        "build_ext",
        lambda: run(args.quick, rounds=args.rounds, log=lambda line: print(line, flush=True)),
        describe,
        load_average=True,  # the machine may be shared: say how busy it was
        baseline="stock",
        target_speedup=TARGET_SPEEDUP,
    )


if __name__ == "__main__":
    sys.exit(main())
