"""Jobserver and Future: the semantics the seed API promises, each measured."""

from __future__ import annotations

import enum
import gc
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import makejobs._job as job_module
from forking import held_by_another_thread, run_in_child
from inherited import advertises
from makejobs import (
    Blocked,
    CallbackRaised,
    Jobserver,
    JobserverUnavailable,
    RemoteTraceback,
    SubmissionDied,
    Token,
    TokenPool,
    parse_makeflags,
)
from spans import peak_overlap, span

METHODS = ["fork", "forkserver", "spawn"]
FAST = "fork"


# -- job functions (module level so spawn can pickle them) --------------------------------


def recurse(js: Jobserver, depth: int) -> int:
    if depth == 0:
        return 0
    return 1 + js.submit(recurse, (js, depth - 1)).result()


def fan_out(js: Jobserver, width: int, seconds: float) -> list[tuple[float, float]]:
    futures = [js.submit(span, (seconds,)) for _ in range(width)]
    return [f.result() for f in futures]


def raise_value_error(message: str) -> None:
    raise ValueError(message)


def kill_self(signum: int) -> None:
    os.kill(os.getpid(), signum)


def exit_hard(code: int) -> None:
    os._exit(code)


def call_sys_exit(code: int) -> None:
    sys.exit(code)


def getenv(name: str) -> str | None:
    return os.environ.get(name)


def join_pool_from_job() -> tuple[str, bool, bool]:
    pool = TokenPool.from_environ()
    assert pool is not None
    first = pool.try_acquire()
    second = pool.try_acquire()  # a real token: the pool has two, the job holds neither
    result = (
        os.environ["MAKEFLAGS"],
        first is not None and first.implicit,
        second is not None and not second.implicit,
    )
    for token in (first, second):
        if token is not None:
            pool.release(token)
    pool.close()
    return result


def job_forgets_a_token() -> bool:
    pool = TokenPool.from_environ()
    assert pool is not None
    pool.try_acquire()  # the implicit slot
    return pool.try_acquire() is not None  # a real token, never released


def big_result(size: int) -> bytes:
    return b"x" * size


def identity(x: Any) -> Any:
    return x


class Marker:
    """A preexec context manager that records enter and exit in the environment."""

    def __enter__(self) -> None:
        os.environ["MARKER"] = "entered"

    def __exit__(self, *exc: object) -> None:
        Path(os.environ["MARKER_FILE"]).write_text("exited")


def preexec_sets_variable() -> None:
    os.environ["PREEXEC"] = "ran"


def preexec_returns_manager() -> Marker:
    return Marker()


def preexec_raises() -> None:
    raise RuntimeError("preexec failed")


def job_children(baseline: set[int]) -> int:
    """Children (zombies too) other than the helpers already running (forkserver, tracker)."""
    return len({p.pid for p in psutil.Process().children()} - baseline)


def helper_children() -> set[int]:
    return {p.pid for p in psutil.Process().children()}


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_submit_shorthand_map_and_remote_exception(method: str) -> None:
    with Jobserver(method, slots=2) as js:
        assert js.submit(pow, (2, 10), {"mod": 1000}).result() == 24
        assert js(len, (1, 2, 3)).result() == 3
        assert list(js.map(len, [("ab",), ("cde",)])) == [2, 3]
        with pytest.raises(ValueError, match="remote boom") as info:
            js.submit(raise_value_error, ("remote boom",)).result()
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in str(cause)
        assert js.pool.implicit_free and js.pool.held == 0


def test_unpicklable_job_for_spawn_is_a_type_error_and_keeps_the_token() -> None:
    with Jobserver("spawn", slots=2) as js:
        with pytest.raises(TypeError, match="cannot be pickled"):
            js.submit(lambda: 1)
        assert js.pool.implicit_free and js.pool.held == 0
        assert js.submit(identity, (5,)).result() == 5
    assert js.pool.closed


