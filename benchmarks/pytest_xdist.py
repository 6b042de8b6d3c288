#!/usr/bin/env python3
"""pytest -n auto under ``make -j4`` beside shell recipes: makejobs' plugin and its peers.

Usage::

    python benchmarks/pytest_xdist.py [--quick] [--json FILE] [--rounds R]

One generated Makefile, run with ``make -j4``, holds a ``+`` recipe running
``pytest -n auto`` on 24 tests of 0.3 s each and four shell recipes of 1 s each.
Tests and recipes sleep (they stand for work whose CPU needs are not the point): what
is measured is how the plugins share make's 4 slots. Every test and recipe logs its
span (``tests/spans.py``); from the spans come the **peak** (most running at
once: above 4 means the build ran beyond ``-j4``) and the **work** (their sum), and the
**ideal** makespan is work / 4. The **makespan** is the wall time of the whole make run.

Contenders, each a plugin set given explicitly (``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1``,
so that the others, installed in the same environment, stay out):

* ``makejobs``: ``-p xdist -p makejobs`` (this project's plugin);
* ``pytest-jobserver 1.1.0``: ``-p xdist -p jobserver``;
* ``pytest-xdist-gnumake 1.0.0``: ``-p xdist -p tracker``;
* ``xdist alone``: ``-p xdist``, no jobserver client (the baseline for the makespan).

Scenarios: make 4.4.1 with its fifo pool, make 4.3 with its pipe pool, and make 4.4.1
with four more tests, the last of which SIGKILLs its worker (xdist reports it and goes
on; load scheduling gives that test to gw1): there, make's ``INTERNAL: Exiting with N
jobserver tokens available; should be M`` line says how many tokens were lost.
``workers`` is what ``-n auto`` started. Rounds are interleaved (every case once per
round, order rotated) and the table gives medians (makespan) and maxima (peak).
A full run takes about 4 minutes on 2 cores; ``--quick`` runs one round.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "integration"), str(ROOT / "tests")]

import spans  # noqa: E402  (tests/spans.py)
from benchmarks._common import command_line, makespans, report, run_build  # noqa: E402
from peers import PeerMissing, clean_environ, find_peer  # noqa: E402

__all__ = ["CONTENDERS", "SCENARIOS", "main", "run", "to_markdown"]

SLOTS = 4
TESTS = 24
TEST_SECONDS = 0.3
SHELL_RECIPES = 4
SHELL_SECONDS = 1.0

#: name -> (plugin arguments, distribution whose version is reported)
CONTENDERS: dict[str, tuple[list[str], str | None]] = {
    "makejobs": (["-p", "xdist", "-p", "makejobs"], "makejobs"),
    "pytest-jobserver": (["-p", "xdist", "-p", "jobserver"], "pytest-jobserver"),
    "pytest-xdist-gnumake": (["-p", "xdist", "-p", "tracker"], "pytest-xdist-gnumake"),
    "xdist alone": (["-p", "xdist"], "pytest-xdist"),
}
#: name -> (peer key of the make, does a test kill its worker)
SCENARIOS: dict[str, tuple[str, bool]] = {
    "make 4.4.1 (fifo)": ("make441", False),
    "make 4.3 (pipe)": ("make43", False),
    "make 4.4.1, a worker killed": ("make441", True),
}
_TIMEOUT = 300

TEST_FILE = """
import os, pytest, spans

@pytest.mark.parametrize("i", range({tests}))
def test_work(i):
    with open(os.environ["WORKERS_FILE"], "w") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    spans.run_job(os.environ["LOG"], f"test-{{i}}", {seconds})
"""

# Collected first; xdist's load scheduling sends the first tests to gw0 and the next ones
# to gw1, so the 4th runs on gw1. It SIGKILLs its worker while that holds a token
# (pytest-jobserver runs gw0's tests on the implicit slot, without one).
KILL_FILE = """
import os, pytest, signal

@pytest.mark.parametrize("i", range(4))
def test_kill(i):
    if i == 3:
        os.kill(os.getpid(), signal.SIGKILL)
