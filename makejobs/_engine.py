"""The per-process engine behind a Jobserver: which jobs run, which threads are
waiting, and which callbacks are due.

There is no background thread. Any thread inside a makejobs call drives
progress: it polls the result pipes (and exit pidfds) of running jobs, reads
what is ready, reaps finished processes, returns their tokens and then runs
due callbacks. Threads blocked in poll() are woken through a private pipe
each whenever the set of fds to watch changes, so a job submitted or
finished by one thread is never missed by another.

Interruptions: a ``KeyboardInterrupt`` may arrive at any bytecode. Completing
a job therefore takes steps that are each safe to repeat, and the job stays
listed (``finishing``) until the last one is done: whichever makejobs call
comes next carries on where the interrupted one stopped. Its tokens go back
exactly once (a released token gives back nothing, see
:mod:`makejobs.token`), and its callbacks run exactly once.

After fork the child starts with an empty engine: its parent's jobs are not
its to reap. Like a pool's, an engine's state is rebuilt when the child first
uses it (see :mod:`makejobs._forks`), not in an at-fork hook,
so forked jobs that never submit jobs of their own pay nothing for it.
"""

from __future__ import annotations

import os
import select
import threading
import weakref
from collections import deque
from collections.abc import Collection
from typing import Any

from . import _child, _forks, _posix
from .errors import CallbackRaised
from .future import Future
from .pool import Token, TokenPool

__all__ = ["Engine", "live_engines", "progress", "running_jobs"]

_MAX_WAIT = (2**31 - 1) / 1000  # poll() takes int milliseconds
_POLLIN = select.POLLIN
_sigmask = _posix.sigmask
_SIG_BLOCK = _posix.SIG_BLOCK
_SIG_SETMASK = _posix.SIG_SETMASK
_INTERRUPTS = _posix.INTERRUPTS

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def live_engines() -> list[Engine]:
    """Every engine of this process that still has jobs running.

    An engine inherited through fork and never used since has no jobs of
    this process (its futures are the parent's), whatever it still lists.
    """
    generation = _forks.generation
    return [
        engine
        for engine in list(_engines)
        if engine._generation == generation and (engine.running or engine.finishing)
    ]


def _wait_for_every_job() -> None:
    for engine in live_engines():
        engine.wait_all()


# A job that submitted jobs of its own waits for them before it exits.
_child.before_job_exit.append(_wait_for_every_job)


def running_jobs() -> int:
    """How many jobs this process has running now, over all its engines.

    A snapshot read without locks, for admission criteria (see
    :func:`makejobs.criteria.load_below`). A job that has ended counts until
    it is reaped, which every submission does before it asks a criterion.
    """
    return sum(len(engine.running) for engine in live_engines())


class _WakePipe:
    """One thread's wake-up pipe: closed when the thread's locals go (it ended)."""

    __slots__ = ("r", "w")

    def __init__(self) -> None:
        self.r, self.w = _posix.private_pipe()

    def close(self) -> None:
        r, w = self.r, self.w
        self.r = self.w = -1
        _posix.close_quietly(r, w)

    def __del__(self) -> None:
        self.close()


