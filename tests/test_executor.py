"""JobserverExecutor: the concurrent.futures contract, worker death, and token accounting.

Written from the behaviours ``concurrent.futures`` documents for ProcessPoolExecutor
(results, exceptions, states, cancel, shutdown variants, map, callbacks, wait and
as_completed), plus what the executor promises beyond it: a dead worker fails only its own
task, a running task can be killed, every running task holds exactly one pool token and an
idle executor holds none, and shutdown leaves nothing behind.

Ordering between this process and the workers never relies on a sleep: a task that must
stay running waits for a *gate* file that the test creates, and announces that it started
by creating a *started* file. Sleeps appear only as the work being measured (spans).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import json
import os
import pickle
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

from makejobs import (
    Jobserver,
    JobserverExecutor,
    RemoteTraceback,
    SubmissionDied,
    TokenCountWarning,
    TokenPool,
    usable_cpus,
)
from makejobs._frames import HEADER as _HEADER
from makejobs._frames import KEPT_BUFFER_MAX as _KEPT_BUFFER_MAX
from makejobs._frames import FrameReader as _FrameReader
from makejobs._frames import advance as _advance
from makejobs._frames import send as _send
from probes import PATIENCE, wait_until
from spans import peak_overlap

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(60)


# -- task functions (module level: forkserver and spawn workers import them) ----------------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def getpid(_: object = None) -> int:
    return os.getpid()


def sleep_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def sleep_value(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def span(seconds: float) -> tuple[float, float, int]:
    """Work for *seconds*; the interval is in CLOCK_MONOTONIC, one clock for every process."""
    start = time.monotonic()
    time.sleep(seconds)
    return start, time.monotonic(), os.getpid()


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def touch(path: str) -> int:
    Path(path + ".tmp").write_text(str(os.getpid()))
    os.replace(path + ".tmp", path)
    return os.getpid()


def wait_for_file(path: str, timeout: float = PATIENCE) -> bool:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def blocked(started: str, gate: str, value: Any = None) -> Any:
    """Announce the start, then hold the worker (and its token) until *gate* exists."""
    # Write, then rename: the test reads the pid as soon as the name exists.
    Path(started + ".tmp").write_text(str(os.getpid()))
    os.replace(started + ".tmp", started)
    if not wait_for_file(gate):
        raise TimeoutError(f"gate {gate} never opened")
    return value


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def return_lock() -> threading.Lock:
    return threading.Lock()


def big_bytes(size: int) -> bytes:
    return b"\xa5" * size


def length(data: bytes) -> int:
    return len(data)


class UnpicklableError(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("refused")


def raise_unpicklable() -> None:
    raise UnpicklableError("boom")


def _refuse_rebuild() -> None:
    raise ValueError("cannot rebuild this object here")


class UnloadableResult:
    """Pickles fine in the worker; unpickling it (in the parent) raises."""

    def __reduce__(self) -> Any:
        return (_refuse_rebuild, ())


def return_unloadable() -> UnloadableResult:
    return UnloadableResult()


_INIT_STATE: dict[str, Any] = {}


def record_init(directory: str, tag: str) -> None:
    Path(directory, str(os.getpid())).write_text(tag)
    _INIT_STATE["tag"] = tag


def read_init_state() -> tuple[int, Any]:
    return os.getpid(), _INIT_STATE.get("tag")


def lambda_free_init_state(_: int) -> tuple[int, Any]:
    return read_init_state()


def failing_init() -> None:
    raise ValueError("initializer failed on purpose")


# -- helpers in the test process ------------------------------------------------------------


def clean_environ() -> dict[str, str]:
    """os.environ without any inherited pool (the suite may itself run under make)."""
    env = dict(os.environ)
    for name in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL"):
        env.pop(name, None)
    return env


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


class Gate:
    """A file-based gate: tasks started with :meth:`task_args` block until :meth:`open`."""

    def __init__(self, directory: Path, name: str = "gate") -> None:
        self.directory = directory
        self.path = directory / name
        self._count = 0

    def task_args(self, value: Any = None) -> tuple[str, str, Any]:
        self._count += 1
        started = self.directory / f"{self.path.name}.started.{self._count}"
        return (str(started), str(self.path), value)

    @staticmethod
    def wait_started(args: tuple[str, str, Any]) -> int:
        wait_for_file(args[0])
        assert os.path.exists(args[0]), "a blocked task never started"
        return int(Path(args[0]).read_text())

    def open(self) -> None:
        self.path.write_text("open")


@contextlib.contextmanager
def executor_on(
    slots: int, max_workers: int | None = None, *, style: str = "pipe", **kwargs: Any
) -> Iterator[tuple[JobserverExecutor, TokenPool]]:
    """An executor on a private pool of *slots*; afterwards every token must be back."""
    pool = TokenPool.create(slots, style=style)  # type: ignore[arg-type]
    js = Jobserver(pool=pool)
    executor = JobserverExecutor(
        max_workers if max_workers is not None else slots, jobserver=js, **kwargs
    )
    try:
        yield executor, pool
    finally:
        # A second shutdown after the manager thread ended trips over a closed wake pipe
        # (test_shutdown_may_be_called_again covers that); here it only has to join.
        with contextlib.suppress(OSError):
            executor.shutdown(wait=True, cancel_futures=True)
        js.close()
        with warnings.catch_warnings():
            warnings.simplefilter("error", TokenCountWarning)
            found = pool.close()
        assert found == slots - 1, f"{found} tokens in the pool after shutdown, not {slots - 1}"


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path)


@pytest.fixture(scope="module", autouse=True)
def _warm_up() -> None:
    """Start the forkserver once, so no test pays (or counts) it."""
    with executor_on(1) as (executor, _):
        executor.submit(square, 2).result()


# -- results and exceptions ------------------------------------------------------------------


def test_submit_returns_standard_futures_with_results() -> None:
    with executor_on(2) as (executor, _):
        futures = [executor.submit(square, i) for i in range(20)]
        assert all(isinstance(f, cf.Future) for f in futures)
        assert [f.result(timeout=PATIENCE) for f in futures] == [i * i for i in range(20)]
        assert executor.submit(add, 1, 2, c=3).result() == 6
        # A keyword called fn reaches the function, as with ProcessPoolExecutor.
        assert executor.submit(dict, fn=1).result() == {"fn": 1}


def test_exception_is_reraised_with_remote_traceback_as_cause() -> None:
    with executor_on(2) as (executor, _):
        future = executor.submit(raise_value_error, "remote boom")
        with pytest.raises(ValueError, match="remote boom") as info:
            future.result(timeout=PATIENCE)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in str(cause) and "remote boom" in str(cause)
        assert isinstance(future.exception(), ValueError)
        # The worker survives an exception in a task.
        assert executor.submit(square, 3).result() == 9


# -- states and cancellation -----------------------------------------------------------------


def test_states_pending_running_done_cancelled(gate: Gate) -> None:
    with executor_on(1) as (executor, pool):
        first_args = gate.task_args("first")
        first = executor.submit(blocked, *first_args)
        gate.wait_started(first_args)
        second = executor.submit(square, 4)
        assert first.running() and not first.done() and not first.cancelled()
        assert not second.running() and not second.done()
        # The running task holds the only slot; the pending one holds nothing.
        assert not pool.implicit_free and pool.held == 0
        assert not first.cancel(), "a running future cannot be cancelled"
        assert second.cancel() and second.cancelled() and second.done()
        with pytest.raises(cf.CancelledError):
            second.result()
        gate.open()
        assert first.result(timeout=PATIENCE) == "first"
        assert first.done() and not first.running() and not first.cancelled()
        assert not first.cancel(), "a finished future cannot be cancelled"


def test_cancelled_pending_tasks_never_run(gate: Gate, tmp_path: Path) -> None:
    markers = [tmp_path / f"ran.{i}" for i in range(6)]
    with executor_on(1) as (executor, _):
        args = gate.task_args()
        running = executor.submit(blocked, *args)
        gate.wait_started(args)
        queued = [executor.submit(touch, str(m)) for m in markers]
        assert all(f.cancel() for f in queued)
        survivor = executor.submit(touch, str(tmp_path / "survivor"))
        gate.open()
        running.result(timeout=PATIENCE)
        survivor.result(timeout=PATIENCE)
    assert all(f.cancelled() for f in queued)
    assert not any(m.exists() for m in markers)
    assert (tmp_path / "survivor").exists()


def test_shutdown_wait_true_returns_after_every_task(tmp_path: Path) -> None:
    with executor_on(2) as (executor, _):
        futures = [executor.submit(sleep_value, 0.05, i) for i in range(6)]
        executor.shutdown(wait=True)
        assert all(f.done() for f in futures)
        assert [f.result(timeout=0) for f in futures] == list(range(6))


def test_shutdown_without_wait_returns_at_once_and_results_still_arrive(gate: Gate) -> None:
    with executor_on(2) as (executor, _):
        argses = [gate.task_args(i) for i in range(4)]
        futures = [executor.submit(blocked, *a) for a in argses]
        gate.wait_started(argses[0])
        caller = threading.Thread(target=executor.shutdown, kwargs={"wait": False})
        caller.start()
        caller.join(PATIENCE)
        # The gate is still closed: had shutdown waited, it would still be blocked.
        assert not caller.is_alive(), "shutdown(wait=False) waited for running tasks"
        with pytest.raises(RuntimeError):
            executor.submit(square, 1)
        gate.open()
        assert [f.result(timeout=PATIENCE) for f in futures] == [0, 1, 2, 3]


def test_shutdown_cancel_futures_cancels_only_pending(gate: Gate, tmp_path: Path) -> None:
    markers = [tmp_path / f"ran.{i}" for i in range(5)]
    with executor_on(1) as (executor, _):
        args = gate.task_args("kept")
        running = executor.submit(blocked, *args)
        gate.wait_started(args)
        queued = [executor.submit(touch, str(m)) for m in markers]
        executor.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        gate.open()
        assert running.result(timeout=PATIENCE) == "kept"
        executor.shutdown(wait=True)
    assert not any(m.exists() for m in markers)


def test_submit_after_shutdown_raises_runtime_error() -> None:
    with executor_on(1) as (executor, _):
        executor.submit(square, 1).result()
        executor.shutdown()
        with pytest.raises(RuntimeError):
            executor.submit(square, 2)
    with executor_on(1) as (executor, _):
        executor.shutdown()  # never used: no manager thread was started
        with pytest.raises(RuntimeError):
            executor.submit(square, 2)


def test_shutdown_may_be_called_again() -> None:
    """ProcessPoolExecutor allows repeated shutdown (e.g. inside a with block)."""
    with executor_on(1) as (executor, _):
        with executor:
            assert executor.submit(square, 5).result() == 25
            executor.shutdown(wait=True)
        executor.shutdown(wait=True)
        executor.shutdown(wait=False)


def test_context_manager_waits_for_tasks() -> None:
    with executor_on(2) as (executor, _):
        with executor:
            futures = [executor.submit(sleep_value, 0.05, i) for i in range(4)]
        assert all(f.done() for f in futures)
        with pytest.raises(RuntimeError):
            executor.submit(square, 1)


# -- map ---------------------------------------------------------------------------------------


def test_map_keeps_input_order_whatever_the_completion_order() -> None:
    with executor_on(3) as (executor, _):
        # Early items take longest, so they finish last.
        delays = [0.02 * (8 - i) for i in range(8)]
        assert list(executor.map(sleep_value, delays, range(8))) == list(range(8))
        assert list(executor.map(add, [1, 2, 3], [10, 20])) == [11, 22]  # zip: shortest
        assert list(executor.map(square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 7, 100, 1000])
def test_map_chunksize_gives_the_same_results(chunksize: int) -> None:
    with executor_on(2) as (executor, _):
        assert list(executor.map(square, range(500), chunksize=chunksize)) == [
            i * i for i in range(500)
        ]
        assert list(executor.map(add, range(10), range(0, 50, 5), chunksize=chunksize)) == [
            a + b for a, b in zip(range(10), range(0, 50, 5))
        ]


def test_map_rejects_chunksize_below_one() -> None:
    with executor_on(1) as (executor, _), pytest.raises(ValueError):
        executor.map(square, [1], chunksize=0)


@pytest.mark.parametrize(("chunksize", "before"), [(1, [0, 1, 2]), (2, [0, 1])])
def test_map_exception_surfaces_at_its_position(chunksize: int, before: list[int]) -> None:
    # As with ProcessPoolExecutor: a failing chunk loses its whole chunk's results.
    with executor_on(2) as (executor, _):
        results = executor.map(fail_at, range(6), [3] * 6, chunksize=chunksize)
        got: list[int] = []
        with pytest.raises(ValueError, match="bad item 3"):
            for value in results:
                got.append(value)
        assert got == before


def test_map_timeout_raises_timeout_error(gate: Gate) -> None:
    with executor_on(2) as (executor, _):
        argses = [gate.task_args(i) for i in range(3)]
        started = time.monotonic()
        results = executor.map(blocked, *zip(*argses), timeout=0.3)
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert time.monotonic() - started < PATIENCE
        gate.open()


# -- callbacks, wait, as_completed, progress --------------------------------------------------


def test_done_callbacks_run_once_including_those_added_after_completion(gate: Gate) -> None:
    calls: list[tuple[str, cf.Future[Any]]] = []
    lock = threading.Lock()

    def record(tag: str) -> Callable[[cf.Future[Any]], None]:
        def callback(future: cf.Future[Any]) -> None:
            with lock:
                calls.append((tag, future))

        return callback

    def explode(future: cf.Future[Any]) -> None:
        raise RuntimeError("a callback that raises must not stop the others")

    with executor_on(1) as (executor, _):
        args = gate.task_args(7)
        future = executor.submit(blocked, *args)
        future.add_done_callback(record("before"))
        future.add_done_callback(explode)
        future.add_done_callback(record("before2"))
        pending = executor.submit(square, 1)
        pending.add_done_callback(record("cancelled"))
        gate.wait_started(args)
        assert pending.cancel()
        gate.open()
        assert future.result(timeout=PATIENCE) == 7
        wait_until(lambda: len(calls) >= 3)
        future.add_done_callback(record("after"))  # runs at once, in this thread
        assert [tag for tag, _ in calls] == ["cancelled", "before", "before2", "after"]
        assert all(f is (pending if tag == "cancelled" else future) for tag, f in calls)


def test_wait_and_as_completed(gate: Gate) -> None:
    with executor_on(2) as (executor, _):
        args = gate.task_args("slow")
        slow = executor.submit(blocked, *args)
        fast = executor.submit(square, 6)
        done, not_done = cf.wait([slow, fast], timeout=PATIENCE, return_when=cf.FIRST_COMPLETED)
        assert done == {fast} and not_done == {slow}
        with pytest.raises(cf.TimeoutError):
            list(cf.as_completed([slow, fast], timeout=0.2))
        failing = executor.submit(raise_value_error, "x")
        done, _ = cf.wait([failing, fast], timeout=PATIENCE, return_when=cf.FIRST_EXCEPTION)
        assert failing in done
        gate.open()
        done, not_done = cf.wait([slow, fast, failing], timeout=PATIENCE)
        assert not not_done
        futures = [executor.submit(sleep_value, 0.01 * (i % 3), i) for i in range(12)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=PATIENCE)) == list(
            range(12)
        )


class Progress:
    """What tqdm's bar does with done-callbacks: update(1) per completion, from any thread."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.n = 0
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def update(self, count: int = 1) -> None:
        with self.lock:
            self.n += count
            self.threads.add(threading.current_thread().name)


