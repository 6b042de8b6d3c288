"""Future: the handle on one job running in its own process.

A :class:`Future` is completed by whichever thread happens to be inside a
makejobs call when the job's process exits (its pidfd or sentinel reports
it) or its result pipe reports data or end-of-file: there is no background
thread. Completion happens in a fixed order, which is the contract callers
rely on:

1. the result frame is read (from the memfd a forked job wrote it into, or
   from the pipe, where large results are read as they arrive, so the child
   never stalls on a full pipe);
2. the process is reaped, so there are never more live or zombie job
   processes than slots;
3. the job's tokens go back to the pool;
4. ``when_done`` callbacks run, in registration order, each exactly once.

Because the token is back before step 4, a callback may submit new work even
when the pool has a single slot.
"""

from __future__ import annotations

import _thread
import errno
import signal as _signal
import threading
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _child
from ._checks import check_timeout
from .errors import Blocked, SubmissionDied, describe_exit

if TYPE_CHECKING:
    from ._engine import Engine
    from ._job import JobProcess, Output
    from .pool import Token

__all__ = ["Future"]

T = TypeVar("T")

RUNNING = "running"
EXITING = "exiting"  # result pipe closed, process not yet reaped
DONE = "done"
# In a forked child: the job is the parent's, this process can never learn its outcome.
ABANDONED = "abandoned"


# The C class itself: threading.RLock is a Python function that picks it.
_RLock = getattr(_thread, "RLock", threading.RLock)


