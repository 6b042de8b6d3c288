"""JobserverExecutor's parity with PyPI ``jobserver`` and with concurrent.futures (issue 17).

* ``JobserverExecutor(js)``, the seed's spelling, and ProcessPoolExecutor's errors for
  arguments of the wrong type or value;
* ``map(..., buffersize=N)`` with Python 3.14's semantics and errors, on every Python;
* cancelled futures (``shutdown(cancel_futures=True)``, ``kill()`` of a pending one) are
  done for ``concurrent.futures.wait()`` at once;
* ``repr()`` shows state, counts and pool;
* the executor's own choices never make Python warn about forking a threaded process.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import re
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from makejobs import Jobserver, JobserverExecutor, TokenPool
from probes import PATIENCE, Counted, wait_until
from test_executor import (
    Gate,
    blocked,
    executor_on,
    failing_init,
    square,
)
from test_parity import BAD_BUFFERSIZES

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path)


# -- the constructor ------------------------------------------------------------------------


def test_a_jobserver_as_the_first_argument_is_the_jobserver() -> None:
    """PyPI jobserver's spelling: JobserverExecutor(js) shares js's pool."""
    with TokenPool.create(3) as pool, Jobserver(pool=pool) as js:
        with JobserverExecutor(js) as executor:
            assert executor.pool is pool
            assert " workers=0/3 " in repr(executor)  # max_workers: the pool's size
            assert list(executor.map(square, range(4))) == [0, 1, 4, 9]
        with pytest.raises(TypeError, match="once"):
            JobserverExecutor(js, jobserver=js)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_workers": "2"}, TypeError, "max_workers must be an int, a Jobserver or None"),
        ({"max_workers": 2.0}, TypeError, "max_workers must be an int"),
        ({"max_workers": True}, TypeError, "max_workers must be an int"),
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"jobserver": 4}, TypeError, "jobserver must be a Jobserver or None, not int"),
        ({"max_tasks_per_child": "1"}, TypeError, "max_tasks_per_child must be an integer"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child must be >= 1"),
        ({"initializer": 5}, TypeError, "initializer must be callable"),
    ],
)
def test_arguments_of_the_wrong_type_or_value(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        JobserverExecutor(**kwargs)


# -- map(buffersize=) -------------------------------------------------------------------------


@pytest.mark.parametrize(("buffersize", "error", "message"), BAD_BUFFERSIZES)
def test_map_rejects_a_bad_buffersize_as_python_3_14_does(
    buffersize: Any, error: type[Exception], message: str
) -> None:
    with executor_on(1) as (executor, _), pytest.raises(error, match=f"^{re.escape(message)}$"):
        executor.map(square, range(4), buffersize=buffersize)


@pytest.mark.parametrize(("buffersize", "chunksize"), [(1, 1), (3, 1), (2, 4)])
def test_map_with_buffersize_stays_that_far_ahead_of_the_consumer(
    buffersize: int, chunksize: int
) -> None:
    """As in Python 3.14: *buffersize* tasks (chunks) are submitted at once, then one more
    each time a result is taken; so an endless iterable works."""
    with executor_on(2) as (executor, _):
        source = Counted(itertools.count())
        results = executor.map(square, source, buffersize=buffersize, chunksize=chunksize)
        assert source.taken == buffersize * chunksize
        for n in range(1, 11):
            assert next(results) == (n - 1) ** 2
            # The chunk of the n-th result, and *buffersize* chunks after it, were taken.
            chunks_taken = (n - 1) // chunksize + 1 + buffersize
            assert source.taken == chunks_taken * chunksize
        results.close()  # type: ignore[attr-defined]
        assert list(executor.map(square, range(7), buffersize=2)) == [i * i for i in range(7)]


def test_map_with_buffersize_cancels_what_it_submitted_on_a_timeout(gate: Gate) -> None:
    with executor_on(1) as (executor, _):
        args = gate.task_args()
        first = executor.submit(blocked, *args)  # holds the only slot
        gate.wait_started(args)
        submitted: list[cf.Future[Any]] = []
        real_submit = executor.submit

        def recording_submit(fn: Any, /, *a: Any, **kw: Any) -> cf.Future[Any]:
            submitted.append(real_submit(fn, *a, **kw))
            return submitted[-1]

        executor.submit = recording_submit  # type: ignore[method-assign]
        results = executor.map(square, itertools.count(), buffersize=3, timeout=0.2)
        assert len(submitted) == 3
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert len(submitted) == 4  # one more before it waited for the first
        assert all(f.cancelled() for f in submitted)
        gate.open()
        assert first.result(timeout=PATIENCE) is None


# -- cancelled means done -----------------------------------------------------------------------


def test_cancelled_futures_are_done_for_wait_at_once(gate: Gate) -> None:
    """After shutdown(cancel_futures=True), and after kill() of a pending future, the
    cancelled futures count as done for concurrent.futures.wait(), and a wait() that was
    already waiting for them returns (stdlib executors of 3.11-3.13 leave them undone)."""
    with executor_on(1) as (executor, _):
        args = gate.task_args("kept")
        running = executor.submit(blocked, *args)
        gate.wait_started(args)
        killed = executor.submit(square, 2)
        queued = [executor.submit(square, i) for i in range(3)]
        waited: dict[str, Any] = {}

        def wait_for_all() -> None:
            waited["result"] = cf.wait([killed, *queued], return_when=cf.ALL_COMPLETED)

        waiter = threading.Thread(target=wait_for_all)
        waiter.start()
        wait_until(lambda: len(killed._waiters) == 1)  # type: ignore[attr-defined]
        assert executor.kill(killed)
        assert cf.wait([killed], timeout=0).done == {killed}
        executor.shutdown(wait=False, cancel_futures=True)
        done, not_done = cf.wait(queued, timeout=0)
        assert done == set(queued) and not not_done
        assert set(cf.as_completed(queued, timeout=0)) == set(queued)
        waiter.join(PATIENCE)
        assert not waiter.is_alive(), "a wait() on cancelled futures never returned"
        assert waited["result"].done == {killed, *queued}
        assert not running.done()
        gate.open()
        assert running.result(timeout=PATIENCE) == "kept"


# -- repr ----------------------------------------------------------------------------------------


def test_repr_says_state_counts_and_pool(gate: Gate) -> None:
    with executor_on(1, max_workers=2) as (executor, pool):
        assert repr(executor).startswith("<JobserverExecutor running workers=0/2 running=0")
        args = gate.task_args()
        running = executor.submit(blocked, *args)
        gate.wait_started(args)
        queued = [executor.submit(square, i) for i in range(3)]
        text = repr(executor)
        assert " running=1 pending=3 " in text, text
        assert f"pool={pool!r}>" in text, text
        gate.open()
        running.result(timeout=PATIENCE)
        executor.shutdown(wait=True)
        assert all(f.done() for f in queued)
        assert repr(executor).startswith("<JobserverExecutor shutdown workers=0/2 running=0 ")
    with executor_on(1, initializer=failing_init) as (executor, _):
        with pytest.raises(cf.process.BrokenProcessPool):
            executor.submit(square, 1).result(timeout=PATIENCE)
        assert repr(executor).startswith("<JobserverExecutor broken "), repr(executor)


# -- no fork warnings of our own making ----------------------------------------------------------


def test_the_default_start_method_never_forks_a_threaded_process() -> None:
    """On Python 3.12+ forking a process that has threads warns (DeprecationWarning); the
    executor has a thread, so by default it starts workers otherwise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with executor_on(2, max_tasks_per_child=1) as (executor, _):
            assert list(executor.map(square, range(3))) == [0, 1, 4]
            assert " forkserver " in repr(executor)
    forks = [w for w in caught if "fork()" in str(w.message)]
    assert not forks, [str(w.message) for w in forks]
