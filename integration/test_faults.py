"""Faults: for each, nothing hangs, no token is lost (or the loss is measured), a clear message.

Every fault goes through the public API (``Jobserver``, ``JobserverExecutor``, ``TokenPool``,
``python -m makejobs serve``), in a child process whenever the fault would take the test
process down with it. Token accounting is exact: pools are created here and counted at the
end (``close()`` returns the tokens found, ``TokenCountWarning`` names the difference), or
make itself counts (``INTERNAL: Exiting with N jobserver tokens available``).

What can and cannot be recovered (measured by the tests below):

* **SIGKILL of a job**: only its future fails (``SubmissionDied`` naming SIGKILL); its slot
  comes back when it is reaped. Nothing is lost.
* **SIGKILL of a middle process** (a job that holds tokens for sub-jobs of its own), width W
  sub-jobs: the middle's guardian (see makejobs.guardian) stops the orphaned sub-jobs and
  then gives back the W-1 tokens the middle had read for them. Because forked sub-jobs
  inherit the middle's result pipe, the middle's future fails (``SubmissionDied`` naming
  SIGKILL) only once the last of them is gone, and its own slot comes back then: the pool
  is never oversubscribed and nothing is lost (make counts every token at exit). Killed
  together with its guardian (``kill -9`` of the group), the middle's tokens are lost to a
  plain pool; a pool created with ``ledger=True`` gets them back from ``recover()`` once
  every orphan has exited (never before), and ``makejobs serve`` does that by itself.
* **SIGINT** to a Python parent: ``KeyboardInterrupt`` unwinds ``with`` blocks, which give
  everything back (a ``with Jobserver`` terminates its jobs; a ``with JobserverExecutor``
  first lets running tasks finish, like ``ProcessPoolExecutor``). Tokens held *outside*
  ``with`` blocks, and jobs of a Jobserver that is never closed, are lost when the
  interpreter exits (kept as strict xfails: makejobs could return them at exit).
* **SIGTERM** with Python's default disposition kills without any cleanup; makejobs installs
  no handler (a library must not). The process's guardian then stops its orphaned jobs and
  gives back every token it held. ``signal.signal(SIGTERM, lambda s, f: sys.exit(128 + s))``
  in the application makes SIGTERM unwind like SIGINT instead; a ledger pool / ``makejobs
  serve`` recovers what a client killed together with its guardian held.
* **make killed under a recipe**: nothing breaks for the recipe (no EOF, no EPIPE: it holds
  both ends itself); the tokens make held for its other recipes are gone, so a recipe
  waiting for one waits until its timeout. A fifo left behind by make 4.4 is reported as
  stale to later joiners.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from makejobs import (
    Blocked,
    Future,
    Jobserver,
    JobserverExecutor,
    JobserverUnavailable,
    SubmissionDied,
    TokenPool,
)
from makejobs.errors import PoolBroken, TokenCountWarning
from makejobs.protocol import FifoAuth, parse_makeflags
from peers import Peer, clean_environ

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
#: Bound on any wait in these tests; a fault that hangs fails here instead.
PATIENCE = 30.0
#: How long the sub-jobs of a killed middle process run on as orphans.
LEAF_SECONDS = 1.5
#: Longer than any wait here: sub-jobs that end are proved to have been stopped.
LONG = 120.0


# -- helpers ---------------------------------------------------------------------------------


def env_for(pool: TokenPool | None = None, **extra: str) -> dict[str, str]:
    """A clean environment that can import makejobs, exporting *pool* if given."""
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    env = clean_environ(PYTHONPATH=path)
    env.update(extra)
    env.pop("MAKEJOBS_LEDGER", None)
    return pool.environ(env) if pool is not None else env


def write_script(tmp_path: Path, name: str, code: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(code))
    return path


def wait_until(predicate: Callable[[], bool], what: str, bound: float = PATIENCE) -> None:
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {bound} s")
        time.sleep(0.01)


def running(pid: int) -> bool:
    """True while *pid* is a live process (a zombie has ended)."""
    try:
        return psutil.Process(pid).status() not in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return False


def pids_in(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def close_counting(pool: TokenPool) -> tuple[int | None, list[str]]:
    """Close a created pool: (tokens found, TokenCountWarning messages)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = pool.close()
    return found, [str(w.message) for w in caught if issubclass(w.category, TokenCountWarning)]


def holds_nothing(pool: TokenPool) -> bool:
    """This process holds neither its implicit slot nor any token of *pool*."""
    return pool.implicit_free and pool.held == 0


def assert_all_back(pool: TokenPool) -> None:
    assert pool.slots is not None
    found, complaints = close_counting(pool)
    assert (found, complaints) == (pool.slots - 1, []), (found, complaints)


def children() -> set[int]:
    """Our child processes, zombies included."""
    return {p.pid for p in psutil.Process().children()}


# -- job functions (module level, so forkserver and spawn children can import them) ----------


def announce_and_nap(directory: str, seconds: float) -> int:
    Path(directory, str(os.getpid())).touch()
    time.sleep(seconds)
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def identity(x: Any) -> Any:
    return x


def exit_hard(code: int) -> None:
    os._exit(code)


def middle(js: Jobserver, directory: str, width: int, seconds: float) -> list[int]:
    """A job that runs *width* sub-jobs at once and waits for them (a recursive make)."""
    futures = [js.submit(announce_and_nap, (directory, seconds)) for _ in range(width)]
    return [f.result() for f in futures]


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM when the submitting process dies (Linux)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, signal.SIGTERM, 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def middle_with_pdeathsig(js: Jobserver, directory: str, width: int, seconds: float) -> list[int]:
    futures = [
        js.submit(announce_and_nap, (directory, seconds), preexec_fn=die_with_parent)
        for _ in range(width)
    ]
    return [f.result() for f in futures]


