"""Settle a :class:`concurrent.futures.Future` without ever waiting for its lock.

A standard Future keeps its state under a condition whose lock every reader
takes: ``result()``, ``exception()``, ``add_done_callback()``,
``concurrent.futures.wait()`` and ``as_completed()``. A user thread interrupted
at the wrong instant (a ``KeyboardInterrupt`` raised by a SIGINT handler after
the lock is taken but before the code that releases it runs) keeps that lock
for good. ``ProcessPoolExecutor``'s manager thread then blocks forever in
``set_result()``, and with it every other result, the shutdown and, here, every
token the executor holds.

So the executor's manager never waits for a future's lock: it *tries* it. The
functions here take the lock without blocking and, holding it, call the
Future's own public methods (the lock is reentrant, so they take it again).
When the lock is busy they say so, and the caller keeps the work to retry
later while it serves everything else.

One detail keeps this from adding a deadlock of its own: the done-callbacks a
completion triggers must not run while the lock is held (a callback that waits
for another thread which reads the future would otherwise wait forever). They
are set aside while the state changes and run by :func:`run_callbacks` after
the lock is released, just as ``set_result()`` runs them after its own
``with`` block.

This relies on three attributes that every Future of CPython 3.9 to 3.14 has:
``_condition`` (a :class:`threading.Condition` over an RLock), ``_state`` and
``_done_callbacks``, and on its ``_invoke_callbacks()`` method.
"""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any

__all__ = ["CANCEL", "EXCEPTION", "RESULT", "run_callbacks", "try_complete", "try_start"]

#: How :func:`try_complete` completes a future.
RESULT, EXCEPTION, CANCEL = 0, 1, 2


def try_start(future: Future[Any]) -> bool | None:
    """Mark *future* running, as ``set_running_or_notify_cancel()`` does.

    Returns:
        True if it is now running; False if it was cancelled (its waiters are
        now told so) or is done already; None if another thread holds its lock.
    """
    condition = future._condition
    if not condition.acquire(blocking=False):
        return None
    try:
        state = future._state
        if state == PENDING:
            # What set_running_or_notify_cancel() does to a pending future, without
            # taking the lock a second time: this runs once per task.
            future._state = RUNNING
            return True
        if state == CANCELLED:
            return future.set_running_or_notify_cancel()  # False, and waiters are told
        return False  # someone else completed (or started) it: not ours to run
    finally:
        condition.release()


def try_complete(future: Future[Any], how: int, value: Any = None) -> bool | None:
    """Give *future* its outcome: *how* is :data:`RESULT`, :data:`EXCEPTION` or :data:`CANCEL`.

    :data:`CANCEL` is for a future whose call never started: it ends cancelled
    and *notified*, so that ``concurrent.futures.wait()`` counts it as done.
    A future that is done already is left as it is; one the caller of
    ``cancel()`` cancelled gets its waiters notified.

    Returns:
        None if another thread holds the future's lock (nothing was changed:
        try again later); True if this call completed the future and it has
        done-callbacks, which the caller must run with :func:`run_callbacks`
        once it holds no lock of its own; False otherwise.
    """
    condition = future._condition
    if not condition.acquire(blocking=False):
        return None
    try:
        state = future._state
        if state == CANCELLED:
            # Cancelled by a user's cancel(), which ran the callbacks; the
            # waiters of concurrent.futures.wait() hear of it only now.
            future.set_running_or_notify_cancel()
            return False
        if state in (FINISHED, CANCELLED_AND_NOTIFIED):
            return False
        # The Future's own methods run the callbacks at their end: hand them an
        # empty list and keep the real one for run_callbacks(). No other thread
        # can add a callback meanwhile (that takes the lock we hold), and once
        # the future is done, add_done_callback() calls the callback itself.
        callbacks = future._done_callbacks  # type: ignore[attr-defined]
        if callbacks:
            future._done_callbacks = []  # type: ignore[attr-defined]
        try:
            if how == RESULT:
                future.set_result(value)
            elif how == EXCEPTION:
                future.set_exception(value)
            elif future.cancel():
                future.set_running_or_notify_cancel()
            else:
                return False  # running: not a call that never started
        finally:
            if callbacks:
                future._done_callbacks = callbacks  # type: ignore[attr-defined]
        return bool(callbacks)
    finally:
        condition.release()


def run_callbacks(future: Future[Any]) -> None:
    """Run the done-callbacks of a future :func:`try_complete` just completed (returned True).

    Exceptions they raise are logged and swallowed, as the Future does itself.
    """
    future._invoke_callbacks()  # type: ignore[attr-defined]
