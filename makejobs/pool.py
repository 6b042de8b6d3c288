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

Why this module is long: it is the public face of the pool, and most of it is
the contracts of its methods; what a pool is inside lives in
:mod:`makejobs._core` (one pool as a process holds it), :mod:`makejobs._opening`
(joining and creating) and :mod:`makejobs.token` (escrows).

Thread safety: every method may be called from any thread. Fork safety: a
forked child gets its own implicit slot (the token its parent ran it on), no
held tokens and no ownership. Pickling (spawn/forkserver children, or queues)
passes pipe fds along and reopens fifos by path; unpickling (or copying) in a
process that holds the pool already gives another handle on it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from time import monotonic

from . import _advertised, _forks, _opening, _posix
from ._advertised import Advertised
from ._checks import check_count, check_timeout
from ._core import DROPPED_HANDLE, Core, forget, identical, live_cores
from ._posix import usable_cpus
from .errors import Blocked, JobserverUnavailable, PoolBroken, Unavailable
from .ledger import LEDGER_VARIABLE, Ledger
from .protocol import (
    FifoAuth,
    MakeFlags,
    PipeAuth,
    format_makeflags,
    parse_makeflags,
    replace_auth,
)
from .token import Slot, Token

# Not typing.TYPE_CHECKING, and no typing at run time (see makejobs/__init__.py):
# every makejobs command and job imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Literal

    from .process import JobPopen

__all__ = [
    "ENVIRON_VARIABLES",
    "Advertised",
    "Style",
    "Token",
    "TokenPool",
    "choose_advertised",
    "join_or_create",
    "usable_cpus",
]

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

TOKEN_BYTE = _opening.TOKEN_BYTE


