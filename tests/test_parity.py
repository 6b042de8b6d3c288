"""Jobserver and Future: parity with PyPI ``jobserver`` and with concurrent.futures (issue 17).

* the seed's spellings: ``Future.wait(timeout, signal=...)``, ``submit(..., callbacks=...)``,
  nested ``consume=0`` submissions from forked jobs, ``map`` length checks;
* ``Jobserver.map(..., buffersize=N)`` with Python 3.14's semantics and errors;
* ``makejobs.wait()`` and ``makejobs.as_completed()`` on Jobserver futures, with the
  contracts of concurrent.futures', across Jobservers, without a background thread;
* killed jobs are done for them, and a wait already waiting returns;
* the default start method never forks a process that has threads;
* ``repr()`` of Future and Jobserver.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import makejobs
from makejobs import (
    Blocked,
    CallbackRaised,
    Future,
    Jobserver,
    SubmissionDied,
)
from probes import Counted, wait_until

FAST = "fork"
PATIENCE = 60.0

pytestmark = pytest.mark.timeout(120)


# -- jobs (module level, so forkserver and spawn can pickle them) ---------------------------------


def identity(x: Any) -> Any:
    return x


def fail(message: str) -> None:
    raise ValueError(message)


def wait_for_byte(fd: int) -> str:
    """Hold the job (and its slot) until a byte arrives on the inherited pipe *fd*."""
    os.read(fd, 1)
    return "released"


def recurse_on_no_slot(js: Jobserver, depth: int) -> int:
    """The seed's nested fork-join with consume=0 (its test_design_consume)."""
    if depth == 0:
        return 0
    future = js.submit(recurse_on_no_slot, (js, depth - 1), consume=0, timeout=0)
    result: int = future.result(timeout=PATIENCE)
    return 1 + result


# -- helpers ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def gate() -> Iterator[tuple[int, Callable[[int], None]]]:
    """A pipe whose read end jobs block on (forked jobs inherit it), and release(n), which
    lets n of them go."""
    r, w = os.pipe()

    def release(n: int) -> None:
        os.write(w, b"x" * n)

    try:
        yield r, release
    finally:
        os.close(r)
        os.close(w)


def exited_unreaped(pid: int) -> bool:
    """True once our child *pid* has exited, while nobody has reaped it yet."""
    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run *fn* in a daemon thread; its result or exception lands in the dict."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


# -- 1. the seed's spellings ---------------------------------------------------------------------


@pytest.mark.parametrize("form", [signal.SIGTERM, int(signal.SIGTERM)])
def test_wait_with_a_signal_sends_it_then_waits(form: int) -> None:
    with gate() as (r, _), Jobserver(FAST, slots=2) as js:
        future = js.submit(wait_for_byte, (r,))
        assert future.wait(timeout=PATIENCE, signal=form)
        with pytest.raises(SubmissionDied, match="SIGTERM"):
            future.result(0)
        # Done: nothing is sent any more (the pid may be somebody else's), and it is no error.
        assert future.wait(timeout=0, signal=signal.SIGKILL)
        assert future.exitcode == -signal.SIGTERM


def test_a_signal_need_not_end_the_job() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=2) as js:
        future = js.submit(wait_for_byte, (r,))
        assert not future.wait(timeout=0, signal=signal.SIGSTOP)
        wait_until(
            lambda: psutil.Process(future.pid).status() == psutil.STATUS_STOPPED, timeout=PATIENCE
        )
        release(1)  # it cannot read it while stopped
        assert future.wait(timeout=PATIENCE, signal=signal.SIGCONT)
        assert future.result(0) == "released"


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (max(signal.valid_signals()) + 1, OSError),
        (-1, OSError),
        ("TERM", TypeError),
        (True, TypeError),
    ],
)
def test_a_bad_signal_is_refused_done_or_not(bad: Any, error: type[Exception]) -> None:
    with gate() as (r, release), Jobserver(FAST, slots=2) as js:
        running = js.submit(wait_for_byte, (r,))
        done = js.submit(identity, (1,))
        assert done.result(timeout=PATIENCE) == 1
        for future in (running, done):
            with pytest.raises(error):
                future.wait(timeout=0, signal=bad)
            with pytest.raises(error):
                future.kill(bad)
        assert not running.done()  # nothing was sent
        release(1)
        assert running.result(timeout=PATIENCE) == "released"


