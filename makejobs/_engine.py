"""The per-process engine behind a Jobserver: which fd to watch for which job,
which threads are waiting, and which callbacks are due.

There is no background thread. Any thread inside a makejobs call drives
progress: it polls the result pipes (and exit pidfds) of running jobs, reads
what is ready, reaps finished processes, returns their tokens and then runs
due callbacks. Threads blocked in poll() are woken through a private pipe
each whenever the set of fds to watch changes, so a job submitted or
finished by one thread is never missed by another.

After fork the child starts with an empty engine: its parent's jobs are not
its to reap. Like a pool's, an engine's state is rebuilt when the child first
uses it (see :data:`makejobs.pool.fork_generation`), not in an at-fork hook,
so forked jobs that never submit jobs of their own pay nothing for it.
"""

from __future__ import annotations

import os
import select
import threading
import warnings
import weakref
from collections import deque
from typing import Any

from . import pool as _pool
from .errors import CallbackRaised, JobserverUnavailable, PoolBroken
from .future import Future
from .pool import Token, TokenPool

__all__ = ["Engine", "live_engines", "running_jobs"]

_MAX_WAIT = (2**31 - 1) / 1000  # poll() takes int milliseconds
_POLLIN = select.POLLIN

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def live_engines() -> list[Engine]:
    """Every engine of this process that still has jobs running.

    An engine inherited through fork and never used since has no jobs of
    this process (its futures are the parent's), whatever it still lists.
    """
    generation = _pool.fork_generation
    return [
        engine for engine in list(_engines) if engine._generation == generation and engine.running
    ]


def running_jobs() -> int:
    """How many jobs this process has running now, over all its engines.

    A snapshot read without locks, for admission criteria (see
    :func:`makejobs.criteria.load_below`). A job that has ended counts until
    it is reaped, which every submission does before it asks a criterion.
    """
    return sum(len(engine.running) for engine in live_engines())