def join_or_create(
    fallback: int | None = None,
    *,
    unusable: int = 1,
    report: Callable[[JobserverUnavailable, int], None] | None = None,
) -> tuple[TokenPool, bool]:
    """The pool to run work on when none is given: ``(pool, created)``.

    The policy every makejobs front end shares (Jobserver, JobserverExecutor,
    ``makejobs run``): join the pool the environment advertises; when a pool is
    advertised but cannot be used, *report* it (default: a
    :class:`~makejobs.errors.JobserverUnavailable` warning) and create a
    private pool of *unusable* slots (one: work runs serially, as make does
    then); when none is advertised, create a private pool of *fallback* slots
    (default: :func:`usable_cpus`).
    """
    try:
        joined = TokenPool.from_environ()
    except JobserverUnavailable as e:
        if report is None:
            warnings.warn(
                f"{e}; running {unusable} job(s) at a time", JobserverUnavailable, stacklevel=3
            )
        else:
            report(e, unusable)
        return TokenPool.create(unusable), True
    if joined is not None:
        return joined, False
    return TokenPool.create(fallback if fallback is not None else usable_cpus()), True


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

    _core: Core
    _closed: bool
    _close_result: int | None

    def __init__(self) -> None:
        raise TypeError("use TokenPool.from_environ() or TokenPool.create()")

    @classmethod
    def _attach(cls, core: Core) -> TokenPool:
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
            core.first_handle = self
        return self

    @classmethod
    def _new(cls, core: Core) -> TokenPool:
        """A handle on the pool just opened, or on the one this process already holds."""
        existing = identical(core.identity, core)
        if existing is not None:
            # The same pipe or fifo under other numbers (a pickled handle, say):
            # one pool, one implicit slot per process.
            forget(core)
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
                + _opening.NO_PLUS_HINT,
                variable=variable,
                kind=Unavailable.DISABLED,
            )
        if flags.unsupported is not None:
            raise JobserverUnavailable(
                f"unsupported jobserver style {flags.unsupported!r}: only pipe fds"
                " ('R,W') and 'fifo:PATH' work on POSIX",
                variable=variable,
                kind=Unavailable.UNSUPPORTED,
            )
        auth = flags.auth
        if auth is None:
            raise JobserverUnavailable(
                "no --jobserver-auth option found",
                variable=variable,
                kind=Unavailable.NOT_ADVERTISED,
            )
        shared = _shared_handle(auth)
        if shared is not None:
            return shared
        return cls._new(_opening.join(auth, flags, variable, ledger))

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
        check_count(slots, "slots", 1)
        if style == "pipe":
            pool = cls._new(_opening.create_pipe(slots))
        elif style == "fifo":
            pool = cls._new(_opening.create_fifo(slots, dir))
        else:
            raise ValueError(f"style must be 'pipe' or 'fifo', not {style!r}")
        if ledger:
            core = pool._core
            try:
                core.books.ledger = Ledger.create(core.reader, dir=core.fifo_dir)
            except BaseException:
                pool.close()
                raise
            core.books.path = core.books.ledger.path
        return pool

    # -- tokens -------------------------------------------------------------------

    def _live_core(self) -> Core:
        """The core, this process's state set up; ValueError once the handle is closed."""
        if self._closed:
            raise ValueError("the token pool is closed")
        core = self._core
        if core.generation != _forks.generation:
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
        # _live_core(), inlined: this is the cost of every token.
        core = self._core
        if core.generation != _forks.generation:
            core._reset_after_fork()
        with core.lock:
            if core.closed or self._closed:
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
            ValueError: the pool is closed, or *timeout* is negative or NaN.
            TypeError: *timeout* is not a number (or None).
        """
        # Checked before the first try: a bad timeout is an error even when a slot is free.
        check_timeout(timeout)
        token = self.try_acquire()
        if token is not None:
            return token
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

    def release(self, token: Token, *, warn_if_broken: bool = False) -> None:
        """Give *token* back: the implicit slot becomes free, any other byte is written back.

        With *warn_if_broken*, a pool that refuses the byte is reported as a
        :class:`~makejobs.errors.JobserverUnavailable` warning instead of an
        error (for callers that must go on, such as a job that has finished).

        Raises:
            ValueError: the token belongs to another pool or process, or was
                already released, or the pool is closed (then close() has
                already given it back).
            PoolBroken: the pool is full or has no reader left (the token is then dropped).
        """
        if warn_if_broken:
            try:
                self.release(token)
            except PoolBroken as e:
                warnings.warn(str(e), JobserverUnavailable, stacklevel=2)
            return
        core = self._core
        pool = token._pool
        if pool is not self and (not isinstance(pool, TokenPool) or pool._core is not core):
            raise ValueError(f"{token!r} does not belong to this pool")
        if token._generation != core.generation:
            if token._generation != _forks.generation:
                raise ValueError(f"{token!r} was acquired by another process (before a fork)")
            core.own()
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
        and ``release(token)`` on exit, whatever the exit. A bad *timeout* is
        refused here, as :meth:`acquire` refuses it.
        """
        check_timeout(timeout)
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
        still find nothing when another client was faster. The fd is the
        pool's: it stays valid until the pool is closed.

        Raises:
            ValueError: the pool is closed (also by another thread meanwhile).
        """
        core = self._settled_core()
        # Under the lock that close() takes to close the descriptors: made from them
        # while another thread closes the pool, the epoll fd would watch stale numbers.
        with core.lock:
            if core.closed or self._closed:
                raise ValueError("the token pool is closed")
            return core.implicit.poll_fd()

    def available(self) -> int | None:
        """Tokens waiting in the pool right now (racy; for display), if the OS says."""
        core = self._core
        if core.orphans and not self._closed:
            self._settled_core()
        return _posix.available_tokens(core.reader)

    @property
    def implicit_free(self) -> bool:
        """True while this process's implicit slot is not handed out."""
        return self._settled_core().implicit.free()

    @property
    def held(self) -> int:
        """Tokens (other than the implicit slot) held through this handle now."""
        core = self._settled_core()
        with core.lock:
            return sum(escrow.held() for escrow in core.held_by(self))

    def _settled_core(self) -> Core:
        """The live core, after giving back the tokens of Tokens dropped unreleased."""
        core = self._live_core()
        if core.orphans:
            with core.lock:
                if not core.closed:
                    core.settle_orphans()
        return core

    # -- children -------------------------------------------------------------------

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """The fds a child must inherit: the pool's (pipe style) and, with a token
        ledger, the records whose locks must outlive us while the child runs."""
        core = self._core
        core.own()
        records = core.books.fds()
        return (*core.export_fds, *records) if records else core.export_fds

    def recover(self) -> int:
        """Give back the tokens of ledger records whose holders are all gone.

        Only the creator of a pool made with ``ledger=True`` can recover, and
        only soundly when no orphaned descendant of a dead holder can still be
        running (``makejobs serve`` ensures that; see :mod:`makejobs.ledger`).

        Returns:
            How many tokens were written back.
        """
        core = self._core
        ledger = core.books.ledger
        if ledger is None or not core.owner:
            raise ValueError("only the creator of a pool with a ledger can recover tokens")
        if self._closed or core.closed:
            raise ValueError("the token pool is closed")
        return ledger.recover(lambda n: _posix.fill(core.writer, n, TOKEN_BYTE))

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
        ledger_path = self._core.books.path
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
        if core.generation != _forks.generation:
            return
        # This may run inside a pool call of this very thread (a collection
        # triggered there), so it must not wait for the lock: if the lock is
        # taken, the pool counts the handle off at its next call.
        if not core.lock.acquire(blocking=False):
            core.orphans.append(DROPPED_HANDLE)
            return
        try:
            with contextlib.suppress(Exception):  # nothing to tell from a finalizer
                core.handles -= 1
                if core.handles == 0 and not core.closed:
                    core.closed = True
                    core.release_fds()
        finally:
            core.lock.release()

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
        if core.generation == _forks.generation:
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

        state = {
            "slots": core.slots,
            "flags": core.flags,
            "variable": core.variable,
            "ledger": core.books.path,
            # A spawned child holds our record's lock as a forked one would.
            "records": [DupFd(fd) for fd in core.books.fds()],
        }
        if isinstance(core.auth, FifoAuth):
            return (_rebuild_fifo, (core.auth.path, state))
        return (_rebuild_pipe, (DupFd(core.export_fds[0]), DupFd(core.export_fds[1]), state))


