"""One pool as a process holds it: descriptors, escrows, who holds what.

A :class:`Core` is shared by every :class:`~makejobs.pool.TokenPool` handle a
process has on one pool (each join is a handle; there is one implicit slot).
It holds the descriptors, the pool's identity (device and inode of the pipe
or fifo), the ledger books, and the per-process state: the implicit slot, the
escrows (see :mod:`makejobs.token`) in use and free for reuse, and which
handle took each. The per-process state belongs to the fork generation it was
set up in (see :mod:`makejobs._forks`): call :meth:`Core.own` before using it.

Every method that touches the escrows or the implicit slot runs with
:attr:`Core.lock` held, including the system call that moves a byte, so that
no other thread can close or reuse a descriptor in the middle of it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import warnings
import weakref
from collections.abc import Callable

from . import _forks, _posix
from ._reader import BlockingSource
from .errors import PoolBroken, TokenCountWarning
from .ledger import Books, Record
from .token import Escrow, ImplicitSlot, Token

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from .pool import Style, TokenPool
    from .protocol import FifoAuth, MakeFlags, PipeAuth

__all__ = ["DROPPED_HANDLE", "Core", "live_cores", "on_close", "return_held_everywhere"]

_splice = _posix._splice
_NONBLOCK = _posix._SPLICE_F_NONBLOCK


class _Hold(weakref.ref):  # type: ignore[type-arg]
    """The pool's weak reference to a Token that holds an escrow, and who took it.

    Its callback (``Core.orphans.append``) runs only if the Token is garbage
    collected while listed, i.e. dropped without being released.
    """

    __slots__ = ("escrow", "handle")
    escrow: Escrow
    handle: TokenPool


class _DroppedHandle:
    """Listed in :attr:`Core.orphans` by a handle collected while the lock was taken.

    A handle's ``__del__`` may run inside any pool call (a garbage collection
    triggered there): it must not wait for the lock this thread may hold.
    """

    __slots__ = ()


DROPPED_HANDLE = _DroppedHandle()

_live: weakref.WeakSet[Core] = weakref.WeakSet()
_close_hooks: list[Callable[[TokenPool], None]] = []


def live_cores() -> list[Core]:
    """Every pool this process has open."""
    return [core for core in list(_live) if not core.closed]


def on_close(hook: Callable[[TokenPool], None]) -> None:
    """Call *hook* (with one handle of the pool) when a pool begins to close.

    Modules above the pool register here (asyncio waiters must fail rather
    than take tokens from a pool being closed): the pool itself knows nothing
    of them.
    """
    if hook not in _close_hooks:
        _close_hooks.append(hook)


def return_held_everywhere(why: str) -> None:
    """Write back every token this process holds in any pool (a safety net for exits)."""
    if not _forks.touched_here():
        return  # no pool was used since the fork: nothing can be held
    for core in live_cores():
        if core.generation == _forks.generation:
            with contextlib.suppress(Exception), core.lock:
                core.settle_orphans()
                core.return_held(None, why, stacklevel=2)


def _return_held_at_exit() -> None:
    # A program that ends (normally, or by an uncaught KeyboardInterrupt)
    # while holding tokens outside a with block must not take them along.
    return_held_everywhere("the interpreter is exiting")


atexit.register(_return_held_at_exit)


class Core:
    """One pool as this process holds it (see the module docstring)."""

    # Set once, when the pool is joined or created.
    style: Style
    auth: PipeAuth | FifoAuth
    source_auth: PipeAuth | FifoAuth
    identity: tuple[int, int]
    slots: int | None
    flags: MakeFlags | None
    variable: str | None
    reader: int
    writer: int
    shared: bool
    export_fds: tuple[int, ...]
    fifo_dir: str | None
    books: Books
    # Lifetime (under lock).
    closed: bool
    close_result: int | None
    handles: int
    #: One handle of the pool, given to close hooks (see on_close).
    first_handle: TokenPool
    # Per-process state, valid only in the fork generation it was set up in.
    generation: int
    creator: bool
    lock: threading.Lock
    relay: BlockingSource | None
    source: int
    implicit: ImplicitSlot
    free_tokens: list[Escrow]
    free_implicit: list[Escrow]
    holders: dict[Escrow, _Hold]
    orphans: list[_Hold | _DroppedHandle]

    def __init__(
        self,
        *,
        style: Style,
        reader: int,
        writer: int,
        auth: PipeAuth | FifoAuth,
        export_fds: tuple[int, ...],
        slots: int | None,
        owner: bool,
        flags: MakeFlags | None = None,
        variable: str | None = None,
        fifo_dir: str | None = None,
        source_auth: PipeAuth | FifoAuth | None = None,
        ledger_path: str | None = None,
        inherited_records: tuple[int, ...] = (),
        shared: bool = False,
    ) -> None:
        self.style = style
        self.auth = auth
        # What the pool was joined from, to find it again (see pool._shared_handle).
        self.source_auth = auth if source_auth is None else source_auth
        self.slots = slots
        self.flags = flags
        self.variable = variable
        self.reader = reader
        self.writer = writer
        # Our reader is the description make and its other clients share (no
        # private reopen was possible): see _reader.BlockingSource.
        self.shared = shared
        self.export_fds = export_fds
        self.fifo_dir = fifo_dir
        self.books = Books(ledger_path, inherited_records)
        self.closed = False
        self.close_result = None
        self.handles = 0
        try:
            st = os.fstat(reader)
            self.identity = (st.st_dev, st.st_ino)
            self._setup(owner)
            # The fd fileno() returns, made now rather than on first use: a
            # process that runs out of descriptors later can still wait.
            self.implicit.poll_fd()
        except BaseException:
            self.closed = True
            _posix.close_quietly(reader, writer, *export_fds, *inherited_records)
            raise
        _live.add(self)

    def _setup(self, creator: bool) -> None:
        self.creator = creator
        self.lock = threading.Lock()
        self.relay = None
        self.source = self.reader
        if self.shared and not _posix.ATOMIC_MOVES and os.get_blocking(self.reader):
            # A read could block: tokens come through a helper thread instead.
            self.relay = BlockingSource(self.reader, self.writer)
            self.source = self.relay.r
            self._register(self.relay.r)
        self.implicit = ImplicitSlot(self.source)
        self.free_tokens = []
        self.free_implicit = []
        self.holders = {}
        # The references of tokens dropped while held. Their callback is this
        # list's append, a C function: no bytecode runs (and no signal handler
        # can raise) as a token goes; the next call on the pool gives it back.
        self.orphans = []
        self._on_dropped = self.orphans.append
        _forks.note_touched()
        self.generation = _forks.generation  # last: other threads test it without a lock

    def own(self) -> None:
        """Make sure the per-process state is this process's (see makejobs._forks)."""
        if self.generation != _forks.generation:
            self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        """First use in a forked child (or grandchild...): drop the ancestor's state."""
        with _forks.lock:
            if self.generation == _forks.generation:
                return  # another thread of this process got here first
            # The child runs on the token its parent acquired for it: that is
            # its implicit slot. The parent's escrows and implicit pipe stay
            # open here (the parent's running jobs may be ours too), untouched:
            # draining one would give back a slot the parent holds.
            self.books.after_fork()
            self._setup(False)

    @property
    def owner(self) -> bool:
        return self.creator and self.generation == _forks.generation

    # -- taking and giving back (callers hold self.lock) --------------------------------

    def take(self, handle: TokenPool, implicit: bool) -> Token | None:
        """Move one slot into a fresh escrow: the implicit one or a pool token."""
        if implicit:
            free, source, dest = self.free_implicit, self.implicit.r, self.implicit.w
        else:
            free, source, dest = self.free_tokens, self.source, self.writer
        escrow = free.pop() if free else self._new_escrow(dest, register=not implicit)
        # The holder exists before the slot moves: whatever interrupts us after
        # the move, the token is in its escrow, and the escrow is listed with a
        # reference to the Token that calls back if the Token is dropped held.
        token = Token(handle, escrow, implicit, self.generation)
        hold = _Hold(token, self._on_dropped)
        hold.escrow = escrow
        hold.handle = handle
        self.holders[escrow] = hold
        escrow.count = 1  # before the byte: see Escrow.count
        if _splice is not None:  # _posix.move, inlined: this is the cost of every token
            try:
                moved = _splice(source, escrow.w, 1, flags=_NONBLOCK) or -1
            except BlockingIOError:
                moved = 0
        else:
            try:
                moved = _posix.move(source, escrow.w, 1)
            except EOFError:
                moved = -1
        if moved <= 0:
            escrow.count = 0
            token._escrow = None
            del self.holders[escrow]
            free.append(escrow)
            if moved < 0:
                raise _posix.end_of_file(self.reader)
            return None
        if implicit:
            self.implicit.maybe_free = False
        elif self.books.path is not None:
            self.books.took(self.reader, self._register_record)
        return token

    def give_back(self, token: Token) -> None:
        escrow = token._escrow
        if escrow is None:
            raise ValueError(f"{token!r} was already released")
        if token.implicit:
            self.implicit.maybe_free = True  # before the byte: see ImplicitSlot
        elif self.books.record is not None:
            self.books.giving_back(escrow.held())  # before: a death in between loses
        try:
            escrow.give_back()
        except PoolBroken:
            # The pool refused the byte: it is dropped, with its escrow.
            token._escrow = None
            self.holders.pop(escrow, None)
            raise
        # Cleared only after the move, so an interrupted release can be retried
        # (an empty escrow gives back nothing).
        token._escrow = None
        self.holders.pop(escrow, None)
        (self.free_implicit if token.implicit else self.free_tokens).append(escrow)

    def _new_escrow(self, dest: int, register: bool) -> Escrow:
        escrow = Escrow(dest)
        if register:
            escrow.registered = self._register(escrow.r)
        return escrow

    def _register(self, holding: int) -> bool:
        """Tell the guardian that the pipe read through *holding* may hold our tokens."""
        from . import guardian

        keeper = guardian.current()
        if keeper is None:
            return False
        keeper.add_escrow(self, self.writer, holding)
        return True

    def _register_record(self, record: Record) -> None:
        from . import guardian

        keeper = guardian.current()
        if keeper is not None:
            keeper.add_record(self, self.writer, record.fd)

    def settle_orphans(self) -> None:
        """Give back the escrows of tokens dropped while held (the lock is held).

        A dropped token's reference lands in :attr:`orphans` when it is
        collected; only one still listed for its escrow is a held slot (one
        never listed, or released since, holds nothing). A handle dropped
        while the lock was taken is counted off here, and if it was the last
        one the pool closes quietly, as :meth:`TokenPool.__del__` would have.
        """
        while self.orphans:
            hold = self.orphans.pop()
            if hold is DROPPED_HANDLE:
                self.handles -= 1
                if self.handles == 0 and not self.closed:
                    self.closed = True
                    self.release_fds()
                    return
                continue
            escrow: Escrow | None = getattr(hold, "escrow", None)  # unset: never listed
            if escrow is None or self.holders.get(escrow) is not hold:
                continue
            del self.holders[escrow]
            if escrow.held():
                warnings.warn(
                    "a jobserver token was garbage collected without being released;"
                    " giving it back",
                    ResourceWarning,
                    stacklevel=2,
                )
            if escrow.dest == self.writer:
                self.books.giving_back(escrow.held())
            with contextlib.suppress(PoolBroken):
                escrow.give_back()
            if not escrow.held():
                free = self.free_implicit if escrow.dest == self.implicit.w else self.free_tokens
                free.append(escrow)

    def held_by(self, handle: TokenPool | None) -> list[Escrow]:
        """The escrows holding pool tokens taken through *handle* (None: any handle)."""
        return [
            escrow
            for escrow, hold in self.holders.items()
            if escrow.dest == self.writer and (handle is None or hold.handle is handle)
        ]

    def return_held(self, handle: TokenPool | None, why: str, stacklevel: int) -> int:
        """Give back the pool tokens still held through *handle* (lock held)."""
        escrows = [escrow for escrow in self.held_by(handle) if escrow.held()]
        if not escrows:
            return 0
        count = sum(escrow.held() for escrow in escrows)
        warnings.warn(
            f"{why} while holding {count} token(s); returning them",
            ResourceWarning,
            stacklevel=stacklevel + 1,
        )
        for escrow in escrows:
            # The Token keeps its (now empty) escrow: releasing it later moves
            # nothing, and recycles it. While the pool closes it stays listed,
            # so that it is closed with the rest.
            self.books.giving_back(escrow.held())
            with contextlib.suppress(PoolBroken):
                escrow.give_back()
            if not self.closed:
                self.holders.pop(escrow, None)
        return count

    # -- closing ---------------------------------------------------------------------

    def close(self, stacklevel: int) -> int | None:
        """Close the pool for this process (its last handle was closed)."""
        with self.lock:
            if self.closed:
                return self.close_result
            # Closed before the held tokens go back, so no thread starting an
            # acquire now can take one of them from a pool about to vanish.
            self.closed = True
        for hook in list(_close_hooks):
            hook(self.first_handle)
        with self.lock:
            self.settle_orphans()
            self.return_held(None, "closing a token pool", stacklevel + 1)
            result = None
            if self.owner and self.slots is not None:
                result = _posix.drain(self.reader)
                expected = self.slots - 1
                if result != expected:
                    what = "missing" if result < expected else "extra"
                    warnings.warn(
                        f"token pool closed with {result} token(s) available, expected"
                        f" {expected}: {abs(expected - result)} {what}",
                        TokenCountWarning,
                        stacklevel=stacklevel + 1,
                    )
            self.release_fds()
            self.close_result = result
        from . import guardian

        keeper = guardian.current(start=False)
        if keeper is not None:
            keeper.forget(self)
        _live.discard(self)
        return result

    def release_fds(self) -> None:
        escrows = [*self.free_tokens, *self.free_implicit, *self.holders]
        self.free_tokens, self.free_implicit, self.holders, self.orphans = [], [], {}, []
        for escrow in escrows:
            escrow.close()
        if self.relay is not None:
            self.relay.close()
        _posix.close_quietly(self.reader, self.writer, *self.export_fds)
        self.implicit.close()
        self.books.close(self.owner)
        if self.owner and self.fifo_dir is not None:
            remove_tree(self.fifo_dir)

    def __del__(self) -> None:
        # Every handle is gone without close(): let go of the descriptors, but
        # write nothing (at interpreter exit the atexit hook already did).
        if not getattr(self, "closed", True) and self.generation == _forks.generation:
            self.closed = True
            self.release_fds()


def identical(identity: tuple[int, int], exclude: Core) -> Core | None:
    """The open pool of this process on the pipe or fifo *identity* (device, inode)."""
    for core in live_cores():
        if core is not exclude and core.identity == identity:
            core.own()
            return core
    return None


def forget(core: Core) -> None:
    """*core* turned out to duplicate an open pool: drop it without closing that pool."""
    core.closed = True
    core.release_fds()
    _live.discard(core)


def remove_tree(path: str) -> None:
    """Remove a fifo's private directory, quietly (shutil is imported only for fifos)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