def test_progress_bar_via_done_callbacks_counts_every_completion() -> None:
    with executor_on(2) as (executor, _):
        bar = Progress(total=200)
        futures = []
        for i in range(bar.total):
            future = executor.submit(fail_at, i, 13)  # one failure counts as progress too
            future.add_done_callback(lambda _f: bar.update(1))
            futures.append(future)
        cf.wait(futures, timeout=PATIENCE)
        wait_until(lambda: bar.n == bar.total)
        assert sum(f.exception() is not None for f in futures) == 1


def test_callback_may_submit_more_work() -> None:
    with executor_on(1) as (executor, _):
        chained: list[cf.Future[int]] = []
        ready = threading.Event()

        def resubmit(future: cf.Future[int]) -> None:
            chained.append(executor.submit(square, future.result()))
            ready.set()

        executor.submit(square, 3).add_done_callback(resubmit)
        assert ready.wait(PATIENCE)
        assert chained[0].result(timeout=PATIENCE) == 81


def test_submit_from_many_threads() -> None:
    with executor_on(2) as (executor, _):
        results: dict[int, list[cf.Future[int]]] = {}

        def client(k: int) -> None:
            results[k] = [executor.submit(add, k, i) for i in range(50)]

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k, futures in results.items():
            assert [f.result(timeout=PATIENCE) for f in futures] == [k + i for i in range(50)]