def test_submit_with_callbacks_false_runs_none_but_still_frees_slots() -> None:
    calls: list[str] = []
    with Jobserver(FAST, slots=1) as js:
        first = js.submit(identity, (1,))
        first.when_done(calls.append, "first")
        first.when_done(fail, "callback")
        wait_until(lambda: exited_unreaped(first.pid), timeout=PATIENCE)
        # The only slot is first's until it is reaped: callbacks=False still reaps it.
        second = js.submit(identity, (2,), timeout=0, callbacks=False)
        assert calls == []
        with pytest.raises(CallbackRaised):
            second.result(timeout=PATIENCE)
        assert calls == ["first"]
        assert second.result(timeout=PATIENCE) == 2
        with pytest.raises(TypeError, match="callbacks must be True or False"):
            js.submit(identity, (3,), callbacks=1)  # type: ignore[arg-type]


def test_a_forked_job_submits_on_no_slot_at_any_depth() -> None:
    """The seed's consume=0 recursion: a forked job's first submission without a slot used
    to wait forever on a lock its parent held when it forked."""
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(recurse_on_no_slot, (js, 4))
        assert future.result(timeout=PATIENCE) == 4


def test_map_without_inputs_makes_no_calls() -> None:
    """As PyPI jobserver's map(fn) and concurrent.futures' Executor.map(fn) do."""
    with Jobserver(FAST, slots=1) as js:
        assert list(js.map(identity)) == []
        assert list(js.map(identity, [], [])) == []


def test_map_refuses_inputs_of_different_lengths_at_once_when_it_can() -> None:
    with Jobserver(FAST, slots=2) as js:
        with pytest.raises(ValueError, match=r"different lengths \(3 and 1\)"):
            js.map(identity, [(1,), (2,), (3,)], [{}])
        lazy = js.map(identity, iter([(1,), (2,)]), iter([{}]))  # no lengths: found on the way
        with pytest.raises(ValueError, match="different lengths"):
            list(lazy)


# -- 2. map(buffersize=) -------------------------------------------------------------------------

#: (buffersize, error, message): what Python 3.14's Executor.map says, here and for
#: JobserverExecutor.map (test_executor_parity.py).
BAD_BUFFERSIZES = [
    ("2", TypeError, "buffersize must be an integer or None"),
    (2.0, TypeError, "buffersize must be an integer or None"),
    (0, ValueError, "buffersize must be None or > 0"),
    (-1, ValueError, "buffersize must be None or > 0"),
]


@pytest.mark.parametrize(("buffersize", "error", "message"), BAD_BUFFERSIZES)
def test_map_refuses_a_bad_buffersize_as_python_3_14_does(
    buffersize: Any, error: type[Exception], message: str
) -> None:
    with Jobserver(FAST, slots=1) as js, pytest.raises(error, match=f"^{re.escape(message)}$"):
        js.map(identity, [(1,)], buffersize=buffersize)


@pytest.mark.parametrize(("buffersize", "chunksize"), [(1, 1), (3, 1), (2, 2)])
def test_map_with_buffersize_computes_that_many_ahead_of_the_consumer(
    buffersize: int, chunksize: int
) -> None:
    """At most *buffersize* chunks beyond the one being consumed are taken from the input
    (and run), as with Python 3.14's Executor.map; so an endless input works."""
    with Jobserver(FAST, slots=buffersize + 2) as js:  # slots never hold it back here
        source = Counted((i,) for i in itertools.count())
        results = js.map(identity, source, chunksize=chunksize, buffersize=buffersize)
        assert source.taken == 0  # nothing before the first next()
        for n in range(1, 8):
            assert next(results) == n - 1
            # The chunk of the n-th result, and *buffersize* chunks after it.
            assert source.taken == ((n - 1) // chunksize + 1 + buffersize) * chunksize
        results.close()  # type: ignore[attr-defined]
        assert list(js.map(identity, [(i,) for i in range(5)], buffersize=2)) == list(range(5))


# -- 3. waiting on many futures ------------------------------------------------------------------


def test_wait_returns_when_asked() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=3) as js:
        blocked = js.submit(wait_for_byte, (r,))
        quick = js.submit(identity, (1,))
        done, not_done = makejobs.wait(
            [blocked, quick, quick], return_when=makejobs.FIRST_COMPLETED
        )
        assert (done, not_done) == ({quick}, {blocked})
        # A timeout is no error: what is not done is in not_done.
        result = makejobs.wait([blocked, quick], timeout=0.05)
        assert result.done == {quick} and result.not_done == {blocked}
        failing = js.submit(fail, ("boom",))
        done, _ = makejobs.wait([blocked, failing], return_when=cf.FIRST_EXCEPTION)
        assert done == {failing}
        release(1)
        done, not_done = makejobs.wait([blocked, quick, failing])
        assert done == {blocked, quick, failing} and not not_done
        # FIRST_EXCEPTION with no exception: all of them.
        assert makejobs.wait([quick], return_when=makejobs.FIRST_EXCEPTION).done == {quick}
        assert makejobs.wait([]) == (set(), set())


