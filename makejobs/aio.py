"""asyncio support: wait for jobserver slots without blocking the event loop.

::

    token = await acquire(pool)              # or: await pool.acquire_async()
    try:
        ...
    finally:
        release(pool, token)

    async with slot(pool):                   # or: async with pool.slot_async():
        ...

How waiting works: coroutines that find no free slot queue up (first come,
first served) on one waiter queue per pool and event loop. While that queue is
not empty the loop watches the pool's descriptor with ``loop.add_reader``; when
it polls readable, tokens are read without blocking and handed to the queued
coroutines in order. There is no thread and no timer-driven polling, and the
reader is removed as soon as nobody waits, because a level-triggered reader on
a pipe full of tokens would otherwise wake the loop over and over.

The pool may be closed from any thread while coroutines wait: they fail
with ``ValueError``, as :meth:`~makejobs.pool.TokenPool.try_acquire` does on
a closed pool. :meth:`~makejobs.pool.TokenPool.close` tells this module
(:func:`pool_closing`) before it writes back the tokens this process holds,
so no waiter takes one of those from a pool being closed, and wakes the
loops. The reader is registered on a private duplicate of
:meth:`~makejobs.pool.TokenPool.fileno`, which only the loop's thread closes,
after removing it: had the loop watched the pool's own descriptor, closing
it would leave the loop silently deaf to it, with its number free for reuse
while still in the loop's selector.

Cancellation never loses a token: a waiter is removed from the queue when it
is cancelled (or times out), a token is only read while some waiter is still
pending, and a token handed to a coroutine that is cancelled before it resumes
is given back at once.

The implicit slot is this process's own and never travels through the pool.
On Linux :meth:`~makejobs.pool.TokenPool.fileno` also polls readable when it
comes back, so any release wakes the waiters; elsewhere only the pool's tokens
do. :func:`release` (which ``slot()`` uses) additionally wakes, on every
platform, the loops whose coroutines wait on that pool; it may be called from
any thread. Prefer it to ``pool.release`` for slots that coroutines wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from . import _core
from ._checks import check_timeout
from .errors import Blocked

if TYPE_CHECKING:
    from .pool import Token, TokenPool

__all__ = ["acquire", "release", "slot"]


class _Waiters:
    """The coroutines of one event loop waiting for slots of one pool.

    Every method except :meth:`wake` runs on the loop's thread.
    """

    def __init__(self, pool: TokenPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop
        self.queue: deque[asyncio.Future[Token]] = deque()
        # The descriptor the reader is registered on: our duplicate of the
        # pool's fileno(), so closing the pool never closes it under the loop.
        self.fd: int | None = None

    def add(self, fut: asyncio.Future[Token]) -> None:
        self.queue.append(fut)
        fut.add_done_callback(self._forget)
        self.dispatch()

    def _forget(self, fut: asyncio.Future[Token]) -> None:
        # A waiter that was cancelled or timed out leaves the queue; one that
        # got its token has already left it.
        try:
            self.queue.remove(fut)
        except ValueError:
            pass
        self._update_reader()

    def dispatch(self) -> None:
        """Hand free slots to the waiters at the head of the queue, in order."""
        while self.queue:
            fut = self.queue[0]
            if fut.done():
                self.queue.popleft()
                continue
            if _closing(self.pool):
                self._fail_all(_closed_error())
                break
            try:
                token = self.pool.try_acquire()
            except Exception as e:
                # PoolBroken (end-of-file) or a closed pool: no waiter can ever
                # be served, and the reader would fire forever. A pool closed by
                # another thread during the read fails as one closed before it.
                self._fail_all(_closed_error() if _closing(self.pool) else e)
                break
            if token is None:
                break
            self.queue.popleft()
            fut.set_result(token)
        self._update_reader()

    def _fail_all(self, exc: Exception) -> None:
        waiting = list(self.queue)
        self.queue.clear()
        for fut in waiting:
            if not fut.done():
                fut.set_exception(exc)

    def _update_reader(self) -> None:
        wanted = any(not fut.done() for fut in self.queue)
        if wanted and self.fd is None:
            try:
                fd = os.dup(self.pool.fileno())
            except (OSError, ValueError):
                if not _closing(self.pool):
                    raise
                # Closed by another thread since dispatch() found it open.
                self._fail_all(_closed_error())
                _unregister(self)
                return
            try:
                self.loop.add_reader(fd, self.dispatch)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            self.pool._want()  # a helper thread reading a blocking pool, if any, must read
        elif not wanted:
            if self.fd is not None:
                self.loop.remove_reader(self.fd)
                os.close(self.fd)
                self.fd = None
                self.pool._unwant()
            # Also when no reader was needed (the first dispatch served
            # everyone): the registry must not keep the pool alive.
            _unregister(self)

    def wake(self) -> None:
        """Ask the loop to look for free slots again (any thread)."""
        try:
            self.loop.call_soon_threadsafe(self.dispatch)
        except RuntimeError:
            pass  # the loop is closed; its waiters are gone with it


# pool id -> {loop: waiters}; an entry exists only while coroutines wait, so
# nothing here keeps a pool or a loop alive after its last waiter.
_registry: dict[int, dict[asyncio.AbstractEventLoop, _Waiters]] = {}
_registry_lock = threading.Lock()
# Pools whose close() has begun (it sets TokenPool.closed only after writing
# back the tokens this process holds, which no waiter may take).
_closing_pools: weakref.WeakSet[TokenPool] = weakref.WeakSet()


def _closing(pool: TokenPool) -> bool:
    return pool.closed or pool in _closing_pools


def _waiters_for(pool: TokenPool, loop: asyncio.AbstractEventLoop) -> _Waiters:
    with _registry_lock:
        per_loop = _registry.setdefault(id(pool), {})
        waiters = per_loop.get(loop)
        if waiters is None:
            waiters = per_loop[loop] = _Waiters(pool, loop)
        return waiters


def _existing(pool: TokenPool, loop: asyncio.AbstractEventLoop) -> _Waiters | None:
    with _registry_lock:
        return _registry.get(id(pool), {}).get(loop)


def _unregister(waiters: _Waiters) -> None:
    with _registry_lock:
        per_loop = _registry.get(id(waiters.pool))
        if per_loop is not None and per_loop.get(waiters.loop) is waiters:
            del per_loop[waiters.loop]
            if not per_loop:
                del _registry[id(waiters.pool)]


def _clear_after_fork() -> None:
    # Event loops do not survive fork; neither do their waiters. The
    # duplicated descriptors are this process's own copies: close them.
    global _registry_lock
    for per_loop in _registry.values():
        for waiters in per_loop.values():
            if waiters.fd is not None:
                try:
                    os.close(waiters.fd)
                except OSError:
                    pass
                waiters.fd = None
    _registry.clear()
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_clear_after_fork)

# The pool tells us when it begins to close (it knows nothing of this module).
_core.on_close(lambda pool: pool_closing(pool))


def _wake_loops(pool: TokenPool) -> None:
    """Make every event loop with coroutines waiting on *pool* look at it again (any thread)."""
    with _registry_lock:
        waiting = list(_registry.get(id(pool), {}).values())
    for waiters in waiting:
        waiters.wake()


def pool_closing(pool: TokenPool) -> None:
    """Fail the coroutines waiting on *pool*, whose close() has begun (any thread).

    Called by :meth:`~makejobs.pool.TokenPool.close` before it writes back the
    tokens this process holds: from now on no waiter takes a token from
    *pool*, and each fails with ``ValueError`` on its loop's thread.
    """
    _closing_pools.add(pool)
    _wake_loops(pool)


def _closed_error() -> ValueError:
    # The error TokenPool.try_acquire raises on a closed pool.
    return ValueError("the token pool is closed")


def _expire(fut: asyncio.Future[Token], timeout: float) -> None:
    if not fut.done():
        fut.set_exception(Blocked(f"no jobserver token became free within {timeout} s"))


async def acquire(pool: TokenPool, timeout: float | None = None) -> Token:
    """Take one slot of *pool*, waiting on the running event loop.

    The implicit slot is handed out first, as by
    :meth:`~makejobs.pool.TokenPool.try_acquire`. Waiters are served in the
    order they started waiting (within one event loop).

    Args:
        timeout: seconds to wait (None: forever; 0: only a slot free right now).

    Returns:
        The :class:`~makejobs.pool.Token`; give it back with :func:`release`.

    Raises:
        Blocked: no slot within *timeout*.
        PoolBroken: the pool returned end-of-file.
        ValueError: the pool is closed, also while waiting (from any thread).
        asyncio.CancelledError: the waiting task was cancelled; no token is
            kept (one that arrived at the same moment is given back).
    """
    check_timeout(timeout)
    loop = asyncio.get_running_loop()
    ahead = _existing(pool, loop)
    if ahead is None or not any(not fut.done() for fut in ahead.queue):
        # Nobody is queued before us: a free slot is ours without waiting.
        token = pool.try_acquire()
        if token is not None:
            return token
    if timeout == 0:
        raise Blocked("no jobserver token is free right now")
    fut: asyncio.Future[Token] = loop.create_future()
    timer = None if timeout is None else loop.call_later(timeout, _expire, fut, timeout)
    try:
        _waiters_for(pool, loop).add(fut)
        token = await fut
    except BaseException:
        # Cancelled (or interrupted) after the token was handed over but
        # before this coroutine resumed: the token must not be lost. (If the
        # pool is being closed, close() gives it back.)
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            if not _closing(pool):
                release(pool, fut.result())
        elif not fut.done():
            fut.cancel()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    if _closing(pool):
        # Closed after the token was handed over but before this coroutine
        # resumed. close() gives back every token it finds held, so this one
        # is back in the pool (the implicit slot needs no giving back on a
        # closed pool).
        raise _closed_error()
    return token


def release(pool: TokenPool, token: Token) -> None:
    """Give *token* back to *pool* and wake coroutines waiting for a slot.

    Equivalent to ``pool.release(token)``, plus, for the implicit slot (whose
    release makes no descriptor readable), a wake-up of every event loop with
    coroutines waiting on *pool*. Safe to call from any thread and outside a
    running loop.

    Raises:
        As :meth:`~makejobs.pool.TokenPool.release`.
    """
    pool.release(token)
    if token.implicit:
        _wake_loops(pool)


@contextlib.asynccontextmanager
async def slot(pool: TokenPool, timeout: float | None = None) -> AsyncIterator[Token]:
    """Hold one slot of *pool* for the duration of an ``async with`` block.

    The slot is taken with :func:`acquire` (same *timeout* and exceptions)
    and given back with :func:`release` however the block is left.
    """
    token = await acquire(pool, timeout)
    try:
        yield token
    finally:
        release(pool, token)