# -- pickling failures -------------------------------------------------------------------------


def test_unpicklable_function_or_arguments_fail_that_future_only() -> None:
    def expected_error(obj: object) -> type[BaseException]:
        try:
            pickle.dumps(obj)
        except Exception as e:
            return type(e)
        raise AssertionError("expected a pickling error")

    with executor_on(1) as (executor, pool):
        bad_fn = executor.submit(lambda: 1)
        assert isinstance(bad_fn.exception(timeout=PATIENCE), expected_error(lambda: 1))
        lock = threading.Lock()
        bad_arg = executor.submit(square, lock)
        assert isinstance(bad_arg.exception(timeout=PATIENCE), expected_error(lock))
        assert executor.submit(square, 7).result() == 49
        assert pool.implicit_free and pool.held == 0


def test_unpicklable_result_fails_that_future_only_and_keeps_the_worker() -> None:
    with executor_on(1) as (executor, _):
        pid = executor.submit(getpid).result()
        bad = executor.submit(return_lock)
        with pytest.raises(Exception, match="pickle"):
            bad.result(timeout=PATIENCE)
        unloadable = executor.submit(return_unloadable)
        with pytest.raises(Exception, match="cannot rebuild"):
            unloadable.result(timeout=PATIENCE)
        assert executor.submit(getpid).result() == pid, "the worker should have been reused"


def test_arguments_that_fail_to_unpickle_in_the_worker_fail_that_future() -> None:
    with executor_on(1) as (executor, _):
        future = executor.submit(square, UnloadableResult())  # pickles here, not there
        try:
            error = future.exception(timeout=10)
        except cf.TimeoutError:
            executor.kill(future, signal.SIGKILL)  # let the executor shut down
            pytest.fail("the future never completed: the worker's error frame was lost")
        assert isinstance(error, Exception) and "cannot rebuild" in str(error), repr(error)
        assert executor.submit(square, 5).result(timeout=PATIENCE) == 25


def test_unpicklable_exception_is_reported_by_its_own_type_name() -> None:
    with executor_on(1) as (executor, _):
        future = executor.submit(raise_unpicklable)
        error = future.exception(timeout=PATIENCE)
        # The pickling error (as ProcessPoolExecutor has it); the task's own in its cause.
        assert isinstance(error, TypeError) and str(error) == "refused", repr(error)
        assert "UnpicklableError: boom" in str(error.__cause__), str(error.__cause__)
        assert executor.submit(square, 2).result() == 4


# -- worker death and kill ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fn", "arg", "exitcode"),
    [
        # Builtins: the replacement worker need not import this module for them.
        (signal.raise_signal, signal.SIGKILL, -signal.SIGKILL),
        (signal.raise_signal, signal.SIGTERM, -signal.SIGTERM),
        (os._exit, 3, 3),
    ],
    ids=["SIGKILL", "SIGTERM", "os._exit"],
)
def test_worker_death_fails_only_its_task_and_is_replaced(
    fn: Callable[[int], None], arg: int, exitcode: int, gate: Gate
) -> None:
    with executor_on(2) as (executor, pool):
        args = gate.task_args("neighbour")
        neighbour = executor.submit(blocked, *args)
        neighbour_pid = gate.wait_started(args)
        doomed = executor.submit(fn, arg)
        error = doomed.exception(timeout=PATIENCE)
        assert isinstance(error, SubmissionDied), repr(error)
        assert error.exitcode == exitcode
        assert error.pid is not None and error.pid != neighbour_pid
        assert not neighbour.done()
        gate.open()
        assert neighbour.result(timeout=PATIENCE) == "neighbour"
        pids = {executor.submit(sleep_pid, 0.02).result(timeout=PATIENCE) for _ in range(4)}
        assert error.pid not in pids, "the dead worker cannot have run more tasks"
        wait_until(lambda: pool.implicit_free and pool.held == 0)


