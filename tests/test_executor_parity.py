"""JobserverExecutor's parity with PyPI ``jobserver`` and with concurrent.futures (issue 17).

* cancelled futures (``shutdown(cancel_futures=True)``, ``kill()`` of a pending one) are
  done for ``concurrent.futures.wait()`` at once;
* ``repr()`` shows state, counts and pool;
* the executor's own choices never make Python warn about forking a threaded process.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest

from test_executor import (
    PATIENCE,
    Gate,
    blocked,
    executor_on,
    failing_init,
    square,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    return Gate(tmp_path)


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