def _rebuild_pipe(read: Any, write: Any, state: dict[str, Any]) -> TokenPool:
    r, w = read.detach(), write.detach()
    os.set_inheritable(r, False)
    os.set_inheritable(w, False)
    return TokenPool._new(_opening.rebuild(PipeAuth(r, w), state))


def _rebuild_fifo(path: str, state: dict[str, Any]) -> TokenPool:
    return TokenPool._new(_opening.rebuild(FifoAuth(path), state))


def _shared_handle(auth: PipeAuth | FifoAuth) -> TokenPool | None:
    """A new handle on the pool of this process advertised as *auth*, if there is one.

    A process has one implicit slot, whatever number of handles it opens on a
    pool: joining a pool this process already holds (say, a Jobserver job
    calling from_environ() on the pool its parent exported to it) gives a
    handle on the same pool instead of a second pool with a second implicit
    slot. A fifo path is matched by what it opens too: ``/proc/PID/fd/N``, the
    by-path form of a pipe pool (see makejobs.advertise), names that pipe.
    """
    same = _opening.identity_of(auth.path) if isinstance(auth, FifoAuth) else None
    for core in live_cores():
        if core.closed:
            continue
        if auth in (core.auth, core.source_auth) or (same is not None and core.identity == same):
            core.own()
            with contextlib.suppress(ValueError):
                return TokenPool._attach(core)
    return None