class Future(Generic[T]):
    """The eventual result of one job submitted to a :class:`~makejobs.Jobserver`.

    Every method is thread-safe. Futures cannot be copied or pickled: they
    belong to the process that submitted the job.
    """

    __slots__ = (
        "__weakref__",
        "_callbacks",
        "_engine",
        "_lock",
        "_next_callback",
        "_outcome",
        "_output",
        "_process",
        "_settled",
        "_state",
        "_tokens",
        "_watch",
    )

    def __init__(
        self,
        engine: Engine,
        process: JobProcess,
        output: Output,
        tokens: list[Token],
    ) -> None:
        self._engine = engine
        self._process = process
        # The pipe the frame comes through, or, with a memfd, only the pipe's
        # end-of-file (once the job and all it forked are gone): see _job.Output.
        self._output = output
        # The fd whose readiness means progress (the pipe or the exit fd), None
        # once done. Changed only under _lock, by _advance.
        watch = None if output.memfd is None else process.exit_fd()
        self._watch: int | None = output.fd if watch is None else watch
        self._tokens = tokens
        self._state = RUNNING
        # Done *and* its tokens are back: what when_done() waits for. Set under
        # _lock once the engine has given them back (_tokens_back).
        self._settled = False
        self._outcome: tuple[int, Any] | None = None
        self._callbacks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []
        self._next_callback = 0
        self._lock = _RLock()

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

    def wait(self, timeout: float | None = None, *, signal: int | None = None) -> bool:
        """Wait until the job has finished, at most *timeout* seconds (None: forever).

        With *signal*, first send it to the job's process, as :meth:`kill`
        does (only if the process has not been reaped yet): ``wait(1,
        signal=SIGTERM)`` asks the job to stop and gives it a second. The
        signal need not end the job (``SIGUSR1``, ``SIGSTOP``, ``SIGCONT``).

        Returns:
            True if the job is done (``result(0)`` will not block), False if
            the timeout passed first.

        Raises:
            CallbackRaised: a ``when_done`` callback (of any future) raised.
            OSError: *signal* is not a valid signal number (``EINVAL``, as
                :func:`os.kill` says), whether or not the job is done.
        """
        engine = self._engine
        engine.own()  # in a forked child, the parent's running jobs are abandoned first
        self._check_owned()
        if signal is not None:
            signum = _check_signal(signal)
            check_timeout(timeout)  # a bad timeout sends nothing
            with self._lock:
                self._process.kill(signum)
        if timeout is None:
            while self._state is not DONE:
                engine.progress(None, waiting_for=(self,))
        else:
            check_timeout(timeout)
            deadline = monotonic() + timeout
            while self._state is not DONE:
                remaining = deadline - monotonic()
                if remaining <= 0:
                    engine.reclaim()
                    break
                engine.progress(remaining, waiting_for=(self,))
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
        if timeout is None:
            engine = self._engine
            engine.own()  # in a forked child, the parent's running jobs are abandoned first
            self._check_owned()
            while self._state is not DONE:
                engine.progress(None, waiting_for=(self,))
            engine.run_callbacks()
        elif not self.wait(timeout):
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
        registered on a finished future runs before this returns, except when
        this is called from inside a callback: callbacks never nest, so it
        runs right after the running callback returns, before the makejobs
        call that ran that callback returns.

        Raises:
            CallbackRaised: this or another pending callback raised.
        """
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        self._engine.own()
        self._check_owned()
        with self._lock:
            # Not just DONE: the thread that completed the job may not have given
            # its token back yet, and then it schedules this callback itself.
            # Scheduled before it is added: an interruption in between leaves
            # the future due with nothing new to run, never a callback unrun.
            done = self._settled
            if done:
                self._engine.schedule_callbacks(self)
            self._callbacks.append((fn, args, kwargs))
        if done:
            self._engine.run_callbacks()

    def kill(self, signum: int = _signal.SIGTERM) -> None:
        """Send *signum* to the job's process if it has not been reaped yet.

        The future then completes as usual: with the result if the job still
        delivered one, else :class:`~makejobs.errors.SubmissionDied`.

        Raises:
            OSError: *signum* is not a valid signal number (``EINVAL``).
        """
        signum = _check_signal(signum)
        self._engine.own()  # in a forked child: the parent's job is abandoned first
        self._check_owned()
        with self._lock:
            self._process.kill(signum)

    def __repr__(self) -> str:
        # State, then what is known: the exit code once reaped, the outcome once
        # decoded (in the words of concurrent.futures' repr), and how many
        # callbacks have yet to run.
        process = self._process
        parts = [f"<Future {self._state} pid={process.pid}"]
        if process.exitcode is not None:
            parts.append(f"exitcode={process.exitcode}")
        outcome = self._outcome
        if outcome is not None:
            kind, payload = outcome
            if kind == _child.OK:
                parts.append(f"returned {type(payload).__name__}")
            elif kind == _child.RAISED:
                parts.append(f"raised {type(payload[0]).__name__}")
            else:
                parts.append("died")
        parts.append(f"callbacks={len(self._callbacks) - self._next_callback}>")
        return " ".join(parts)

    @property
    def _condition(self) -> Any:
        # What concurrent.futures.wait() and as_completed() look for first: say
        # why they cannot work here, instead of a bare AttributeError.
        raise AttributeError(
            "concurrent.futures.wait() and as_completed() need a background thread"
            " to complete futures, and a Jobserver has none: use makejobs.wait()"
            " and makejobs.as_completed(), which do the same for Jobserver futures"
        )

    def __copy__(self) -> Future[T]:
        raise TypeError("a Future cannot be copied")

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Future belongs to the process that submitted its job; it cannot be pickled"
        )

    def _check_owned(self) -> None:
        if self._state is ABANDONED:
            raise RuntimeError(
                f"job process {self.pid} was submitted by this process's parent before it"
                " forked; only the parent can wait for it, kill it or add callbacks to it"
            )

    # -- the engine's interface ----------------------------------------------------------
    # The engine decides when to look; the future decides what it sees means.

    def _owner(self) -> Engine:
        """The engine that registered this job."""
        return self._engine

    def _finished(self) -> bool:
        """Whether the outcome is known (the process reaped, its tokens maybe not back yet)."""
        return self._state is DONE

    def _failed(self) -> bool:
        """Whether the job is done and did not return a value."""
        outcome = self._outcome
        return self._state is DONE and outcome is not None and outcome[0] != _child.OK

    def _watched(self) -> int | None:
        """The fd whose readiness means this job can make progress (None once done)."""
        return self._watch

    def _holds(self, tokens: list[Token]) -> bool:
        """Whether this job holds *tokens* (the very list its submit took them into)."""
        return self._tokens is tokens

    def _held_tokens(self) -> list[Token]:
        """The tokens to give back once the job is done."""
        return list(self._tokens)

    def _tokens_back(self, schedule: Callable[[Future[Any]], None]) -> None:
        """The engine gave every token back: settle, and *schedule* the callbacks.

        Safe to repeat: a completion interrupted after scheduling schedules
        again, which runs nothing twice (each callback is handed out once).
        """
        self._tokens = []
        with self._lock:
            if not self._settled:
                if self._callbacks:
                    schedule(self)
                self._settled = True

    def _try_advance(self) -> bool | None:
        """:meth:`_advance`, unless another thread is advancing this job (None)."""
        lock = self._lock
        if not lock.acquire(False):
            return None
        try:
            return self._advance()
        finally:
            lock.release()

    def _advance(self) -> bool:
        """Make what progress is possible without blocking. True once the job is done.

        With a memfd, the job is done once its process is reaped. With a pipe,
        once the pipe is at end-of-file and the process is reaped: while the
        frame is incomplete the pipe is watched; once it is complete (the
        child writes it last, then exits, which closes the pipe), the exit fd
        is watched instead, if there is one, since watching the pipe would
        wake up for its end-of-file and then again for the exit, a few
        microseconds later. A pipe still open after the reap (a grandchild
        holds it) is watched again until its end-of-file.

        Every step may be interrupted (a KeyboardInterrupt arrives at any
        bytecode) and this called again: each one looks at where the previous
        call got to, and the outcome, once decoded, is never decoded again.
        Keeps ``_watch`` up to date. The caller holds ``self._lock``.
        """
        if self._state is DONE:
            return True
        if self._outcome is not None:
            return self._settle_outcome()
        output = self._output
        if output.memfd is not None:
            return self._advance_in_memory()
        if output.read():
            self._state = EXITING
        fd = output.fd
        if fd is not None and not output.frame_complete():
            # The pipe is open and the frame incomplete: wait for more data.
            self._watch = fd
            return False
        process = self._process
        if not process.poll():
            exit_fd = process.exit_fd()
            if exit_fd is not None:
                self._watch = exit_fd
                return False
            if fd is not None:
                self._watch = fd  # no exit fd: wait for the end-of-file first
                return False
            # Without an exit fd there is nothing to wait on: the pipe is closed,
            # so the process is exiting and a blocking reap is short.
            process.poll(block=True)
        if fd is not None:
            self._watch = fd  # reaped, but a grandchild still holds the pipe
            return False
        self._outcome = output.decode()
        return self._settle_outcome()

    def _advance_in_memory(self) -> bool:
        """_advance for a frame in a memfd: done once the process is reaped and
        the pipe, which nothing writes to, is at end-of-file.

        The exit fd is watched first: the pipe closes with the process, so one
        read after the reap usually finds its end-of-file. If something the
        job forked still holds the pipe, it runs on the job's slot: the pipe
        is then watched until it is gone too. The memfd is read with pread,
        so reading it again after an interruption reads the same frame.
        """
        process = self._process
        if not process.poll():
            exit_fd = process.exit_fd()
            if exit_fd is not None:
                self._watch = exit_fd
                return False
            process.poll(block=True)  # pragma: no cover - the pidfd was open at the fork
        output = self._output
        if not output.drain():
            self._watch = output.fd
            return False
        self._state = EXITING
        self._outcome = output.decode()
        return self._settle_outcome()

    def _settle_outcome(self) -> bool:
        """The outcome is known: let go of what is left and be done."""
        self._output.close()
        self._state = DONE
        self._watch = None
        return True

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
        self._watch = None
        # Never signalled from here: the pid is the parent's to reap, and reuse.
        self._process.abandon()
        self._output.abandon()
        self._tokens = []
        self._lock = _RLock()
        self._state = ABANDONED


def _submission_died(process: JobProcess, payload: Any) -> SubmissionDied:
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


def _check_signal(signum: object) -> int:
    """*signum* as an int, or the error os.kill would give for it (also for a done job)."""
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"signal must be a signal number or None, not {signum!r}")
    # 0 sends nothing, only checks that the process exists, as for os.kill.
    if signum != 0 and signum not in _signal.valid_signals():
        raise OSError(errno.EINVAL, f"{signum} is not a valid signal number")
    return int(signum)