class _Unloadable:
    """Pickles here, fails to unpickle anywhere."""

    def __reduce__(self) -> Any:
        return (_refuse_to_rebuild, ())


def _refuse_to_rebuild() -> None:
    raise RuntimeError("cannot rebuild this object here")


def return_lock() -> Any:
    return threading.Lock()


def return_unloadable() -> Any:
    return _Unloadable()


class _UnpicklableError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise _UnpicklableError("carries a lock")


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def preexec_system_exit() -> None:
    raise SystemExit(5)


class _ExitRaises:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        raise ValueError("the preexec context manager's __exit__ failed")


def preexec_manager_exit_raises() -> _ExitRaises:
    return _ExitRaises()


# --------------------------------------------------------------------------------------------
# SIGKILL of a job


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_sigkill_of_a_running_job_fails_only_it_and_returns_its_slot(
    method: str, tmp_path: Path
) -> None:
    pool = TokenPool.create(3)
    with Jobserver(method, pool=pool) as js:
        victim = js.submit(announce_and_nap, (str(tmp_path), 60))
        others = [js.submit(announce_and_nap, (str(tmp_path), 0.3)) for _ in range(2)]
        wait_until(lambda: victim.pid in pids_in(tmp_path), "the victim to start")
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(SubmissionDied, match=r"killed by SIGKILL \(9\)") as info:
            victim.result(timeout=PATIENCE)
        assert info.value.exitcode == -signal.SIGKILL and info.value.pid == victim.pid
        assert [f.result(timeout=PATIENCE) for f in others] == [f.pid for f in others]
        assert pool.implicit_free and pool.held == 0
        last = js.submit(identity, (7,))
        assert last.result(timeout=PATIENCE) == 7
    # Every job process was reaped (the forkserver and resource tracker may remain).
    assert not children() & {victim.pid, last.pid, *(f.pid for f in others)}
    assert_all_back(pool)


SPAWN_FAULT = """
import json, os, signal, sys, threading, time
from makejobs import Jobserver, JobserverExecutor, TokenPool

class Unloadable:
    def __reduce__(self):
        return (refuse, ())

def refuse():
    raise RuntimeError("cannot rebuild this object here")

def identity(x):
    return x

def close_within(close, seconds):
    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()

if __name__ == "__main__":
    method, fault = sys.argv[1], sys.argv[2]
    pool = TokenPool.create(2)
    report = {}
    if fault == "executor-initargs":
        ex = JobserverExecutor(1, jobserver=Jobserver(pool=pool), mp_context=None,
                               initializer=identity, initargs=(Unloadable(),))
        future = ex.submit(identity, 1)
        try:
            future.result(timeout=10)
            report["outcome"] = "result"
        except BaseException as e:
            report["outcome"] = f"{type(e).__name__}: {e}"
        report["closed"] = close_within(ex.shutdown, 10)
    else:
        js = Jobserver(method, pool=pool)
        if fault == "kill-at-once":
            future = js.submit(identity, (1,))
            future.kill(signal.SIGKILL)
        else:
            future = js.submit(identity, (Unloadable(),))
        try:
            future.result(timeout=10)
            report["outcome"] = "result"
        except BaseException as e:
            report["outcome"] = f"{type(e).__name__}: {e}"
        report["closed"] = close_within(js.close, 10)
    report["slot_back"] = pool.implicit_free and pool.held == 0
    print(json.dumps(report), flush=True)
    os._exit(0)  # a hung engine must not keep this process alive
"""


