"""The token pool: join a make/ninja/cargo jobserver, or create one.

A :class:`TokenPool` is this process's handle on a GNU make jobserver. Every
process that make (or we) starts owns one *implicit* slot; further parallelism
costs one token each, a byte read from a shared pipe or fifo and written back
when the work is done. The pool hands out the implicit slot first and never
writes it back; every other token is returned as exactly the byte that was
read.

Joining::

    pool = TokenPool.from_environ()          # None when nothing advertises a pool
    with pool.slot() as token:
        ...                                  # one unit of parallel work

Creating, and exporting to children::

    with TokenPool.create(4) as pool:        # 3 tokens + our implicit slot
        subprocess.run(["make"], env=pool.environ(), pass_fds=pool.pass_fds)

Every slot this process holds is a byte in a private *escrow* pipe, moved
there from the pool in one system call (see :mod:`makejobs.token`): whatever
exception interrupts a caller, a token is in the pool or in exactly one
escrow, never lost and never given back twice, and this process's guardian
(see :mod:`makejobs.guardian`) gives back what is left in escrows if the
process is killed.

Thread safety: every method may be called from any thread. Fork safety: a
forked child gets its own implicit slot (the token its parent ran it on), no
held tokens and no ownership. Pickling (spawn/forkserver children, or queues)
passes pipe fds along and reopens fifos by path; unpickling (or copying) in a
process that holds the pool already gives another handle on it.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import stat
import threading
import warnings
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from time import monotonic

from . import _advertised, _posix
from ._advertised import Advertised
from ._reader import BlockingSource
from .errors import Blocked, JobserverUnavailable, PoolBroken, TokenCountWarning
from .ledger import LEDGER_VARIABLE, Ledger, Record
from .protocol import (
    FifoAuth,
    MakeFlags,
    PipeAuth,
    format_makeflags,
    parse_makeflags,
    replace_auth,
)
from .token import Escrow, ImplicitSlot, Slot, Token

# Not typing.TYPE_CHECKING, and no typing at run time (see makejobs/__init__.py):
# every makejobs command and job imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Literal

    from .process import JobPopen

__all__ = ["ENVIRON_VARIABLES", "Advertised", "Style", "Token", "TokenPool", "choose_advertised"]

if TYPE_CHECKING:
    #: How a pool is shared: an anonymous pipe or a named fifo.
    Style = Literal["pipe", "fifo"]


def __getattr__(name: str) -> Any:
    # Style at run time (for annotations a program evaluates), built on first
    # use so that importing the pool does not import typing.
    if name == "Style":
        from typing import Literal

        return Literal["pipe", "fifo"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Where a pool is looked for, in order of preference (see choose_advertised).
ENVIRON_VARIABLES = _advertised.ORDER

#: The byte a pool we create is filled with; make writes '+' too.
TOKEN_BYTE = b"+"

_NO_PLUS_HINT = (
    "the parent make rule probably lacks '+' (or does not mention $(MAKE)), so make"
    " closed the jobserver fds for this command; add '+' to the recipe line"
)
_CLOSED_FDS_HINT = (
    _NO_PLUS_HINT + ". If the parent is a Python program, it must hand the fds on:"
    " subprocess closes them unless they are in pass_fds (use TokenPool.run()/popen(),"
    " or pass_fds=pool.pass_fds)"
)
_OWN_FDS_HINT = (
    _NO_PLUS_HINT + ". To join a pipe this process made itself on purpose, mark both"
    " ends inheritable first (os.set_inheritable(fd, True))"
)


def choose_advertised(environ: Mapping[str, str] | None = None) -> Advertised:
    """Which pool :meth:`TokenPool.from_environ` joins for *environ*, and why.

    ``MAKEFLAGS`` is preferred, then ``CARGO_MAKEFLAGS``, then ``MFLAGS``, and
    a variable whose pool cannot be used never hides a usable one (the rule
    and why: :mod:`makejobs._advertised`). Finding out whether a pool can be
    used means joining it: each is joined and closed again here, so no token
    is taken and a handle this process already holds stays open.
    """
    pool, choice = TokenPool._join_advertised(os.environ if environ is None else environ)
    if pool is not None:
        pool.close()
    return choice


# -- fork ------------------------------------------------------------------------------
#
# A forked child must not use its parent's per-process state: the implicit
# slot (the child runs on the token its parent acquired for it, which is its
# own implicit slot), the held tokens, locks another parent thread may have
# held at the fork, ownership. That state is not rebuilt at the fork: the only
# at-fork work is counting the fork, and each pool (and each Jobserver engine)
# compares the count it was set up under with the current one when it is next
# used, rebuilding its state then. A forked job that never touches its
# inherited pools, the common case, thus pays nothing for them: at-fork hooks
# run in every fork of the process, and eager ones cost every job a few
# hundred microseconds of copy-on-write page faults per live pool.

#: Forks between the process that started this interpreter and this one.
fork_generation = 0
#: The generation in which this process last set up (or rebuilt) a pool's
#: state: if it is not the current one, this process holds no tokens at all.
_touched_generation = 0
# Serializes rebuilding after a fork (threads the child started may race to
# it); made anew in each child, since a parent thread may hold it at the fork.
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global fork_generation, _fork_lock
    fork_generation += 1
    _fork_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _note_touched() -> None:
    """A pool's state was set up in this process: it may come to hold tokens."""
    global _touched_generation
    _touched_generation = fork_generation