class Engine:
    """Per-process bookkeeping of running jobs: who watches what, who is
    waiting, and which callbacks are due. One per Jobserver.

    Every entry point first calls :meth:`own` (or inlines it): after a fork
    the state is the parent's until then.
    """

    lock: threading.Lock
    spawn_lock: threading.Lock
    callback_lock: threading.Lock
    running: dict[Future[Any], None]
    finishing: dict[Future[Any], None]
    due: deque[Future[Any]]
    waiters: set[int]
    local: threading.local

    def __init__(self, pool: TokenPool) -> None:
        self.pool = pool
        self._setup()
        _engines.add(self)

    def _setup(self) -> None:
        self.lock = threading.Lock()
        self.spawn_lock = threading.Lock()
        self.callback_lock = threading.Lock()
        # Insertion-ordered sets: a job is in `running` from its registration
        # (one C-level store) until it is done, then in `finishing` until its
        # tokens are back and its callbacks scheduled.
        self.running = {}
        self.finishing = {}
        self.due = deque()
        self.waiters = set()
        self.local = threading.local()
        self._generation = _forks.generation  # last: tested without the lock

    def own(self) -> None:
        """Make sure the state is this process's, not an ancestor's (see the module doc)."""
        if self._generation != _forks.generation:
            self._reset_after_fork()

    def close(self) -> None:
        """Close this thread's wake pipe; the engine stays usable (it is remade).

        Other threads' pipes are theirs until they end: one may be in poll()
        on its pipe right now, and closing it under that thread would let its
        number be reused by anybody.
        """
        self.own()
        wake: _WakePipe | None = getattr(self.local, "wake", None)
        if wake is not None:
            self.local.wake = None
            wake.close()

    def _reset_after_fork(self) -> None:
        with _forks.lock:
            if self._generation == _forks.generation:
                return  # another thread of this process got here first
            # The parent's jobs are not ours to reap; their pipes are not ours to read.
            for future in [*self.running, *self.finishing]:
                future._abandon_after_fork()
            self._setup()  # sets _generation last

    # -- registry -------------------------------------------------------------------

    def add(self, future: Future[Any]) -> None:
        """Register a started job: from here on its tokens are the future's."""
        if self._generation != _forks.generation:
            self._reset_after_fork()
        self.running[future] = None
        if self.waiters:
            self._wake_others()

    def owns(self, tokens: list[Token]) -> bool:
        """True if a registered job holds *tokens* (the list object itself)."""
        return any(future._holds(tokens) for future in [*self.running, *self.finishing])

    def _wake_others(self) -> None:
        """Tell threads blocked in poll() that the set of fds to watch changed."""
        own: _WakePipe | None = getattr(self.local, "wake", None)
        own_w = own.w if own is not None else None
        for fd in list(self.waiters):
            if fd != own_w:
                try:
                    os.write(fd, b"!")
                except OSError:
                    pass

    def _wake_pipe(self) -> _WakePipe:
        wake: _WakePipe | None = getattr(self.local, "wake", None)
        if wake is None:
            wake = self.local.wake = _WakePipe()
        return wake

    # -- progress -------------------------------------------------------------------

    def service(self, future: Future[Any]) -> None:
        """Advance *future* without blocking; once it is done, finish it."""
        # Reading the result and reaping the process are a few calls each; a
        # KeyboardInterrupt between two of them would cost the result.
        old = _sigmask(_SIG_BLOCK, ())
        try:
            _sigmask(_SIG_BLOCK, _INTERRUPTS)
            finished = future._try_advance()  # None: another thread is at it
            if finished:
                self.finishing[future] = None  # before it leaves `running`
                self.running.pop(future, None)
        finally:
            _sigmask(_SIG_SETMASK, old)
        if finished:
            self.finish(future)

    def finish(self, future: Future[Any]) -> None:
        """Give back a done job's tokens and schedule its callbacks; safe to repeat,
        also from several threads at once."""
        pool = self.pool
        for token in future._held_tokens():
            if token.released:
                continue
            try:
                pool.release(token, warn_if_broken=True)
            except ValueError:
                # Another thread finishing the same job was first (a token is
                # given back once, whoever tries), or the pool was closed under
                # the job by another handle's owner, which gave it back then.
                if not (token.released or pool.closed):
                    raise
        # Callbacks run only once the tokens are back. A when_done() racing
        # with us either lands before the future is settled (and we schedule
        # it) or sees it settled (and schedules itself).
        future._tokens_back(self._schedule)
        self.finishing.pop(future, None)
        if self.waiters:
            self._wake_others()

    def release(self, token: Token) -> None:
        self.pool.release(token, warn_if_broken=True)

    def _finish_interrupted(self) -> None:
        """Carry on finishing jobs whose completion an exception interrupted."""
        for future in list(self.finishing):
            self.finish(future)

    def reclaim(self) -> None:
        """Complete every job that has finished, without blocking."""
        if self._generation != _forks.generation:
            self._reset_after_fork()
        if self.finishing:
            self._finish_interrupted()
        if self.running:
            self.progress(0)

    def settle(self) -> None:
        """:meth:`reclaim`, then :meth:`run_callbacks` (what every call does first)."""
        if self._generation != _forks.generation:
            self._reset_after_fork()
        if self.finishing:
            self._finish_interrupted()
        if self.running:
            self.progress(0)
        if self.due:
            self.run_callbacks()

    def progress(
        self,
        timeout: float | None,
        *,
        pool: bool = False,
        waiting_for: Collection[Future[Any]] = (),
    ) -> bool:
        """Wait up to *timeout* for any job to make progress (or, with *pool*, for
        the pool to look readable), then advance what is ready.

        *waiting_for*: the futures the caller saw not done (see :func:`progress`).
        Returns True if the pool fd was reported readable.
        """
        return progress((self,), timeout, self.pool if pool else None, waiting_for)

    def wait_all(self) -> None:
        self.own()
        while True:
            if self.finishing:
                self._finish_interrupted()
            running = tuple(self.running)
            if not running:
                return
            self.progress(None, waiting_for=running)

    # -- callbacks -------------------------------------------------------------------

    def schedule_callbacks(self, future: Future[Any]) -> None:
        self.own()
        self._schedule(future)

    def _schedule(self, future: Future[Any]) -> None:
        with self.lock:
            self.due.append(future)

    def run_callbacks(self) -> None:
        """Run due callbacks in order; stop at the first that raises.

        Raises:
            CallbackRaised: chained from the callback's exception. The rest
                run on later calls.
        """
        if not self.due:
            # Nothing due (the usual case; also an inherited engine's, whose
            # futures are never scheduled here): no locks, no thread-locals.
            return
        self.own()
        if getattr(self.local, "in_callback", False):
            return  # a callback calling back into us: the outer drain continues
        if not self.callback_lock.acquire(blocking=False):
            return  # another thread is running callbacks
        self.local.in_callback = True
        try:
            while True:
                with self.lock:
                    if not self.due:
                        return
                    future = self.due[0]
                callback = future._next_pending_callback()
                if callback is None:
                    with self.lock:
                        if self.due and self.due[0] is future:
                            self.due.popleft()
                    continue
                fn, args, kwargs = callback
                try:
                    fn(*args, **kwargs)
                except Exception as e:
                    raise CallbackRaised(
                        f"callback {fn!r} of {future!r} raised {e!r}", callback=fn
                    ) from e
        finally:
            self.local.in_callback = False
            self.callback_lock.release()