def test_wait_and_as_completed_refuse_bad_arguments() -> None:
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(identity, (1,))
        with pytest.raises(ValueError, match="return_when"):
            makejobs.wait([future], return_when="SOMETIMES")
        with pytest.raises(ValueError, match="timeout"):
            makejobs.wait([future], timeout=-1)
        with pytest.raises(TypeError, match="not a mix"):
            makejobs.wait([future, cf.Future()])
        with pytest.raises(TypeError, match="not a mix"):
            makejobs.as_completed([future, "nonsense"])  # type: ignore[list-item]
        assert future.result(timeout=PATIENCE) == 1


def test_standard_futures_alone_are_handed_to_concurrent_futures() -> None:
    with cf.ThreadPoolExecutor(2) as executor:
        futures = [executor.submit(identity, i) for i in range(3)]
        assert makejobs.wait(futures, timeout=PATIENCE).done == set(futures)
        assert set(makejobs.as_completed(futures, timeout=PATIENCE)) == set(futures)


def test_as_completed_yields_each_once_done_ones_first() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=3) as js:
        blocked = js.submit(wait_for_byte, (r,))
        quick = js.submit(identity, (1,))
        assert quick.result(timeout=PATIENCE) == 1
        iterator = makejobs.as_completed([blocked, quick, blocked, quick])
        assert next(iterator) is quick
        release(1)
        assert next(iterator) is blocked
        with pytest.raises(StopIteration):
            next(iterator)


def test_as_completed_times_out_from_the_call_and_says_how_many_are_unfinished() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=3) as js:
        blocked = js.submit(wait_for_byte, (r,))
        quick = js.submit(identity, (1,))
        assert quick.result(timeout=PATIENCE) == 1
        iterator = makejobs.as_completed([blocked, quick], timeout=0.2)
        assert next(iterator) is quick
        with pytest.raises(TimeoutError, match=r"^1 \(of 2\) futures unfinished$") as info:
            next(iterator)
        assert isinstance(info.value, Blocked)
        release(1)
        assert blocked.result(timeout=PATIENCE) == "released"


def test_as_completed_survives_a_callback_that_raises() -> None:
    """Unlike a generator, the iterator goes on after next() raised CallbackRaised."""
    with Jobserver(FAST, slots=2) as js:
        first = js.submit(identity, (1,))
        first.when_done(fail, "callback")
        second = js.submit(identity, (2,), callbacks=False)  # first's may be due already
        iterator = makejobs.as_completed([first, second])
        got: list[Future[Any]] = []
        with pytest.raises(CallbackRaised):
            got.extend(iterator)
        got.extend(iterator)
        assert sorted(got, key=id) == sorted([first, second], key=id)


def test_one_wait_covers_the_jobs_of_several_jobservers() -> None:
    """A thread waiting for futures of two Jobservers wakes for whichever finishes."""
    with gate() as (r, release), Jobserver(FAST, slots=2) as one, Jobserver(FAST, slots=2) as two:
        blocked = one.submit(wait_for_byte, (r,))
        later = two.submit(wait_for_byte, (r,))
        waiter, out = in_thread(
            lambda: makejobs.wait([blocked, later], return_when=makejobs.FIRST_COMPLETED)
        )
        wait_until(
            lambda: bool(one._engine.waiters) and bool(two._engine.waiters), timeout=PATIENCE
        )
        release(1)  # one of the two jobs gets the byte
        waiter.join(PATIENCE)
        assert not waiter.is_alive(), "wait() did not wake for the other Jobserver's job"
        assert len(out["result"].done) == 1
        release(1)
        assert [f.result(timeout=PATIENCE) for f in (blocked, later)] == ["released"] * 2


def test_concurrent_futures_wait_names_what_to_use_instead() -> None:
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(identity, (1,))
        with pytest.raises(AttributeError, match=r"makejobs\.wait\(\)"):
            cf.wait([future])  # type: ignore[list-item]
        assert future.result(timeout=PATIENCE) == 1