def test_lambdas_work_with_fork() -> None:
    with Jobserver(FAST, slots=2) as js:
        assert js.submit(lambda x: x * 2, (21,)).result() == 42


def test_futures_and_tokens_cannot_be_pickled_but_jobservers_can() -> None:
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(identity, (1,))
        with pytest.raises(TypeError):
            pickle.dumps(future)
        future.result()
        clone = pickle.loads(pickle.dumps(js))
        assert isinstance(clone, Jobserver)
        assert clone.submit(identity, (7,)).result() == 7
        clone.close()


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_concurrency_never_exceeds_and_reaches_slots(slots: int) -> None:
    with Jobserver(FAST, slots=slots) as js:
        futures = [js.submit(span, (0.15,)) for _ in range(2 * slots + 1)]
        spans = [f.result() for f in futures]
    assert peak_overlap(spans) == slots


def test_processes_never_exceed_slots_counting_zombies() -> None:
    baseline = helper_children()
    with Jobserver(FAST, slots=2) as js:
        peak = 0
        for _ in range(30):
            js.submit(identity, (1,))
            peak = max(peak, job_children(baseline))
        js.close()
    assert peak <= 2


@pytest.mark.parametrize("method", METHODS)
def test_recursive_nesting_with_one_slot_never_deadlocks(method: str) -> None:
    depth = 8 if method == "fork" else 3
    with Jobserver(method, slots=1) as js:
        assert js.submit(recurse, (js, depth), timeout=60).result(timeout=120) == depth


def test_nested_fan_out_shares_the_pool() -> None:
    with Jobserver(FAST, slots=3) as js:
        outer = [js.submit(fan_out, (js, 3, 0.15)) for _ in range(2)]
        spans = [s for f in outer for s in f.result(timeout=60)]
    # Leaf jobs run on the lent implicit slots plus tokens: never more than 3.
    assert peak_overlap(spans) <= 3
    assert len(spans) == 6


def test_submit_from_several_threads() -> None:
    results: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    with Jobserver(FAST, slots=3) as js:

        def worker() -> None:
            try:
                futures = [js.submit(span, (0.01,)) for _ in range(15)]
                spans = [f.result(timeout=60) for f in futures]
                with lock:
                    results.extend(spans)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert errors == []
    assert len(results) == 60
    assert peak_overlap(results) <= 3


def test_no_background_threads() -> None:
    before = threading.active_count()
    with Jobserver(FAST, slots=2) as js:
        for f in [js.submit(identity, (i,)) for i in range(10)]:
            f.result()
        assert threading.active_count() == before


# -- death and results -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_death_fails_only_that_future_and_names_the_cause(method: str) -> None:
    with Jobserver(method, slots=3) as js:
        killed = js.submit(kill_self, (signal.SIGKILL,))
        exited = js.submit(exit_hard, (7,))
        fine = js.submit(identity, ("ok",))
        with pytest.raises(SubmissionDied, match="SIGKILL") as info:
            killed.result()
        assert info.value.exitcode == -signal.SIGKILL
        with pytest.raises(SubmissionDied, match="code 7"):
            exited.result()
        assert fine.result() == "ok"
        assert killed.done() and exited.exitcode == 7


def test_sys_exit_in_a_job_is_a_death_with_the_reason() -> None:
    with Jobserver(FAST, slots=2) as js:
        with pytest.raises(SubmissionDied, match="SystemExit") as info:
            js.submit(call_sys_exit, (3,)).result()
        assert info.value.exitcode == 3
        assert isinstance(info.value.__cause__, RemoteTraceback)


