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

Thread safety: every method may be called from any thread. Fork safety: a
forked child gets its own implicit slot (the token its parent ran it on), no
held tokens and no ownership. Pickling (spawn/forkserver children, or queues)
passes pipe fds along and reopens fifos by path.
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
from time import monotonic

from . import _posix
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
from .token import ImplicitSlot, Slot, Token

# Not typing.TYPE_CHECKING, and no typing at run time (see makejobs/__init__.py):
# every makejobs command and job imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Literal

    from .process import JobPopen

__all__ = ["ENVIRON_VARIABLES", "Style", "Token", "TokenPool"]

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


#: Where a pool is looked for, in order (as jobserver-rs does, but falling
#: through a variable that advertises no pool).
ENVIRON_VARIABLES = ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS")

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


_live_pools: weakref.WeakSet[TokenPool] = weakref.WeakSet()


def live_pools() -> list[TokenPool]:
    """Every open pool handle of this process."""
    return [pool for pool in list(_live_pools) if not pool._closed]


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
    for pool in live_pools():
        if pool._generation == fork_generation:
            with contextlib.suppress(Exception):
                pool.return_held(why)


def _return_held_at_exit() -> None:
    # A program that ends (normally, or by an uncaught KeyboardInterrupt)
    # while holding tokens outside a with block must not take them along.
    return_held_everywhere("the interpreter is exiting")


atexit.register(_return_held_at_exit)


