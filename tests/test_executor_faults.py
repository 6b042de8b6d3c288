"""JobserverExecutor under faults: what must not stall, break or leak it (issue 12, items 1-6).

* executors one after another and side by side, under every start method;
* a manager thread that cannot start;
* a task that closes every descriptor it has and runs on;
* a future whose lock another thread keeps (a SIGINT at the wrong instant does that);
* a fork server that dies;
* results and exceptions that do not pickle.

Ordering never relies on a sleep: a task that must stay running waits for a gate file the
test creates (see test_executor.Gate), and a thread that must hold a lock holds it until
the test lets it go.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.util
import os
import pickle
import resource
import signal
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import forkserver
from pathlib import Path
from typing import Any

import pytest

import makejobs._manager as manager_module
from forking import held_by_another_thread
from makejobs import RemoteTraceback, SubmissionDied, TokenPool, _forkserver
from makejobs.executor import ForkServerFailed
from probes import PATIENCE, wait_until
from test_executor import (
    REPO,
    Gate,
    UnpicklableError,
    blocked,
    child_pids,
    clean_environ,
    executor_on,
    open_fds,
    raise_unpicklable,
    return_lock,
    return_unloadable,
    run_script,
    square,
    touch,
    wait_for_file,
)

pytestmark = pytest.mark.timeout(90)

#: Forking a process that has threads warns on Python 3.12+; the fork tests choose to.
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def holds_one(pool: TokenPool) -> bool:
    """This process holds exactly one slot of *pool* (its implicit one or a token)."""
    return (0 if pool.implicit_free else 1) + pool.held == 1


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path)


# -- 1. executors one after another and side by side -------------------------------------


@pytest.mark.filterwarnings(FORK_WARNING)
@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_executors_one_after_another_and_side_by_side(method: str) -> None:
    """New pipes reuse the descriptor numbers of an executor that is gone (and of workers
    that were retired): a forked worker must close exactly the parent ends that are open."""
    context = multiprocessing.get_context(method)
    expected = sum(range(60))
    for _ in range(2):
        with executor_on(2, mp_context=context) as (executor, _):
            assert sum(executor.map(abs, range(60))) == expected
    # Side by side: b lives on while a goes and c comes (on a's numbers).
    with (
        executor_on(2, mp_context=context) as (a, _),
        executor_on(2, mp_context=context) as (b, _),
    ):
        assert sum(a.map(abs, range(60))) == expected
        assert sum(b.map(abs, range(60))) == expected
        a.shutdown(wait=True)
        with executor_on(2, mp_context=context) as (c, _):
            futures = [ex.submit(abs, -i) for i in range(30) for ex in (b, c)]
            assert sum(f.result(timeout=PATIENCE) for f in futures) == 2 * sum(range(30))
        # b's workers must still see their task pipes close (no copy kept by c's workers).
        b.shutdown(wait=True)


# -- 2. a manager thread that cannot start --------------------------------------------------


def refuse_to_start(self: threading.Thread) -> None:
    raise RuntimeError("can't start new thread")


def test_a_manager_thread_that_cannot_start_leaves_the_executor_as_it_was(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with executor_on(2) as (executor, pool):
        fds, children = open_fds(), child_pids()
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_to_start)
            with pytest.raises(RuntimeError, match="can't start new thread"):
                executor.submit(square, 3)
        # Nothing scheduled, nothing started, no slot held.
        assert " pending=0 " in repr(executor) and " workers=0/" in repr(executor), repr(executor)
        assert open_fds() == fds and child_pids() == children
        assert pool.implicit_free and pool.held == 0
        assert executor.submit(square, 4).result(timeout=PATIENCE) == 16
    with executor_on(1) as (executor, _):
        with monkeypatch.context() as patch:
            patch.setattr(threading.Thread, "start", refuse_to_start)
            with pytest.raises(RuntimeError, match="can't start new thread"):
                executor.submit(square, 3)
        executor.shutdown(wait=True)  # not "cannot join thread before it is started"


NO_THREAD_SCRIPT = textwrap.dedent(
    """
    import threading
    from makejobs import JobserverExecutor

    def refuse(self):
        raise RuntimeError("can't start new thread")

    if __name__ == "__main__":
        executor = JobserverExecutor(1)
        start, threading.Thread.start = threading.Thread.start, refuse
        try:
            executor.submit(abs, -1)
        except RuntimeError as e:
            print("refused:", e)
        threading.Thread.start = start
        # Leave without shutdown(): the interpreter's exit shuts the executor down.
    """
)


def test_interpreter_exit_after_a_manager_thread_could_not_start(tmp_path: Path) -> None:
    script = tmp_path / "no_thread.py"
    script.write_text(NO_THREAD_SCRIPT)
    env = clean_environ()
    env["PYTHONPATH"] = str(REPO)
    proc, out, err = run_script(
        [sys.executable, str(script)], env=env, timeout=30, hung="exit hung"
    )
    assert out.strip() == "refused: can't start new thread", err
    assert proc.returncode == 0 and "Traceback" not in err, err


# -- 3. a task that closes its descriptors and runs on ----------------------------------------


def close_fds_then_block(started: str, gate: str) -> None:
    """Close every fd above stderr (the result pipe with them), then hold on until *gate*."""
    os.closerange(3, 1 << 16)
    touch(started)
    wait_for_file(gate)


def test_a_task_that_closes_its_fds_and_runs_on_stalls_nothing(gate: Gate) -> None:
    with executor_on(2) as (executor, pool):
        args = gate.task_args()
        closer = executor.submit(close_fds_then_block, *args[:2])
        gate.wait_started(args)
        outcome: dict[str, Any] = {}

        def others() -> None:
            futures = [executor.submit(square, i) for i in range(6)]
            outcome["results"] = [f.result(timeout=PATIENCE) for f in futures]

        worker = threading.Thread(target=others)
        worker.start()
        worker.join(PATIENCE)
        stalled = worker.is_alive()
        still_one_slot_held = holds_one(pool)  # the closer's: its process still runs
        gate.open()
        worker.join()
        assert not stalled, "submit() or results waited for the worker that closed its fds"
        assert outcome["results"] == [i * i for i in range(6)]
        assert still_one_slot_held
        # It cannot deliver a result: once its process is gone, its task fails.
        error = closer.exception(timeout=PATIENCE)
        assert isinstance(error, SubmissionDied) and error.exitcode == 1, repr(error)
        wait_until(lambda: pool.implicit_free and pool.held == 0)


# -- 4. a future whose lock another thread keeps ------------------------------------------------


def in_thread(fn: Any, *args: Any) -> threading.Thread:
    thread = threading.Thread(target=fn, args=args, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("holder", ["another thread", "this thread"])
def test_a_locked_running_future_stalls_nothing(gate: Gate, holder: str) -> None:
    """Its result cannot be delivered while the lock is held; every other result, the
    shutdown and every token go on, and the result is delivered once the lock is free.
    "this thread": the test's main thread holds it, as a main thread does after a SIGINT
    lands between taking and releasing it (inside result(), say)."""
    with executor_on(2) as (executor, pool):
        args = gate.task_args("late")
        wedged = executor.submit(blocked, *args)
        gate.wait_started(args)
        with (
            held_by_another_thread(wedged._condition)
            if holder == "another thread"
            else (wedged._condition)
        ):
            gate.open()
            futures = [executor.submit(square, i) for i in range(4)]
            assert [f.result(timeout=PATIENCE) for f in futures] == [0, 1, 4, 9]
            wait_until(lambda: pool.implicit_free and pool.held == 0)  # its token too
            shutdown = in_thread(executor.shutdown, True)
            shutdown.join(PATIENCE)
            assert not shutdown.is_alive(), "shutdown(wait=True) waited for a future's lock"
            assert wedged._state == "RUNNING"  # a read without the lock: for the test only
        assert wedged.result(timeout=PATIENCE) == "late"


def test_a_locked_pending_future_is_given_up_at_shutdown(
    gate: Gate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending task whose future stays locked cannot be marked running, so it never
    starts: the shutdown gives up on it (after LOCKED_FUTURE_GRACE) and cancels it
    once the lock is free, so that it is done for concurrent.futures.wait()."""
    monkeypatch.setattr(manager_module, "LOCKED_FUTURE_GRACE", 0.05)
    marker = tmp_path / "ran"
    with executor_on(1) as (executor, pool):
        args = gate.task_args("first")
        first = executor.submit(blocked, *args)
        gate.wait_started(args)
        queued = executor.submit(touch, str(marker))
        with held_by_another_thread(queued._condition):
            after = executor.submit(square, 5)  # queued behind it, not held up by it
            gate.open()
            assert after.result(timeout=PATIENCE) == 25
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                shutdown = in_thread(executor.shutdown, True)
                shutdown.join(PATIENCE)
            assert not shutdown.is_alive(), "shutdown(wait=True) waited for a future's lock"
            assert any("never started" in str(w.message) for w in caught), caught
            assert pool.implicit_free and pool.held == 0
        assert first.result(timeout=PATIENCE) == "first"
        wait_until(queued.cancelled)
        assert cf.wait([queued], timeout=0).done == {queued}
        assert not marker.exists()