def test_sys_exit_in_a_task_fails_that_task_and_the_executor_goes_on() -> None:
    with executor_on(1) as (executor, _):
        error = executor.submit(call_sys_exit, 4).exception(timeout=PATIENCE)
        assert isinstance(error, (SubmissionDied, SystemExit)), repr(error)
        assert executor.submit(square, 8).result(timeout=PATIENCE) == 64


def test_idle_worker_killed_from_outside_is_replaced() -> None:
    with executor_on(1) as (executor, _):
        pid = executor.submit(getpid).result()
        os.kill(pid, signal.SIGKILL)
        # The manager reaps it once it sees the end-of-file on the worker's result pipe.
        wait_until(lambda: not psutil.pid_exists(pid))
        new_pid = executor.submit(getpid).result(timeout=PATIENCE)
        assert new_pid != pid


def test_kill_a_running_task(gate: Gate) -> None:
    with executor_on(2) as (executor, pool):
        victim_args = gate.task_args("victim")
        other_args = gate.task_args("other")
        victim = executor.submit(blocked, *victim_args)
        other = executor.submit(blocked, *other_args)
        victim_pid = gate.wait_started(victim_args)
        gate.wait_started(other_args)
        assert executor.kill(victim) is True
        error = victim.exception(timeout=PATIENCE)
        assert isinstance(error, SubmissionDied)
        assert error.pid == victim_pid and error.exitcode == -signal.SIGTERM
        assert not other.done()
        gate.open()
        assert other.result(timeout=PATIENCE) == "other"
        assert executor.kill(other) is False, "a finished future cannot be killed"
        assert executor.submit(getpid).result(timeout=PATIENCE) != victim_pid
        wait_until(lambda: pool.implicit_free and pool.held == 0)


def test_kill_with_another_signal_and_kill_of_a_pending_future(gate: Gate) -> None:
    with executor_on(1) as (executor, _):
        args = gate.task_args()
        running = executor.submit(blocked, *args)
        gate.wait_started(args)
        pending = executor.submit(square, 2)
        assert executor.kill(pending) is True and pending.cancelled()
        assert executor.kill(running, signal.SIGKILL) is True
        error = running.exception(timeout=PATIENCE)
        assert isinstance(error, SubmissionDied) and error.exitcode == -signal.SIGKILL
        assert executor.submit(square, 3).result(timeout=PATIENCE) == 9


def test_kill_racing_completion_never_hits_the_next_task(
    gate: Gate, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill(future) whose task finishes just before the signal lands must not kill the
    worker's *next* task.

    The interleaving is forced: os.kill, as the executor calls it, first lets the target
    finish (opens its gate and waits, at most a second, for its result to be processed),
    and only then sends the signal, to a worker that is now idle. That worker must not be
    handed the pending task."""
    with executor_on(1) as (executor, _):
        args = gate.task_args("target")
        target = executor.submit(blocked, *args)
        worker_pid = gate.wait_started(args)
        innocent = executor.submit(square, 3)
        real_kill = os.kill

        def late_kill(pid: int, signum: int) -> None:
            if pid == worker_pid:
                gate.open()
                deadline = time.monotonic() + 1.0
                while not target.done() and time.monotonic() < deadline:
                    time.sleep(0.001)
            real_kill(pid, signum)

        monkeypatch.setattr(os, "kill", late_kill)
        assert executor.kill(target, signal.SIGKILL) is True
        monkeypatch.setattr(os, "kill", real_kill)
        outcome = target.exception(timeout=PATIENCE)
        assert outcome is None or isinstance(outcome, SubmissionDied), repr(outcome)
        error = innocent.exception(timeout=PATIENCE)
        assert error is None, f"a task nobody killed failed: {error!r}"
        assert innocent.result() == 9


# -- initializer, max_tasks_per_child, max_workers ----------------------------------------------


def test_initializer_runs_in_every_worker_before_its_tasks(tmp_path: Path) -> None:
    initargs = (str(tmp_path), "tagged")
    with executor_on(2, initializer=record_init, initargs=initargs) as (executor, _):
        # Both workers get started (two slow tasks at once), then both serve more tasks.
        list(executor.map(sleep_value, [0.1] * 2, [None] * 2))
        results = [executor.submit(read_init_state).result() for _ in range(6)]
        results += list(executor.map(lambda_free_init_state, range(6)))
    initialized = {int(p.name) for p in tmp_path.iterdir()}
    assert all(tag == "tagged" for _, tag in results)
    assert {pid for pid, _ in results} <= initialized
    assert 1 <= len(initialized) <= 2


def test_failing_initializer_breaks_the_executor_like_process_pool_executor() -> None:
    with executor_on(1, initializer=failing_init) as (executor, _):
        future = executor.submit(square, 2)
        error = future.exception(timeout=PATIENCE)
        assert isinstance(error, BrokenProcessPool), repr(error)
        with pytest.raises(BrokenProcessPool):
            executor.submit(square, 3)


def test_max_tasks_per_child_one_gives_a_fresh_process_per_task() -> None:
    # os.getpid is a builtin: a fresh worker need not import this test module for it.
    with executor_on(2, max_tasks_per_child=1) as (executor, _):
        futures = [executor.submit(os.getpid) for _ in range(16)]
        errors = [f.exception(timeout=PATIENCE) for f in futures]
        assert errors == [None] * len(futures), [repr(e) for e in errors if e][:3]
        pids = [f.result() for f in futures]
        assert len(set(pids)) == len(pids)


def test_max_tasks_per_child_recycles_after_that_many_tasks() -> None:
    with executor_on(1, max_tasks_per_child=3) as (executor, _):
        pids = [executor.submit(getpid).result(timeout=PATIENCE) for _ in range(9)]
        assert [pids.count(p) for p in dict.fromkeys(pids)] == [3, 3, 3]


def test_max_workers_bounds_processes_and_concurrency() -> None:
    # Fresh executors each time: the bound must hold while workers are being started,
    # which is when submit() and the manager thread could both decide to start one.
    for _ in range(5):
        with executor_on(4, max_workers=2) as (executor, _):
            results = list(executor.map(span, [0.05] * 12))
        pids = {pid for _, _, pid in results}
        assert len(pids) <= 2, f"{len(pids)} worker processes with max_workers=2"
        assert peak_overlap([(s, e) for s, e, _ in results]) <= 2


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        JobserverExecutor(0)
    with pytest.raises(ValueError):
        JobserverExecutor(2, max_tasks_per_child=0)
    with pytest.raises(TypeError):
        JobserverExecutor(2, initializer=5)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_use_from_a_forked_child_is_refused() -> None:
    with executor_on(1) as (executor, _):
        executor.submit(square, 1).result()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                executor.submit(square, 2)
            except RuntimeError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_spawn_context_works() -> None:
    import multiprocessing

    with executor_on(1, mp_context=multiprocessing.get_context("spawn")) as (executor, _):
        assert list(executor.map(square, range(5))) == [0, 1, 4, 9, 16]


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_peak_concurrency_equals_the_pool_size_and_never_exceeds_it(slots: int) -> None:
    # More workers than slots: only the pool can be what limits concurrency.
    with executor_on(slots, max_workers=slots + 2) as (executor, _):
        futures = [executor.submit(span, 0.25) for _ in range(3 * slots)]
        spans = [f.result(timeout=PATIENCE) for f in futures]
        assert peak_overlap([(s, e) for s, e, _ in spans]) == slots


def test_fifo_pool_bounds_concurrency_too() -> None:
    with executor_on(2, max_workers=4, style="fifo") as (executor, _):
        spans = list(executor.map(span, [0.2] * 6))
        assert peak_overlap([(s, e) for s, e, _ in spans]) == 2


def holdings(pool: TokenPool) -> tuple[bool, int, int | None]:
    """(implicit slot free, tokens held by this process, tokens waiting in the pool)."""
    return pool.implicit_free, pool.held, pool.available()


def test_each_running_task_holds_one_token_and_an_idle_executor_none(gate: Gate) -> None:
    with executor_on(3) as (executor, pool):
        assert holdings(pool) == (True, 0, 2)
        argses = [gate.task_args(i) for i in range(2)]
        futures = [executor.submit(blocked, *a) for a in argses]
        for a in argses:
            gate.wait_started(a)
        # Two running tasks: the implicit slot and one token.
        assert holdings(pool) == (False, 1, 1)
        gate.open()
        for f in futures:
            f.result(timeout=PATIENCE)
        # Results are set after the tokens went back: nothing is held now, workers idle.
        assert holdings(pool) == (True, 0, 2)
        executor.submit(square, 1).result()
        assert holdings(pool) == (True, 0, 2)


def test_no_token_lost_after_deaths_kills_and_cancellations(gate: Gate) -> None:
    # executor_on checks pool.close() == slots - 1 on the way out.
    with executor_on(2, max_workers=3) as (executor, pool):
        deaths = [executor.submit(signal.raise_signal, signal.SIGKILL) for _ in range(3)]
        exits = [executor.submit(os._exit, 1) for _ in range(2)]
        for f in deaths + exits:
            assert isinstance(f.exception(timeout=PATIENCE), SubmissionDied)
        argses = [gate.task_args(i) for i in range(2)]
        running = [executor.submit(blocked, *a) for a in argses]
        for a in argses:
            gate.wait_started(a)
        queued = [executor.submit(square, i) for i in range(5)]
        assert all(f.cancel() for f in queued[::2])
        assert executor.kill(running[0])
        assert isinstance(running[0].exception(timeout=PATIENCE), SubmissionDied)
        gate.open()
        assert running[1].result(timeout=PATIENCE) == 1
        assert [f.result(timeout=PATIENCE) for f in queued[1::2]] == [1, 9]
        wait_until(lambda: holdings(pool) == (True, 0, 1))


JOIN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from makejobs import JobserverExecutor

    def span(seconds):
        start = time.monotonic()
        time.sleep(seconds)
        return start, time.monotonic()

    if __name__ == "__main__":
        executor = JobserverExecutor(4)  # more workers than slots: the pool decides
        pool = executor.pool
        facts = {"owner": pool.owner, "slots": pool.slots, "style": pool.style}
        with executor:
            facts["spans"] = list(executor.map(span, [0.2] * 6))
        facts["closed"] = pool.closed
        print(json.dumps(facts))
    """
)


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_default_pool_is_joined_from_the_environment(tmp_path: Path, style: str) -> None:
    """A process started with MAKEFLAGS (as a make recipe is) runs its tasks on that pool."""
    script = tmp_path / "join_script.py"
    script.write_text(JOIN_SCRIPT)
    outer = TokenPool.create(2, style=style)  # type: ignore[arg-type]
    try:
        env = outer.environ(clean_environ())
        env["PYTHONPATH"] = str(REPO)
        proc = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            pass_fds=outer.pass_fds,
            capture_output=True,
            text=True,
            timeout=40,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        facts = json.loads(proc.stdout)
        assert facts["owner"] is False and facts["slots"] == 2 and facts["style"] == style
        assert facts["closed"] is True
        # The script's own implicit slot plus the one token: never more, and both used.
        assert peak_overlap([tuple(s) for s in facts["spans"]]) == 2
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("error", TokenCountWarning)
            assert outer.close() == 1