class TokenPool:
    """A handle on a GNU make compatible jobserver pool.

    Build one with :meth:`from_environ` (join) or :meth:`create` (own); the
    constructor is private.

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

    style: Style
    auth: PipeAuth | FifoAuth
    slots: int | None
    flags: MakeFlags | None
    variable: str | None
    _reader: int
    _writer: int
    _export_fds: tuple[int, ...]
    _fifo_dir: str | None
    _closed: bool
    _close_result: int | None
    _users: int
    _source_auth: PipeAuth | FifoAuth
    _ledger: Ledger | None
    _ledger_path: str | None
    _record: Record | None
    _inherited_records: list[int]
    # Per-process state, valid only in the fork generation it was set up in
    # (see _after_fork_in_child): call _own() before using any of it.
    _generation: int
    _owner: bool
    _implicit: ImplicitSlot
    _held: set[Token]
    _state_lock: threading.Lock

    def __init__(self) -> None:
        raise TypeError("use TokenPool.from_environ() or TokenPool.create()")

    # -- construction -------------------------------------------------------------

    @classmethod
    def _new(
        cls,
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
        ledger: Ledger | None = None,
        ledger_path: str | None = None,
        inherited_records: tuple[int, ...] = (),
    ) -> TokenPool:
        self = object.__new__(cls)
        self.style = style
        self.auth = auth
        self.slots = slots
        self._owner = owner
        self.flags = flags
        self.variable = variable
        self._reader = reader
        self._writer = writer
        self._export_fds = export_fds
        self._fifo_dir = fifo_dir
        self._closed = False
        self._close_result = None
        self._users = 1
        # What this handle was joined from, to find it again (see _shared_handle).
        self._source_auth = auth if source_auth is None else source_auth
        try:
            self._implicit = ImplicitSlot(reader)
            self._implicit.wake_fd()
        except BaseException:
            self._closed = True
            _posix.close_quietly(reader, writer, *export_fds, *inherited_records)
            raise
        self._held = set()
        self._state_lock = threading.Lock()
        self._generation = fork_generation
        _note_touched()
        # Token ledger (see makejobs.ledger): the creator's directory, and this
        # process's record in it, opened when it first holds a token.
        self._ledger = ledger
        self._ledger_path = ledger.path if ledger is not None else ledger_path
        self._record = None
        # Records of ancestors, kept open so their locks show we are alive.
        self._inherited_records = list(inherited_records)
        _live_pools.add(self)
        return self

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TokenPool | None:
        """Join the pool advertised by the environment, if any.

        Looks at ``CARGO_MAKEFLAGS``, ``MAKEFLAGS`` and ``MFLAGS`` in that order
        and uses the first one that mentions a jobserver.

        Returns:
            The joined pool, or None when no variable advertises one (this
            process was not started by a parallel make, ninja or cargo). If
            this process already has the pool open, that same handle is
            returned (each :meth:`close` then undoes one join), so the
            process never gets two implicit slots.

        Raises:
            JobserverUnavailable: a pool is advertised but cannot be used: make
                disabled it (``-2,-2``), its fds are closed or are not pipes, the
                fifo is missing or stale, or its style is unsupported here. The
                message says which and what to do.
        """
        env = os.environ if environ is None else environ
        for variable in ENVIRON_VARIABLES:
            value = env.get(variable)
            if not value:
                continue
            flags = parse_makeflags(value)
            if flags.advertises_pool():
                return cls.from_makeflags(
                    flags, variable=variable, ledger=env.get(LEDGER_VARIABLE) or None
                )
        return None

    @classmethod
    def from_makeflags(
        cls, flags: MakeFlags | str, *, variable: str | None = None, ledger: str | None = None
    ) -> TokenPool:
        """Join the pool described by an already parsed (or raw) MAKEFLAGS value.

        *ledger* is the creator's token ledger directory (``MAKEJOBS_LEDGER``),
        used only if it names this very pool.

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
                reader, writer, _private = _posix.open_pipe_ends(auth.read_fd, auth.write_fd)
            except _posix.Unusable as e:
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
            try:
                pool._ledger = Ledger.create(pool._reader, dir=pool._fifo_dir)
            except BaseException:
                pool.close()
                raise
            pool._ledger_path = pool._ledger.path
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

    def try_acquire(self) -> Token | None:
        """Take a slot without waiting: the implicit one if free, else a token.

        Returns:
            A :class:`Token`, or None when none is free right now.

        Raises:
            PoolBroken: the pool returned end-of-file.
            ValueError: the pool is closed.
        """
        if self._closed:
            raise ValueError("the token pool is closed")
        if self._generation != fork_generation:
            self._reset_after_fork()
        implicit = self._implicit
        # The implicit slot is usually out: test that inline, it is the hot path.
        if not implicit.lock.locked() and implicit.take():
            return Token(self, None)
        # The hot path inlines _posix.read_token: this is the cost of every job.
        try:
            byte = os.read(self._reader, 1)
        except BlockingIOError:
            return None  # empty, or another client took it between poll and read
        if not byte:
            raise _posix.end_of_file(self._reader)
        token = Token(self, byte)
        self._held.add(token)
        if self._ledger_path is not None:
            self._note_held(1)
        return token

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
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                raise Blocked(f"no jobserver token became free within {timeout} s")
            _posix.wait_readable((self._reader, self._implicit.wake_fd()), remaining)
            # Readable may still mean nothing for us: another client can take
            # the token between poll and read (EAGAIN), which try_acquire
            # reports as None.
            token = self.try_acquire()
            if token is not None:
                return token

    def release(self, token: Token) -> None:
        """Give *token* back: the implicit slot becomes free, any other byte is written back.

        Raises:
            ValueError: the token belongs to another pool or was already released.
            PoolBroken: the pool is full or has no reader left (the token is then dropped).
        """
        if token._pool is not self:
            raise ValueError(f"{token!r} does not belong to this pool")
        if token._released:
            raise ValueError(f"{token!r} was already released")
        if self._generation != fork_generation:
            self._reset_after_fork()
        token._released = True
        if token.byte is None:
            self._implicit.give_back()
            return
        self._held.discard(token)
        if self._closed:
            raise ValueError("the token pool is closed; the token could not be returned")
        self._write_back(token.byte)

    def _write_back(self, byte: bytes) -> None:
        if self._record is not None:
            self._record.add(-1)  # before the write: a death in between loses, never doubles
        try:
            os.write(self._writer, byte)
        except OSError:
            # Full or reader-less pool: write_token tries once more and, when
            # that fails too, raises the PoolBroken that says which.
            _posix.write_token(self._writer, byte)

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
        self._own()
        return self._implicit.poll_fd()

    def available(self) -> int | None:
        """Tokens waiting in the pool right now (racy; for display), if the OS says."""
        return _posix.available_tokens(self._reader)

    @property
    def implicit_free(self) -> bool:
        """True while this process's implicit slot is not handed out."""
        self._own()
        return not self._implicit.lock.locked()

    @property
    def held(self) -> int:
        """Tokens (other than the implicit slot) this process holds now."""
        self._own()
        return len(self._held)

    # -- children -------------------------------------------------------------------

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The fds a child must inherit: the pool's (pipe style) and, with a token
        ledger, the records whose locks must outlive us while the child runs."""
        if self._generation != fork_generation:
            self._reset_after_fork()
        if self._record is None and not self._inherited_records:
            return self._export_fds
        records = [] if self._record is None else [self._record.fd]
        return (*self._export_fds, *records, *self._inherited_records)

    def _note_held(self, delta: int) -> None:
        """Count a token in this process's ledger record (opened on first use)."""
        record = self._record
        if record is None:
            with self._state_lock:
                record = self._record
                if record is None and self._ledger_path is not None:
                    record = self._record = Record.open(self._ledger_path, self._reader)
                    if record is None:
                        self._ledger_path = None  # not this pool's ledger: stop trying
        if record is not None:
            record.add(delta)

    def recover(self) -> int:
        """Give back the tokens of ledger records whose holders are all gone.

        Only the creator of a pool made with ``ledger=True`` can recover, and
        only soundly when no orphaned descendant of a dead holder can still be
        running (``makejobs serve`` ensures that; see :mod:`makejobs.ledger`).

        Returns:
            How many tokens were written back.
        """
        if self._ledger is None or not self.owner:
            raise ValueError("only the creator of a pool with a ledger can recover tokens")
        if self._closed:
            raise ValueError("the token pool is closed")
        return self._ledger.recover(lambda n: _posix.fill(self._writer, n, TOKEN_BYTE))

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
        if self._ledger_path is not None:
            env[LEDGER_VARIABLE] = self._ledger_path
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
        return self._closed

    def close(self) -> int | None:
        """Release this process's hold on the pool. Idempotent.

        Tokens this process still holds are written back first (with a
        :class:`ResourceWarning`). A pool this process created is then drained
        without blocking and the tokens counted: a :class:`TokenCountWarning`
        reports missing or extra ones, and a fifo is removed.

        Returns:
            For a created pool, the number of tokens found (``slots - 1`` when
            every client returned its tokens); None for a joined pool.
        """
        self._own()
        with self._state_lock:
            if self._closed:
                return self._close_result
            if self._users > 1:
                self._users -= 1  # another from_environ() caller still uses this handle
                return self._close_result
            # Coroutines waiting in acquire_async() watch fileno() and would
            # never learn: make them fail, and take nothing from the tokens
            # written back next (none wait unless makejobs.aio was imported).
            import sys

            aio = sys.modules.get("makejobs.aio")
            if aio is not None:
                aio.pool_closing(self)
            # Closed before the held tokens go back, so no thread starting an
            # acquire now can take one of them from a pool about to vanish.
            self._closed = True
            self.return_held("closing a token pool", stacklevel=3)
            result = None
            if self.owner and self.slots is not None:
                result = _posix.drain(self._reader)
                expected = self.slots - 1
                if result != expected:
                    what = "missing" if result < expected else "extra"
                    warnings.warn(
                        f"token pool closed with {result} token(s) available, expected"
                        f" {expected}: {abs(expected - result)} {what}",
                        TokenCountWarning,
                        stacklevel=2,
                    )
            _posix.close_quietly(self._reader, self._writer, *self._export_fds)
            self._implicit.close()
            self._close_ledger()
            if self.owner and self._fifo_dir is not None:
                _remove_tree(self._fifo_dir)
            _live_pools.discard(self)
            self._close_result = result
            return result

    def _close_ledger(self) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None
        _posix.close_quietly(*self._inherited_records)
        self._inherited_records = []
        if self.owner and self._ledger is not None:
            self._ledger.close()

    def return_held(self, why: str, *, stacklevel: int = 2) -> int:
        """Write back every token this process still holds, with a ResourceWarning.

        A safety net for paths where the holder is gone (a job function that
        returned without releasing, a pool being closed): the tokens go back
        instead of being lost for the rest of the build. Returns how many.
        """
        self._own()
        held = list(self._held)
        if held:
            warnings.warn(
                f"{why} while holding {len(held)} token(s); returning them",
                ResourceWarning,
                stacklevel=stacklevel,
            )
            for token in held:
                if not token._released and token.byte is not None:
                    token._released = True
                    self._held.discard(token)
                    with contextlib.suppress(PoolBroken):
                        self._write_back(token.byte)
        return len(held)

    def __enter__(self) -> TokenPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # getattr: a pool whose construction failed half-way has fewer attributes.
        if not getattr(self, "_closed", True) and hasattr(self, "_implicit"):
            _posix.close_quietly(self._reader, self._writer, *self._export_fds)
            self._implicit.close()
            self._close_ledger()
            if self.owner and self._fifo_dir is not None:
                _remove_tree(self._fifo_dir)

    def __repr__(self) -> str:
        where = (
            self.auth.path
            if isinstance(self.auth, FifoAuth)
            else f"{self.auth.read_fd},{self.auth.write_fd}"
        )
        role = "created" if self.owner else "joined"
        state = " closed" if self._closed else ""
        return f"<TokenPool {role} {self.style} {where} slots={self.slots}{state}>"

    # -- fork and pickle ------------------------------------------------------------

    @property
    def owner(self) -> bool:
        """True in the process that created the pool (never in a forked child)."""
        return self._owner and self._generation == fork_generation

    def _own(self) -> None:
        """Make sure the per-process state is this process's (see _after_fork_in_child)."""
        if self._generation != fork_generation:
            self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        """First use in a forked child (or grandchild...): drop the ancestor's state."""
        with _fork_lock:
            if self._generation == fork_generation:
                return  # another thread of this process got here first
            # The child runs on the token its parent acquired for it: that is its
            # implicit slot. It holds nothing else and owns nothing. The wake-up
            # pipe and epoll set (if any) are the parent's: close our copies; ours
            # are made when something here first waits.
            self._implicit.close()
            self._implicit = ImplicitSlot(self._reader)
            self._state_lock = threading.Lock()
            self._held = set()
            self._owner = False
            # Our parent's ledger record stays open here: its lock says that a
            # process running on the parent's tokens is still alive.
            if self._record is not None:
                self._inherited_records.append(self._record.fd)
                self._record = None
            _note_touched()
            self._generation = fork_generation  # last: others test it without the lock

    def __reduce__(self) -> Any:
        if self._closed:
            raise ValueError("cannot pickle a closed token pool")
        self._own()
        from multiprocessing.reduction import DupFd

        records = [] if self._record is None else [self._record.fd]
        state = {
            "slots": self.slots,
            "flags": self.flags,
            "variable": self.variable,
            "ledger": self._ledger_path,
            # A spawned child holds our record's lock as a forked one would.
            "records": [DupFd(fd) for fd in (*records, *self._inherited_records)],
        }
        if isinstance(self.auth, FifoAuth):
            return (_rebuild_fifo, (self.auth.path, state))
        return (_rebuild_pipe, (DupFd(self._export_fds[0]), DupFd(self._export_fds[1]), state))