def test_kill_running_job() -> None:
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(span, (30,))
        assert not future.done()
        future.kill(signal.SIGTERM)
        with pytest.raises(SubmissionDied, match="SIGTERM"):
            future.result(timeout=10)


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_results_larger_than_the_pipe_buffer_never_stall(method: str) -> None:
    with Jobserver(method, slots=2) as js:
        first = js.submit(big_result, (8 << 20,))
        second = js.submit(big_result, (8 << 20,))
        # Waiting on the second must also drain the first, or the first never exits.
        assert len(second.result(timeout=60)) == 8 << 20
        assert len(first.result(timeout=60)) == 8 << 20


def test_thousands_of_jobs_leak_no_fds_or_processes() -> None:
    baseline_fds = open_fds()
    baseline = helper_children()
    with Jobserver(FAST, slots=2) as js:
        for i in range(1500):
            js.submit(identity, (i,))
        js.close()
        assert job_children(baseline) == 0
    gc.collect()
    assert open_fds() == baseline_fds


# -- callbacks ---------------------------------------------------------------------------------


def test_callbacks_run_once_in_order_after_the_token_is_back() -> None:
    calls: list[Any] = []
    with Jobserver(FAST, slots=1) as js:
        future = js.submit(identity, (1,))
        for i in range(5):
            future.when_done(calls.append, i)
        future.when_done(lambda: calls.append(js.pool.implicit_free))
        # With one slot, a callback can submit: the token is already back.
        future.when_done(lambda: calls.append(js.submit(identity, ("nested",)).result()))
        assert future.result() == 1
        assert future.result() == 1
        assert calls == [0, 1, 2, 3, 4, True, "nested"]
        future.when_done(calls.append, "late")  # runs at once on a finished future
        assert calls[-1] == "late"


def test_a_callback_added_while_the_job_completes_runs_after_its_token_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Jobserver(FAST, slots=1) as js:
        future = js.submit(identity, (1,))
        seen: list[bool] = []
        give_back = js.pool.release

        def release(token: Token, **kwargs: Any) -> None:
            # The thread completing the job is about to give its slot back: another
            # thread adds a callback right now, and has returned before the slot is back.
            adder = threading.Thread(
                target=future.when_done, args=(lambda: seen.append(js.pool.implicit_free),)
            )
            adder.start()
            adder.join(60)
            give_back(token)

        monkeypatch.setattr(js.pool, "release", release)
        assert future.result(timeout=60) == 1
        monkeypatch.undo()
        assert seen == [True]


def test_callback_raised_surfaces_one_per_call_with_cause() -> None:
    seen: list[str] = []
    with Jobserver(FAST, slots=2) as js:
        future = js.submit(identity, (5,))
        future.when_done(raise_value_error, "first")
        future.when_done(seen.append, "between")
        future.when_done(raise_value_error, "second")
        future.when_done(seen.append, "last")
        causes = []
        for _ in range(5):
            try:
                future.wait()
                break
            except CallbackRaised as e:
                assert isinstance(e.__cause__, ValueError)
                causes.append(str(e.__cause__))
        assert causes == ["first", "second"]
        assert seen == ["between", "last"]
        assert future.result() == 5


def test_callback_raised_from_submit_keeps_tokens() -> None:
    with Jobserver(FAST, slots=1) as js:
        future = js.submit(identity, (1,))
        future.when_done(raise_value_error, "from submit")
        # One slot: this submit must wait for the first job, whose callback then raises.
        with pytest.raises(CallbackRaised) as info:
            js.submit(identity, (2,))
        assert isinstance(info.value.__cause__, ValueError)
        assert js.pool.implicit_free
        assert js.submit(identity, (2,)).result() == 2


def test_close_turns_pending_callback_errors_into_warnings() -> None:
    js = Jobserver(FAST, slots=2)
    future = js.submit(identity, (1,))
    future.when_done(raise_value_error, "at close")
    with pytest.warns(RuntimeWarning, match="at close"):
        js.close()


