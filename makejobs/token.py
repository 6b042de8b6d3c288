"""A held slot of parallelism, and the implicit slot every process starts with.

A :class:`Token` is what :meth:`TokenPool.acquire <makejobs.pool.TokenPool.acquire>`
returns: either a byte read from the pool (written back on release) or this
process's *implicit* slot (never written anywhere). :class:`ImplicitSlot` keeps
that one slot and lets threads waiting on the pool's pipe see it come back;
:class:`Slot` is the context manager of :meth:`TokenPool.slot
<makejobs.pool.TokenPool.slot>`.
"""

from __future__ import annotations

import os
import threading

from . import _posix

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    import select
    from typing import Any

    from .pool import TokenPool

__all__ = ["ImplicitSlot", "Slot", "Token"]


class Token:
    """One slot of parallelism held by this process.

    ``byte`` is the byte read from the pool, or None for the implicit slot.
    Give it back with :meth:`TokenPool.release` exactly once, or use it as a
    context manager: ``with pool.acquire() as token:`` releases it on exit.
    """

    __slots__ = ("__weakref__", "_pool", "_released", "byte")

    def __init__(self, pool: TokenPool, byte: bytes | None) -> None:
        self._pool = pool
        self._released = False
        self.byte = byte

    @property
    def implicit(self) -> bool:
        """True for the process's implicit slot, which is never written to the pool."""
        return self.byte is None

    def __repr__(self) -> str:
        state = " released" if self._released else ""
        return f"<Token {'implicit' if self.byte is None else repr(self.byte)}{state}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Token belongs to the process that acquired it and cannot be pickled")

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.release(self)


class ImplicitSlot:
    """This process's implicit slot, and a way for waiters to see it come back.

    The implicit slot never travels through the pool's pipe, so a thread
    blocked in poll() on that pipe would not notice another thread giving it
    back. Giving it back therefore also leaves a byte in a private wake-up
    pipe, which whoever takes the slot next drains. Readiness of that pipe
    thus means "the implicit slot may be free", the same level-triggered
    meaning the pool's pipe has for tokens.

    The wake-up pipe (and the epoll set over it and the pool's reader) is
    made with the slot in the process that opens the pool, but in a forked
    child only when something there first waits (:meth:`wake_fd`,
    :meth:`poll_fd`): a job that takes only its implicit slot never pays for
    three more descriptors.
    """

    __slots__ = ("combined", "lock", "pending", "reader", "wake_lock", "wake_r", "wake_w")

    def __init__(self, reader: int) -> None:
        self.lock = threading.Lock()
        self.wake_lock = threading.Lock()
        self.pending = False
        self.reader = reader
        self.wake_r = self.wake_w = -1
        self.combined: select.epoll | None = None

    def take(self) -> bool:
        lock = self.lock
        # locked() first: the slot is usually out, and a failing acquire()
        # costs several times more than the check.
        if lock.locked() or not lock.acquire(False):
            return False
        if self.pending:
            with self.wake_lock:
                if self.pending:
                    _posix.drain(self.wake_r)
                    self.pending = False
        return True

    def give_back(self) -> None:
        with self.wake_lock:
            # Signal before releasing, so whoever takes the slot finds the
            # byte already there to drain (no stale byte, no busy wake-ups).
            # No pipe yet means nobody has waited: there is nobody to tell.
            if not self.pending and self.wake_w >= 0:
                self.pending = True
                try:
                    os.write(self.wake_w, b"\0")
                except BlockingIOError:
                    pass
            self.lock.release()

    def wake_fd(self) -> int:
        """The read end of the wake-up pipe, made on first use."""
        if self.wake_r < 0:
            self._make_wake_pipe()
        return self.wake_r

    def poll_fd(self) -> int:
        """An fd readable when a token or the implicit slot may be free (see TokenPool.fileno)."""
        if self.wake_r < 0:
            self._make_wake_pipe()
        combined = self.combined
        return self.reader if combined is None else combined.fileno()

    def _make_wake_pipe(self) -> None:
        with self.wake_lock:
            if self.wake_r >= 0:
                return
            wake_r, wake_w = _posix.wake_pipe()
            try:
                self.combined = _posix.combine(self.reader, wake_r)
            except BaseException:
                _posix.close_quietly(wake_r, wake_w)
                raise
            # Born level-triggered like the pool's pipe: if the slot is free
            # now, a waiter must see it (give_back wrote nothing while there
            # was no pipe). Under wake_lock, so no give_back slips in between.
            if not self.lock.locked():
                os.write(wake_w, b"\0")
                self.pending = True
            self.wake_w = wake_w
            self.wake_r = wake_r  # last: readers test it without the lock

    def close(self) -> None:
        combined, self.combined = self.combined, None
        if combined is not None:
            combined.close()
        wake_r, wake_w = self.wake_r, self.wake_w
        self.wake_r = self.wake_w = -1
        if wake_r >= 0:
            _posix.close_quietly(wake_r, wake_w)


class Slot:
    """The context manager :meth:`TokenPool.slot` returns (a class: cheaper than a generator)."""

    __slots__ = ("_pool", "_timeout", "_token")

    def __init__(self, pool: TokenPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout

    def __enter__(self) -> Token:
        self._token = self._pool.acquire(self._timeout)
        return self._token

    def __exit__(self, *exc_info: object) -> None:
        self._pool.release(self._token)