def _rebuild_pipe(read: Any, write: Any, state: dict[str, Any]) -> TokenPool:
    r, w = read.detach(), write.detach()
    os.set_inheritable(r, False)
    os.set_inheritable(w, False)
    records = _detach_records(state)
    try:
        reader, writer, _private = _posix.open_pipe_ends(r, w)
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
    """The live pool of this process for *auth*, if there is one.

    A process has one implicit slot, whatever number of handles it opens on a
    pool: joining a pool this process already holds (say, a Jobserver job
    calling from_environ() on the pool its parent exported to it) returns the
    same handle, counted, instead of a second one with a second implicit slot.
    A fifo path is matched by what it opens too: ``/proc/PID/fd/N``, the
    by-path form of a pipe pool (see makejobs.advertise), names that pipe.
    """
    same = _identity(auth.path) if isinstance(auth, FifoAuth) else None
    for pool in list(_live_pools):
        if pool._closed:
            continue
        if auth in (pool.auth, pool._source_auth) or (
            same is not None and _identity(pool._reader) == same
        ):
            pool._own()
            with pool._state_lock:
                if not pool._closed:
                    pool._users += 1
                    return pool
    return None


def _identity(file: str | int) -> tuple[int, int] | None:
    """(device, inode) of the fifo or pipe at a path or fd; None if it is not one."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISFIFO(st.st_mode) else None


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