"""
KILL_PASSES = 3


def makefile(pytest_argv: list[str]) -> str:
    shells = " ".join(f"sh-{k}" for k in range(1, SHELL_RECIPES + 1))
    job = ROOT / "integration" / "recipes" / "job.py"
    return (
        f"all: tests {shells}\n"
        f"tests:\n\t+{' '.join(pytest_argv)}\n"
        f"{shells}:\n\t{sys.executable} {job} $(LOG) $@ {SHELL_SECONDS}\n"
    )


def _version(dist: str | None) -> str:
    if dist is None:
        return ""
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def _run_case(
    make: str, contender: str, kill: bool, work_dir: Path, env: dict[str, str]
) -> dict[str, Any]:
    plugins, _dist = CONTENDERS[contender]
    case = work_dir / f"{contender.replace(' ', '-')}-{'kill' if kill else 'plain'}"
    if case.exists():
        for child in case.iterdir():
            if child.is_file():
                child.unlink()
    case.mkdir(exist_ok=True)
    (case / "pytest.ini").write_text("[pytest]\n")
    (case / "test_work.py").write_text(TEST_FILE.format(tests=TESTS, seconds=TEST_SECONDS))
    if kill:
        (case / "test_a_kill.py").write_text(KILL_FILE)
    pytest_argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins]
    (case / "Makefile").write_text(makefile([*pytest_argv, "-n", "auto"]))
    log = case / "spans.log"
    run_env = {**env, "LOG": str(log), "WORKERS_FILE": str(case / "workers")}
    proc, timing = run_build([make, "-j", str(SLOTS), f"LOG={log}"], case, run_env, _TIMEOUT)
    output = proc.stdout + proc.stderr
    internal = re.search(
        r"INTERNAL: Exiting with (\d+) jobserver tokens available; should be (\d+)", output
    )
    result: dict[str, Any] = {
        **timing,
        "status": proc.returncode,
        "lost_tokens": int(internal.group(2)) - int(internal.group(1)) if internal else 0,
        "workers": (case / "workers").read_text() if (case / "workers").exists() else "",
        "error": "",
    }
    passed = re.search(r"(\d+) passed", output)
    result["passed"] = int(passed.group(1)) - (KILL_PASSES if kill else 0) if passed else 0
    if result["passed"] != TESTS:
        usage = re.search(r"(?:ERROR|UsageError): (.*)", output)
        result["error"] = (usage.group(1) if usage else output.strip()[-300:]).strip()
        return result
    log_spans = spans.read_spans(log)
    tests = [s for s in log_spans if s.name.startswith("test-")]
    result["peak"] = spans.peak_overlap(log_spans)
    result["tests_peak"] = spans.peak_overlap(tests)
    result["ideal"] = sum(s.seconds for s in log_spans) / SLOTS
    # From the first test's start to the last one's end: the run without pytest's and
    # the workers' start-up.
    result["test_phase"] = (max(s.end for s in tests) - min(s.start for s in tests)) / 1e9
    return result


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Every (scenario, contender) case over interleaved rounds; one row per case.

    Row keys: ``scenario``, ``contender``, ``version``, ``rounds``, ``makespan_s``
    (median), ``makespan_min``, ``makespan_max``, ``cpus`` (median CPU seconds of the run
    per second of makespan), ``ideal_s``, ``test_phase_s`` (median
    time from the first test's start to the last test's end), ``vs_makejobs`` (median
    makespan / makejobs' in that scenario), ``peak`` and ``tests_peak`` (maxima over
    rounds), ``workers`` (what -n auto started), ``passed`` (tests that passed, of 24),
    ``lost_tokens`` (largest make reported), ``failed`` (a run that did not pass its
    tests: the error, e.g. pytest-jobserver's refusal under a pipe pool).
    """
    import statistics

    say = log or (lambda line: None)
    rounds = (1 if quick else 3) if rounds is None else rounds
    makes = {}
    for scenario, (key, _kill) in SCENARIOS.items():
        try:
            makes[scenario] = find_peer(key).path
        except PeerMissing as e:
            raise SystemExit(e.message) from None
    cases = [(s, c) for s in SCENARIOS for c in CONTENDERS]
    # xdist alone has no token to lose: the crash scenario is about the jobserver plugins.
    cases = [(s, c) for s, c in cases if not (SCENARIOS[s][1] and c == "xdist alone")]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="makejobs-bench-xdist-") as tmp:
        env = clean_environ(
            PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
            PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),  # spans.py
        )
        for r in range(rounds):
            order = cases[r % len(cases) :] + cases[: r % len(cases)]
            for scenario, contender in order:
                key, kill = SCENARIOS[scenario]
                scenario_dir = Path(tmp) / key / ("kill" if kill else "plain")
                scenario_dir.mkdir(parents=True, exist_ok=True)
                outcome = _run_case(makes[scenario], contender, kill, scenario_dir, env)
                results[(scenario, contender)].append(outcome)
                say(
                    f"round {r + 1}/{rounds} {scenario:<28} {contender:<22}"
                    f" {outcome['makespan']:6.2f} s  peak {outcome.get('peak', '-')}"
                    f"  lost {outcome['lost_tokens']}  {outcome['error'][:60]}"
                )
    rows = []
    for scenario, contender in cases:
        outcomes = results[(scenario, contender)]
        ok = [o for o in outcomes if not o["error"]]
        row: dict[str, Any] = {
            "scenario": scenario,
            "contender": contender,
            "version": _version(CONTENDERS[contender][1]),
            **makespans(outcomes),
            "cpus": statistics.median(o["cpus"] for o in outcomes),
            "ideal_s": statistics.median(o["ideal"] for o in ok) if ok else None,
            "test_phase_s": statistics.median(o["test_phase"] for o in ok) if ok else None,
            "peak": max(o["peak"] for o in ok) if ok else None,
            "tests_peak": max(o["tests_peak"] for o in ok) if ok else None,
            "workers": "/".join(sorted({o["workers"] for o in outcomes if o["workers"]})),
            "passed": min(o["passed"] for o in outcomes),
            "lost_tokens": max(o["lost_tokens"] for o in outcomes),
            "failed": next((o["error"] for o in outcomes if o["error"]), ""),
        }
        rows.append(row)
    for row in rows:
        ours = results[(row["scenario"], "makejobs")]
        theirs = results[(row["scenario"], row["contender"])]
        ratios = [t["makespan"] / o["makespan"] for t, o in zip(theirs, ours)]
        row["vs_makejobs"] = statistics.median(ratios)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| scenario (make -j{SLOTS}) | contender | workers | makespan s (min-max) | ideal s"
        " | tests s | CPUs used | x makejobs | peak (tests) | passed | tokens lost | note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        ideal = "" if row["ideal_s"] is None else f"{row['ideal_s']:.2f}"
        phase = "" if row["test_phase_s"] is None else f"{row['test_phase_s']:.2f}"
        peak = "" if row["peak"] is None else f"{row['peak']} ({row['tests_peak']})"
        name = row["contender"] + (f" {row['version']}" if row["version"] else "")
        lines.append(
            f"| {row['scenario']} | {name} | {row['workers']} | {row['makespan_s']:.2f}"
            f" ({row['makespan_min']:.2f}-{row['makespan_max']:.2f}) | {ideal} | {phase}"
            f" | {row['cpus']:.2f}"
            f" | {row['vs_makejobs']:.2f} | {peak} | {row['passed']}/{TESTS}"
            f" | {row['lost_tokens']} | {row['failed'][:110]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__, quick="one round")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    return report(
        args,
        "pytest_xdist",
        lambda: run(args.quick, rounds=args.rounds, log=lambda line: print(line, flush=True)),
        lambda rows: f"\n{to_markdown(rows)}",
        load_average=True,  # the machine may be shared: say how busy it was
        baseline="makejobs",
    )


if __name__ == "__main__":
    sys.exit(main())
