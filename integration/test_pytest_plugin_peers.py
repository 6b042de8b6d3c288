"""The pytest plugin with real pytest-xdist workers, under real make 4.3 and 4.4.1.

An inner pytest run (``python -m pytest -n ...`` in a scratch project) is started by a
Makefile next to shell recipes, or directly on a pool this test creates when the test
needs to count tokens itself or to interrupt the run. Every inner test logs a span
(``spans.py``) while it runs, so the peak number of tests and recipes running at once is
measured, never assumed; make must not print ``INTERNAL`` (a lost or extra token).

Inner runs load exactly xdist and makejobs' plugin, by their entry-point names
(``PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 ... -p xdist -p makejobs``): that is quicker than
loading every installed plugin, and keeps out the benchmark's peers (pytest-jobserver,
pytest-xdist-gnumake), which register themselves too. tests/test_pytest_plugin.py checks
that installing makejobs registers the entry point.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import spans
from makejobs.pool import TokenPool
from peers import Peer, clean_environ, run_captured
from processes import describe

HERE = Path(__file__).resolve().parent
JOB = HERE / "recipes" / "job.py"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist"]
MAKEJOBS = ["-p", "makejobs"]
TIMEOUT = 120

# Each test logs its span and the worker count xdist started.
WORK_TESTS = """
import os, pytest, spans

@pytest.mark.parametrize("i", range(int(os.environ["TESTS"])))
def test_work(i):
    with open(os.environ["WORKERS_FILE"], "w") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "serial"))
    spans.run_job(os.environ["LOG"], f"test-{i}", float(os.environ["SECONDS"]))
"""

KILL_TEST = """
import os, signal

def test_a_worker_dies():
    os.kill(os.getpid(), signal.SIGKILL)
"""

SIZING_CONFTEST = """
import os

def pytest_configure(config):
    with open(os.environ["WORKERS_FILE"], "w") as f:
        f.write(str(config.option.numprocesses))
"""

MAKEFILE = """\
all: tests sh-1 sh-2
tests:
\t+$(PYTEST) -n auto
sh-1 sh-2:
\t$(PYTHON) $(JOB) $(LOG) $@ $(SH_SECONDS)
"""


def project(tmp_path: Path, *files: tuple[str, str]) -> Path:
    """A scratch pytest project: its own rootdir, the given test files."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "pytest.ini").write_text("[pytest]\n")
    for name, text in files:
        (root / name).write_text(text)
    return root


def inner_environ(tmp_path: Path, pool: TokenPool | None = None, **extra: str) -> dict[str, str]:
    """No inherited pool (but *pool*'s, if given), the span helpers importable."""
    env = clean_environ(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    if pool is not None:
        env = pool.environ(env)
    tests = str(HERE.parent / "tests")  # spans.py
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests, env.get("PYTHONPATH")]))
    env.update(LOG=str(tmp_path / "spans.log"), WORKERS_FILE=str(tmp_path / "workers"), **extra)
    return env


def spans_of_tests(log: Path) -> list[spans.Span]:
    return [s for s in spans.read_spans(log) if s.name.startswith("test-")]


@pytest.mark.parametrize(("key", "style"), [("make43", "pipe"), ("make441", "fifo")])
def test_xdist_under_make_shares_the_pool_with_shell_recipes(
    key: str, style: str, peers: dict[str, Peer], tmp_path: Path
) -> None:
    make = peers[key]
    root = project(tmp_path, ("test_work.py", WORK_TESTS), ("Makefile", MAKEFILE))
    env = inner_environ(tmp_path, TESTS="8", SECONDS="0.2")
    proc = run_captured(
        make.argv(
            "-j3",
            f"PYTEST={' '.join(PYTEST + MAKEJOBS)}",
            f"PYTHON={sys.executable}",
            f"JOB={JOB}",
            f"LOG={tmp_path / 'spans.log'}",
            "SH_SECONDS=0.6",
        ),
        root,
        TIMEOUT,
        env=env,
    )
    assert proc.returncode == 0, describe(proc)
    assert "8 passed" in proc.stdout, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)
    # -n auto started one worker per slot of make's -j3.
    assert (tmp_path / "workers").read_text() == "3"
    everything = spans.read_spans(tmp_path / "spans.log")
    assert len(everything) == 10
    peak = spans.peak_overlap(everything)
    tests_peak = spans.peak_overlap(spans_of_tests(tmp_path / "spans.log"))
    print(f"{key} ({style}): peak {peak} of -j3, tests alone {tests_peak}")
    assert peak <= 3, "tests and recipes ran beyond make's pool"
    assert tests_peak >= 2, "the workers never ran tests side by side"