# -- env and preexec ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_env_sets_and_unsets(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAKEJOBS_TEST_PRESENT", "parent")
    with Jobserver(method, slots=2, env={"DEFAULT_VAR": "default"}) as js:
        assert js.submit(getenv, ("DEMO_KEY",), env={"DEMO_KEY": "hello"}).result() == "hello"
        assert js.submit(getenv, ("DEFAULT_VAR",)).result() == "default"
        unset = js.submit(
            getenv, ("MAKEJOBS_TEST_PRESENT",), env=[("MAKEJOBS_TEST_PRESENT", None)]
        )
        assert unset.result() is None
        assert js.submit(getenv, ("MAKEJOBS_TEST_PRESENT",)).result() == "parent"


@pytest.mark.parametrize("bad", [{"A=B": "x"}, {"": "x"}, {"A": "x\0y"}])
def test_bad_env_is_rejected_before_anything_runs(bad: dict[str, str]) -> None:
    with Jobserver(FAST, slots=2) as js, pytest.raises(ValueError):
        js.submit(identity, (1,), env=bad)
    with pytest.raises(TypeError):
        Jobserver(FAST, slots=2, env={"A": 1})  # type: ignore[dict-item]


def test_preexec_fn_and_context_manager(tmp_path: Path) -> None:
    marker = tmp_path / "exit"
    with Jobserver(FAST, slots=2, env={"MARKER_FILE": str(marker)}) as js:
        assert js.submit(getenv, ("PREEXEC",), preexec_fn=preexec_sets_variable).result() == "ran"
        assert (
            js.submit(getenv, ("MARKER",), preexec_fn=preexec_returns_manager).result()
            == "entered"
        )
        assert marker.read_text() == "exited"
        with pytest.raises(RuntimeError, match="preexec failed"):
            js.submit(identity, (1,), preexec_fn=preexec_raises).result()


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_jobs_environment_exports_the_pool(style: str) -> None:
    pool = TokenPool.create(3, style=style)  # type: ignore[arg-type]
    with Jobserver(FAST, pool=pool) as js:
        makeflags, implicit_first, then_a_token = js.submit(join_pool_from_job).result()
        assert advertises(parse_makeflags(makeflags).auth, pool), makeflags
        assert implicit_first  # the job's slot is its implicit slot
        assert then_a_token
        # A job that returns holding a token gives it back (with a ResourceWarning).
        assert js.submit(job_forgets_a_token).result() is True
    assert pool.close() == 2


# -- timeouts -----------------------------------------------------------------------------------


def test_timeouts_zero_number_and_none_never_lose_tokens() -> None:
    with Jobserver(FAST, slots=1) as js:
        busy = js.submit(span, (0.5,))
        assert not busy.done()
        with pytest.raises(Blocked):
            busy.result(timeout=0.05)
        with pytest.raises(Blocked):
            js.submit(identity, (1,), timeout=0)
        start = time.monotonic()
        with pytest.raises(Blocked):
            js.submit(identity, (1,), timeout=0.1)
        assert 0.1 <= time.monotonic() - start < 0.45
        assert busy.wait() is True and busy.done()
        assert js.submit(identity, (2,), timeout=5).result() == 2
        assert js.pool.implicit_free and js.pool.held == 0


@pytest.mark.parametrize("bad", [-1, float("nan"), "1"])
def test_bad_timeouts_are_rejected(bad: Any) -> None:
    with Jobserver(FAST, slots=1) as js, pytest.raises((TypeError, ValueError)):
        js.submit(identity, (1,), timeout=bad)


def test_keyboard_interrupt_while_waiting_returns_every_token() -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    with Jobserver(FAST, slots=2) as js:
        busy = [js.submit(span, (1.0,)) for _ in range(2)]
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        old = signal.signal(signal.SIGALRM, signal.default_int_handler)
        try:
            with pytest.raises(KeyboardInterrupt):
                js.submit(identity, (1,), consume=2)
        finally:
            signal.signal(signal.SIGALRM, old)
        for f in busy:
            f.result()
        assert js.pool.implicit_free and js.pool.held == 0


