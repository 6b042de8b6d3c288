"""Future: the handle on one job running in its own process.

A :class:`Future` is completed by whichever thread happens to be inside a
makejobs call when the job's result pipe reports data or end-of-file: there
is no background thread. Completion happens in a fixed order, which is the
contract callers rely on:

1. the result frame is read (large results are read as they arrive, so the
   child never stalls on a full pipe);
2. the process is reaped, so there are never more live or zombie job
   processes than slots;
3. the job's tokens go back to the pool;
4. ``when_done`` callbacks run, in registration order, each exactly once.

Because the token is back before step 4, a callback may submit new work even
when the pool has a single slot.
"""

from __future__ import annotations

import os
import signal as _signal
import threading
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _child
from .errors import Blocked, SubmissionDied

if TYPE_CHECKING:
    from ._engine import Engine
    from .pool import Token

__all__ = ["Future"]

T = TypeVar("T")

RUNNING = "running"
EXITING = "exiting"  # result pipe closed, process not yet reaped
DONE = "done"


class _JobProcess:
    """What both kinds of job process share: a pid that is signalled only until reaped."""

    pid: int
    _reaped: bool

    def kill(self, signum: int) -> None:
        if not self._reaped:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass


class _Process(_JobProcess):
    """A job process we forked ourselves: reaped with waitpid, watched with a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode: int | None = None
        self._reaped = False
        self._pidfd: int | None = None
        if hasattr(os, "pidfd_open"):
            try:
                self._pidfd = os.pidfd_open(pid)
            except OSError:
                self._pidfd = None

    def exit_fd(self) -> int | None:
        return self._pidfd

    def poll(self, block: bool = False) -> bool:
        """Reap the process if it has exited (waiting when *block*); True once reaped."""
        if self._reaped:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None  # someone else reaped it (SIGCHLD ignored?)
        if pid == 0:
            return False
        self._reaped = True
        if status is not None:
            self.exitcode = os.waitstatus_to_exitcode(status)
        self.forget_pidfd(close=True)
        return True

    def forget_pidfd(self, close: bool) -> None:
        # Forget before closing: see Future._advance.
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None and close:
            os.close(pidfd)


class _MultiprocessingProcess(_JobProcess):
    """A job started through a multiprocessing context (spawn, forkserver)."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid: int = process.pid
        self.exitcode: int | None = None
        self._reaped = False

    def exit_fd(self) -> int | None:
        return None if self._reaped else int(self._process.sentinel)

    def poll(self, block: bool = False) -> bool:
        if self._reaped:
            return True
        self._process.join(None if block else 0)
        if self._process.exitcode is None:
            return False
        self.exitcode = self._process.exitcode
        self._reaped = True
        self._process.close()
        return True


def describe_exit(pid: int, exitcode: int | None) -> str:
    """Say how process *pid* ended, in the words a user can act on."""
    if exitcode is None:
        return f"job process {pid} ended without a result (its exit status is unknown)"
    if exitcode < 0:
        try:
            name = _signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"job process {pid} was killed by {name} ({-exitcode}) before it returned a result"
    return f"job process {pid} exited with code {exitcode} before it returned a result"