def return_held_everywhere(why: str) -> None:
    """Write back every token this process holds in any pool (a safety net for exits)."""
    if _touched_generation != fork_generation:
        return  # no pool was used since the fork: nothing can be held
    for core in list(_live_cores):
        if core.generation == fork_generation and not core.closed:
            with contextlib.suppress(Exception), core.lock:
                core.settle_orphans()
                core.return_held(None, why, stacklevel=2)


def _return_held_at_exit() -> None:
    # A program that ends (normally, or by an uncaught KeyboardInterrupt)
    # while holding tokens outside a with block must not take them along.
    return_held_everywhere("the interpreter is exiting")


atexit.register(_return_held_at_exit)


class _Core:
    """One pool as this process holds it, shared by every :class:`TokenPool` handle on it.

    The descriptors, the identity (device and inode of the pipe or fifo), the
    ledger, and the per-process state: the implicit slot, the escrows
    (see :mod:`makejobs.token`) in use and free for reuse, and who took each.
    The per-process state belongs to the fork generation it was set up in
    (see :data:`fork_generation`): call :meth:`own` before using it.
    """

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
    export_fds: tuple[int, ...]
    fifo_dir: str | None
    ledger: Ledger | None
    ledger_path: str | None
    record: Record | None
    inherited_records: list[int]
    # Lifetime (under lock).
    closed: bool
    close_result: int | None
    handles: int
    # Per-process state, valid only in the fork generation it was set up in.
    generation: int
    creator: bool
    lock: threading.Lock
    relay: BlockingSource | None
    source: int
    implicit: ImplicitSlot
    free_tokens: list[Escrow]
    free_implicit: list[Escrow]
    holders: dict[Escrow, tuple[TokenPool, weakref.ref[Token]]]
    orphans: list[Escrow]

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
        self.ledger = None
        self.ledger_path = ledger_path
        self.record = None
        # Records of ancestors, kept open so their locks show we are alive.
        self.inherited_records = list(inherited_records)
        self.closed = False
        self.close_result = None
        self.handles = 0
        try:
            st = os.fstat(reader)
            self.identity = (st.st_dev, st.st_ino)
            self._setup(owner)
        except BaseException:
            self.closed = True
            _posix.close_quietly(reader, writer, *export_fds, *inherited_records)
            raise
        _live_cores.add(self)

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
        self.orphans = []
        _note_touched()
        self.generation = fork_generation  # last: other threads test it without a lock

    def own(self) -> None:
        """Make sure the per-process state is this process's (see _after_fork_in_child)."""
        if self.generation != fork_generation:
            self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        """First use in a forked child (or grandchild...): drop the ancestor's state."""
        with _fork_lock:
            if self.generation == fork_generation:
                return  # another thread of this process got here first
            # The child runs on the token its parent acquired for it: that is
            # its implicit slot. The parent's escrows and implicit pipe stay
            # open here (the parent's running jobs may be ours too), untouched:
            # draining one would give back a slot the parent holds.
            if self.record is not None:
                # Our parent's ledger record stays open here: its lock says that
                # a process running on the parent's tokens is still alive.
                self.inherited_records.append(self.record.fd)
                self.record = None
            self._setup(False)

    @property
    def owner(self) -> bool:
        return self.creator and self.generation == fork_generation

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
        self.holders[escrow] = (handle, weakref.ref(token, partial(self.dropped, escrow)))
        try:
            moved = _posix.move(source, escrow.w, 1)
        except EOFError:
            moved = -1
        if moved <= 0:
            token._escrow = None
            del self.holders[escrow]
            free.append(escrow)
            if moved < 0:
                raise _posix.end_of_file(self.reader)
            return None
        if implicit:
            self.implicit.maybe_free = False
        elif self.ledger_path is not None:
            self._note_held(1)
        return token

    def give_back(self, token: Token) -> None:
        escrow = token._escrow
        if escrow is None:
            raise ValueError(f"{token!r} was already released")
        if token.implicit:
            self.implicit.maybe_free = True  # before the byte: see ImplicitSlot
        elif self.record is not None:
            self.record.add(-escrow.held())  # before the write: a death in between loses
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

    def dropped(self, escrow: Escrow, ref: object) -> None:
        """A Token was garbage collected while it held *escrow*: give its slot back.

        Called only for tokens dropped unreleased (a release forgets the
        reference first), so no Python code runs when a released token goes.
        """
        if self.generation != fork_generation or escrow not in self.holders:
            return  # a token of our parent's, in a forked child; or already done
        # Garbage collection can run inside a locked section of this very
        # thread: never wait for the lock here, leave the work to its holder.
        self.orphans.append(escrow)
        if not self.lock.acquire(False):
            return
        try:
            if not self.closed:
                self.settle_orphans()
        finally:
            self.lock.release()

    def settle_orphans(self) -> None:
        """Give back the escrows of tokens dropped while held (the lock is held)."""
        while self.orphans:
            escrow = self.orphans.pop()
            if self.holders.pop(escrow, None) is None:
                continue
            if escrow.held():
                warnings.warn(
                    "a jobserver token was garbage collected without being released;"
                    " giving it back",
                    ResourceWarning,
                    stacklevel=2,
                )
            if escrow.dest == self.writer and self.record is not None:
                self.record.add(-escrow.held())
            with contextlib.suppress(PoolBroken):
                escrow.give_back()
            if not escrow.held():
                free = self.free_implicit if escrow.dest == self.implicit.w else self.free_tokens
                free.append(escrow)

    def held_by(self, handle: TokenPool | None) -> list[Escrow]:
        """The escrows holding pool tokens taken through *handle* (None: any handle)."""
        return [
            escrow
            for escrow, (holder, _ref) in self.holders.items()
            if escrow.dest == self.writer and (handle is None or holder is handle)
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
            if self.record is not None:
                self.record.add(-escrow.held())
            with contextlib.suppress(PoolBroken):
                escrow.give_back()
            if not self.closed:
                self.holders.pop(escrow, None)
        return count

    def _note_held(self, delta: int) -> None:
        """Count a token in this process's ledger record (opened on first use)."""
        record = self.record
        if record is None and self.ledger_path is not None:
            record = self.record = Record.open(self.ledger_path, self.reader)
            if record is None:
                self.ledger_path = None  # not this pool's ledger: stop trying
            else:
                from . import guardian

                keeper = guardian.current()
                if keeper is not None:
                    keeper.add_record(self, self.writer, record.fd)
        if record is not None:
            record.add(delta)

    # -- closing ---------------------------------------------------------------------

    def close(self, stacklevel: int) -> int | None:
        """Close the pool for this process (the last handle was closed)."""
        # Coroutines waiting in acquire_async() watch fileno() and would
        # never learn: make them fail, and take nothing from the tokens
        # written back next (none wait unless makejobs.aio was imported).
        import sys

        aio = sys.modules.get("makejobs.aio")
        with self.lock:
            if self.closed:
                return self.close_result
            # Closed before the held tokens go back, so no thread starting an
            # acquire now can take one of them from a pool about to vanish.
            self.closed = True
        if aio is not None:
            aio.pool_closing(self.handle_key)
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
            self._release_fds()
            self.close_result = result
        from . import guardian

        keeper = guardian.current(start=False)
        if keeper is not None:
            keeper.forget(self)
        _live_cores.discard(self)
        return result

    def _release_fds(self) -> None:
        escrows = [*self.free_tokens, *self.free_implicit, *self.holders, *self.orphans]
        self.free_tokens, self.free_implicit, self.holders, self.orphans = [], [], {}, []
        for escrow in escrows:
            escrow.close()
        if self.relay is not None:
            self.relay.close()
        _posix.close_quietly(self.reader, self.writer, *self.export_fds)
        self.implicit.close()
        if self.record is not None:
            self.record.close()
            self.record = None
        _posix.close_quietly(*self.inherited_records)
        self.inherited_records = []
        if self.owner and self.ledger is not None:
            self.ledger.close()
        if self.owner and self.fifo_dir is not None:
            _remove_tree(self.fifo_dir)

    def __del__(self) -> None:
        # Every handle is gone without close(): let go of the descriptors, but
        # write nothing (at interpreter exit the atexit hook already did).
        if not getattr(self, "closed", True) and self.generation == fork_generation:
            self.closed = True
            self._release_fds()

    #: The key aio keys its waiters by: any one object per pool (see close()).
    handle_key: TokenPool


_live_cores: weakref.WeakSet[_Core] = weakref.WeakSet()


class TokenPool:
    """A handle on a GNU make compatible jobserver pool.

    Build one with :meth:`from_environ` (join) or :meth:`create` (own); the
    constructor is private. Every join returns a handle of its own, and a
    handle's :meth:`close` closes only that handle: several parts of a
    program may join the same pool and close it when they are done, and the
    pool stays open for the others. Within a process all handles on one pool
    share one implicit slot.

    Attributes:
        style: ``"pipe"`` or ``"fifo"``.
        auth: what children are told (:class:`~makejobs.protocol.PipeAuth` with
            the fd numbers they inherit, or :class:`~makejobs.protocol.FifoAuth`).
        slots: total parallelism N when known (always for created pools; from
            ``-jN`` for joined ones, where it is informative only).
        owner: True in the process that created the pool (never in a forked child).
        flags: the parsed ``MAKEFLAGS`` a joined pool came from, else None.
        variable: the environment variable a joined pool came from, else None.
    """

    _core: _Core
    _closed: bool
    _close_result: int | None

    def __init__(self) -> None:
        raise TypeError("use TokenPool.from_environ() or TokenPool.create()")

    @classmethod
    def _attach(cls, core: _Core) -> TokenPool:
        """A new handle on *core* (counted: each handle's close() undoes one)."""
        self = object.__new__(cls)
        self._core = core
        self._closed = False
        self._close_result = None
        with core.lock:
            if core.closed:
                raise ValueError("the token pool is closed")
            core.handles += 1
        if core.handles == 1:
            core.handle_key = self
        return self

    @classmethod
    def _new(cls, **fields: Any) -> TokenPool:
        """A new pool in this process (see _Core), or a handle on the one it already holds."""
        core = _Core(**fields)
        existing = _core_with_identity(core.identity, core)
        if existing is not None:
            # The same pipe or fifo under other numbers (a pickled handle, say):
            # one pool, one implicit slot per process.
            core.closed = True
            core._release_fds()
            _live_cores.discard(core)
            return cls._attach(existing)
        return cls._attach(core)

    # -- what the handle shows of its pool ---------------------------------------------

    @property
    def style(self) -> Style:
        return self._core.style

    @property
    def auth(self) -> PipeAuth | FifoAuth:
        return self._core.auth

    @property
    def slots(self) -> int | None:
        return self._core.slots

    @property
    def flags(self) -> MakeFlags | None:
        return self._core.flags

    @property
    def variable(self) -> str | None:
        return self._core.variable

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TokenPool | None:
        """Join the pool advertised by the environment, if any.

        Prefers ``MAKEFLAGS`` (the variable every make rewrites for its children,
        and the one make and ninja read), then ``CARGO_MAKEFLAGS`` (a build script
        that cargo started), then ``MFLAGS``. A variable whose pool cannot be
        used never hides a usable pool in another; :func:`choose_advertised`
        says which one is joined and why.

        Returns:
            The joined pool, or None when no variable advertises one (this
            process was not started by a parallel make, ninja or cargo). If
            this process already has the pool open, the new handle shares
            it (and its implicit slot: a process never gets two), and closing
            either handle leaves the other open.

        Raises:
            JobserverUnavailable: pools are advertised but none can be used: make
                disabled it (``-2,-2``), its fds are closed, are not pipes or are
                this process's own, the fifo is missing or stale, or its style is
                unsupported here. The error is that of the preferred variable
                (naming the others); the message says what to do.
        """
        pool, choice = cls._join_advertised(os.environ if environ is None else environ)
        if choice.error is not None:
            raise choice.error
        return pool

    @classmethod
    def _join_advertised(cls, env: Mapping[str, str]) -> tuple[TokenPool | None, Advertised]:
        """Join the pool *env* advertises (see :mod:`makejobs._advertised`); and the choice."""
        ledger = env.get(LEDGER_VARIABLE) or None

        def join(flags: MakeFlags, variable: str) -> TokenPool:
            return cls.from_makeflags(flags, variable=variable, ledger=ledger)

        return _advertised.choose(env, join)

    @classmethod
    def from_makeflags(
        cls, flags: MakeFlags | str, *, variable: str | None = None, ledger: str | None = None
    ) -> TokenPool:
        """Join the pool described by an already parsed (or raw) MAKEFLAGS value.

        *ledger* is the creator's token ledger directory (``MAKEJOBS_LEDGER``),
        used only if it names this very pool.

        Pipe descriptors that come from the environment must have been
        inherited across exec, so they cannot be close-on-exec: a close-on-exec
        descriptor is this process's own, under numbers that make 4.3 left
        behind after closing its pipe (a recipe without ``+``). A pool this
        process already holds is returned as it is (see :meth:`from_environ`).

        Raises:
            JobserverUnavailable: as for :meth:`from_environ`; also when *flags*
                advertises no pool at all.
        """
        if isinstance(flags, str):
            flags = parse_makeflags(flags)
        if flags.disabled:
            raise JobserverUnavailable(
                "make disabled the jobserver for this command (--jobserver-auth=-2,-2): "
                + _NO_PLUS_HINT,
                variable=variable,
            )
        if flags.unsupported is not None:
            raise JobserverUnavailable(
                f"unsupported jobserver style {flags.unsupported!r}: only pipe fds"
                " ('R,W') and 'fifo:PATH' work on POSIX",
                variable=variable,
            )
        auth = flags.auth
        if auth is None:
            raise JobserverUnavailable("no --jobserver-auth option found", variable=variable)
        shared = _shared_handle(auth)
        if shared is not None:
            return shared
        if isinstance(auth, PipeAuth):
            try:
                _posix.check_inherited(auth.read_fd, auth.write_fd)
                reader, writer, private = _posix.open_pipe_ends(auth.read_fd, auth.write_fd)
            except _posix.Unusable as e:
                if isinstance(e, _posix.NotInherited):
                    hint = _OWN_FDS_HINT
                else:
                    hint = _CLOSED_FDS_HINT if "not open" in str(e) else _NO_PLUS_HINT
                raise JobserverUnavailable(
                    f"cannot use the jobserver pipe {auth.read_fd},{auth.write_fd}: {e}; {hint}",
                    variable=variable,
                ) from None
            # Copies of the inherited numbers, close-on-exec, that we hand to
            # children: they stay valid even if other code closes the originals.
            export = (_posix.dup_cloexec(auth.read_fd), _posix.dup_cloexec(auth.write_fd))
            return cls._new(
                style="pipe",
                reader=reader,
                writer=writer,
                auth=PipeAuth(*export),
                export_fds=export,
                slots=flags.jobs,
                owner=False,
                flags=flags,
                variable=variable,
                source_auth=auth,
                ledger_path=ledger,
                shared=not private,
            )
        try:
            reader, writer = _posix.open_fifo_ends(auth.path)
        except _posix.Unusable as e:
            raise JobserverUnavailable(
                f"cannot use the jobserver: {e}", variable=variable
            ) from None
        return cls._new(
            style="fifo",
            reader=reader,
            writer=writer,
            auth=auth,
            export_fds=(),
            slots=flags.jobs,
            owner=False,
            flags=flags,
            variable=variable,
            ledger_path=ledger,
        )

    @classmethod
    def create(
        cls, slots: int, *, style: Style = "pipe", dir: str | None = None, ledger: bool = False
    ) -> TokenPool:
        """Create a Make-compatible pool of total parallelism *slots*.

        Like make, the pool holds ``slots - 1`` tokens; the creator's implicit
        slot is the last one. ``style="pipe"`` (the default) works with every
        GNU make and with cargo; ``"fifo"`` is what make 4.4 and upstream ninja
        prefer, but make 4.3 and older die on it.

        A fifo is made mode 0600 in a private directory (under *dir*, default
        the temporary directory) and removed by :meth:`close`.

        With *ledger*, makejobs clients of the pool record the tokens they
        hold, so :meth:`recover` can give back those of clients that were
        killed (see :mod:`makejobs.ledger` for exactly when that is sound).

        Raises:
            TypeError, ValueError: bad *slots* or *style*; ValueError also when
                the pipe cannot hold that many tokens (never a hang).
        """
        if isinstance(slots, bool) or not isinstance(slots, int):
            raise TypeError(f"slots must be an int, not {type(slots).__name__}")
        if slots < 1:
            raise ValueError(f"slots must be at least 1, not {slots}")
        if style == "pipe":
            pool = cls._create_pipe(slots)
        elif style == "fifo":
            pool = cls._create_fifo(slots, dir)
        else:
            raise ValueError(f"style must be 'pipe' or 'fifo', not {style!r}")
        if ledger:
            core = pool._core
            try:
                core.ledger = Ledger.create(core.reader, dir=core.fifo_dir)
            except BaseException:
                pool.close()
                raise
            core.ledger_path = core.ledger.path
        return pool

    @classmethod
    def _create_pipe(cls, slots: int) -> TokenPool:
        r, w = os.pipe()  # non-inheritable (PEP 446): children get them via pass_fds
        try:
            reader, writer, _private = _posix.open_pipe_ends(r, w)
        except BaseException:
            _posix.close_quietly(r, w)
            raise
        try:
            # Our writer is a private description on Linux; elsewhere it is the
            # shared one, and no child exists yet, so non-blocking is harmless.
            os.set_blocking(writer, False)
            os.set_blocking(reader, False)
            _posix.fill(writer, slots - 1, TOKEN_BYTE)
        except BaseException:
            _posix.close_quietly(r, w, reader, writer)
            raise
        return cls._new(
            style="pipe",
            reader=reader,
            writer=writer,
            auth=PipeAuth(r, w),
            export_fds=(r, w),
            slots=slots,
            owner=True,
        )

    @classmethod
    def _create_fifo(cls, slots: int, dir: str | None) -> TokenPool:
        import tempfile  # here: only fifo pools need it

        fifo_dir = tempfile.mkdtemp(prefix="makejobs-", dir=dir or _fifo_parent())
        path = os.path.join(fifo_dir, "fifo")
        try:
            os.mkfifo(path, 0o600)
            reader, writer = _posix.open_new_fifo_ends(path)
        except BaseException:
            _remove_tree(fifo_dir)
            raise
        try:
            _posix.fill(writer, slots - 1, TOKEN_BYTE)
        except BaseException:
            _posix.close_quietly(reader, writer)
            _remove_tree(fifo_dir)
            raise
        return cls._new(
            style="fifo",
            reader=reader,
            writer=writer,
            auth=FifoAuth(path),
            export_fds=(),
            slots=slots,
            owner=True,
            fifo_dir=fifo_dir,
        )

    # -- tokens -------------------------------------------------------------------

    def _live_core(self) -> _Core:
        """The core, this process's state set up; ValueError once the handle is closed."""
        if self._closed:
            raise ValueError("the token pool is closed")
        core = self._core
        if core.generation != fork_generation:
            core._reset_after_fork()
        return core

    def try_acquire(self) -> Token | None:
        """Take a slot without waiting: the implicit one if free, else a token.

        Returns:
            A :class:`Token`, or None when none is free right now.

        Raises:
            PoolBroken: the pool returned end-of-file.
            ValueError: the pool is closed.
        """
        core = self._live_core()
        with core.lock:
            if core.closed:
                raise ValueError("the token pool is closed")
            if core.orphans:
                core.settle_orphans()
            # The implicit slot is usually out: its hint saves a failing system call.
            if core.implicit.maybe_free:
                token = core.take(self, implicit=True)
                if token is not None:
                    return token
            token = core.take(self, implicit=False)
            if token is not None or core.relay is None:
                return token
        # A blocking shared pipe: a token the pool shows is fetched, briefly, and taken.
        relay = core.relay
        if not relay.shows_a_token():
            return None
        relay.want()
        try:
            relay.wait_briefly()
            with core.lock:
                if core.closed:
                    raise ValueError("the token pool is closed")
                return core.take(self, implicit=False)
        finally:
            relay.unwant()

    def _want(self) -> None:
        """A caller is about to wait on fileno(): with a helper thread, it must read."""
        relay = self._core.relay
        if relay is not None:
            relay.want()

    def _unwant(self) -> None:
        relay = self._core.relay
        if relay is not None:
            relay.unwant()

    def acquire(self, timeout: float | None = None) -> Token:
        """Take a slot, waiting up to *timeout* seconds (None: forever; 0: not at all).

        Raises:
            Blocked: no slot became free before the timeout.
            PoolBroken: the pool returned end-of-file.
            ValueError: the pool is closed.
        """
        token = self.try_acquire()
        if token is not None:
            return token
        _check_timeout(timeout)
        deadline = None if timeout is None else monotonic() + timeout
        core = self._core
        self._want()
        try:
            while True:
                remaining = None if deadline is None else deadline - monotonic()
                if remaining is not None and remaining <= 0:
                    raise Blocked(f"no jobserver token became free within {timeout} s")
                _posix.wait_readable((core.source, core.implicit.r), remaining)
                # Readable may still mean nothing for us: another client can take
                # the token between poll and read, which try_acquire reports as None.
                token = self.try_acquire()
                if token is not None:
                    return token
        finally:
            self._unwant()

    def release(self, token: Token) -> None:
        """Give *token* back: the implicit slot becomes free, any other byte is written back.

        Raises:
            ValueError: the token belongs to another pool or process, or was
                already released, or the pool is closed (then close() has
                already given it back).
            PoolBroken: the pool is full or has no reader left (the token is then dropped).
        """
        core = self._core
        pool = token._pool
        if pool is not self and (not isinstance(pool, TokenPool) or pool._core is not core):
            raise ValueError(f"{token!r} does not belong to this pool")
        if token._generation != fork_generation:
            raise ValueError(f"{token!r} was acquired by another process (before a fork)")
        with core.lock:
            if core.closed or self._closed:
                if token._escrow is None:
                    raise ValueError(f"{token!r} was already released")
                raise ValueError(
                    "the token pool is closed; the token was given back when it closed"
                )
            core.give_back(token)
            if core.orphans:
                core.settle_orphans()

    def slot(self, timeout: float | None = None) -> AbstractContextManager[Token]:
        """Hold one slot for the duration of a ``with`` block.

        ``with pool.slot(timeout) as token:`` is ``acquire(timeout)`` on entry
        and ``release(token)`` on exit, whatever the exit.
        """
        return Slot(self, timeout)

    # -- asyncio and subprocesses (implemented in makejobs.aio / makejobs.process,
    #    which sit above this module: imported when first used) -------------------

    async def acquire_async(self, timeout: float | None = None) -> Token:
        """Take a slot without blocking the running asyncio event loop.

        See :func:`makejobs.aio.acquire`: the loop's reader on :meth:`fileno`
        wakes the waiter (no thread, no polling), waiters are served in order,
        and a cancelled waiter never loses a token.

        Raises:
            Blocked: no slot within *timeout*.
            PoolBroken: the pool returned end-of-file.
            ValueError: the pool is closed.
        """
        from . import aio

        return await aio.acquire(self, timeout)

    def slot_async(
        self, timeout: float | None = None
    ) -> contextlib.AbstractAsyncContextManager[Token]:
        """``async with pool.slot_async(timeout) as token:`` (see :func:`makejobs.aio.slot`)."""
        from . import aio

        return aio.slot(self, timeout)

    def popen(self, args: Any, **kwargs: Any) -> JobPopen:
        """``subprocess.Popen(args, **kwargs)`` on one slot, with this pool exported to it.

        See :func:`makejobs.process.popen`: the slot is held until the process
        is reaped; ``slot_timeout=`` bounds the wait for it.
        """
        from . import process

        return process.popen(self, args, **kwargs)

    def run(self, args: Any, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run(args, **kwargs)`` holding one slot for the life of the process.

        See :func:`makejobs.process.run` (``slot_timeout=`` bounds the wait for the slot).
        """
        from . import process

        return process.run(self, args, **kwargs)

    def fileno(self) -> int:
        """An fd that polls readable when a slot may be available.

        On Linux it covers both the pool's tokens and this process's implicit
        slot coming back (an epoll fd over both); elsewhere only the tokens.
        Readable is a hint: follow it with :meth:`try_acquire`, which may
        still find nothing when another client was faster.
        """
        return self._live_core().implicit.poll_fd()

    def available(self) -> int | None:
        """Tokens waiting in the pool right now (racy; for display), if the OS says."""
        return _posix.available_tokens(self._core.reader)

    @property
    def implicit_free(self) -> bool:
        """True while this process's implicit slot is not handed out."""
        return self._live_core().implicit.free()

    @property
    def held(self) -> int:
        """Tokens (other than the implicit slot) held through this handle now."""
        core = self._live_core()
        with core.lock:
            return sum(escrow.held() for escrow in core.held_by(self))

    # -- children -------------------------------------------------------------------

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The fds a child must inherit: the pool's (pipe style) and, with a token
        ledger, the records whose locks must outlive us while the child runs."""
        core = self._core
        core.own()
        if core.record is None and not core.inherited_records:
            return core.export_fds
        records = [] if core.record is None else [core.record.fd]
        return (*core.export_fds, *records, *core.inherited_records)

    def recover(self) -> int:
        """Give back the tokens of ledger records whose holders are all gone.

        Only the creator of a pool made with ``ledger=True`` can recover, and
        only soundly when no orphaned descendant of a dead holder can still be
        running (``makejobs serve`` ensures that; see :mod:`makejobs.ledger`).

        Returns:
            How many tokens were written back.
        """
        core = self._core
        if core.ledger is None or not core.owner:
            raise ValueError("only the creator of a pool with a ledger can recover tokens")
        if self._closed or core.closed:
            raise ValueError("the token pool is closed")
        return core.ledger.recover(lambda n: _posix.fill(core.writer, n, TOKEN_BYTE))

    def makeflags(self) -> str:
        """A fresh ``MAKEFLAGS`` value advertising this pool."""
        return format_makeflags(MakeFlags(auth=self.auth, jobs=self.slots))

    def environ(
        self,
        base: Mapping[str, str] | None = None,
        *,
        style: Literal["pipe", "fifo", "auto"] | None = None,
        command: Any = None,
    ) -> dict[str, str]:
        """The environment for a child that should join this pool.

        A copy of *base* (default ``os.environ``) whose ``MAKEFLAGS`` and
        ``MFLAGS`` advertise this pool (other flags and command-line variable
        overrides are kept) and whose ``CARGO_MAKEFLAGS`` does too. In pipe
        style, also hand :attr:`pass_fds` to the child (``subprocess`` closes
        every other fd).

        *style* offers the pool in another form (see :mod:`makejobs.advertise`):
        ``"fifo"`` names a pipe pool by path (``/proc/PID/fd/N``, Linux), so a
        child reaches it without inheriting anything; ``"auto"`` picks the form
        from *command*. None (the default) is the pool's own form.
        """
        if style is not None:
            from . import advertise

            return advertise.environ(self, style, command=command, base=base)
        env = dict(os.environ if base is None else base)
        ledger_path = self._core.ledger_path
        if ledger_path is not None:
            env[LEDGER_VARIABLE] = ledger_path
        else:
            env.pop(LEDGER_VARIABLE, None)  # some other pool's ledger
        for variable in ("MAKEFLAGS", "MFLAGS"):
            value = env.get(variable)
            if value:
                env[variable] = replace_auth(value, self.auth, jobs=self.slots)
        if not env.get("MAKEFLAGS"):
            env["MAKEFLAGS"] = self.makeflags()
        env["CARGO_MAKEFLAGS"] = self.makeflags()
        return env

    # -- lifetime -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once this handle (or the whole pool) is closed."""
        return self._closed or self._core.closed

    def close(self) -> int | None:
        """Close this handle. Idempotent; other handles on the pool stay open.

        Tokens still held through this handle are written back first (with a
        :class:`ResourceWarning`). When this was the last open handle of the
        process, the pool is closed for the process: a pool this process
        created is then drained without blocking and the tokens counted (a
        :class:`TokenCountWarning` reports missing or extra ones), and a fifo
        is removed.

        Returns:
            For a created pool closed by this call, the number of tokens found
            (``slots - 1`` when every client returned its tokens); otherwise None.
        """
        core = self._core
        core.own()
        with core.lock:
            if self._closed:
                return self._close_result
            self._closed = True
            core.handles -= 1
            last = core.handles == 0
            if not last and not core.closed:
                core.return_held(self, "closing a token pool", stacklevel=2)
        if last:
            self._close_result = core.close(stacklevel=2)
        return self._close_result

    def return_held(self, why: str, *, stacklevel: int = 2) -> int:
        """Write back every token still held through this handle, with a ResourceWarning.

        A safety net for paths where the holder is gone (a job function that
        returned without releasing, a pool being closed): the tokens go back
        instead of being lost for the rest of the build. Returns how many.
        """
        core = self._core
        core.own()
        with core.lock:
            if core.closed:
                return 0
            return core.return_held(self, why, stacklevel + 1)

    def __enter__(self) -> TokenPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is None or getattr(self, "_closed", True):
            return
        # Dropped without close(): its tokens go back when their Tokens are
        # collected; the pool closes (quietly) with its last handle.
        self._closed = True
        if core.generation == fork_generation:
            with contextlib.suppress(Exception):
                with core.lock:
                    core.handles -= 1
                    last = core.handles == 0
                if last and not core.closed:
                    core.closed = True
                    core._release_fds()

    def __repr__(self) -> str:
        core = self._core
        where = (
            core.auth.path
            if isinstance(core.auth, FifoAuth)
            else f"{core.auth.read_fd},{core.auth.write_fd}"
        )
        role = "created" if core.owner else "joined"
        if self.closed:
            return f"<TokenPool {role} {core.style} {where} slots={core.slots} closed>"
        free = self.available()
        state = f"free={free}" if free is not None else ""
        if core.generation == fork_generation:
            state += f" implicit={'free' if core.implicit.free() else 'out'} held={self.held}"
        return f"<TokenPool {role} {core.style} {where} slots={core.slots} {state.strip()}>"

    # -- fork, copy and pickle ----------------------------------------------------------

    @property
    def owner(self) -> bool:
        """True in the process that created the pool (never in a forked child)."""
        return self._core.owner

    def __copy__(self) -> TokenPool:
        """Another handle on the same pool (see the class docstring)."""
        core = self._live_core()
        return TokenPool._attach(core)

    def __deepcopy__(self, memo: object) -> TokenPool:
        return self.__copy__()

    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("cannot pickle a closed token pool")
        core = self._live_core()
        from multiprocessing.reduction import DupFd

        records = [] if core.record is None else [core.record.fd]
        state = {
            "slots": core.slots,
            "flags": core.flags,
            "variable": core.variable,
            "ledger": core.ledger_path,
            # A spawned child holds our record's lock as a forked one would.
            "records": [DupFd(fd) for fd in (*records, *core.inherited_records)],
        }
        if isinstance(core.auth, FifoAuth):
            return (_rebuild_fifo, (core.auth.path, state))
        return (_rebuild_pipe, (DupFd(core.export_fds[0]), DupFd(core.export_fds[1]), state))


def _rebuild_pipe(read: Any, write: Any, state: dict[str, Any]) -> TokenPool:
    r, w = read.detach(), write.detach()
    os.set_inheritable(r, False)
    os.set_inheritable(w, False)
    records = _detach_records(state)
    try:
        reader, writer, private = _posix.open_pipe_ends(r, w)
    except _posix.Unusable as e:
        _posix.close_quietly(r, w, *records)
        raise JobserverUnavailable(f"cannot use the pickled jobserver pipe: {e}") from None
    return TokenPool._new(
        style="pipe",
        reader=reader,
        writer=writer,
        auth=PipeAuth(r, w),
        export_fds=(r, w),
        slots=state["slots"],
        owner=False,
        flags=state["flags"],
        variable=state["variable"],
        ledger_path=state["ledger"],
        inherited_records=records,
        shared=not private,
    )


def _rebuild_fifo(path: str, state: dict[str, Any]) -> TokenPool:
    records = _detach_records(state)
    try:
        reader, writer = _posix.open_fifo_ends(path)
    except _posix.Unusable as e:
        _posix.close_quietly(*records)
        raise JobserverUnavailable(f"cannot use the jobserver: {e}") from None
    return TokenPool._new(
        style="fifo",
        reader=reader,
        writer=writer,
        auth=FifoAuth(path),
        export_fds=(),
        slots=state["slots"],
        owner=False,
        flags=state["flags"],
        variable=state["variable"],
        ledger_path=state["ledger"],
        inherited_records=records,
    )


def _detach_records(state: dict[str, Any]) -> tuple[int, ...]:
    records = tuple(int(dup.detach()) for dup in state["records"])
    for fd in records:
        os.set_inheritable(fd, False)
    return records


def _shared_handle(auth: PipeAuth | FifoAuth) -> TokenPool | None:
    """A new handle on the pool of this process advertised as *auth*, if there is one.

    A process has one implicit slot, whatever number of handles it opens on a
    pool: joining a pool this process already holds (say, a Jobserver job
    calling from_environ() on the pool its parent exported to it) gives a
    handle on the same pool instead of a second pool with a second implicit
    slot. A fifo path is matched by what it opens too: ``/proc/PID/fd/N``, the
    by-path form of a pipe pool (see makejobs.advertise), names that pipe.
    """
    same = _identity(auth.path) if isinstance(auth, FifoAuth) else None
    for core in list(_live_cores):
        if core.closed:
            continue
        if auth in (core.auth, core.source_auth) or (same is not None and core.identity == same):
            core.own()
            with contextlib.suppress(ValueError):
                return TokenPool._attach(core)
    return None


def _identity(file: str | int) -> tuple[int, int] | None:
    """(device, inode) of the fifo or pipe at a path or fd; None if it is not one."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISFIFO(st.st_mode) else None


def _core_with_identity(identity: tuple[int, int], exclude: _Core) -> _Core | None:
    """The open pool of this process on the pipe or fifo *identity* (device, inode)."""
    for core in list(_live_cores):
        if core is not exclude and not core.closed and core.identity == identity:
            core.own()
            return core
    return None


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number or None, not {timeout!r}")


def _fifo_parent() -> str:
    """The directory for a new fifo: the temporary directory, unless its path
    has blanks or backslashes, which cargo and ninja cannot parse (they split
    MAKEFLAGS on spaces without honouring make's escapes)."""
    import tempfile

    tmp = tempfile.gettempdir()
    if any(c in tmp for c in " \t\\") and os.access("/tmp", os.W_OK):
        return "/tmp"
    return tmp


def _remove_tree(path: str) -> None:
    """Remove a fifo's private directory, quietly (shutil is imported only for fifos)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
