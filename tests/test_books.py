"""The books are exact: never more than N jobs, every token back exactly once (issue 11).

Interruptions (a KeyboardInterrupt can arrive at any bytecode), handles closed twice,
close() racing submit(), copies and pickles of a Jobserver, multi-slot jobs, SIGCHLD
ignored, blocking shared pipes, and the small contract breaks of the same issue. The
random-signal storm and the killed parent under real make are in integration/.
"""

from __future__ import annotations

import contextlib
import copy
import dis
import os
import pickle
import signal
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import makejobs._core as core_module
import makejobs._engine as engine_module
import makejobs._job as job_module
import makejobs.future as future_module
import makejobs.token as token_module
from forking import wait_for_exit
from inherited import inherited_pipe
from makejobs import Blocked, Jobserver, TokenPool, _posix
from makejobs.errors import TokenCountWarning
from spans import peak_overlap, span

# -- jobs (module level: spawn and forkserver import them) ---------------------------------


def identity(x: Any) -> Any:
    return x


def wait_on(fd: int) -> str:
    """Run until a byte can be read from the inherited pipe *fd* (the test's go signal)."""
    os.read(fd, 1)
    return "released"


@contextlib.contextmanager
def gate() -> Iterator[tuple[int, Callable[[int], None]]]:
    """A pipe whose read end jobs wait on; ``release(n)`` lets *n* of them finish."""
    r, w = os.pipe()
    os.set_inheritable(r, True)
    try:
        yield r, lambda n: os.write(w, b"x" * n) and None
    finally:
        _posix.close_quietly(r, w)


