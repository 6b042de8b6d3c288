"""Proof with real peers: every consumer gets the pool in the form it speaks.

* ``make -j3`` (4.3, a pipe pool) runs ``+makejobs bridge --style fifo -- <fifo-only
  client>`` beside shell recipes: the client joins make's pipe by path and everything
  together peaks at exactly 3. Control: the same client run directly refuses the pipe
  and oversubscribes.
* ``make -j3`` (4.4.1, a fifo pool) runs ``+makejobs bridge --style pipe -- make -f
  sub.mk`` with make 4.3 (and ``--style auto``, which asks make 4.3 its version): peak
  exactly 3. Control: make 4.3 run directly dies on the fifo auth.
* A ``Jobserver`` job runs a plain ``subprocess.run`` of make 4.4.1 and of ninja (which
  closes every inherited fd): with the job's environment advertising the pipe pool by
  path they join it, make 4.3 dies on that form (the documented cost), and ``pool.run()``
  (``style="auto"``) gives make 4.3 the pipe instead. What a job advertises *by default*
  is jobserver.py/_child.py's decision: the tests of the default document the expected
  outcome of exporting ``advertise.for_any_child(pool)`` (make 4.4.1 and ninja join where
  ``make`` is 4.4.1: an expected failure until a job exports that; where ``make`` is 4.3
  the job keeps the pipe and a plain make 4.3 runs -j1 but never dies: passes either way).
* The cells of ``child_styles.py`` that decide a default: how ``pool.run()``'s ``auto``
  and the by-path form fare with make 4.3, make 4.4.1, ninja, the fifo-only client and
  cargo, against the plain pipe.

Every run checks token conservation: no ``INTERNAL`` line from a root make, and a pool
created here finds all its tokens on ``close()``. Spans are the only use of time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from child_styles import SLOTS as STYLE_SLOTS
from child_styles import Bench, Outcome
from makefiles import write_makefile
from makejobs import Jobserver
from makejobs.advertise import advertise
from makejobs.errors import TokenCountWarning
from makejobs.pool import TokenPool
from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import logged_peak

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "recipes" / "job.py"
FIFO_ONLY = HERE / "fifo_only_client.py"
PY = sys.executable
SLOTS = 3
JOB_SECONDS = 0.3
RUN_TIMEOUT = 60


def env(**extra: str) -> dict[str, str]:
    return clean_environ(PYTHONPATH=str(REPO), **extra)


def job_line(log: Path, name: str) -> str:
    return f"@{PY} {JOB} {log} {name} {JOB_SECONDS}"


def shell_jobs(log: Path, count: int) -> dict[str, str]:
    return {f"sh{i}": job_line(log, f"sh{i}") for i in range(1, count + 1)}


# -- make 4.3 (pipe) -> bridge --style fifo -> a fifo-only client ----------------------


@pytest.mark.parametrize("via", ["proc", "relay", None], ids=["bridge", "relay", "control-direct"])
def test_make43_pipe_pool_reaches_a_fifo_only_client_through_bridge(
    make43: Peer, via: str | None, tmp_path: Path
) -> None:
    """``relay``: the private fifo that systems without /proc get, forced here."""
    log = tmp_path / "spans.log"
    client = f"{PY} {FIFO_ONLY} {log} fo 5 {JOB_SECONDS}"
    relay = "--relay " if via == "relay" else ""
    bridge = f"{PY} -m makejobs bridge {relay}--style fifo -- " if via else ""
    write_makefile(tmp_path / "Makefile", {"client": f"+@{bridge}{client}", **shell_jobs(log, 3)})
    proc = run_captured(make43.argv("-s", f"-j{SLOTS}"), tmp_path, RUN_TIMEOUT, env=env())
    assert proc.returncode == 0, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)
    peak = logged_peak(log, [*(f"fo.{i}" for i in range(1, 6)), "sh1", "sh2", "sh3"])
    print(f"make 4.3 -j{SLOTS}, bridge via {via}: peak {peak}")
    if via is not None:
        joined = "/proc/" if via == "proc" else "makejobs-relay-"
        assert "fifo-only-client: joined fifo " in proc.stderr, describe(proc)
        assert joined in proc.stderr, describe(proc)
        assert "never came back" not in proc.stderr, describe(proc)
        assert peak <= SLOTS, describe(proc)
        assert peak == SLOTS, describe(proc)
    else:  # what the bridge is for: the client refuses make 4.3's pipe
        assert "pipe-based protocol is not supported" in proc.stderr, describe(proc)
        assert peak > SLOTS, describe(proc)


# -- make 4.4.1 (fifo) -> bridge --style pipe|auto -> make 4.3 --------------------------


@pytest.mark.parametrize("style", ["pipe", "auto", None], ids=["pipe", "auto", "control-direct"])
def test_make441_fifo_pool_reaches_make43_through_bridge(
    make441: Peer, make43: Peer, style: str | None, tmp_path: Path
) -> None:
    log = tmp_path / "spans.log"
    sub = [f"m{i}" for i in range(1, 5)]
    write_makefile(tmp_path / "sub.mk", {name: job_line(log, name) for name in sub})
    submake = f"{make43.path} -s -f sub.mk"
    bridge = f"{PY} -m makejobs bridge -v --style {style} -- " if style else ""
    write_makefile(tmp_path / "Makefile", {"sub": f"+@{bridge}{submake}", **shell_jobs(log, 2)})
    proc = run_captured(make441.argv("-s", f"-j{SLOTS}"), tmp_path, RUN_TIMEOUT, env=env())
    assert "INTERNAL" not in proc.stderr, describe(proc)
    if style is None:  # what the bridge is for: make 4.3 dies on make 4.4's fifo
        assert proc.returncode != 0, describe(proc)
        assert "invalid --jobserver-auth string 'fifo:" in proc.stderr, describe(proc)
        return
    assert proc.returncode == 0, describe(proc)
    assert "offering the fifo pool as pipe" in proc.stderr, describe(proc)
    peak = logged_peak(log, [*sub, "sh1", "sh2"])
    print(f"make 4.4.1 -j{SLOTS} -> bridge --style {style} -> make 4.3: peak {peak}")
    assert peak <= SLOTS, describe(proc)
    assert peak == SLOTS, describe(proc)


# -- a Jobserver job's plain subprocess.run -------------------------------------------

#: The pool of the job tests: 2 slots, below ninja's own default of 3 on 2 CPUs, so a
#: ninja that ignored the pool shows. The job runs alone: a child running -j1 peaks at 1,
#: one that joined at 2.
JOB_SLOTS = 2


def plain_run(argv: list[str], cwd: str) -> tuple[int, str]:
    """In the job: the call of someone who never heard of jobservers."""
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def pool_run(argv: list[str], cwd: str) -> tuple[int, str]:
    """In the job: the one obvious way, the job's own pool and pool.run()."""
    pool = TokenPool.from_environ()
    assert pool is not None
    with pool:
        proc = pool.run(argv, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def consumer(
    key: str, peers: dict[str, Peer], work: Path, log: Path
) -> tuple[list[str], list[str]]:
    """(argv, span names) of a consumer that runs 4 jobs."""
    names = [f"{key}.{i}" for i in range(1, 5)]
    if key == "ninja":
        rules = [f"rule job\n  command = {PY} {JOB} {log} $out {JOB_SECONDS} {work}/$out\n"]
        (work / "build.ninja").write_text("".join(rules + [f"build {n}: job\n" for n in names]))
        return peers["ninja"].argv("-C", str(work), "--quiet"), names
    write_makefile(work / "Makefile", {name: job_line(log, name) for name in names})
    return peers[key].argv("-s", "-f", str(work / "Makefile")), names


def run_in_job(
    how: Callable[[list[str], str], tuple[int, str]],
    argv: list[str],
    work: Path,
    environ: Callable[[TokenPool], dict[str, str]] | None = None,
) -> tuple[int, str]:
    """Run *argv* by *how* in a job of a ``Jobserver(slots=JOB_SLOTS)``; the job's result.

    *environ*, given the pool, returns variables the job gets on top of what the
    Jobserver exports. Every token must be back when the Jobserver closes its pool.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TokenCountWarning)
        with Jobserver("fork", slots=JOB_SLOTS) as js:
            extra: Any = {} if environ is None else environ(js.pool)
            result: tuple[int, str] = js.submit(how, (argv, str(work)), env=extra).result(
                RUN_TIMEOUT
            )
    assert not [w for w in caught if issubclass(w.category, TokenCountWarning)]
    return result


def by_path_environ(pool: TokenPool) -> dict[str, str]:
    """The pool advertised by path, as a job exporting the fifo form would have it."""
    with advertise(pool, "fifo") as adv:
        return {name: adv.environ[name] for name in ("MAKEFLAGS", "CARGO_MAKEFLAGS")}


def path_make_first(monkeypatch: pytest.MonkeyPatch, make: Peer) -> None:
    """Make *make* the ``make`` on PATH, which decides a created pool's default form."""
    monkeypatch.setenv("PATH", f"{Path(make.path).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.mark.parametrize("key", ["make441", "ninja", "make43"])
def test_a_jobs_plain_subprocess_run_with_the_by_path_form(
    key: str, peers: dict[str, Peer], tmp_path: Path
) -> None:
    """The mechanism for jobs' children: make 4.4.1 and ninja join, make 4.3 dies on it."""
    log = tmp_path / "spans.log"
    argv, names = consumer(key, peers, tmp_path, log)
    code, output = run_in_job(plain_run, argv, tmp_path, by_path_environ)
    if key == "make43":
        assert code != 0 and "invalid --jobserver-auth string 'fifo:/proc/" in output, output
        return
    assert code == 0, output
    peak = logged_peak(log, names)
    print(f"job -> plain subprocess.run({key}), by-path form: peak {peak}")
    assert peak <= JOB_SLOTS, output
    assert peak == JOB_SLOTS, output


def test_a_jobs_pool_run_gives_make43_the_pipe(peers: dict[str, Peer], tmp_path: Path) -> None:
    """The one obvious way works for every make, whatever the job advertises."""
    log = tmp_path / "spans.log"
    argv, names = consumer("make43", peers, tmp_path, log)
    for environ in (None, by_path_environ):
        log.unlink(missing_ok=True)
        code, output = run_in_job(pool_run, argv, tmp_path, environ)
        assert code == 0, output
        assert logged_peak(log, names) == JOB_SLOTS, output


@pytest.mark.parametrize("key", ["make441", "ninja"])
def test_a_jobs_plain_subprocess_run_joins_by_default(
    key: str, peers: dict[str, Peer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``Jobserver(slots=N)``, default style: a plain subprocess.run of make 4.4.1 / ninja,
    on a system whose ``make`` is 4.4.1."""
    path_make_first(monkeypatch, peers["make441"])
    log = tmp_path / "spans.log"
    argv, names = consumer(key, peers, tmp_path, log)
    code, output = run_in_job(plain_run, argv, tmp_path)
    assert code == 0, output
    peak = logged_peak(log, names)
    print(f"job -> plain subprocess.run({key}), default: peak {peak}")
    assert peak <= JOB_SLOTS, output
    assert peak == JOB_SLOTS, output


def test_a_jobs_plain_make43_is_never_killed_where_it_is_the_make_on_path(
    make43: Peer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where ``make`` is 4.3, a job keeps the pipe form: make 4.3 runs -j1, never dies."""
    path_make_first(monkeypatch, make43)
    log = tmp_path / "spans.log"
    argv, names = consumer("make43", {"make43": make43}, tmp_path, log)
    code, output = run_in_job(plain_run, argv, tmp_path)
    assert code == 0, output
    assert logged_peak(log, names) == 1, output  # the fds were closed: -j1, as today


# -- the cells that decide the defaults (child_styles.py) ------------------------------

#: (consumer, way) -> expected kind. ``auto-*``: pool.run()'s default; ``pipe-by-path``:
#: what a job would export; ``pipe-plain``/``pipe-inherit``: why a pipe alone is not enough.
DECIDING = {
    ("make43", "auto-fifo"): "joins",
    ("make441", "auto-pipe"): "joins",
    ("ninja", "auto-pipe"): "joins",
    ("fifo-only", "auto-pipe"): "joins",
    ("cargo", "auto-fifo"): "joins",
    ("make441", "pipe-by-path"): "joins",
    ("fifo-only", "pipe-by-path"): "joins",
    ("cargo", "pipe-by-path"): "joins",
    ("make43", "pipe-by-path"): "fails",
    ("make441", "pipe-plain"): "serial",
    ("fifo-only", "pipe-inherit"): "own",
}


@pytest.fixture(scope="module")
def bench(peers: dict[str, Peer], tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return Bench(tmp_path_factory.mktemp("styles"), peers)


@pytest.mark.parametrize("cell", list(DECIDING), ids=["-".join(c) for c in DECIDING])
def test_the_cells_behind_the_defaults(cell: tuple[str, str], bench: Bench) -> None:
    key, way = cell
    outcome: Outcome = bench.measure(key, way)
    print(f"{key} / {way}: {outcome.kind} (peak {outcome.peak} of {STYLE_SLOTS})")
    assert outcome.kind == DECIDING[cell], outcome.describe()
    assert outcome.tokens_ok, outcome.describe()
    if outcome.kind == "joins":
        assert outcome.peak == STYLE_SLOTS