def test_one_slot_still_progresses_and_a_killed_workers_slot_comes_back(
    tmp_path: Path,
) -> None:
    # A pool of 1: the only slot is the pytest process's implicit one. The first test
    # SIGKILLs the worker running it; every later test needs that same slot, so the run
    # can only finish if the dead worker's slot came back at once.
    root = project(tmp_path, ("test_a_kill.py", KILL_TEST), ("test_work.py", WORK_TESTS))
    with TokenPool.create(1) as pool:
        env = inner_environ(tmp_path, pool, TESTS="5", SECONDS="0.1")
        proc = run_captured(
            [*PYTEST, *MAKEJOBS, "-n", "2"], root, TIMEOUT, env=env, pass_fds=pool.pass_fds
        )
        assert proc.returncode == 1, describe(proc)
        assert re.search(r"\b1 failed, 5 passed\b", proc.stdout), describe(proc)
        assert "crashed while running 'test_a_kill.py::test_a_worker_dies'" in proc.stdout
        assert pool.implicit_free
    assert pool.close() == 0  # the creator finds every token (none) and no extra one
    assert spans.peak_overlap(spans_of_tests(tmp_path / "spans.log")) == 1


LONG_TESTS = """
import os, pytest, spans

@pytest.mark.parametrize("i", range(4))
def test_long(i):
    spans.append_event(os.environ["LOG"], "S", f"test-{i}")
    import time
    time.sleep(60)
"""