def progress(
    engines: tuple[Engine, ...],
    timeout: float | None,
    pool: TokenPool | None = None,
    waiting_for: Collection[Future[Any]] = (),
) -> bool:
    """Wait up to *timeout* for any job of *engines* to make progress (or for
    *pool* to look readable), then advance what is ready.

    One poll() over the jobs of every engine given: a thread waiting for
    futures of several Jobservers wakes for whichever finishes first. The
    thread's wake pipe (of the first engine) is listed among every engine's
    waiters, so a job registered or finished by another thread in any of
    them wakes it too.

    *waiting_for* are the futures whose completion the caller waits for, as
    it last saw them: not done. Another thread may complete one after that
    look but before this thread is listed as a waiter (so it is not woken)
    and its fds snapshotted (so they are not watched); if one is done by
    the time the fds are snapshotted, this returns without blocking.

    Returns True if the pool fd was reported readable.
    """
    generation = _forks.generation
    anything = False
    for engine in engines:
        if engine._generation != generation:
            engine._reset_after_fork()
        if engine.finishing:
            engine._finish_interrupted()
        if engine.running:
            anything = True
    if timeout == 0 and pool is None and not anything:
        return False
    poller = select.poll()
    register = poller.register
    pool_fd = -1
    if pool is not None:
        pool_fd = pool.fileno()
        register(pool_fd, _POLLIN)
    wake: _WakePipe | None = None
    if timeout != 0:
        wake = engines[0]._wake_pipe()
        register(wake.r, _POLLIN)
        # A waiter first, then the fds: whoever changes the set after our
        # snapshot finds us among the waiters and wakes us.
        for engine in engines:
            engine.waiters.add(wake.w)
    stranded: list[tuple[Engine, Future[Any]]] = []
    try:
        watched: dict[int, tuple[Engine, Future[Any]]] = {}
        for engine in engines:
            for future in list(engine.running):
                fd = future._watched()
                if fd is not None:
                    watched[fd] = (engine, future)
                    register(fd, _POLLIN)
                elif future._finished():
                    # Done, but an interruption kept service() from moving it on.
                    stranded.append((engine, future))
        if stranded or any(future._finished() for future in waiting_for):
            ms = 0
        elif timeout is None:
            ms = -1
        else:
            ms = int(min(max(timeout, 0.0), _MAX_WAIT) * 1000 + 0.999)
        events = poller.poll(ms)
    finally:
        if wake is not None:
            for engine in engines:
                engine.waiters.discard(wake.w)
    for engine, future in stranded:
        engine.finishing[future] = None
        engine.running.pop(future, None)
        engine.finish(future)
    pool_ready = False
    for fd, _mask in events:
        if wake is not None and fd == wake.r:
            _drain_wake(fd)
        elif fd == pool_fd:
            pool_ready = True
        else:
            ready = watched.get(fd)
            if ready is not None:
                ready[0].service(ready[1])
    return pool_ready


def _drain_wake(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