def exact_close(pool: TokenPool) -> int | None:
    """Close a pool this test created; every token must have come back."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", TokenCountWarning)
        return pool.close()


# -- A1: an interrupt while the Jobserver forks a job ---------------------------------------

_interrupt_next_fork: list[int] = []


def _interrupt_before_fork() -> None:
    # Registered once for the whole test process; armed by the test that wants it. ^C
    # reaches a one-thread program's only thread, which holds it off while it forks; sent
    # to the process, another thread left by an earlier test could take it (see the
    # README's limits on interrupts in programs with several threads), so it goes to the
    # main thread, as ^C does to a program that has no other.
    if _interrupt_next_fork and _interrupt_next_fork[0] == os.getpid():
        _interrupt_next_fork.clear()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


os.register_at_fork(before=_interrupt_before_fork)


def test_an_interrupt_while_forking_never_gives_back_a_running_jobs_slot() -> None:
    """The SIGINT that arrives while fork() holds signals off is raised once the job is
    registered: the job runs on its slot, and no slot is given back twice."""
    pool = TokenPool.create(2)
    with gate() as (go, release), Jobserver("fork", pool=pool) as js:
        first = js.submit(wait_on, (go,))
        _interrupt_next_fork.append(os.getpid())
        with pytest.raises(KeyboardInterrupt):
            js.submit(wait_on, (go,))
        # Both jobs run, on both slots: a third cannot start.
        assert not pool.implicit_free and pool.available() == 0
        assert len(js._engine.running) == 2
        with pytest.raises(Blocked):
            js.submit(identity, (3,), timeout=0)
        release(2)
        assert first.result(timeout=60) == "released"  # no "already released" here
        js._engine.wait_all()
        assert pool.implicit_free and pool.available() == 1
    assert exact_close(pool) == 1


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_started_job_interrupted_before_it_is_registered_is_stopped(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An interrupt after multiprocessing started the job, before bookkeeping: the job
    must not run on slots about to go back; it is killed and reaped."""
    pool = TokenPool.create(2)
    started: list[int] = []
    with Jobserver(method, pool=pool) as js:
        assert js.submit(identity, (1,)).result(timeout=60) == 1  # the fork server is up
        real = job_module.MultiprocessingProcess

        def started_then_interrupted(process: Any) -> Any:
            started.append(process.pid)
            raise KeyboardInterrupt

        monkeypatch.setattr(job_module, "MultiprocessingProcess", started_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            js.submit(span, (30,))
        monkeypatch.setattr(job_module, "MultiprocessingProcess", real)
        assert started and wait_for_exit(started[0], 30)
        assert pool.implicit_free and pool.available() == 1
        assert js.submit(identity, (2,)).result(timeout=60) == 2
    assert exact_close(pool) == 1


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_job_whose_start_was_interrupted_before_it_was_handed_back_is_found_and_stopped(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process exists but multiprocessing never handed it back (an interrupt inside
    Process.start()): it is found by the result pipe it holds, and stopped."""
    import multiprocessing.process

    pool = TokenPool.create(2)
    hidden: list[int] = []
    real_start = multiprocessing.process.BaseProcess.start

    def start_then_lose_it(process: Any) -> None:
        real_start(process)
        hidden.append(process.pid)
        process._popen = None  # as if interrupted before the assignment
        multiprocessing.process._children.discard(process)  # type: ignore[attr-defined]
        raise KeyboardInterrupt

    with Jobserver(method, pool=pool) as js:
        assert js.submit(identity, (1,)).result(timeout=60) == 1
        monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", start_then_lose_it)
        with pytest.raises(KeyboardInterrupt):
            js.submit(span, (30,))
        monkeypatch.undo()
        assert hidden and wait_for_exit(hidden[0], 30)
        assert pool.implicit_free and pool.available() == 1
        assert js.submit(identity, (2,)).result(timeout=60) == 2
    assert exact_close(pool) == 1


# -- A2: an exception at every line of the critical functions -------------------------------


def _lines(function: Callable[..., Any]) -> list[int]:
    code: types.CodeType = function.__code__
    lines = sorted({line for _, line in dis.findlinestarts(code) if line is not None})
    return [line for line in lines if line > code.co_firstlineno]


class _RaiseAt:
    """A tracer that raises KeyboardInterrupt the first time *code* reaches *line*,
    in this process only (a forked job inherits the tracer, and must run on)."""

    def __init__(self, code: types.CodeType, line: int) -> None:
        self.code = code
        self.line = line
        self.fired = False
        self.pid = os.getpid()

    def __call__(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if event == "call" and frame.f_code is self.code and not self.fired:
            return self._local
        return None

    def _local(self, frame: types.FrameType, event: str, arg: object) -> Any:
        if (
            event == "line"
            and frame.f_lineno == self.line
            and not self.fired
            and os.getpid() == self.pid
        ):
            self.fired = True
            raise KeyboardInterrupt(f"injected at {self.code.co_name}:{self.line}")
        return self._local


CRITICAL: list[Callable[..., Any]] = [
    TokenPool.try_acquire,
    TokenPool.release,
    core_module.Core.take,
    core_module.Core.give_back,
    token_module.Escrow.give_back,
    Jobserver.submit,
    Jobserver._admit,
    Jobserver._launch,
    job_module.fork,
    engine_module.Engine.service,
    engine_module.Engine.finish,
    engine_module.Engine.progress,
    engine_module.Engine.reclaim,
    future_module.Future._try_advance,
    future_module.Future._advance,
    future_module.Future._advance_in_memory,
    future_module.Future._settle_outcome,
    future_module.Future._tokens_back,
    future_module.Future.result,
    job_module.ForkedProcess.poll,
    job_module.Output.read,
    job_module.Output.drain,
    job_module.Output.close,
]


def _scenario(js: Jobserver, results: dict[int, Any]) -> None:
    """Three jobs on two slots, collected as they finish."""
    futures = {i: js.submit(identity, (i,)) for i in range(3)}
    for i, future in futures.items():
        results[i] = future.result(timeout=60)


@pytest.mark.parametrize("function", CRITICAL, ids=[f.__qualname__ for f in CRITICAL])
def test_an_exception_at_any_line_keeps_the_books_exact(function: Callable[..., Any]) -> None:
    """Deterministic injection: for every line of *function*, a run in which a
    KeyboardInterrupt is raised there the first time it is reached. Afterwards every
    job is reaped, every token is back exactly once, and every job whose future the
    scenario got still has its result."""
    for line in _lines(function):
        pool = TokenPool.create(2)
        results: dict[int, Any] = {}
        injector = _RaiseAt(function.__code__, line)
        # An exception injected into a `finally` can keep it from restoring the
        # signal mask, which no real signal can do (they are held off there);
        # restore it, or every process this one starts later inherits it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # tokens collected, not lost
            js = Jobserver("fork", pool=pool)
            sys.settrace(injector)
            try:
                _scenario(js, results)
            except KeyboardInterrupt:
                pass
            finally:
                sys.settrace(None)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # Whatever the interruption left half done, later calls finish it.
            again: dict[int, Any] = {}
            _scenario(js, again)
            js.close()
        where = f"{function.__qualname__}:{line} (fired: {injector.fired})"
        assert again == {0: 0, 1: 1, 2: 2}, where
        assert all(results[i] == i for i in results), where
        assert pool.implicit_free, where
        with warnings.catch_warnings():
            warnings.simplefilter("error", TokenCountWarning)
            assert pool.close() == 1, where


def test_a_token_dropped_unreleased_goes_back_with_a_resource_warning() -> None:
    pool = TokenPool.create(3)
    kept = pool.acquire()
    with pytest.warns(ResourceWarning, match="garbage collected without being released"):
        pool.acquire()  # dropped at once, as by an interrupted caller
        assert pool.available() == 2  # the next call on the pool gave it back
    assert pool.held == 0
    released = pool.acquire()
    pool.release(released)
    del released  # a released token going away does nothing at all
    pool.release(kept)
    assert exact_close(pool) == 2


# -- B4: every join owns what it closes -----------------------------------------------------


def test_closing_a_join_twice_never_closes_the_pool_a_jobserver_uses() -> None:
    pool = TokenPool.create(3)
    env = pool.environ({})
    mine = TokenPool.from_environ(env)
    theirs = TokenPool.from_environ(env)
    assert mine is not None and theirs is not None
    with Jobserver("fork", pool=theirs) as js:
        mine.close()
        mine.close()  # idempotent for this handle, and only for it
        spans = [f.result(timeout=60) for f in [js.submit(span, (0.05,)) for _ in range(6)]]
        assert not theirs.closed
    assert peak_overlap(spans) <= 3
    theirs.close()
    assert exact_close(pool) == 2


# -- B5: close() racing submit() --------------------------------------------------------------


def _submit_until_closed(
    js: Jobserver, started: threading.Barrier, futures: list[Any], errors: list[BaseException]
) -> None:
    started.wait(30)
    for i in range(40):
        try:
            futures.append(js.submit(identity, (i,), timeout=30))
        except RuntimeError:
            return  # closed: the documented answer
        except BaseException as e:
            errors.append(e)
            return


def test_close_racing_submits_leaves_no_job_running_and_touches_no_fd() -> None:
    for _ in range(8):
        pool = TokenPool.create(3)
        js = Jobserver("fork", pool=pool)
        futures: list[Any] = []
        errors: list[BaseException] = []
        started = threading.Barrier(4)
        threads = [
            threading.Thread(target=_submit_until_closed, args=(js, started, futures, errors))
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        started.wait(30)
        js.close()
        # After close() returns no job of this Jobserver runs.
        assert all(f.done() for f in list(futures))
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert all(f.done() for f in futures)
        assert all(f.result() == f.result() for f in futures)
        assert exact_close(pool) == 2


# -- B6: copies and pickles share the one implicit slot -----------------------------------------


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_jobserver_shares_the_pool_and_its_implicit_slot(how: str) -> None:
    for style in ("pipe", "fifo"):
        pool = TokenPool.create(3, style=style)  # type: ignore[arg-type]
        with Jobserver("fork", pool=pool) as js:
            twin = copy.deepcopy(js) if how == "deepcopy" else pickle.loads(pickle.dumps(js))
            assert twin.pool._core is js.pool._core
            futures = [j.submit(span, (0.05,)) for j in (js, twin, js, twin) for _ in range(2)]
            spans = [f.result(timeout=60) for f in futures]
            twin.close()
        assert peak_overlap(spans) <= 3, style
        assert exact_close(pool) == 2


# -- B7: multi-slot jobs -------------------------------------------------------------------------


def test_asking_for_more_slots_than_the_pool_has_is_an_error_at_once() -> None:
    with Jobserver("fork", slots=2) as js:
        with pytest.raises(ValueError, match="more slots than the pool has"):
            js.submit(identity, (1,), consume=3)
        assert js.pool.implicit_free and js.pool.available() == 1


def test_multi_slot_jobs_never_hold_part_of_their_slots_while_waiting() -> None:
    """Two submitters of 2-slot jobs on a 3-slot pool: neither may sit on one slot
    waiting for the other's, so both finish, and no more than 3 slots are ever held."""
    pool = TokenPool.create(3)
    with gate() as (go, release), Jobserver("fork", pool=pool) as js:
        blocker = js.submit(wait_on, (go,))  # holds one slot until released
        done: list[Any] = []

        def two_slot_jobs() -> None:
            done.extend(js.submit(span, (0.05,), consume=2).result(60) for _ in range(3))

        threads = [threading.Thread(target=two_slot_jobs) for _ in range(2)]
        for thread in threads:
            thread.start()
        # With the blocker holding one slot only one 2-slot job fits at a time.
        for thread in threads:
            thread.join(60)
        assert len(done) == 6
        release(1)
        assert blocker.result(timeout=60) == "released"
        assert peak_overlap(done) == 1  # two 2-slot jobs never ran beside the blocker
    assert exact_close(pool) == 2


# -- C8: SIGCHLD ignored -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_jobs_complete_with_sigchld_ignored(method: str) -> None:
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with Jobserver(method, slots=2) as js:
            assert [js.submit(identity, (i,)).result(timeout=60) for i in range(3)] == [0, 1, 2]
            assert js.pool.implicit_free and js.pool.available() == 1
    finally:
        signal.signal(signal.SIGCHLD, old)


# -- C10: a blocking shared pipe that cannot be reopened ----------------------------------------


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "helper thread"])
def test_a_blocking_shared_pipe_never_blocks_a_caller_past_its_timeout(
    splice: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """make 4.2 and 3.81 share a *blocking* read end; where /proc cannot give a private
    one, no call may block on it past its timeout, and its flags must stay as they are.
    Linux moves tokens with splice(2), which never blocks; without it (other systems)
    a helper thread reads."""
    monkeypatch.setattr(_posix, "_reopen", lambda fd, flags: None)
    if not splice:
        monkeypatch.setattr(_posix, "_splice", None)
        monkeypatch.setattr(_posix, "ATOMIC_MOVES", False)
    r, w = inherited_pipe()
    os.write(w, b"+")  # -j2: one token
    flags_before = os.get_blocking(r)
    assert flags_before  # blocking, as make 4.2 leaves it
    pool = TokenPool.from_makeflags(f" -j2 --jobserver-auth={r},{w}")
    try:
        implicit = pool.try_acquire()
        token = pool.try_acquire()
        assert implicit is not None and implicit.implicit and token is not None
        # Another client took the last token: nothing is free.
        assert pool.try_acquire() is None
        with pytest.raises(Blocked):
            pool.acquire(timeout=0.2)
        with pytest.raises(Blocked), Jobserver("fork", pool=pool) as js:
            js.submit(identity, (1,), timeout=0)
        # A token given back by another client reaches a waiter.
        pool.release(token)
        waiter = pool.acquire(timeout=30)
        assert not waiter.implicit
        pool.release(waiter)
        pool.release(implicit)
        assert os.get_blocking(r) == flags_before
    finally:
        pool.close()
        os.close(r)
        os.close(w)


# -- D14: a sleep_fn's deadline ---------------------------------------------------------------


def test_a_sleep_fn_asking_to_be_asked_after_the_deadline_is_blocked_at_it() -> None:
    calls: list[float] = []

    def later() -> float:
        calls.append(time.monotonic())
        return 2.0

    with Jobserver("fork", slots=2) as js:
        start = time.monotonic()
        with pytest.raises(Blocked):
            js.submit(identity, (1,), sleep_fn=later, timeout=0.5)
        assert len(calls) == 1  # not asked again at the deadline
        assert calls[0] - start < 0.5
        assert js.pool.implicit_free and js.pool.available() == 1


def test_an_admission_answered_after_the_deadline_is_too_late() -> None:
    answers = iter([0.1, None])

    def slow() -> float | None:
        time.sleep(0.3)  # the criterion itself takes that long to answer
        return next(answers)

    with Jobserver("fork", slots=2) as js:
        with pytest.raises(Blocked):
            js.submit(identity, (1,), sleep_fn=slow, timeout=0.5)
        assert js.pool.implicit_free and js.pool.available() == 1
        assert not js._engine.running


# -- D16: when_done inside a callback ---------------------------------------------------------


def test_when_done_inside_a_callback_runs_right_after_that_callback() -> None:
    seen: list[str] = []
    with Jobserver("fork", slots=2) as js:
        first = js.submit(identity, (1,))
        second = js.submit(identity, (2,))
        assert second.result(timeout=60) == 2

        def outer() -> None:
            second.when_done(seen.append, "inner")
            seen.append("outer returned" if seen == [] else "inner ran first")

        first.when_done(outer)
        assert first.result(timeout=60) == 1
        assert seen == ["outer returned", "inner"]
        second.when_done(seen.append, "outside a callback")
        assert seen[-1] == "outside a callback"  # ran before when_done returned


# -- D17: args that are not a list of arguments --------------------------------------------------


@pytest.mark.parametrize("args", ["abc", b"ab", 3, None])
def test_args_that_are_no_list_of_arguments_are_a_type_error(args: Any) -> None:
    with Jobserver("fork", slots=2) as js:
        with pytest.raises(TypeError, match="args must be a tuple"):
            js.submit(identity, args)
        assert js.pool.implicit_free and js.pool.available() == 1
        assert js.submit(identity, ["ok"]).result(timeout=60) == "ok"


# -- a handle collected inside a pool call ------------------------------------------------------


def test_handle_dropped_while_its_pool_is_locked_is_counted_off_later() -> None:
    # A garbage collection inside a pool call may finalize another handle of
    # the same pool in the thread that holds the pool's lock: the finalizer
    # must not wait for that lock (it used to: a job hung at exit).
    pool = TokenPool.create(2)
    core = pool._core
    other = copy.copy(pool)
    assert core.handles == 2
    with core.lock:
        del other  # finalized here, with the lock taken
        assert core.handles == 2 and core.orphans
    token = pool.acquire()  # the next call counts it off
    assert core.handles == 1 and not core.orphans
    pool.release(token)
    assert pool.close() == 1


def test_last_handle_dropped_while_locked_closes_the_pool_at_the_next_settle() -> None:
    pool = TokenPool.create(2)
    core = pool._core
    reader = core.reader
    last = copy.copy(pool)
    pool.close()  # not the last handle: the pool stays open
    assert not core.closed and core.handles == 1
    with core.lock:
        del last
        assert not core.closed
        core.settle_orphans()
    assert core.closed and core.handles == 0
    with pytest.raises(OSError):
        os.fstat(reader)