def test_ctrl_c_ends_the_run_with_every_token_back(tmp_path: Path) -> None:
    root = project(tmp_path, ("test_long.py", LONG_TESTS))
    log = tmp_path / "spans.log"
    with TokenPool.create(3) as pool:
        env = inner_environ(tmp_path, pool)
        # Its own session: the SIGINT below reaches pytest and its workers, as a ^C in
        # a terminal reaches the whole foreground process group.
        inner = subprocess.Popen(
            [*PYTEST, *MAKEJOBS, "-n", "2"],
            cwd=root,
            env=env,
            pass_fds=pool.pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 90
            # Wait until both workers are inside a test, holding a slot each.
            while not log.exists() or log.read_text().count("S ") < 2:
                assert inner.poll() is None, inner.communicate()[0]
                assert time.monotonic() < deadline, "the workers never started their tests"
                time.sleep(0.05)
            # The controller lent its implicit slot and one of our 2 tokens.
            assert pool.available() == 1
            os.killpg(inner.pid, signal.SIGINT)
            output, _ = inner.communicate(timeout=60)
        finally:
            if inner.poll() is None:
                os.killpg(inner.pid, signal.SIGKILL)
                inner.wait()
        assert inner.returncode == 2, output  # pytest's "interrupted"
        assert "KeyboardInterrupt" in output
        assert pool.implicit_free and pool.available() == 2, "a slot was not given back"
    # Nothing of the run is left behind holding anything.
    with pytest.raises(ProcessLookupError):
        for _ in range(200):
            os.killpg(inner.pid, 0)
            time.sleep(0.05)


def auto_workers(root: Path, tmp_path: Path, env: dict[str, str], *, plugin: bool = True) -> str:
    """What ``-n auto`` resolves to (collection only: no worker starts)."""
    plugins = MAKEJOBS if plugin else []
    argv = [*PYTEST, *plugins, "-n", "auto", "--collect-only"]
    proc = run_captured(argv, root, TIMEOUT, env=env)
    assert proc.returncode == 0, describe(proc)
    return (tmp_path / "workers").read_text()


def test_n_auto_is_the_pool_size_or_the_usable_cpus(tmp_path: Path) -> None:
    root = project(tmp_path, ("conftest.py", SIZING_CONFTEST), ("test_work.py", WORK_TESTS))
    with TokenPool.create(3, style="fifo") as pool:
        env = inner_environ(tmp_path, pool, TESTS="1", SECONDS="0")
        assert auto_workers(root, tmp_path, env) == "3"
        # The user's explicit choice wins.
        env5 = {**env, "PYTEST_XDIST_AUTO_NUM_WORKERS": "5"}
        assert auto_workers(root, tmp_path, env5) == "5"
        # A pool that does not say its size (cargo's bare -j): one worker per usable CPU.
        unsized = {**env, "MAKEFLAGS": f" -j --jobserver-auth=fifo:{pool.auth.path}"}
        for variable in ("CARGO_MAKEFLAGS", "MFLAGS"):
            unsized.pop(variable, None)
        assert auto_workers(root, tmp_path, unsized) == str(len(os.sched_getaffinity(0)))
        assert pool.available() == 2
        # -n 0: xdist is told not to distribute, and the run takes no token either.
        proc = run_captured([*PYTEST, *MAKEJOBS, "-n", "0"], root, TIMEOUT, env=env)
        assert proc.returncode == 0 and "1 passed" in proc.stdout, describe(proc)
        assert (tmp_path / "workers").read_text() == "serial"  # the test ran in pytest itself
        assert pool.available() == 2
    # No pool: the plugin does nothing, and xdist decides as it would without it.
    plain = inner_environ(tmp_path, TESTS="1", SECONDS="0")
    assert auto_workers(root, tmp_path, plain) == auto_workers(root, tmp_path, plain, plugin=False)


def test_an_unusable_pool_warns_and_runs_one_test_at_a_time(make43: Peer, tmp_path: Path) -> None:
    # No '+': make 4.3 advertises its pipe in MAKEFLAGS but does not pass it on.
    root = project(
        tmp_path,
        ("conftest.py", SIZING_CONFTEST),
        ("test_work.py", WORK_TESTS),
        ("Makefile", "all:\n\t$(PYTEST) -n auto --collect-only\n"),
    )
    env = inner_environ(tmp_path, TESTS="1", SECONDS="0")
    proc = run_captured(
        make43.argv("-j3", f"PYTEST={' '.join(PYTEST + MAKEJOBS)}"), root, TIMEOUT, env=env
    )
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "workers").read_text() == "1"
    assert "JobserverUnavailable" in proc.stdout, describe(proc)
    assert "pytest-xdist workers run one test at a time" in proc.stdout, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)


def test_another_jobserver_plugin_is_refused_instead_of_deadlocking(tmp_path: Path) -> None:
    # pytest-jobserver, when installed, is the module pytest_jobserver.plugin; here an
    # empty module of that name stands for it (the benchmark runs the real one).
    root = project(tmp_path, ("test_work.py", WORK_TESTS))
    (root / "pytest_jobserver").mkdir()
    (root / "pytest_jobserver" / "__init__.py").write_text("")
    (root / "pytest_jobserver" / "plugin.py").write_text("")
    with TokenPool.create(2, style="fifo") as pool:
        env = inner_environ(tmp_path, pool, TESTS="1", SECONDS="0")
        argv = [*PYTEST, *MAKEJOBS, "-p", "pytest_jobserver.plugin", "-n", "2"]
        proc = run_captured(argv, root, TIMEOUT, env=env)
        assert proc.returncode == 4, describe(proc)  # a usage error
        assert "pytest-jobserver is active too" in proc.stderr, describe(proc)
        assert "-p no:jobserver or -p no:makejobs" in proc.stderr
        assert pool.available() == 1 and pool.implicit_free
