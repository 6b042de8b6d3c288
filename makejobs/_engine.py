"""The per-process engine behind a Jobserver: which fd to watch for which job,
which threads are waiting, and which callbacks are due.

There is no background thread. Any thread inside a makejobs call drives
progress: it polls the result pipes (and exit pidfds) of running jobs, reads
what is ready, reaps finished processes, returns their tokens and then runs
due callbacks. Threads blocked in poll() are woken through a private pipe
each whenever the set of fds to watch changes, so a job submitted or
finished by one thread is never missed by another.

After fork the child starts with an empty engine: its parent's jobs are not
its to reap.
"""

from __future__ import annotations

import os
import select
import threading
import warnings
import weakref
from collections import deque
from typing import Any

from .errors import CallbackRaised, JobserverUnavailable, PoolBroken
from .future import Future
from .pool import Token, TokenPool

__all__ = ["Engine", "live_engines"]

_MAX_WAIT = (2**31 - 1) / 1000  # poll() takes int milliseconds

_engines: weakref.WeakSet[Engine] = weakref.WeakSet()


def live_engines() -> list[Engine]:
    """Every engine of this process that still has jobs running."""
    return [engine for engine in list(_engines) if engine.running]


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        engine.reset_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Engine:
    """Per-process bookkeeping of running jobs: which fd to watch for which future,
    who is waiting, and which callbacks are due. Shared by sibling handles."""

    def __init__(self, pool: TokenPool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.spawn_lock = threading.Lock()
        self.watched: dict[int, Future[Any]] = {}
        self.running: set[Future[Any]] = set()
        self.due: deque[Future[Any]] = deque()
        self.waiters: set[int] = set()
        self.local = threading.local()
        self.callback_lock = threading.Lock()
        # Every thread's wake pipe, so close() (or garbage collection) can close them all.
        self.wake_fds: list[int] = []
        self._finalizer = weakref.finalize(self, _close_all, self.wake_fds)
        _engines.add(self)

    def close(self) -> None:
        """Close the threads' wake pipes; the engine stays usable (they are remade)."""
        with self.lock:
            _close_all(self.wake_fds)
            self.local = threading.local()

    def reset_after_fork(self) -> None:
        # The parent's jobs are not ours to reap; their pipes are not ours to read.
        for future in self.running:
            future._abandon_after_fork()
        self.lock = threading.Lock()
        self.spawn_lock = threading.Lock()
        self.callback_lock = threading.Lock()
        self.watched = {}
        self.running = set()
        self.due = deque()
        self.waiters = set()
        self.local = threading.local()
        _close_all(self.wake_fds)  # the parent's threads' pipes

    # -- registry -------------------------------------------------------------------

    def add(self, future: Future[Any]) -> None:
        with self.lock:
            self.running.add(future)
            fd = future._watch_fd()
            if fd is not None:
                self.watched[fd] = future
        self._wake_others()

    def _rewatch(self, future: Future[Any], old_fd: int | None) -> None:
        with self.lock:
            if old_fd is not None and self.watched.get(old_fd) is future:
                del self.watched[old_fd]
            fd = future._watch_fd()
            if fd is not None:
                self.watched[fd] = future
            else:
                self.running.discard(future)

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
        wake = getattr(self.local, "wake", None)
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
        if not future._lock.acquire(blocking=False):
            return  # another thread is advancing it right now
        try:
            old_fd = future._watch_fd()
            finished = future._advance()
            if old_fd != future._watch_fd() or finished:
                self._rewatch(future, old_fd)
            tokens = future._take_tokens() if finished else []
        finally:
            future._lock.release()
        if finished:
            for token in tokens:
                self.release(token)
            self.schedule_callbacks(future)
            self._wake_others()

    def release(self, token: Token) -> None:
        try:
            self.pool.release(token)
        except PoolBroken as e:
            warnings.warn(str(e), JobserverUnavailable, stacklevel=3)

    def reclaim(self) -> None:
        """Complete every job that has finished, without blocking."""
        self.progress(0)

    def progress(self, timeout: float | None, *, pool: bool = False) -> bool:
        """Wait up to *timeout* for any job to make progress (or, with *pool*, for
        the pool to look readable), then advance what is ready.

        Returns True if the pool fd was reported readable.
        """
        with self.lock:
            fds = list(self.watched)
        if not fds and not pool and timeout == 0:
            return False
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        if pool:
            poller.register(self.pool.fileno(), select.POLLIN)
        wake_r = None
        if timeout != 0:
            wake_r, wake_w = self._wake_pipe()
            poller.register(wake_r, select.POLLIN)
            with self.lock:
                self.waiters.add(wake_w)
        try:
            if timeout is None:
                ms = -1
            else:
                ms = int(min(max(timeout, 0.0), _MAX_WAIT) * 1000 + 0.999)
            events = poller.poll(ms)
        finally:
            if wake_r is not None:
                with self.lock:
                    self.waiters.discard(wake_w)
        pool_ready = False
        for fd, _mask in events:
            if fd == wake_r:
                _drain_wake(fd)
            elif pool and fd == self.pool.fileno():
                pool_ready = True
            else:
                future = self.watched.get(fd)
                if future is not None:
                    self.service(future)
        return pool_ready

    def wait_all(self) -> None:
        while True:
            with self.lock:
                if not self.running:
                    return
            self.progress(None)

    # -- callbacks -------------------------------------------------------------------

    def schedule_callbacks(self, future: Future[Any]) -> None:
        with self.lock:
            self.due.append(future)

    def run_callbacks(self) -> None:
        """Run due callbacks in order; stop at the first that raises.

        Raises:
            CallbackRaised: chained from the callback's exception. The rest
                run on later calls.
        """
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