def test_default_pool_without_make_is_private_and_sized_to_the_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"):
        monkeypatch.delenv(name, raising=False)
    with JobserverExecutor() as executor:
        assert executor.pool.owner and executor.pool.slots == usable_cpus()
        assert executor.submit(square, 12).result() == 144
    assert executor.pool.closed


# -- large payloads and stalls ---------------------------------------------------------------


def test_large_results_and_arguments_arrive_intact() -> None:
    size = 16 << 20
    with executor_on(2) as (executor, _):
        assert executor.submit(big_bytes, size).result(timeout=PATIENCE) == b"\xa5" * size
        payload = os.urandom(1 << 20) * 16
        assert executor.submit(length, payload).result(timeout=PATIENCE) == size
        # Several at once, more than the workers: they queue, interleave and all arrive.
        futures = [executor.submit(big_bytes, 4 << 20) for _ in range(5)]
        assert all(len(f.result(timeout=PATIENCE)) == 4 << 20 for f in futures)


def test_serial_round_trips_do_not_stall() -> None:
    # PyPI jobserver 3.0.1 waits up to 1 s after each freed slot or large result; 40 serial
    # round trips there take many seconds. The bound here is generous on purpose.
    with executor_on(1) as (executor, _):
        executor.submit(square, 0).result()
        started = time.monotonic()
        for i in range(40):
            assert executor.submit(square, i).result(timeout=PATIENCE) == i * i
        for _ in range(5):
            assert len(executor.submit(big_bytes, 1 << 20).result(timeout=PATIENCE)) == 1 << 20
        assert time.monotonic() - started < 8.0


# -- frames on the pipes ---------------------------------------------------------------------


def pipe_capacity(fd: int) -> int:
    """Bytes a pipe holds before a writer blocks (Linux tells; elsewhere the usual 64 KiB)."""
    import fcntl

    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    return int(fcntl.fcntl(fd, get_size)) if get_size is not None else 1 << 16


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose read end is non-blocking, as the manager's ends of result pipes are."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    fds = [r, w]
    yield r, w
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def frame(body: bytes, kind: int = 1) -> bytes:
    return _HEADER.pack(len(body), kind) + body


def test_a_frame_delivered_in_many_small_pieces_is_reassembled(pipe: tuple[int, int]) -> None:
    r, w = pipe
    body = pickle.dumps((7, 0, list(range(300))))
    data = frame(body)
    reader = _FrameReader()
    assert reader.read(r) is None and not reader.partial  # nothing there yet
    # Cuts inside the header, across its end, and all through the body.
    sizes = itertools.cycle([1, 2, 3, 5, 8, 13])
    offset = 0
    while offset < len(data):
        piece = data[offset : offset + next(sizes)]
        offset += len(piece)
        os.write(w, piece)
        got = reader.read(r)
        if offset < len(data):
            assert got is None and reader.partial, offset
        else:
            assert got == (1, body) and not reader.partial
    # A second frame and a third one written together: one per call, in order.
    os.write(w, frame(b"second", 2) + frame(b"third", 3))
    assert reader.read(r) == (2, b"second")
    assert reader.read(r) == (3, b"third")
    assert reader.read(r) is None