def test_close_with_work_outstanding_returns_tokens() -> None:
    pool = TokenPool.create(3)
    js = Jobserver(FAST, pool=pool)
    futures = [js.submit(span, (0.2,)) for _ in range(3)]
    js.close()
    assert all(f.done() for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        js.submit(identity, (1,))
    assert pool.close() == 2

    pool = TokenPool.create(2)
    with pytest.raises(KeyError), Jobserver(FAST, pool=pool) as js:
        long = js.submit(span, (60,))
        raise KeyError("leave early")
    with pytest.raises(SubmissionDied, match="SIGTERM"):
        long.result(0)
    assert pool.close() == 1


# -- admission ---------------------------------------------------------------------------------


def test_sleep_fn_admits_or_blocks_until_the_deadline() -> None:
    calls = [0]

    def closed_gate() -> float:
        calls[0] += 1
        return 0.05

    with Jobserver(FAST, slots=2) as js:
        assert js.submit(identity, (1,), sleep_fn=lambda: None).result() == 1
        start = time.monotonic()
        with pytest.raises(Blocked, match="sleep_fn"):
            js.submit(identity, (1,), sleep_fn=closed_gate, timeout=0.3)
        assert 0.3 <= time.monotonic() - start < 1.0
        assert 3 <= calls[0] <= 10
        with pytest.raises(ValueError):
            js.submit(identity, (1,), sleep_fn=lambda: -1)
        assert js.pool.implicit_free and js.pool.held == 0


def test_criteria_memory_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from makejobs import criteria
    from makejobs.criteria import all_of, load_below, memory_available, parse_size

    # load_below admits whatever the load when no job of ours runs (make -l): pretend one does.
    monkeypatch.setattr(criteria, "running_jobs", lambda: 1)

    assert parse_size("2GiB") == 2 << 30
    assert parse_size("1.5 GB") == 1_500_000_000
    assert parse_size(1024) == 1024
    for bad in ("lots", "-1GiB", "2 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)
    available = psutil.virtual_memory().available
    assert memory_available(available // 4)() is None
    assert memory_available(available * 100, retry=0.25)() == 0.25
    assert load_below(1e9)() is None
    assert load_below(1e-9, retry=2)() == 2
    assert all_of(memory_available(1), load_below(1e9))() is None
    assert all_of(memory_available(available * 100, retry=0.5), load_below(1e-9, retry=2))() == 2
    with Jobserver(FAST, slots=2) as js:
        assert js.submit(identity, (3,), sleep_fn=memory_available("1MiB")).result() == 3
        with pytest.raises(Blocked):
            js.submit(identity, (1,), sleep_fn=memory_available(available * 100), timeout=0.2)


# -- map -------------------------------------------------------------------------------------------


def test_map_orders_chunks_and_reraises_at_position() -> None:
    with Jobserver(FAST, slots=2) as js:
        assert list(js.map(identity, ((i,) for i in range(20)), chunksize=3)) == list(range(20))
        assert list(js.map(pow, kwargses=[{"base": 2, "exp": 3}], argses=None)) == [8]
        it = js.map(int, [("1",), ("2",), ("x",), ("4",)], chunksize=2)
        assert next(it) == 1 and next(it) == 2
        with pytest.raises(ValueError, match="invalid literal"):
            next(it)
        with pytest.raises(ValueError, match="different lengths"):
            list(js.map(pow, [(1, 2)], [{}, {}]))
        with pytest.raises(Blocked):
            list(js.map(span, [(0.3,)] * 4, timeout=0.2))


# -- joining the environment's pool -----------------------------------------------------------------


def test_slots_none_joins_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with TokenPool.create(3) as pool:
        for name, value in pool.environ({}).items():
            monkeypatch.setenv(name, value)
        with Jobserver(FAST) as js:
            # This process holds that pool already: a handle of its own on the
            # same pool, with the same (one) implicit slot.
            assert js.pool is not pool and js.pool._core is pool._core
            spans = [f.result() for f in [js.submit(span, (0.15,)) for _ in range(5)]]
        assert peak_overlap(spans) == 3
        assert pool.close() == 2


def test_slots_none_with_an_unusable_pool_warns_and_runs_serially(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAKEFLAGS", "s -j8 --jobserver-auth=-2,-2")
    monkeypatch.delenv("CARGO_MAKEFLAGS", raising=False)
    with pytest.warns(JobserverUnavailable, match="one job at a time"), Jobserver(FAST) as js:
        pass
    assert js.pool.slots == 1


def test_slots_none_without_a_pool_uses_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"):
        monkeypatch.delenv(name, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Jobserver(FAST) as js:
            assert js.pool.slots == len(os.sched_getaffinity(0))


def job_joins_twice() -> tuple[bool, bool]:
    first = TokenPool.from_environ()
    second = TokenPool.from_environ()
    assert first is not None and second is not None
    implicit = first.try_acquire()
    another = second.try_acquire()
    return (
        first._core is second._core and implicit is not None and implicit.implicit,
        another is None or not another.implicit,
    )


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_job_joining_its_pool_gets_one_implicit_slot(method: str) -> None:
    with Jobserver(method, slots=1) as js:
        same, no_second_implicit = js.submit(job_joins_twice).result(timeout=60)
    assert same and no_second_implicit


def _function_the_child_cannot_import() -> Any:
    import types

    module = types.ModuleType("makejobs_ghost_module")
    exec("def fn(x):\n    return x + 1\n", module.__dict__)
    sys.modules["makejobs_ghost_module"] = module  # importable here only
    return module.fn


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_child_that_dies_before_unpickling_its_job_fails_promptly(method: str) -> None:
    """The result pipe must reach the child with the process, not through a helper
    thread that would keep its write end open here forever."""
    fn = _function_the_child_cannot_import()
    try:
        with Jobserver(method, slots=1) as js:
            future = js.submit(fn, (1,))
            with pytest.raises(SubmissionDied):
                future.result(timeout=60)
            assert js.submit(identity, (2,)).result(timeout=60) == 2
    finally:
        del sys.modules["makejobs_ghost_module"]


# -- fork: how results come back, and what a fork inherits -------------------------------------


@pytest.fixture(params=["memfd", "pipe"])
def channel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Forked jobs hand their frame over in a memfd (where the kernel has memfd and
    pidfd) or in a pipe (elsewhere): run the test with each."""
    if request.param == "memfd" and not job_module.memfd_results():
        pytest.skip("no memfd or pidfd on this kernel")
    monkeypatch.setattr(job_module, "_memfd_ok", request.param == "memfd")
    yield request.param


class Colour(enum.IntEnum):
    RED = 1


class Label(str):
    pass


EXACT_VALUES: list[Any] = [
    0,
    -(2**100),
    1.5,
    float("inf"),
    3 + 4j,
    "",
    "\u00e9\udcff",  # a lone surrogate, as os.fsdecode() makes them
    b"\x00\xff" * 3,
    True,
    None,
    Colour.RED,  # subclasses of the plain types must keep their type
    Label("x"),
    (1, "a"),
    [1, 2],
    {"k": b"v"},
]


def test_fork_results_come_back_exactly(channel: str) -> None:
    with Jobserver(FAST, slots=2) as js:
        futures = [js.submit(identity, (value,)) for value in EXACT_VALUES]
        for value, future in zip(EXACT_VALUES, futures):
            got = future.result(timeout=60)
            assert type(got) is type(value) and got == value
        assert math.isnan(js.submit(identity, (float("nan"),)).result(timeout=60))


def test_fork_channels_detect_deaths_and_carry_big_results(channel: str) -> None:
    with Jobserver(FAST, slots=3) as js:
        killed = js.submit(kill_self, (signal.SIGKILL,))
        exited = js.submit(call_sys_exit, (3,))
        big = js.submit(big_result, (8 << 20,))
        with pytest.raises(SubmissionDied, match="SIGKILL"):
            killed.result(timeout=60)
        with pytest.raises(SubmissionDied, match="SystemExit"):
            exited.result(timeout=60)
        assert exited.exitcode == 3
        assert len(big.result(timeout=60)) == 8 << 20
        with pytest.raises(ValueError, match="boom"):
            js.submit(raise_value_error, ("boom",)).result(timeout=60)
        assert js.pool.implicit_free and js.pool.held == 0


def job_leaves_a_grandchild(release_fd: int) -> int:
    """Return at once, leaving a child that holds every fd of the job (its result fd too)."""
    if os.fork() == 0:  # pragma: no cover - the grandchild
        try:
            os.read(release_fd, 1)
        finally:
            os._exit(0)
    return 42


@pytest.fixture
def release_pipe() -> Iterator[tuple[int, int]]:
    """A pipe a job blocks on (``wait_for_byte``) until the test writes a byte to it."""
    release_r, release_w = os.pipe()
    yield release_r, release_w
    os.close(release_r)
    os.close(release_w)


def test_a_grandchild_holding_the_pipe_keeps_the_future_running(
    channel: str, release_pipe: tuple[int, int]
) -> None:
    """What a job forked runs on the job's slot: the slot comes back when the last is gone."""
    release_r, release_w = release_pipe
    with Jobserver(FAST, slots=1) as js:
        future = js.submit(job_leaves_a_grandchild, (release_r,))
        # Until the job process has exited (it stays unreaped for the future).
        os.waitid(os.P_PID, future.pid, os.WEXITED | os.WNOWAIT)
        assert not future.done()
        # Reaped all the same: no zombie waits for the grandchild.
        assert future.exitcode == 0
        assert not js.pool.implicit_free  # the grandchild still runs on the slot
        os.write(release_w, b"x")
        assert future.result(timeout=60) == 42
        assert js.pool.implicit_free


def shell_sees(name: str) -> tuple[str | None, str]:
    """A variable as this process's os.environ has it, and as a program it execs sees it."""
    out = subprocess.run(
        ["sh", "-c", f'printf %s "${name}"'], capture_output=True, text=True, check=True
    )
    return os.environ.get(name), out.stdout


def test_forked_jobs_export_the_pool_to_programs_they_exec(channel: str) -> None:
    with Jobserver(FAST, slots=2, env={"MAKEJOBS_TEST_VAR": "set"}) as js:
        in_python, in_shell = js.submit(shell_sees, ("MAKEFLAGS",)).result(timeout=60)
        assert in_python is not None and in_shell == in_python
        assert advertises(parse_makeflags(in_shell).auth, js.pool), in_shell
        assert js.submit(shell_sees, ("MAKEJOBS_TEST_VAR",)).result(timeout=60) == ("set", "set")
    assert "MAKEJOBS_TEST_VAR" not in os.environ


def makeflags_in_python() -> str | None:
    return os.environ.get("MAKEFLAGS")


def test_forked_jobs_export_the_pool_without_cpythons_environ_internals(
    channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class PortableEnviron(dict):  # type: ignore[type-arg]
        """An os.environ without CPython's private ``_data`` (the portable path)."""

    monkeypatch.setattr(os, "environ", PortableEnviron(os.environ))
    with Jobserver(FAST, slots=2) as js:
        flags = js.submit(makeflags_in_python).result(timeout=60)
        assert flags is not None and advertises(parse_makeflags(flags).auth, js.pool), flags


def wait_for_byte(fd: int) -> str:
    os.read(fd, 1)
    return "released"


def test_a_forked_child_uses_inherited_and_new_jobservers(
    channel: str, release_pipe: tuple[int, int]
) -> None:
    """A child of a process with a live Jobserver (and a job running) starts clean."""
    from makejobs._engine import live_engines

    release_r, release_w = release_pipe
    with Jobserver(FAST, slots=3) as js:
        running = js.submit(wait_for_byte, (release_r,))
        assert live_engines() == [js._engine]

        def child() -> bool:
            if live_engines() != []:  # the parent's job is not the child's to reap
                return False
            with Jobserver(FAST, slots=2) as mine:
                if mine.submit(identity, (5,)).result(timeout=60) != 5:
                    return False
            # The inherited one, first used here: its own engine and implicit slot.
            if not js.pool.implicit_free or js.submit(identity, (6,)).result(60) != 6:
                return False
            return js.pool.implicit_free and js.pool.held == 0

        assert run_in_child(child) == 0
        os.write(release_w, b"x")
        assert running.result(timeout=60) == "released"
        assert js.pool.implicit_free and js.pool.held == 0


def test_a_forked_child_cannot_wait_for_its_parents_job(
    channel: str, release_pipe: tuple[int, int]
) -> None:
    """The parent's running job is not the child's: waiting on it raises, never hangs."""
    release_r, release_w = release_pipe
    with Jobserver(FAST, slots=2) as js:
        running = js.submit(wait_for_byte, (release_r,))

        def child() -> bool:
            calls: list[Callable[[], object]] = [
                lambda: running.result(),
                lambda: running.result(timeout=5),
                lambda: running.wait(),
                lambda: running.done(),
                lambda: running.exception(),
                lambda: running.when_done(print),
                lambda: running.kill(),
            ]
            for call in calls:
                try:
                    call()
                except RuntimeError as e:
                    if "submitted by this process's parent" not in str(e):
                        return False
                else:
                    return False
            return True

        assert run_in_child(child) == 0
        assert not running.done()  # the child's attempts did not touch the parent's job
        os.write(release_w, b"x")
        assert running.result(timeout=60) == "released"
        assert js.pool.implicit_free and js.pool.held == 0


def test_a_forked_child_is_not_blocked_by_locks_another_thread_held_at_the_fork(
    channel: str,
) -> None:
    with Jobserver(FAST, slots=2) as js:
        assert js.submit(identity, (1,)).result(timeout=60) == 1
        js.pool.fileno()
        engine = js._engine
        locks = (engine.lock, engine.spawn_lock, engine.callback_lock, js.pool._core.lock)
        with held_by_another_thread(*locks):
            assert run_in_child(lambda: js.submit(identity, (7,)).result(60) == 7) == 0
        assert js.submit(identity, (8,)).result(timeout=60) == 8


def test_a_pidfd_that_cannot_be_opened_fails_the_submit_and_keeps_the_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not job_module.memfd_results():
        pytest.skip("no memfd or pidfd on this kernel")
    baseline = helper_children()
    with Jobserver(FAST, slots=1) as js:

        def refuse(pid: int) -> int:
            raise OSError(24, "Too many open files")

        monkeypatch.setattr(os, "pidfd_open", refuse)
        with pytest.raises(OSError, match="pidfd"):
            js.submit(span, (30,))
        # The child was killed and reaped before the token went back.
        assert job_children(baseline) == 0
        assert js.pool.implicit_free and js.pool.held == 0
        monkeypatch.undo()
        assert js.submit(identity, (3,)).result(timeout=60) == 3


def freeze_count() -> int:
    return gc.get_freeze_count()


def test_forked_jobs_keep_the_collector_off_what_they_inherit() -> None:
    """A collection in a job must not walk (and so copy) the parent's objects."""
    if not gc.isenabled():
        pytest.skip("the garbage collector is disabled here")
    before = gc.get_freeze_count()
    with Jobserver(FAST, slots=1) as js:
        assert js.submit(freeze_count).result(timeout=60) > before
    assert gc.get_freeze_count() == before  # the parent's own objects stay collectable