# -- 5. the fork server dies --------------------------------------------------------------------


@pytest.fixture
def fork_server_restored() -> Iterator[None]:
    """Whatever the test did to the process's fork server, later tests find one that works
    (ProcessPoolExecutor cannot replace a server that someone else reaped)."""
    yield
    try:
        forkserver.ensure_running()
    except ChildProcessError:
        _forkserver._forget_dead_server()


def server_pid() -> int:
    pid = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert isinstance(pid, int)
    return pid


@pytest.mark.parametrize("death", ["killed", "killed and reaped elsewhere", "out of fds"])
@pytest.mark.usefixtures("fork_server_restored")
def test_a_dead_fork_server_is_replaced(death: str) -> None:
    context = multiprocessing.get_context("forkserver")
    # One task per worker: every task asks the fork server for a new process.
    with executor_on(1, mp_context=context, max_tasks_per_child=1) as (executor, _):
        assert executor.submit(abs, -1).result(timeout=PATIENCE) == 1
        pid = server_pid()
        if death == "out of fds":  # its next request cannot receive the fds: it dies of it
            n = len(os.listdir(f"/proc/{pid}/fd"))
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (n, n))
        else:
            os.kill(pid, signal.SIGKILL)
            if death == "killed and reaped elsewhere":  # by a SIGCHLD handler, say
                os.waitpid(pid, 0)
        results = [executor.submit(abs, -i).result(timeout=PATIENCE) for i in range(2, 5)]
        assert results == [2, 3, 4]
        assert server_pid() != pid


