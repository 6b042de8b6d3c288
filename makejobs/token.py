"""Held slots of parallelism: escrows, the implicit slot, and tokens.

Where a slot is, is kept by the kernel, not by Python variables. Every slot a
process holds is a byte in an *escrow*: a private pipe of one holder (a
:class:`Token`), into which the byte was moved from the pool's pipe (or from
this process's implicit-slot pipe) by one system call, and out of which it
moves back by one system call (see :func:`makejobs._posix.move`). So:

* a slot is at every instant in exactly one pipe: free in its source, or in
  one escrow. An exception raised at any bytecode (a ``KeyboardInterrupt``, a
  signal handler's exception) can interrupt the Python bookkeeping around a
  move, never the move itself;
* giving back is idempotent: draining an escrow that is already empty moves
  nothing, so a slot cannot be given back twice;
* the escrows that hold pool tokens are also known to this process's
  guardian (see :mod:`makejobs.guardian`), which gives their bytes back to the
  pool if this process dies without doing it, SIGKILL included.

This process's *implicit* slot (every process make starts owns one, never
written to the pool) is itself a byte in a private pipe that is readable
while the slot is free, which also lets waiters poll for it.
"""

from __future__ import annotations

import os

from . import _posix

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    import select
    from typing import Any

    from .pool import TokenPool

__all__ = ["IMPLICIT_BYTE", "Escrow", "ImplicitSlot", "Slot", "Token"]

#: What the implicit-slot pipe holds while the slot is free (never written to a pool).
IMPLICIT_BYTE = b"i"

_splice = _posix._splice
_NONBLOCK = _posix._SPLICE_F_NONBLOCK


class Escrow:
    """A private pipe that holds the slots one holder took, until they go back.

    ``dest`` is the write end of the pipe the bytes came from (the pool's, or
    the implicit slot's); it never changes, so whoever drains the escrow, and
    however often, every byte goes back where it belongs exactly once.
    """

    __slots__ = ("count", "dest", "r", "registered", "w")

    def __init__(self, dest: int) -> None:
        self.r, self.w = _posix.private_pipe()
        self.dest = dest
        # Known to the guardian (pool escrows only; see makejobs.guardian).
        self.registered = False
        #: At least what it holds: raised before a byte moves in, so that an
        #: interruption can only make it too high, which give_back() checks.
        self.count = 0

    def held(self) -> int:
        """How many slots the escrow holds now."""
        return _posix.available_tokens(self.r) or 0

    def give_back(self) -> int:
        """Move every held byte back to ``dest``; return how many moved.

        One system call when :attr:`count` is right, which it is but after an
        interruption; then what is left is looked at.

        Raises:
            PoolBroken: ``dest`` is full or has no reader left; the bytes
                stay here (the caller drops the escrow, and with it the token).
        """
        moved = 0
        while True:
            try:
                if _splice is not None:  # _posix.move, inlined: the cost of every token
                    try:
                        n: int = _splice(self.r, self.dest, 1 << 16, flags=_NONBLOCK)
                    except BlockingIOError:
                        n = 0
                else:
                    n = _posix.move(self.r, self.dest)
            except EOFError:  # pragma: no cover - we hold the write end
                n = 0
            except BrokenPipeError:
                raise _posix.pool_without_reader(self.dest) from None
            moved += n
            if n and moved >= self.count:
                self.count = 0
                return moved
            if not self.held():
                self.count = 0
                return moved
            if n == 0:
                raise _posix.pool_full(self.dest)

    def peek(self) -> bytes:
        """The first held byte, without giving it back (b"" when empty)."""
        # A pipe cannot be read without consuming, so read and put back; only
        # diagnostics and tests ask, never the paths that hand out slots.
        try:
            data = os.read(self.r, 1 << 16)
        except BlockingIOError:
            return b""
        os.write(self.w, data)
        return data[:1]

    def close(self) -> None:
        r, w = self.r, self.w
        self.r = self.w = -1
        _posix.close_quietly(r, w)


class ImplicitSlot:
    """This process's implicit slot: a byte in a private pipe while it is free.

    Taking the slot moves the byte into the taker's escrow; giving it back
    moves it home. The pipe is readable exactly while the slot is free, so a
    thread (or event loop) waiting for a slot polls it next to the pool's
    reader, and :meth:`poll_fd` combines both into one fd (Linux epoll).

    ``maybe_free`` is a hint that keeps the hot path from a failing system
    call while the slot is out: False only after a take succeeded, set True
    before the byte goes back, so it can be stale only in the harmless
    direction (a take attempt that finds nothing).
    """

    __slots__ = ("combined", "maybe_free", "r", "reader", "w")

    def __init__(self, reader: int) -> None:
        self.r, self.w = _posix.private_pipe()
        os.write(self.w, IMPLICIT_BYTE)
        self.maybe_free = True
        self.reader = reader
        self.combined: select.epoll | None = None

    def free(self) -> bool:
        """True while the slot is not handed out (the byte is home)."""
        return bool(_posix.available_tokens(self.r))

    def poll_fd(self) -> int:
        """An fd readable when a token or the implicit slot may be free (see TokenPool.fileno)."""
        combined = self.combined
        if combined is None:
            combined = self.combined = _posix.combine(self.reader, self.r)
            if combined is None:
                return self.reader  # no epoll: only the tokens can be watched
        return combined.fileno()

    def close(self) -> None:
        combined, self.combined = self.combined, None
        if combined is not None:
            combined.close()
        r, w = self.r, self.w
        self.r = self.w = -1
        _posix.close_quietly(r, w)


class Token:
    """One slot of parallelism held by this process.

    Give it back with :meth:`TokenPool.release` exactly once, or use it as a
    context manager: ``with pool.acquire() as token:`` releases it on exit. A
    token dropped without being released goes back once it is garbage
    collected (at the next call on its pool), with a :class:`ResourceWarning`,
    like an unclosed file.
    """

    __slots__ = ("__weakref__", "_byte", "_escrow", "_generation", "_pool", "implicit")

    def __init__(self, pool: TokenPool, escrow: Escrow, implicit: bool, generation: int) -> None:
        self._pool = pool
        self._escrow: Escrow | None = escrow
        self._generation = generation
        self._byte: bytes | None = None
        #: True for the process's implicit slot, which is never written to the pool.
        self.implicit = implicit

    @property
    def byte(self) -> bytes | None:
        """The byte read from the pool, or None for the implicit slot (or once released)."""
        if self.implicit:
            return None
        if self._byte is None:
            escrow = self._escrow
            if escrow is not None:
                self._byte = escrow.peek() or None
        return self._byte

    @property
    def released(self) -> bool:
        """True once the slot has gone back."""
        return self._escrow is None

    def __repr__(self) -> str:
        what = "implicit" if self.implicit else "token"
        return f"<Token {what}{' released' if self._escrow is None else ''}>"

    def __reduce__(self) -> Any:
        raise TypeError("a Token belongs to the process that acquired it and cannot be pickled")

    def __copy__(self) -> Token:
        raise TypeError("a Token cannot be copied: it is one slot")

    def __deepcopy__(self, memo: object) -> Token:
        raise TypeError("a Token cannot be copied: it is one slot")

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.release(self)


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