def run_spawn_fault(tmp_path: Path, method: str, fault: str) -> dict[str, Any]:
    """Run one spawn/forkserver fault in a child that cannot hang the test (it exits hard)."""
    script = write_script(tmp_path, "spawn_fault.py", SPAWN_FAULT)
    proc = subprocess.run(
        [PY, str(script), method, fault],
        env=env_for(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


def test_sigkill_of_a_spawn_job_before_it_runs_is_still_a_death(tmp_path: Path) -> None:
    """Killed before it fetched its result pipe (regression: the pipe used to go through
    multiprocessing's resource sharer, which kept a copy of the write end in the parent,
    so the future never completed and close() hung; fixed in 93090c9)."""
    report = run_spawn_fault(tmp_path, "spawn", "kill-at-once")
    assert report["outcome"].startswith("SubmissionDied") and "SIGKILL" in report["outcome"]
    assert report["slot_back"] and report["closed"], report


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_arguments_that_fail_to_unpickle_in_a_spawned_job_fail_its_future(
    method: str, tmp_path: Path
) -> None:
    """The child dies before running anything (same regression as above)."""
    report = run_spawn_fault(tmp_path, method, "unloadable-argument")
    assert report["outcome"] != "result" and not report["outcome"].startswith("Blocked"), report
    assert "cannot rebuild" in report["outcome"] or "SubmissionDied" in report["outcome"]
    assert report["slot_back"] and report["closed"], report


def test_executor_worker_dying_while_unpickling_its_setup_fails_the_task(tmp_path: Path) -> None:
    """An executor worker that dies before fetching its pipes (same regression)."""
    report = run_spawn_fault(tmp_path, "forkserver", "executor-initargs")
    assert report["outcome"] != "result" and not report["outcome"].startswith("TimeoutError")
    assert report["slot_back"] and report["closed"], report


# --------------------------------------------------------------------------------------------
# SIGKILL of a middle process in a nested chain


def start_chain(
    pool: TokenPool,
    tmp_path: Path,
    width: int,
    fn: Callable[..., Any] = middle,
    seconds: float = LEAF_SECONDS,
) -> tuple[Jobserver, Any, list[int]]:
    """A top-level Jobserver running one middle job with *width* sub-jobs, all started."""
    leaves = tmp_path / "leaves"
    leaves.mkdir()
    js = Jobserver("fork", pool=pool)
    top = js.submit(fn, (js, str(leaves), width, seconds))
    wait_until(lambda: len(pids_in(leaves)) == width, "every sub-job to start")
    return js, top, pids_in(leaves)


def guardian_of(pid: int) -> psutil.Process | None:
    """The guardian process of makejobs process *pid* (its child), if it has one."""
    for child in psutil.Process(pid).children():
        if any("_guardian_main" in word for word in child.cmdline()):
            return child
    return None


def kill_with_guardian(pid: int) -> None:
    """SIGKILL *pid* and its guardian at once, as ``kill -9`` of a whole group does."""
    guardian = guardian_of(pid)
    if guardian is not None:
        guardian.kill()
    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_sigkill_of_a_middle_process_stops_its_sub_jobs_and_returns_their_tokens(
    width: int, tmp_path: Path
) -> None:
    slots = 4
    held = width - 1  # the middle's first sub-job runs on its implicit slot, not a token
    pool = TokenPool.create(slots)
    js, top, leaves = start_chain(pool, tmp_path, width, seconds=LONG)
    assert pool.available() == slots - 1 - held  # the middle holds them now
    os.kill(top.pid, signal.SIGKILL)
    # Its guardian stops the orphans (they would run LONG seconds), then gives back what
    # the middle held for them; they inherited the middle's result pipe, so the middle's
    # future fails, and its own slot comes back, only once they are gone.
    with pytest.raises(SubmissionDied, match=r"killed by SIGKILL \(9\)"):
        top.result(timeout=PATIENCE)
    wait_until(lambda: not any(running(pid) for pid in leaves), "the orphans to be gone", 5)
    wait_until(lambda: pool.available() == slots - 1, "every token to come back")
    assert holds_nothing(pool)
    js.close()
    assert_all_back(pool)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_pdeathsig_ends_the_orphans_at_once_and_their_tokens_come_back(tmp_path: Path) -> None:
    slots, width = 4, 3
    pool = TokenPool.create(slots)
    js, top, leaves = start_chain(pool, tmp_path, width, middle_with_pdeathsig, seconds=LONG)
    os.kill(top.pid, signal.SIGKILL)
    # The kernel kills the orphans at once, so the middle's death is reported at once.
    with pytest.raises(SubmissionDied, match="SIGKILL"):
        top.result(timeout=PATIENCE)
    wait_until(lambda: not any(running(pid) for pid in leaves), "the orphans to die", 5)
    # Nobody alive held their tokens, but the middle's guardian gives them back.
    wait_until(lambda: pool.available() == slots - 1, "every token to come back")
    js.close()
    assert_all_back(pool)


def test_ledger_recovers_a_killed_middles_tokens_only_after_its_orphans(tmp_path: Path) -> None:
    slots, width = 4, 3
    pool = TokenPool.create(slots, ledger=True)
    js, top, leaves = start_chain(pool, tmp_path, width)
    kill_with_guardian(top.pid)  # nothing of the middle is left to give anything back
    wait_until(lambda: not running(top.pid), "the middle to die", 5)
    # The orphans inherited the middle's ledger record: while they run, nothing is given
    # back (they are still working on those tokens' behalf).
    assert all(running(pid) for pid in leaves)
    assert pool.recover() == 0
    with pytest.raises(SubmissionDied, match="SIGKILL"):
        top.result(timeout=PATIENCE)
    wait_until(lambda: not any(running(pid) for pid in leaves), "the orphans to be gone", 5)
    assert pool.recover() == width - 1
    assert pool.recover() == 0  # once
    js.close()
    assert_all_back(pool)


CHAIN = """
import os, signal, sys, time
from pathlib import Path
from makejobs import Jobserver, SubmissionDied

def leaf(directory, seconds):
    Path(directory, str(os.getpid())).touch()
    time.sleep(seconds)

def middle(js, directory, width, seconds):
    futures = [js.submit(leaf, (directory, seconds)) for _ in range(width)]
    return [f.result() for f in futures]

if __name__ == "__main__":
    directory, width = sys.argv[1], int(sys.argv[2])
    os.makedirs(directory, exist_ok=True)
    with Jobserver("fork") as js:
        top = js.submit(middle, (js, directory, width, 0.5))
        while len(os.listdir(directory)) < width:
            time.sleep(0.01)
        if len(sys.argv) > 3:  # and its guardian, as kill -9 of a whole group does
            with open(f"/proc/{top.pid}/task/{top.pid}/children") as f:
                for child in f.read().split():
                    with open(f"/proc/{child}/cmdline", "rb") as g:
                        if b"_guardian_main" in g.read():
                            os.kill(int(child), signal.SIGKILL)
        os.kill(top.pid, signal.SIGKILL)
        try:
            top.result()
        except SubmissionDied as e:
            print("middle:", e, flush=True)
    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    # Exit only after the orphans, so that make (or serve) counts once they are gone.
    pids = [int(name) for name in os.listdir(directory)]
    while any(running(pid) for pid in pids):
        time.sleep(0.01)
"""


@pytest.mark.parametrize(
    ("peer_key", "make_args"),
    [("make43", ()), ("make441", ()), ("make441", ("--jobserver-style=pipe",))],
    ids=["make43-pipe", "make441-fifo", "make441-pipe"],
)
def test_make_gets_back_the_tokens_of_a_killed_middle(
    peer_key: str, make_args: tuple[str, ...], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    script = write_script(tmp_path, "chain.py", CHAIN)
    (tmp_path / "Makefile").write_text(f"all:\n\t+@{PY} {script} {tmp_path / 'leaves'} 3\n")
    proc = subprocess.run(
        make.argv("-s", "-j4", *make_args),
        cwd=tmp_path,
        env=env_for(TMPDIR=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "killed by SIGKILL" in proc.stdout, proc.stdout
    # The two sub-jobs that ran on tokens the middle had read were stopped by its
    # guardian, which gave those tokens back: make counts all of them.
    assert "INTERNAL" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("with_guardian", [False, True], ids=["middle", "middle-and-guardian"])
def test_serve_ends_with_every_token_of_a_killed_middle(
    with_guardian: bool, tmp_path: Path
) -> None:
    """Killed alone, the middle's guardian gives its tokens back; killed together with its
    guardian, serve recovers them from the ledger once the orphans are gone."""
    script = write_script(tmp_path, "chain.py", CHAIN)
    argv = [PY, "-m", "makejobs", "serve", "-j", "4", "--", PY, str(script), str(tmp_path / "l")]
    proc = subprocess.run(
        [*argv, "3", *(["and-guardian"] if with_guardian else [])],
        cwd=tmp_path,
        env=env_for(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "killed by SIGKILL" in proc.stdout
    assert "missing" not in proc.stderr, proc.stderr
    recovered = "recovered 2 jobserver token(s)" in proc.stderr
    assert recovered == with_guardian, proc.stderr


# --------------------------------------------------------------------------------------------
# SIGINT and SIGTERM to a Python parent that holds tokens, or waits for some

HOLDER = """
import os, signal, sys, time
from pathlib import Path
from makejobs import Jobserver, JobserverExecutor, TokenPool

def nap(seconds):
    time.sleep(seconds)
    return seconds

def ready(holding):
    # Written whole, then renamed: the test reads it as soon as it exists.
    Path(sys.argv[2] + ".tmp").write_text(str(holding))
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])

def main(mode):
    pool = TokenPool.from_environ()
    if mode == "slots":
        with pool.slot(), pool.slot(), pool.slot():
            ready(2)
            time.sleep(60)
    elif mode == "slots-no-with":
        tokens = [pool.acquire() for _ in range(3)]
        ready(2)
        time.sleep(60)
    elif mode == "waiting-in-acquire":
        with pool.slot():
            ready(0)
            pool.acquire()
    elif mode == "jobs":
        with Jobserver("fork", pool=pool) as js:
            futures = [js.submit(nap, (2,)) for _ in range(3)]
            ready(2)
            futures[0].result()
    elif mode == "jobs-no-with":
        js = Jobserver("fork", pool=pool)
        futures = [js.submit(nap, (2,)) for _ in range(3)]
        ready(2)
        futures[0].result()
    elif mode == "waiting-in-submit":
        with Jobserver("fork", pool=pool) as js:
            futures = [js.submit(nap, (2,)) for _ in range(3)]
            ready(2)
            js.submit(nap, (0,))
    elif mode == "executor":
        with JobserverExecutor(3, jobserver=Jobserver(pool=pool)) as executor:
            futures = [executor.submit(nap, 1.5) for _ in range(3)]
            while sum(f.running() for f in futures) < 3:
                time.sleep(0.01)
            ready(2)
            futures[0].result()

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode.endswith("+handler"):
        # The idiom makejobs recommends: SIGTERM unwinds like SIGINT does.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
        mode = mode[: -len("+handler")]
    main(mode)
"""

SLOTS = 3  # the pool the holder joins: 2 tokens + the test's implicit slot

#: (mode, signal, tokens lost, bug?) as measured; a bug is a strict xfail expecting 0 lost.
#: SIGTERM's default action runs no cleanup: the guardian gives the tokens back.
SIGNAL_CASES = [
    ("slots", signal.SIGINT, 0, False),
    ("slots", signal.SIGTERM, 0, False),
    ("slots+handler", signal.SIGTERM, 0, False),
    ("slots-no-with", signal.SIGINT, 0, False),
    ("slots-no-with", signal.SIGTERM, 0, False),
    ("waiting-in-acquire", signal.SIGINT, 0, False),
    ("waiting-in-acquire", signal.SIGTERM, 0, False),
    ("jobs", signal.SIGINT, 0, False),
    ("jobs", signal.SIGTERM, 0, False),
    ("jobs+handler", signal.SIGTERM, 0, False),
    ("jobs-no-with", signal.SIGINT, 0, False),
    ("waiting-in-submit", signal.SIGINT, 0, False),
    ("waiting-in-submit+handler", signal.SIGTERM, 0, False),
    ("executor", signal.SIGINT, 0, False),
    ("executor", signal.SIGTERM, 0, False),
    ("executor+handler", signal.SIGTERM, 0, False),
]


def signal_case_params() -> Iterator[Any]:
    for mode, signum, lost, bug in SIGNAL_CASES:
        marks = []
        if bug:
            marks.append(
                pytest.mark.xfail(
                    reason="BUG: nothing returns tokens held outside a with block, nor"
                    " reaps the jobs of a Jobserver never closed, when the interpreter exits"
                    " after KeyboardInterrupt (JobserverExecutor has an exit hook; TokenPool"
                    " and Jobserver have none), so they are lost for the rest of the build",
                    raises=AssertionError,
                    strict=True,
                )
            )
        yield pytest.param(
            mode,
            signum,
            0 if bug else lost,
            id=f"{mode}-{signal.Signals(signum).name}",
            marks=marks,
        )


def run_holder(
    tmp_path: Path,
    mode: str,
    signum: int,
    pool: TokenPool,
    hogged: int = 0,
    with_guardian: bool = False,
) -> tuple[subprocess.Popen[str], float, str]:
    """Start the holder on *pool*, signal it once it holds, wait for it and its children."""
    script = write_script(tmp_path, "holder.py", HOLDER)
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        [PY, str(script), mode, str(ready)],
        env=env_for(pool),
        pass_fds=pool.pass_fds,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: ready.exists() or proc.poll() is not None, "the holder to hold")
        assert proc.poll() is None, proc.communicate()[1]
        holding = int(ready.read_text())
        # Settled: every token the holder took is out of the pool.
        assert pool.available() == SLOTS - 1 - holding - hogged
        descendants = psutil.Process(proc.pid).children(recursive=True)
        started = time.monotonic()
        if with_guardian:
            guardian = guardian_of(proc.pid)
            if guardian is not None:
                guardian.kill()
        proc.send_signal(signum)
        proc.wait(timeout=PATIENCE)
        exited_after = time.monotonic() - started
        # Orphaned jobs are stopped by the holder's guardian (or, with it killed too,
        # run on): wait for them, and for the guardian, before counting.
        _, alive = psutil.wait_procs(descendants, timeout=PATIENCE)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return proc, exited_after, proc.stderr.read()


@pytest.mark.parametrize(("mode", "signum", "lost"), list(signal_case_params()))
def test_signal_to_a_python_parent_holding_or_waiting(
    mode: str, signum: int, lost: int, tmp_path: Path
) -> None:
    pool = TokenPool.create(SLOTS)
    hog = []
    if mode.startswith("waiting-in-acquire"):
        hog = [pool.acquire(), pool.acquire(), pool.acquire()]  # the holder will wait
    proc, exited_after, stderr = run_holder(tmp_path, mode, signum, pool, max(0, len(hog) - 1))
    for token in hog:
        pool.release(token)
    found, complaints = close_counting(pool)
    assert found == SLOTS - 1 - lost, (found, complaints, stderr)
    # Prompt: SIGINT and the handler unwind at once; only a with-executor first lets its
    # running 1.5 s tasks finish (ProcessPoolExecutor does the same), and the jobs of a
    # Jobserver never closed are waited for at exit (their 2 s naps).
    patient = mode.startswith("executor") or mode == "jobs-no-with"
    assert exited_after < (5 if patient else 2), exited_after
    if signum == signal.SIGINT:
        assert proc.returncode == -signal.SIGINT and "KeyboardInterrupt" in stderr
    elif mode.endswith("+handler"):
        assert proc.returncode == 128 + signal.SIGTERM
    else:
        assert proc.returncode == -signal.SIGTERM


def test_ledger_recovers_what_a_parent_killed_with_its_guardian_held(tmp_path: Path) -> None:
    pool = TokenPool.create(SLOTS, ledger=True)
    run_holder(tmp_path, "jobs", signal.SIGKILL, pool, with_guardian=True)
    assert pool.available() == 0  # nothing of the holder was left to give them back
    assert pool.recover() == 2  # the holder and its orphaned jobs are all gone
    assert_all_back(pool)


SERVE_HOLDER = """
import sys, time
from pathlib import Path
from makejobs.pool import TokenPool
pool = TokenPool.from_environ()
with pool.slot(), pool.slot(), pool.slot():
    Path(sys.argv[1]).touch()
    time.sleep(60)
"""


@pytest.mark.parametrize("with_guardian", [False, True], ids=["client", "client-and-guardian"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_serve_ends_with_the_tokens_of_a_client_killed_holding_them(
    signum: int, with_guardian: bool, tmp_path: Path
) -> None:
    script = write_script(tmp_path, "serve_holder.py", SERVE_HOLDER)
    marker = tmp_path / "holding"
    proc = subprocess.Popen(
        [PY, "-m", "makejobs", "serve", "-j", "3", "--", PY, str(script), str(marker)],
        env=env_for(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: marker.exists() or proc.poll() is not None, "the client to hold")
        client = psutil.Process(proc.pid).children()[0]
        if with_guardian:
            guardian = guardian_of(client.pid)
            assert guardian is not None
            guardian.kill()
        client.send_signal(signum)  # SIGTERM without a handler: no cleanup runs
        _, err = proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err
    # Its guardian gives its tokens back; killed with it, serve recovers them.
    recovered = "recovered 2 jobserver token(s) of a makejobs client that died" in err
    assert recovered == with_guardian, err
    assert "missing" not in err, err


# --------------------------------------------------------------------------------------------
# Exceptions in the job, in pickling, in callbacks, in preexec_fn; os._exit

EXCEPTION_CASES: dict[
    str, tuple[Callable[..., Any], Callable[[], Any] | None, type[BaseException], str]
] = {
    "unpicklable-result": (return_lock, None, RuntimeError, "cannot be pickled"),
    "result-fails-to-unpickle-here": (
        return_unloadable,
        None,
        RuntimeError,
        "could not be unpickled here.*cannot rebuild",
    ),
    "unpicklable-exception": (raise_unpicklable, None, RuntimeError, "_UnpicklableError"),
    "keyboard-interrupt-in-fn": (
        raise_keyboard_interrupt,
        None,
        SubmissionDied,
        "ended the process with KeyboardInterrupt",
    ),
    "system-exit-in-preexec": (
        identity,
        preexec_system_exit,
        SubmissionDied,
        "ended the process with SystemExit: 5",
    ),
    "preexec-manager-exit-raises": (
        identity,
        preexec_manager_exit_raises,
        ValueError,
        "__exit__ failed",
    ),
    "os._exit": (exit_hard, None, SubmissionDied, "exited with code 3"),
}


@pytest.mark.parametrize("method", ["fork", "forkserver"])
@pytest.mark.parametrize("case", sorted(EXCEPTION_CASES))
def test_exception_fails_only_its_future_with_a_named_cause(method: str, case: str) -> None:
    fn, preexec, error, words = EXCEPTION_CASES[case]
    args: tuple[Any, ...] = (3,) if fn in (identity, exit_hard) else ()
    pool = TokenPool.create(2)
    with Jobserver(method, pool=pool) as js:
        future = js.submit(fn, args, preexec_fn=preexec)
        with pytest.raises(error, match=words):
            future.result(timeout=PATIENCE)
        assert pool.implicit_free and pool.held == 0
        assert js.submit(identity, ("next",)).result(timeout=PATIENCE) == "next"
    assert future.pid not in children()
    assert_all_back(pool)


def test_a_callback_raising_a_base_exception_reaches_the_caller_and_loses_nothing() -> None:
    pool = TokenPool.create(2)
    seen: list[str] = []
    with Jobserver("fork", pool=pool) as js:
        future = js.submit(identity, (1,))
        future.when_done(raise_keyboard_interrupt)
        future.when_done(seen.append, "later")
        with pytest.raises(KeyboardInterrupt):
            future.result(timeout=PATIENCE)
        assert future.result(timeout=PATIENCE) == 1  # the next call runs the rest
        assert seen == ["later"]
        assert pool.implicit_free and pool.held == 0
    assert_all_back(pool)


def test_executor_done_callback_that_raises_is_logged_and_loses_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = TokenPool.create(2)
    with JobserverExecutor(2, jobserver=Jobserver(pool=pool)) as executor:
        future = executor.submit(identity, 4)
        future.add_done_callback(lambda f: 1 / 0)
        assert future.result(timeout=PATIENCE) == 4
        assert executor.submit(identity, 5).result(timeout=PATIENCE) == 5
    assert "exception calling callback" in caplog.text
    assert_all_back(pool)


def test_executor_task_raising_keyboard_interrupt_names_it() -> None:
    pool = TokenPool.create(2)
    with JobserverExecutor(1, jobserver=Jobserver(pool=pool)) as executor:
        error = executor.submit(raise_keyboard_interrupt).exception(timeout=PATIENCE)
        assert executor.submit(identity, 2).result(timeout=PATIENCE) == 2
    assert_all_back(pool)
    assert isinstance(error, (SubmissionDied, KeyboardInterrupt)), repr(error)
    assert isinstance(error, KeyboardInterrupt) or "KeyboardInterrupt" in str(error), str(error)


def test_executor_worker_calling_os_exit_fails_only_its_task() -> None:
    pool = TokenPool.create(2)
    with JobserverExecutor(2, jobserver=Jobserver(pool=pool)) as executor:
        error = executor.submit(exit_hard, 9).exception(timeout=PATIENCE)
        assert isinstance(error, SubmissionDied) and "exited with code 9" in str(error)
        later = [executor.submit(identity, i) for i in range(4)]
        assert [f.result(timeout=PATIENCE) for f in later] == [0, 1, 2, 3]
    assert_all_back(pool)


# --------------------------------------------------------------------------------------------
# A signal every millisecond during every kind of wait (EINTR)


@pytest.mark.timeout(120, method="thread")  # the storm owns SIGALRM
def test_signal_storm_during_waits_changes_no_result_and_no_deadline() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    hits = [0]

    def count(signum: int, frame: object) -> None:
        hits[0] += 1

    def blocked_for(call: Callable[[], object], seconds: float) -> None:
        started = time.monotonic()
        with pytest.raises((Blocked, TimeoutError)):
            call()
        waited = time.monotonic() - started
        assert seconds <= waited < seconds + 0.5, waited

    old = signal.signal(signal.SIGALRM, count)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        for method in ("fork", "forkserver", "spawn"):
            pool = TokenPool.create(1)
            with Jobserver(method, pool=pool) as js:
                busy = js.submit(nap, (0.5,))

                def admission(js: Jobserver = js) -> object:
                    return js.submit(identity, (1,), timeout=0.2)

                def result(busy: Future[float] = busy) -> object:
                    return busy.result(timeout=0.1)

                blocked_for(admission, 0.2)
                blocked_for(result, 0.1)
                assert busy.wait(0.01) is False
                assert busy.result(timeout=PATIENCE) == 0.5
                assert js.submit(identity, (2,)).result(timeout=PATIENCE) == 2
                values = list(js.map(identity, [(i,) for i in range(12)], chunksize=5))
                assert values == list(range(12))
            assert_all_back(pool)
        pool = TokenPool.create(2)
        with JobserverExecutor(2, jobserver=Jobserver(pool=pool)) as executor:
            futures = [executor.submit(identity, i) for i in range(1000)]
            assert [f.result(timeout=PATIENCE) for f in futures] == list(range(1000))
            slow = executor.submit(nap, 0.5)
            blocked_for(lambda: slow.result(timeout=0.2), 0.2)
            assert slow.result(timeout=PATIENCE) == 0.5
            assert sum(executor.map(identity, range(500), chunksize=50)) == sum(range(500))
        assert_all_back(pool)
        with TokenPool.create(2) as pool:
            first, second = pool.acquire(), pool.acquire()
            blocked_for(lambda: pool.acquire(timeout=0.2), 0.2)
            pool.release(second)
            pool.release(first)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits[0] > 500, hits[0]


# --------------------------------------------------------------------------------------------
# RLIMIT_NOFILE too low to open a result pipe

NOFILE = """
import errno, json, os, resource, sys, time
from pathlib import Path
from makejobs import Jobserver, JobserverExecutor, TokenPool

def identity(x):
    return x

def touch(path):
    Path(path).touch()
    return "ran"

# Opened before the descriptors run out: read again (pread) when there are none left.
CHILDREN = os.open(f"/proc/self/task/{os.getpid()}/children", os.O_RDONLY)

def children():
    # Our child processes but for the guardian (it lives as long as we do).
    from makejobs import guardian
    keeper = guardian.current(start=False)
    pids = [int(pid) for pid in os.pread(CHILDREN, 65536, 0).split()]
    return sorted(pid for pid in pids if keeper is None or pid != keeper.pid)

def emfile(e):
    return [e.errno == errno.EMFILE, str(e)]

if __name__ == "__main__":
    marker = sys.argv[1]
    report = {}
    pool = TokenPool.create(3)
    js = Jobserver("fork", pool=pool)
    executor = JobserverExecutor(2, jobserver=js)
    assert js.submit(identity, (0,)).result() == 0  # the engine's wake pipe exists now
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    fillers = []
    try:
        while True:
            fillers.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        js.submit(identity, (1,))
        report["submit"] = "submitted"
    except OSError as e:
        report["submit"] = emfile(e)
    report["after_submit"] = [pool.implicit_free, pool.held, pool.available(), children()]
    try:
        future = executor.submit(touch, marker)
    except OSError as e:
        report["executor_submit"] = emfile(e)
    else:
        report["executor_submit"] = "returned a future"
        try:
            future.result(timeout=30)
            report["executor_future"] = "ran"
        except OSError as e:
            report["executor_future"] = emfile(e)
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    time.sleep(1)  # time for anything still queued to run
    report["ran_later"] = os.path.exists(marker)
    report["after_executor"] = [pool.implicit_free, pool.held, pool.available()]
    report["recovered"] = [js.submit(identity, (3,)).result(), executor.submit(identity, 4).result()]
    executor.shutdown()
    js.close()
    report["close"] = pool.close()
    print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def nofile_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of NOFILE: a Jobserver and an executor with no descriptor left."""
    tmp_path = tmp_path_factory.mktemp("nofile")
    script = write_script(tmp_path, "nofile.py", NOFILE)
    proc = subprocess.run(
        [PY, str(script), str(tmp_path / "ran")],
        env=env_for(),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_no_descriptor_left_for_a_result_pipe_is_a_clear_emfile(
    nofile_report: dict[str, Any],
) -> None:
    report = nofile_report
    assert report["submit"] == [True, "[Errno 24] Too many open files"], report
    # Nothing held, both tokens in the pool, no child process created or left unreaped.
    assert report["after_submit"] == [True, 0, 2, []], report
    # The executor says EMFILE too (from submit, or from the future it returned).
    emfile = [True, "[Errno 24] Too many open files"]
    assert emfile in (report["executor_submit"], report.get("executor_future")), report
    assert report["after_executor"] == [True, 0, 2], report
    assert report["recovered"] == [3, 4] and report["close"] == 2, report


def test_executor_submit_that_raised_never_runs_the_task(nofile_report: dict[str, Any]) -> None:
    report = nofile_report
    if report["executor_submit"] != "returned a future":
        assert report["ran_later"] is False, report


# --------------------------------------------------------------------------------------------
# A full pipe: more tokens written back than the pool can hold


def stuff(pool: TokenPool) -> int:
    """Fill *pool*'s pipe to the brim through a private non-blocking writer; bytes written."""
    if pool.style == "fifo":
        assert isinstance(pool.auth, FifoAuth)
        fd = os.open(pool.auth.path, os.O_WRONLY | os.O_NONBLOCK)
    else:
        fd = os.open(f"/proc/self/fd/{pool.pass_fds[1]}", os.O_WRONLY | os.O_NONBLOCK)
    written = 0
    try:
        for size in (65536, 4096, 1):
            try:
                while True:
                    written += os.write(fd, b"x" * size)
            except BlockingIOError:
                pass
    finally:
        os.close(fd)
    return written


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_full_pipe_is_pool_broken_with_a_message_never_a_hang(style: str) -> None:
    pool = TokenPool.create(2, style=style)  # type: ignore[arg-type]
    implicit, token = pool.acquire(), pool.acquire(timeout=0)
    assert stuff(pool) > 0
    started = time.monotonic()
    with pytest.raises(PoolBroken, match="is full: more tokens were written back"):
        pool.release(token)
    assert time.monotonic() - started < 1
    pool.release(implicit)
    found, complaints = close_counting(pool)
    assert found is not None and found > 1 and complaints and "extra" in complaints[0]


def test_full_pipe_under_jobs_and_tasks_warns_and_goes_on() -> None:
    pool = TokenPool.create(3)
    js = Jobserver("fork", pool=pool)
    futures = [js.submit(nap, (0.3,)) for _ in range(3)]  # implicit slot + both tokens
    stuff(pool)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [f.result(timeout=PATIENCE) for f in futures] == [0.3] * 3
    full = [w for w in caught if issubclass(w.category, JobserverUnavailable)]
    assert len(full) == 2 and all("is full" in str(w.message) for w in full), caught
    assert pool.implicit_free and pool.held == 0
    assert js.submit(identity, (1,), timeout=5).result(timeout=PATIENCE) == 1
    js.close()
    close_counting(pool)

    pool = TokenPool.create(3)
    with JobserverExecutor(3, jobserver=Jobserver(pool=pool)) as executor:
        tasks = [executor.submit(nap, 0.3) for _ in range(3)]
        wait_until(lambda: all(f.running() for f in tasks), "three running tasks")
        stuff(pool)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [f.result(timeout=PATIENCE) for f in tasks] == [0.3] * 3
            wait_until(lambda: len(caught) >= 2, "the executor's warnings")
        assert all("is full" in str(w.message) for w in caught), caught
        assert executor.submit(identity, 2).result(timeout=PATIENCE) == 2
    close_counting(pool)


# --------------------------------------------------------------------------------------------
# make killed under a recipe that holds its tokens

RECIPE = """
import json, os, sys, time, warnings
from pathlib import Path
from makejobs import Blocked, TokenPool
from makejobs.errors import PoolBroken

out = Path(sys.argv[1])
report = {}
pool = TokenPool.from_environ()
report["style"] = pool.style
tokens = [pool.acquire(timeout=10), pool.acquire(timeout=10)]  # implicit slot + one token
Path(str(out) + ".holding").touch()
while not Path(str(out) + ".go").exists():  # the test has killed make
    time.sleep(0.01)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        for token in tokens:
            pool.release(token)
        report["release"] = "ok"
    except PoolBroken as e:
        report["release"] = str(e)
    report["available"] = pool.available()
    started = time.monotonic()
    got = []
    try:
        while True:
            got.append(pool.acquire(timeout=1.0))
    except Blocked as e:
        report["blocked"] = [round(time.monotonic() - started, 2), str(e)]
    except PoolBroken as e:
        report["blocked"] = str(e)
    report["got"] = len(got)
    for token in got:
        pool.release(token)
    pool.close()
report["warnings"] = [str(w.message) for w in caught]
out.write_text(json.dumps(report))
"""


@pytest.mark.parametrize(
    ("peer_key", "make_args", "style"),
    [
        ("make43", (), "pipe"),
        ("make441", (), "fifo"),
        ("make441", ("--jobserver-style=pipe",), "pipe"),
    ],
    ids=["make43-pipe", "make441-fifo", "make441-pipe"],
)
def test_make_killed_under_a_recipe_holding_tokens(
    peer_key: str,
    make_args: tuple[str, ...],
    style: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    script = write_script(tmp_path, "recipe.py", RECIPE)
    report = tmp_path / "report.json"
    flags = tmp_path / "makeflags"
    (tmp_path / "Makefile").write_text(
        "all: py sh\n"
        f'py:\n\t+@echo "$$MAKEFLAGS" > {flags}; {PY} {script} {report}\n'
        "sh:\n\t@sleep 1\n"  # holds make's last token while make is killed
    )
    proc = subprocess.Popen(
        make.argv("-s", "-j3", *make_args),
        cwd=tmp_path,
        env=env_for(TMPDIR=str(tmp_path)),  # a fifo make leaves behind stays in tmp_path
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    holding = Path(str(report) + ".holding")
    try:
        wait_until(lambda: holding.exists() or proc.poll() is not None, "the recipe to hold")
        wait_until(lambda: len(psutil.Process(proc.pid).children()) == 2, "both recipes")
        recipe_pids = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        proc.kill()  # SIGKILL: make cannot take back or count anything
        proc.wait(timeout=PATIENCE)
        Path(str(report) + ".go").touch()
        wait_until(report.exists, "the orphaned recipe to finish")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = json.loads(report.read_text())
    assert result["style"] == style
    # The recipe holds both ends of the pool itself, so make's death is invisible to it:
    # no end-of-file, no EPIPE, no warning; its own tokens go back into the pipe.
    assert result["release"] == "ok" and result["warnings"] == [], result
    assert result["available"] == 1, result
    # The token make held for `sleep 1` never comes back: a waiter gets its timeout.
    assert result["got"] == 2, result  # its implicit slot and the token it returned
    waited, message = result["blocked"]
    assert 1.0 <= waited < 3 and "no jobserver token became free within 1.0 s" in message
    wait_until(lambda: not any(running(pid) for pid in recipe_pids), "the orphans to end")
    auth = parse_makeflags(flags.read_text().strip()).auth
    if style == "fifo":
        # make 4.4 leaves its fifo behind when killed; later joiners are told it is stale.
        assert isinstance(auth, FifoAuth) and os.path.exists(auth.path)
        with pytest.raises(JobserverUnavailable, match="is stale: no process has it open"):
            TokenPool.from_environ({"MAKEFLAGS": flags.read_text().strip()})