def test_a_shorter_frame_after_a_longer_one_is_exactly_itself(pipe: tuple[int, int]) -> None:
    """The reader keeps its buffer for the next frame; no byte of the last one shows."""
    r, w = pipe
    reader = _FrameReader()
    os.write(w, frame(b"a longer frame body" * 50))
    assert reader.read(r) == (1, b"a longer frame body" * 50)
    os.write(w, frame(b"short", 2))
    assert reader.read(r) == (2, b"short")


def send_and_read(
    w: int, r: int, frames: list[tuple[int, bytes]]
) -> list[tuple[int, bytes, bytearray]]:
    """Send *frames* from a thread (they may outgrow the pipe); read them as the manager does.

    Returns per frame its kind, its body and the reader's kept buffer right after it.
    """
    writer = threading.Thread(target=lambda: [_send(w, kind, body) for kind, body in frames])
    writer.start()
    reader = _FrameReader()
    poller = select.poll()
    poller.register(r, select.POLLIN)
    got: list[tuple[int, bytes, bytearray]] = []
    while len(got) < len(frames):
        assert poller.poll(PATIENCE * 1000), "no data arrived"
        frame_read = reader.read(r)
        if frame_read is not None:
            got.append((frame_read[0], bytes(frame_read[1]), reader._buffer))
    writer.join()
    return got


def test_the_reader_keeps_a_large_buffer_only_while_results_are_large(
    pipe: tuple[int, int],
) -> None:
    """White box: the kept buffer is about the size of recent bodies, not the largest ever."""
    r, w = pipe
    big = os.urandom(300_000)
    frames = [(1, big), (1, big[:-1]), (0, b"tiny")]
    got = send_and_read(w, r, frames)
    assert [(kind, body) for kind, body, _ in got] == frames
    (_, _, first), (_, _, second), (_, _, last) = got
    assert len(first) >= len(big) and second is first  # reused, not allocated again
    assert len(last) < len(big)  # the large one went once results were small again