class Engine:
    """Per-process bookkeeping of running jobs: which fd to watch for which future,
    who is waiting, and which callbacks are due. Shared by sibling handles.

    Every entry point first calls :meth:`own` (or inlines it): after a fork
    the state is the parent's until then.
    """

    lock: threading.Lock
    spawn_lock: threading.Lock
    callback_lock: threading.Lock
    watched: dict[int, Future[Any]]
    running: set[Future[Any]]
    due: deque[Future[Any]]
    waiters: set[int]
    local: threading.local

    def __init__(self, pool: TokenPool) -> None:
        self.pool = pool
        # Every thread's wake pipe, so close() (or garbage collection) can close them all.
        self.wake_fds: list[int] = []
        self._setup()
        self._finalizer = weakref.finalize(self, _close_all, self.wake_fds)
        _engines.add(self)

    def _setup(self) -> None:
        self.lock = threading.Lock()
        self.spawn_lock = threading.Lock()
        self.callback_lock = threading.Lock()
        self.watched = {}
        self.running = set()
        self.due = deque()
        self.waiters = set()
        self.local = threading.local()
        self._generation = _pool.fork_generation

    def own(self) -> None:
        """Make sure the state is this process's, not an ancestor's (see the module doc)."""
        if self._generation != _pool.fork_generation:
            self._reset_after_fork()

    def close(self) -> None:
        """Close the threads' wake pipes; the engine stays usable (they are remade)."""
        self.own()
        with self.lock:
            _close_all(self.wake_fds)
            self.local = threading.local()

    def _reset_after_fork(self) -> None:
        with _pool._fork_lock:
            if self._generation == _pool.fork_generation:
                return  # another thread of this process got here first
            # The parent's jobs are not ours to reap; their pipes are not ours to read.
            for future in self.running:
                future._abandon_after_fork()
            _close_all(self.wake_fds)  # the parent's threads' pipes
            self._setup()  # sets _generation last

    # -- registry -------------------------------------------------------------------

    def add(self, future: Future[Any]) -> None:
        if self._generation != _pool.fork_generation:
            self._reset_after_fork()
        with self.lock:
            self.running.add(future)
            fd = future._watch
            if fd is not None:
                self.watched[fd] = future
        if self.waiters:
            self._wake_others()

    def _wake_others(self) -> None:
        """Tell threads blocked in poll() that the set of fds to watch changed."""
        own = getattr(self.local, "wake", None)
        own_w = own[1] if own else None
        for fd in list(self.waiters):
            if fd != own_w:
                try:
                    os.write(fd, b"!")
                except OSError:
                    pass

    def _wake_pipe(self) -> tuple[int, int]:
        wake: tuple[int, int] | None = getattr(self.local, "wake", None)
        if wake is None:
            r, w = os.pipe()
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            wake = self.local.wake = (r, w)
            with self.lock:
                self.wake_fds.extend(wake)
        return wake

    # -- progress -------------------------------------------------------------------

    def service(self, future: Future[Any]) -> None:
        """Advance *future* without blocking; on completion return its tokens and
        schedule its callbacks."""
        lock = future._lock
        if not lock.acquire(False):
            return  # another thread is advancing it right now
        try:
            old_fd = future._watch
            finished = future._advance()
            new_fd = future._watch
            if old_fd != new_fd:
                with self.lock:
                    watched = self.watched
                    if old_fd is not None and watched.get(old_fd) is future:
                        del watched[old_fd]
                    if new_fd is not None:
                        watched[new_fd] = future
                    else:
                        self.running.discard(future)
            if not finished:
                return
            tokens, future._tokens = future._tokens, []
        finally:
            lock.release()
        pool = self.pool
        for token in tokens:
            try:
                pool.release(token)
            except PoolBroken as e:
                warnings.warn(str(e), JobserverUnavailable, stacklevel=2)
        with lock:
            # Callbacks run only once the tokens are back. A when_done() racing
            # with us either lands before this test (and we schedule it) or
            # sees the future settled (and schedules itself).
            future._settled = True
            has_callbacks = bool(future._callbacks)
        if has_callbacks:
            with self.lock:
                self.due.append(future)
        if self.waiters:
            self._wake_others()

    def release(self, token: Token) -> None:
        try:
            self.pool.release(token)
        except PoolBroken as e:
            warnings.warn(str(e), JobserverUnavailable, stacklevel=3)

    def reclaim(self) -> None:
        """Complete every job that has finished, without blocking."""
        if self._generation != _pool.fork_generation:
            self._reset_after_fork()
        if self.watched:
            self.progress(0)

    def settle(self) -> None:
        """:meth:`reclaim`, then :meth:`run_callbacks` (what every call does first)."""
        if self._generation != _pool.fork_generation:
            self._reset_after_fork()
        if self.watched:
            self.progress(0)
        if self.due:
            self.run_callbacks()

    def progress(self, timeout: float | None, *, pool: bool = False) -> bool:
        """Wait up to *timeout* for any job to make progress (or, with *pool*, for
        the pool to look readable), then advance what is ready.

        Returns True if the pool fd was reported readable.
        """
        if self._generation != _pool.fork_generation:
            self._reset_after_fork()
        if timeout == 0 and not pool and not self.watched:
            return False
        poller = select.poll()
        register = poller.register
        pool_fd = -1
        if pool:
            pool_fd = self.pool.fileno()
            register(pool_fd, _POLLIN)
        wake_r = wake_w = -1
        lock = self.lock
        if timeout != 0:
            wake = getattr(self.local, "wake", None)
            wake_r, wake_w = wake if wake is not None else self._wake_pipe()
            register(wake_r, _POLLIN)
            # A waiter first, then the fds: whoever changes the set after our
            # snapshot finds us among the waiters and wakes us.
            with lock:
                self.waiters.add(wake_w)
                fds = list(self.watched)
        else:
            with lock:
                fds = list(self.watched)
        for fd in fds:
            register(fd, _POLLIN)
        try:
            if timeout is None:
                ms = -1
            else:
                ms = int(min(max(timeout, 0.0), _MAX_WAIT) * 1000 + 0.999)
            events = poller.poll(ms)
        finally:
            if wake_w >= 0:
                with lock:
                    self.waiters.discard(wake_w)
        pool_ready = False
        watched = self.watched
        for fd, _mask in events:
            if fd == wake_r:
                _drain_wake(fd)
            elif fd == pool_fd:
                pool_ready = True
            else:
                future = watched.get(fd)
                if future is not None:
                    self.service(future)
        return pool_ready

    def wait_all(self) -> None:
        self.own()
        while True:
            with self.lock:
                if not self.running:
                    return
            self.progress(None)

    # -- callbacks -------------------------------------------------------------------

    def schedule_callbacks(self, future: Future[Any]) -> None:
        self.own()
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


def _drain_wake(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _close_all(fds: list[int]) -> None:
    # Empty the list before closing, for the same reason as Future._advance:
    # a fork in between must not see numbers that are already reusable.
    closing = list(fds)
    fds.clear()
    for fd in closing:
        try:
            os.close(fd)
        except OSError:
            pass
