"""makejobs._settle: outcomes for a standard Future without ever waiting for its lock."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from typing import Any

import pytest

from forking import held_by_another_thread
from makejobs import _settle


def test_a_locked_future_is_left_unchanged_and_can_be_completed_once_free() -> None:
    future: cf.Future[Any] = cf.Future()
    with held_by_another_thread(future._condition):  # type: ignore[attr-defined]
        assert _settle.try_start(future) is None
        assert _settle.try_complete(future, _settle.RESULT, 1) is None
        assert future._state == "PENDING"  # type: ignore[attr-defined]
    assert _settle.try_start(future) is True and future.running()
    assert _settle.try_complete(future, _settle.RESULT, 1) is False  # done, no callbacks
    assert future.result(timeout=0) == 1
    assert _settle.try_complete(future, _settle.RESULT, 2) is False  # done already: kept
    assert future.result(timeout=0) == 1


def test_callbacks_run_only_in_run_callbacks_with_the_lock_free() -> None:
    """A callback that needs another thread to read the future must not deadlock."""
    future: cf.Future[Any] = cf.Future()
    seen: list[Any] = []

    def callback(done: cf.Future[Any]) -> None:
        reader = threading.Thread(target=lambda: seen.append(done.exception(timeout=5)))
        reader.start()
        reader.join(5)
        seen.append(reader.is_alive())

    future.add_done_callback(callback)
    error = ValueError("boom")
    assert _settle.try_complete(future, _settle.EXCEPTION, error) is True
    assert seen == []  # not yet: the caller runs them once it holds no lock of its own
    _settle.run_callbacks(future)
    assert seen == [error, False]
    late: list[cf.Future[Any]] = []
    future.add_done_callback(late.append)  # done: runs at once, as always
    assert late == [future]


def test_cancel_notifies_waiters_so_that_wait_counts_the_future_done() -> None:
    future: cf.Future[Any] = cf.Future()
    called: list[cf.Future[Any]] = []
    future.add_done_callback(called.append)
    assert _settle.try_complete(future, _settle.CANCEL) is True
    _settle.run_callbacks(future)
    assert future.cancelled() and called == [future]
    assert cf.wait([future], timeout=0).done == {future}
    # Cancelled by its owner with cancel(): only the waiters are left to tell.
    other: cf.Future[Any] = cf.Future()
    assert other.cancel()
    assert cf.wait([other], timeout=0).done == set()  # the stdlib's CANCELLED is not done
    assert _settle.try_complete(other, _settle.CANCEL) is False
    assert cf.wait([other], timeout=0).done == {other}


def test_try_start_drops_a_cancelled_future_and_tells_its_waiters() -> None:
    future: cf.Future[Any] = cf.Future()
    assert future.cancel()
    assert _settle.try_start(future) is False
    assert cf.wait([future], timeout=0).done == {future}
    assert _settle.try_start(future) is False  # notified already: still not to be run


def test_a_running_future_is_not_cancelled() -> None:
    future: cf.Future[Any] = cf.Future()
    assert _settle.try_start(future) is True
    assert _settle.try_complete(future, _settle.CANCEL) is False
    assert future.running()


@pytest.mark.parametrize("how", [_settle.RESULT, _settle.EXCEPTION])
def test_a_future_locked_by_this_thread_is_not_this_threads_to_wait_for(how: int) -> None:
    """The lock is reentrant: its owner may complete it (the manager never owns one)."""
    future: cf.Future[Any] = cf.Future()
    with future._condition:  # type: ignore[attr-defined]
        assert _settle.try_complete(future, how, ValueError("x")) is False  # no callbacks
    assert future.done()