def test_a_body_above_the_kept_buffer_size_arrives_intact(pipe: tuple[int, int]) -> None:
    r, w = pipe
    big = os.urandom(1024) * (_KEPT_BUFFER_MAX // 1024) + b"!"
    got = send_and_read(w, r, [(1, big), (0, b"next")])
    assert [(kind, body) for kind, body, _ in got] == [(1, big), (0, b"next")]


def test_a_zero_length_body_is_a_whole_frame(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _FrameReader()
    os.write(w, frame(b"") + frame(b"after"))
    assert reader.read(r) == (1, b"")
    assert reader.read(r) == (1, b"after")


def test_end_of_file_inside_a_frame_is_reported(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _FrameReader()
    os.write(w, frame(b"whole") + frame(b"0123456789")[: _HEADER.size + 4])
    assert reader.read(r) == (1, b"whole")
    assert reader.read(r) is None and reader.partial
    os.close(w)
    with pytest.raises(EOFError):
        reader.read(r)


def test_end_of_file_inside_a_header_is_reported(pipe: tuple[int, int]) -> None:
    r, w = pipe
    reader = _FrameReader()
    os.write(w, b"\x00\x00\x00")
    assert reader.read(r) is None and reader.partial
    os.close(w)
    with pytest.raises(EOFError):
        reader.read(r)


@pytest.mark.parametrize("extra", [-_HEADER.size, 0, 1])
def test_frames_around_the_pipe_capacity_arrive_intact(pipe: tuple[int, int], extra: int) -> None:
    """A frame that exactly fills the pipe, a body of exactly its capacity, one byte more."""
    r, w = pipe
    size = pipe_capacity(w) + extra
    body = bytes(range(256)) * (size // 256) + b"\x5a" * (size % 256)
    writer = threading.Thread(target=_send, args=(w, 0, body))  # blocks once the pipe is full
    writer.start()
    reader = _FrameReader()
    poller = select.poll()
    poller.register(r, select.POLLIN)
    got = None
    while got is None:
        assert poller.poll(PATIENCE * 1000), "no data arrived"
        got = reader.read(r)
    writer.join()
    assert got[0] == 0 and len(got[1]) == size and got[1] == body
    assert reader.read(r) is None and not reader.partial


def test_send_finishes_a_frame_after_partial_writes(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """writev may take only part of what it was given (a signal, a full non-blocking pipe)."""
    r, w = pipe
    real_writev = os.writev
    calls = []

    def stingy_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        return real_writev(fd, [bytes(memoryview(buffers[0])[:3])])  # 3 bytes at most

    monkeypatch.setattr(os, "writev", stingy_writev)
    _send(w, 3, b"partial writes")
    monkeypatch.undo()
    # 9 header bytes in 3 calls (both parts offered), then 14 body bytes in 5 (the body only).
    assert calls == [2, 2, 2, 1, 1, 1, 1, 1]
    assert _FrameReader().read(r) == (3, b"partial writes")


def test_advance_drops_exactly_what_was_written() -> None:
    def left(parts: list[bytes], sent: int) -> list[bytes]:
        return [bytes(p) for p in _advance([memoryview(p) for p in parts], sent)]

    assert left([b"head", b"body"], 0) == [b"head", b"body"]
    assert left([b"head", b"body"], 3) == [b"d", b"body"]
    assert left([b"head", b"body"], 4) == [b"body"]
    assert left([b"head", b"body"], 6) == [b"dy"]
    assert left([b"head", b"body"], 8) == []
    assert left([b"head", b""], 4) == []  # an empty body is nothing left to write


def echo_bytes(data: bytes) -> bytes:
    return data


def test_results_and_arguments_of_every_size_around_the_pipe_capacity() -> None:
    """Some result frame here fills the pipe exactly, some body is exactly its capacity."""
    r, w = os.pipe()
    capacity = pipe_capacity(w)
    os.close(r)
    os.close(w)
    sizes = range(capacity - 80, capacity + 24)
    with executor_on(2) as (executor, _):
        futures = {n: executor.submit(big_bytes, n) for n in sizes}
        for n, future in futures.items():
            assert future.result(timeout=PATIENCE) == b"\xa5" * n, n
        payloads = {n: os.urandom(n) for n in (0, capacity - 60, capacity, capacity + 1)}
        echoed = {n: executor.submit(echo_bytes, data) for n, data in payloads.items()}
        for n, future in echoed.items():
            assert future.result(timeout=PATIENCE) == payloads[n], n


def run_script(
    argv: list[str], *, env: dict[str, str], timeout: float, hung: str
) -> tuple[subprocess.Popen[str], str, str]:
    """Run a test script in a session of its own: (process, stdout, stderr).

    The script's whole process group (its workers too) is killed when it is
    done; if it does not exit within *timeout* the test fails with *hung*.
    """
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the script and its stuck workers
        _, err = proc.communicate()
        pytest.fail(f"{hung}\n{err}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by the script
    return proc, out, err


MID_FRAME_SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, sys, time
    from pathlib import Path
    import makejobs._frames as frames_module
    from makejobs import Jobserver, JobserverExecutor, SubmissionDied, TokenPool

    _real_send = frames_module.send

    def _send_then_die(fd, kind, body):
        # Fault injection: a worker that dies while its result is on the wire. Workers
        # load this script as __mp_main__ before their first task, so this runs there.
        header = frames_module.HEADER.pack(len(body), kind)
        if b"cut-in-header" in body:
            os.write(fd, header[:3])
            os._exit(7)
        if b"cut-in-body" in body:
            data = header + body
            os.write(fd, data[: len(data) // 2])
            os._exit(7)
        _real_send(fd, kind, body)

    frames_module.send = _send_then_die

    def reply(value, gate=None):
        if gate is not None:
            Path(gate + ".started").touch()
            while not os.path.exists(gate):
                time.sleep(0.002)  # polls for the gate; the test never waits on a timer
        return value

    if __name__ == "__main__":
        faulthandler.dump_traceback_later(20, exit=True)  # show where it hangs
        gate = sys.argv[1]
        pool = TokenPool.create(2)
        executor = JobserverExecutor(2, jobserver=Jobserver(pool=pool))
        neighbour = executor.submit(reply, "neighbour", gate)
        while not os.path.exists(gate + ".started"):
            time.sleep(0.002)
        outcomes = []
        big = "cut-in-body" + "x" * (4 << 20)  # bigger than the pipe: it arrives in pieces
        for value in ("cut-in-header", big, "cut-in-body"):
            error = executor.submit(reply, value).exception(timeout=20)
            outcomes.append(
                type(error).__name__ + ":" + str(getattr(error, "exitcode", None))
            )
            assert not neighbour.done()
        Path(gate).touch()
        outcomes.append(neighbour.result(timeout=20))
        outcomes.append(executor.submit(reply, "after").result(timeout=20))
        executor.shutdown(wait=True)
        outcomes.append(pool.close())
        print(" ".join(map(str, outcomes)))
    """
)


def test_a_worker_that_dies_mid_frame_fails_only_its_own_task(tmp_path: Path) -> None:
    script = tmp_path / "mid_frame.py"
    script.write_text(MID_FRAME_SCRIPT)
    env = clean_environ()
    env["PYTHONPATH"] = str(REPO)
    proc, out, err = run_script(
        [sys.executable, str(script), str(tmp_path / "gate")],
        env=env,
        timeout=40,
        hung="the executor hung on a frame cut short",
    )
    assert proc.returncode == 0, err
    assert out.split() == [
        "SubmissionDied:7",
        "SubmissionDied:7",
        "SubmissionDied:7",
        "neighbour",
        "after",
        "1",  # every token back
    ], err


PRELOAD_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, os, sys
    if sys.argv[1] == "not-on-path":  # makejobs only on this process's own sys.path
        sys.path.insert(0, sys.argv[2])
    from multiprocessing import forkserver
    import psutil
    from makejobs import JobserverExecutor

    if __name__ == "__main__":
        context = multiprocessing.get_context("forkserver")
        if sys.argv[1] == "custom":
            context.set_forkserver_preload(["json"])
        elif sys.argv[1] == "running":  # a server started before, without our module
            process = context.Process(target=abs, args=(1,))
            process.start()
            process.join()
        elif sys.argv[1] == "shadowed":  # another makejobs in the current directory
            os.mkdir("makejobs")
        with JobserverExecutor(1, mp_context=context) as executor:
            assert executor.submit(abs, -3).result() == 3
            server = psutil.Process(forkserver._forkserver._forkserver_pid)
            print(json.dumps(server.cmdline()))
    """
)


@pytest.mark.parametrize(
    ("mode", "preload"),
    [
        ("default", ["__main__", "makejobs.executor"]),
        ("custom", ["json", "makejobs.executor"]),  # added to the caller's list, not replacing it
        ("running", ["__main__"]),  # a running server is left as it is
        # The server (Python < 3.12.8) imports on a fresh interpreter's path, not ours: it
        # would find another copy there, or none. The workers import makejobs themselves.
        ("shadowed", ["__main__"]),
        ("not-on-path", ["__main__"]),
    ],
)
def test_the_fork_server_preloads_the_worker_side(
    tmp_path: Path, mode: str, preload: list[str]
) -> None:
    """Workers are forks of the server: what it imported, they need not import again."""
    script = tmp_path / "preload.py"
    script.write_text(PRELOAD_SCRIPT)
    env = clean_environ()
    if mode == "not-on-path":
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(script), mode, str(REPO)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    command = json.loads(proc.stdout)[-1]  # main(listener, alive, PRELOAD, **data)
    assert "main(" in command and f", {preload!r}, " in command, command


# -- lifetime: interpreter exit and leaks ------------------------------------------------------

EXIT_TASKS = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    def work(path):
        time.sleep(0.1)
        Path(path).write_text(str(os.getpid()))
    """
)

EXIT_SCRIPT = textwrap.dedent(
    """
    import faulthandler, os, sys, time
    from pathlib import Path
    from makejobs import JobserverExecutor

    def work(path):
        time.sleep(0.1)
        Path(path).write_text(str(os.getpid()))

    if __name__ == "__main__":
        faulthandler.dump_traceback_later(12, exit=True)  # show where a hang is
        out, mode, where = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        if where == "module":
            from exit_tasks import work
        executor = JobserverExecutor(2)
        for i in range(6):
            executor.submit(work, str(out / f"done.{i}"))
        if mode == "nowait":
            executor.shutdown(wait=False)
        elif mode == "drop":
            del executor
        # Leave without shutdown: the interpreter's exit must finish the work.
    """
)


@pytest.mark.parametrize(
    ("mode", "where"),
    [("plain", "module"), ("plain", "main"), ("nowait", "main"), ("drop", "main")],
)
def test_interpreter_exit_with_pending_work(tmp_path: Path, mode: str, where: str) -> None:
    """Like ProcessPoolExecutor: exiting without shutdown still runs every submitted task,
    also when the function lives in the script itself (``__main__``)."""
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    (tmp_path / "exit_tasks.py").write_text(EXIT_TASKS)
    env = clean_environ()
    env["PYTHONPATH"] = str(REPO)
    proc, _, err = run_script(
        [sys.executable, str(script), str(tmp_path), mode, where],
        env=env,
        timeout=15,
        hung="the interpreter did not exit with pending work (hung)",
    )
    done = sorted(tmp_path.glob("done.*"))
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert len(done) == 6, err
    workers = {int(p.read_text()) for p in done}
    assert len(workers) <= 2
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in workers), timeout=5)


def test_fork_context_shuts_down(tmp_path: Path) -> None:
    """With mp_context=fork, shutdown must still see every worker exit."""
    script = tmp_path / "fork_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import faulthandler, multiprocessing, os, time
            from makejobs import JobserverExecutor, Jobserver, TokenPool

            def pid(_):
                time.sleep(0.05)
                return os.getpid()

            if __name__ == "__main__":
                faulthandler.dump_traceback_later(12, exit=True)  # show where it hangs
                pool = TokenPool.create(2)
                executor = JobserverExecutor(
                    2, jobserver=Jobserver(pool=pool),
                    mp_context=multiprocessing.get_context("fork"))
                assert len(set(executor.map(pid, range(6)))) <= 2
                executor.shutdown(wait=True)
                assert pool.close() == 1
                print("ok")
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("MAKEFLAGS", None)
    proc, out, err = run_script(
        [sys.executable, str(script)],
        env=env,
        timeout=15,
        hung="shutdown() hung with mp_context=fork",
    )
    assert proc.returncode == 0 and out.strip() == "ok", err


FORK_LOCK_SCRIPT = textwrap.dedent(
    """
    import faulthandler, multiprocessing, os
    from makejobs import JobserverExecutor, Jobserver, TokenPool

    def pid(_):
        return os.getpid()

    if __name__ == "__main__":
        faulthandler.dump_traceback_later(10, exit=True)  # show where it hangs
        pool = TokenPool.create(2)
        executor = JobserverExecutor(
            2, jobserver=Jobserver(pool=pool), mp_context=multiprocessing.get_context("fork"))
        # White box: another thread may hold the executor's lock at the instant a worker
        # is forked (the submitting thread, or a kill()); make that instant certain.
        lock = executor._manager._lock
        held = []

        def before():
            if lock.acquire(timeout=5):
                held.append(True)

        def after_in_parent():
            if held:
                held.pop()
                lock.release()

        os.register_at_fork(before=before, after_in_parent=after_in_parent)
        assert len(set(executor.map(pid, range(6)))) <= 2
        executor.shutdown(wait=True)
        assert pool.close() == 1
        print("ok")
    """
)


def test_forked_workers_do_not_run_the_parents_exit_hook(tmp_path: Path) -> None:
    """A worker forked while the executor's lock was held must still exit: it must not run
    the parent's at-exit shutdown of executors it inherited (their locks, threads and
    pipes belong to the parent)."""
    script = tmp_path / "fork_lock.py"
    script.write_text(FORK_LOCK_SCRIPT)
    env = clean_environ()
    env["PYTHONPATH"] = str(REPO)
    proc, out, err = run_script(
        [sys.executable, str(script)],
        env=env,
        timeout=15,
        hung="shutdown() hung: a forked worker never exited",
    )
    assert proc.returncode == 0 and out.strip() == "ok", err


def _exercise(executor: JobserverExecutor, gate: Gate) -> list[cf.Future[Any]]:
    futures: list[cf.Future[Any]] = [executor.submit(square, i) for i in range(10)]
    futures.append(executor.submit(signal.raise_signal, signal.SIGKILL))
    args = gate.task_args()
    futures.append(executor.submit(blocked, *args))
    gate.wait_started(args)
    futures.append(executor.submit(square, 99))
    return futures


@pytest.mark.parametrize("wait", [True, False])
def test_shutdown_leaves_no_fds_processes_or_threads(tmp_path: Path, wait: bool) -> None:
    fds, threads, children = open_fds(), threading.active_count(), child_pids()
    gate = Gate(tmp_path)
    pool = TokenPool.create(2)
    js = Jobserver(pool=pool)
    executor = JobserverExecutor(2, jobserver=js)
    futures = _exercise(executor, gate)
    assert threading.active_count() == threads + 1  # the one manager thread
    gate.open()
    executor.shutdown(wait=wait)
    if wait:
        assert all(f.done() for f in futures)
    else:
        wait_until(lambda: all(f.done() for f in futures))
        wait_until(lambda: threading.active_count() == threads)
    js.close()
    assert pool.close() == 1
    assert threading.active_count() == threads
    assert child_pids() == children
    assert open_fds() == fds


FRESH_SCRIPT = textwrap.dedent(
    """
    import json, multiprocessing, os, sys, threading
    from concurrent.futures import ProcessPoolExecutor
    from makejobs import JobserverExecutor

    def state():
        return sorted(os.listdir("/proc/self/fd")), [t.name for t in threading.enumerate()]

    if __name__ == "__main__":
        context = multiprocessing.get_context("forkserver")
        # The fork server and resource tracker live for the whole process (as they do for
        # ProcessPoolExecutor): start them first, so the baseline includes them.
        process = context.Process(target=abs, args=(1,))
        process.start()
        process.join()
        if sys.argv[1] == "makejobs":
            # So does makejobs' guardian process, started when a token is first held.
            from makejobs import guardian
            guardian.current()
        before = state()
        kind = ProcessPoolExecutor if sys.argv[1] == "ppe" else JobserverExecutor
        with kind(2, mp_context=context) as executor:
            list(executor.map(abs, range(10)))
        print(json.dumps({"before": before, "after": state()}))
    """
)


@pytest.mark.parametrize("kind", ["ppe", "makejobs"])
def test_a_fresh_process_is_back_to_its_baseline_after_shutdown(tmp_path: Path, kind: str) -> None:
    """In a process that never used multiprocessing's fd sharing before, shutdown leaves no
    extra thread and no extra fd, as with ProcessPoolExecutor (the control row)."""
    script = tmp_path / "fresh.py"
    script.write_text(FRESH_SCRIPT)
    env = clean_environ()
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(script), kind],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    facts = json.loads(proc.stdout)
    (fds_before, threads_before), (fds_after, threads_after) = facts["before"], facts["after"]
    assert threads_after == threads_before
    assert fds_after == fds_before


def test_repeated_create_and_shutdown_cycles_do_not_leak(tmp_path: Path) -> None:
    def cycle() -> None:
        # Builtins only: new workers need not import this test module.
        with executor_on(2) as (executor, _):
            assert list(executor.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]
            died = executor.submit(os._exit, 2).exception(timeout=PATIENCE)
            assert isinstance(died, SubmissionDied)

    cycle()
    fds, threads, children = open_fds(), threading.active_count(), child_pids()
    for _ in range(6):
        cycle()
    assert open_fds() == fds
    assert threading.active_count() == threads
    assert child_pids() == children


def test_an_executor_dropped_without_shutdown_leaks_no_fds() -> None:
    """ProcessPoolExecutor(2) created and dropped unused leaves no fd behind."""
    import gc

    pool = TokenPool.create(2)
    js = Jobserver(pool=pool)
    fds = open_fds()
    for _ in range(3):
        JobserverExecutor(2, jobserver=js)
        gc.collect()
    leaked = open_fds() - fds
    js.close()
    pool.close()
    assert not leaked, f"{len(leaked)} fds leaked"