class Future(Generic[T]):
    """The eventual result of one job submitted to a :class:`~makejobs.Jobserver`.

    Every method is thread-safe. Futures cannot be copied or pickled: they
    belong to the process that submitted the job.
    """

    def __init__(
        self,
        engine: Engine,
        process: _Process | _MultiprocessingProcess,
        result_fd: int,
        tokens: list[Token],
    ) -> None:
        self._engine = engine
        self._process = process
        self._fd: int | None = result_fd
        self._buffer = bytearray()
        self._tokens = tokens
        self._state = RUNNING
        self._outcome: tuple[str, Any] | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._next_callback = 0
        self._lock = threading.RLock()

    # -- public API -------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """The job's process id."""
        return self._process.pid

    @property
    def exitcode(self) -> int | None:
        """The job process's exit status once reaped (negative: killed by that signal)."""
        return self._process.exitcode

    def done(self, timeout: float | None = 0) -> bool:
        """True when the job has finished; waits up to *timeout* seconds (default: not at all).

        Raises:
            CallbackRaised: a ``when_done`` callback (of any future) raised.
        """
        return self.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has finished, at most *timeout* seconds (None: forever).

        Returns:
            True if the job is done (``result(0)`` will not block), False if
            the timeout passed first.

        Raises:
            CallbackRaised: a ``when_done`` callback (of any future) raised.
        """
        _check_timeout(timeout)
        deadline = None if timeout is None else monotonic() + timeout
        engine = self._engine
        while self._state is not DONE:
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                engine.reclaim()
                break
            engine.progress(remaining)
        engine.run_callbacks()
        return self._state is DONE

    def result(self, timeout: float | None = None) -> T:
        """The job's return value, waiting up to *timeout* seconds (None: forever).

        Raises:
            Blocked: the job did not finish in time.
            SubmissionDied: the job's process ended without a result.
            CallbackRaised: a ``when_done`` callback raised.
            Exception: whatever the job raised, with the child's traceback as
                ``__cause__`` (a :class:`~makejobs.errors.RemoteTraceback`).
        """
        if not self.wait(timeout):
            raise Blocked(f"job process {self.pid} did not finish within {timeout} s")
        assert self._outcome is not None
        kind, payload = self._outcome
        if kind == _child.OK:
            value: T = payload
            return value
        if kind == _child.RAISED:
            exc, text = payload
            raise _child.attach_traceback(exc, text)
        raise _submission_died(self._process, payload)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception :meth:`result` would raise for the job itself, or None."""
        try:
            self.result(timeout)
        except Blocked:
            if self._state is not DONE:
                raise
        except (SubmissionDied, Exception) as e:
            if self._outcome is not None and self._outcome[0] != _child.OK:
                return e
            raise
        return None

    def when_done(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Call ``fn(*args, **kwargs)`` once the job is done and its token is back.

        The future is not passed automatically. Callbacks run in registration
        order, exactly once each, in whichever thread completes the job; one
        registered on a finished future runs before this returns.

        Raises:
            CallbackRaised: this or another pending callback raised.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        with self._lock:
            self._callbacks.append((fn, args, kwargs))
            done = self._state is DONE
        if done:
            self._engine.schedule_callbacks(self)
            self._engine.run_callbacks()

    def kill(self, signum: int = _signal.SIGTERM) -> None:
        """Send *signum* to the job's process if it has not been reaped yet.

        The future then completes as usual: with the result if the job still
        delivered one, else :class:`~makejobs.errors.SubmissionDied`.
        """
        with self._lock:
            self._process.kill(signum)

    def __repr__(self) -> str:
        return f"<Future {self._state} pid={self.pid} callbacks={len(self._callbacks)}>"

    def __copy__(self) -> Future[T]:
        raise TypeError("a Future cannot be copied")

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Future belongs to the process that submitted its job; it cannot be pickled"
        )

    # -- completion (called by the engine) ------------------------------------------------

    def _watch_fd(self) -> int | None:
        """The fd whose readiness means progress for this job, if any."""
        if self._state is RUNNING:
            return self._fd
        if self._state is EXITING:
            return self._process.exit_fd()
        return None

    def _advance(self) -> bool:
        """Make what progress is possible without blocking. True once the job is done.

        The caller holds ``self._lock``.
        """
        if self._state is RUNNING:
            assert self._fd is not None
            if not _read_available(self._fd, self._buffer):
                return False
            # Forget the fd before closing it: a job forked by another thread
            # right after the close could get the same number for its own
            # pipe, and its at-fork cleanup must not close that.
            fd, self._fd = self._fd, None
            os.close(fd)
            self._state = EXITING
        if self._state is EXITING:
            # Without a pidfd there is no fd to wait on: the pipe is closed, so
            # the process is exiting and a blocking reap is short.
            block = self._process.exit_fd() is None
            if not self._process.poll(block=block):
                return False
            self._outcome = _decode_frame(self._buffer)
            self._buffer = bytearray()
            self._state = DONE
            return True
        return self._state is DONE

    def _take_tokens(self) -> list[Token]:
        tokens, self._tokens = self._tokens, []
        return tokens

    def _next_pending_callback(
        self,
    ) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
        with self._lock:
            if self._next_callback >= len(self._callbacks):
                return None
            callback = self._callbacks[self._next_callback]
            self._next_callback += 1
            return callback

    def _abandon_after_fork(self) -> None:
        """In a forked child: forget a sibling job that belongs to the parent."""
        fds = [self._fd, getattr(self._process, "_pidfd", None)]
        self._fd = None
        if isinstance(self._process, _Process):
            self._process.forget_pidfd(close=False)
        for fd in fds:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._tokens = []
        self._lock = threading.RLock()


def _read_available(fd: int, buffer: bytearray) -> bool:
    """Append what can be read from non-blocking *fd* now; True at end-of-file."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            return True
        buffer += chunk


def _decode_frame(buffer: bytearray) -> tuple[str, Any]:
    size = _child.HEADER.size
    if len(buffer) < size:
        return "lost", None
    (length,) = _child.HEADER.unpack_from(buffer)
    if len(buffer) - size != length:
        return "lost", None
    return _child.decode(bytes(buffer[size:]))


def _submission_died(process: _Process | _MultiprocessingProcess, payload: Any) -> SubmissionDied:
    if payload is None:
        return SubmissionDied(
            describe_exit(process.pid, process.exitcode),
            pid=process.pid,
            exitcode=process.exitcode,
        )
    text, _code = payload
    last = text.strip().splitlines()[-1] if text.strip() else "an exception"
    error = SubmissionDied(
        f"job process {process.pid} ended the process with {last} instead of returning"
        f" (exit code {process.exitcode})",
        pid=process.pid,
        exitcode=process.exitcode,
    )
    return _child.attach_traceback(error, text)  # type: ignore[return-value]


def _check_timeout(timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if timeout != timeout or timeout < 0:
        raise ValueError(f"timeout must be a non-negative number, not {timeout}")