def test_a_job_finished_by_another_thread_just_before_a_wait_listens_is_seen() -> None:
    """Another thread completes the job after this one saw it running, but before it is
    listed as a waiter: nobody will wake it, so it must notice by itself."""
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(identity, (1,))
        engine = js._engine
        real_wake_pipe = engine._wake_pipe

        def late_wake_pipe() -> Any:
            engine._wake_pipe = real_wake_pipe  # type: ignore[method-assign]
            other = threading.Thread(target=future.wait)
            other.start()
            other.join(PATIENCE)
            return real_wake_pipe()

        engine._wake_pipe = late_wake_pipe  # type: ignore[method-assign]
        waiter, out = in_thread(future.wait)
        waiter.join(PATIENCE)
        if waiter.is_alive():
            engine._wake_others()  # let it go before failing
        assert not waiter.is_alive(), "wait() missed a job another thread completed"
        assert out == {"result": True}


# -- 4. killed means done ---------------------------------------------------------------------------


def test_killed_jobs_are_done_for_a_wait_already_waiting() -> None:
    with gate() as (r, _), Jobserver(FAST, slots=3) as js:
        futures = [js.submit(wait_for_byte, (r,)) for _ in range(2)]
        waiter, out = in_thread(lambda: makejobs.wait(futures))
        wait_until(lambda: bool(js._engine.waiters), timeout=PATIENCE)
        futures[0].kill(signal.SIGTERM)
        futures[1].kill(signal.SIGKILL)
        waiter.join(PATIENCE)
        assert not waiter.is_alive(), "wait() never returned for killed jobs"
        assert out["result"].done == set(futures)
        assert set(makejobs.as_completed(futures, timeout=0)) == set(futures)
        for future in futures:
            with pytest.raises(SubmissionDied):
                future.result(0)


# -- 5. the default start method -----------------------------------------------------------------

DEFAULT_START_METHOD = """
import os, threading, warnings
from makejobs import Jobserver

def main():
    # A fork() of a process that has threads warns on 3.12+.
    warnings.simplefilter("error", DeprecationWarning)
    with Jobserver(slots=2) as js:
        assert "'auto'" in repr(js), repr(js)
        assert js.context.get_start_method() == "fork"
        assert js.submit(os.getppid).result() == os.getpid()  # forked by us
        release = threading.Event()
        helper = threading.Thread(target=release.wait)
        helper.start()
        assert js.context.get_start_method() == "forkserver"
        assert js.submit(os.getppid).result() != os.getpid()  # by the fork server
        try:
            js.submit(lambda: 1)
        except TypeError as e:
            assert "context='fork'" in str(e), e
        else:
            raise AssertionError("a lambda went to the fork server")
        release.set()
        helper.join()
    print("ok")

if __name__ == "__main__":
    main()
"""


def test_the_default_start_method_forks_only_while_there_is_one_thread(tmp_path: Path) -> None:
    # A fresh interpreter: this one may have threads of other tests.
    script = tmp_path / "default_start_method.py"
    script.write_text(textwrap.dedent(DEFAULT_START_METHOD))
    done = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env={**os.environ, "PYTHONPATH": str(Path(makejobs.__file__).parents[1])},
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_auto_by_name_nests() -> None:
    with Jobserver("auto", slots=2) as js:
        assert js.submit(recurse_on_no_slot, (js, 2)).result(timeout=PATIENCE) == 2
        assert "'auto'" in repr(js)


# -- 6. repr ------------------------------------------------------------------------------------


def test_future_repr_says_state_pid_exit_code_outcome_and_callbacks() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=3) as js:
        running = js.submit(wait_for_byte, (r,))
        running.when_done(identity, 1)
        assert repr(running) == f"<Future running pid={running.pid} callbacks=1>"
        release(1)
        running.result(timeout=PATIENCE)
        assert (
            repr(running) == f"<Future done pid={running.pid} exitcode=0 returned str callbacks=0>"
        )
        failed = js.submit(fail, ("boom",))
        assert failed.wait(PATIENCE)
        assert (
            repr(failed)
            == f"<Future done pid={failed.pid} exitcode=0 raised ValueError callbacks=0>"
        )
        killed = js.submit(wait_for_byte, (r,))
        assert killed.wait(PATIENCE, signal=signal.SIGKILL)
        assert repr(killed) == f"<Future done pid={killed.pid} exitcode=-9 died callbacks=0>"


def test_jobserver_repr_says_start_method_state_running_jobs_and_pool() -> None:
    with gate() as (r, release), Jobserver(FAST, slots=2) as js:
        future = js.submit(wait_for_byte, (r,))
        assert repr(js) == f"<Jobserver 'fork' open running=1 pool={js.pool!r}>"
        release(1)
        future.result(timeout=PATIENCE)
    assert repr(js).startswith("<Jobserver 'fork' closed running=0 pool=<TokenPool ")