def refuse_to_spawn(*args: Any) -> int:
    raise BlockingIOError(11, "Resource temporarily unavailable (a process limit)")


@pytest.mark.usefixtures("fork_server_restored")
def test_a_fork_server_that_cannot_be_replaced_is_a_named_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No new server either (the process limit that killed the old one): submit() says so
    with ForkServerFailed, schedules nothing, and works again once a server can start."""
    context = multiprocessing.get_context("forkserver")
    with executor_on(1, mp_context=context, max_tasks_per_child=1) as (executor, pool):
        assert executor.submit(abs, -1).result(timeout=PATIENCE) == 1
        # That worker gone, submit() starts the next one itself (and so raises what it met).
        wait_until(lambda: " workers=0/" in repr(executor))
        pid = server_pid()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with monkeypatch.context() as patch:
            patch.setattr(multiprocessing.util, "spawnv_passfds", refuse_to_spawn)
            with pytest.raises(ForkServerFailed, match="fork server did not answer") as info:
                executor.submit(abs, -2)
        assert isinstance(info.value.__cause__, BlockingIOError)
        assert " pending=0 " in repr(executor) and pool.implicit_free and pool.held == 0
        assert executor.submit(abs, -3).result(timeout=PATIENCE) == 3


# -- 6. results and exceptions that do not pickle -------------------------------------------------


def test_unpicklable_results_and_exceptions_fail_with_the_pickling_errors_own_type() -> None:
    """As ProcessPoolExecutor (asked here, in the same run) reports them: the error that
    pickling raised, with the remote traceback as its cause."""
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(1, mp_context=context) as reference:
        expected = [
            reference.submit(return_lock).exception(timeout=PATIENCE),
            reference.submit(raise_unpicklable).exception(timeout=PATIENCE),
        ]
    with executor_on(1, mp_context=context) as (executor, _):
        pid = executor.submit(os.getpid).result(timeout=PATIENCE)
        got = [
            executor.submit(return_lock).exception(timeout=PATIENCE),
            executor.submit(raise_unpicklable).exception(timeout=PATIENCE),
        ]
        for ours, theirs in zip(got, expected):
            assert type(ours) is type(theirs) and str(ours) == str(theirs), (ours, theirs)
            assert isinstance(ours.__cause__, RemoteTraceback), repr(ours.__cause__)
        try:
            pickle.dumps(threading.Lock())
        except Exception as e:
            assert type(got[0]) is type(e)
        # The remote traceback names what could not be pickled, and the task's own error.
        assert "of type lock" in str(got[0].__cause__)
        assert f"{UnpicklableError.__name__}: boom" in str(got[1].__cause__)
        # A result that pickles there but not here: its own error too (ProcessPoolExecutor
        # breaks the whole pool on it instead).
        unloadable = executor.submit(return_unloadable).exception(timeout=PATIENCE)
        assert type(unloadable) is ValueError and "cannot rebuild" in str(unloadable)
        assert executor.submit(os.getpid).result(timeout=PATIENCE) == pid  # the same worker
