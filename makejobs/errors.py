"""Exceptions and warnings shared by every layer of makejobs.

They live in one dependency-free module so that the lowest layer (the token
pool) can raise them and the highest (the command line) can catch them without
importing anything in between.
"""

from __future__ import annotations

import enum
import signal

__all__ = [
    "Blocked",
    "CallbackRaised",
    "JobStartFailed",
    "JobserverUnavailable",
    "PoolBroken",
    "RemoteTraceback",
    "SubmissionDied",
    "TokenCountWarning",
    "Unavailable",
    "describe_exit",
]


class Unavailable(str, enum.Enum):
    """Why a pool cannot be used: :attr:`JobserverUnavailable.kind`.

    Branch on these, never on message text (the messages are for people and
    may change). The values are stable strings, also in ``--json`` output.
    """

    #: Nothing names a pool (no ``--jobserver-auth``/``--jobserver-fds``).
    NOT_ADVERTISED = "not-advertised"
    #: make withheld the pool from this command (``--jobserver-auth=-2,-2``).
    DISABLED = "disabled"
    #: Another platform's style (a Windows semaphore name) or an unknown one.
    UNSUPPORTED = "unsupported"
    #: An advertised descriptor is not open here (a recipe without ``+``).
    NOT_OPEN = "not-open"
    #: An advertised descriptor is open but not a pipe.
    NOT_A_PIPE = "not-a-pipe"
    #: An advertised descriptor has the wrong access mode (swapped or reused numbers).
    WRONG_ACCESS = "wrong-access"
    #: The two advertised descriptors are ends of two different pipes.
    TWO_PIPES = "two-pipes"
    #: An advertised descriptor is close-on-exec: this process's own, not inherited.
    NOT_INHERITED = "not-inherited"
    #: The advertised fifo does not exist (its make exited, or a private /tmp).
    FIFO_MISSING = "fifo-missing"
    #: The advertised path is not a fifo (a device, a regular file...).
    NOT_A_FIFO = "not-a-fifo"
    #: Nobody has the fifo open any more: the make that created it is gone.
    FIFO_STALE = "fifo-stale"
    #: The path changed between the check and the open.
    FIFO_CHANGED = "fifo-changed"
    #: The descriptor or fifo cannot be inspected or opened (permissions, say).
    INACCESSIBLE = "inaccessible"
    #: A pool in use stopped behaving like one (end-of-file, full, no reader).
    BROKEN = "broken"


class JobserverUnavailable(RuntimeError, UserWarning):
    """A jobserver pool is advertised but cannot be used.

    Raised by :meth:`makejobs.TokenPool.from_environ` when ``MAKEFLAGS`` (or
    ``CARGO_MAKEFLAGS``/``MFLAGS``) names a pool that is closed, stale, of the
    wrong kind, or explicitly disabled by make (``--jobserver-auth=-2,-2``).
    It is also a :class:`Warning` category: :class:`makejobs.Jobserver` emits it
    with :func:`warnings.warn` and then runs one job at a time, as make does.
    It is a :class:`UserWarning` because build front ends forward only those
    from a build backend (pip 25 and later record the backend's warnings and
    drop every other category), and this one is meant for the person running
    the build.

    Attributes:
        kind: which of the :class:`Unavailable` situations it is.
        variable: the environment variable that advertised the pool, if known.
        reason: the sentence explaining what is wrong and what to do about it.
    """

    def __init__(
        self,
        reason: str,
        *,
        variable: str | None = None,
        kind: Unavailable = Unavailable.INACCESSIBLE,
    ) -> None:
        self.reason = reason
        self.variable = variable
        self.kind = kind
        message = f"{variable}: {reason}" if variable else reason
        super().__init__(message)


class PoolBroken(JobserverUnavailable):
    """The pool stopped behaving like a jobserver while in use.

    For example a read returned end-of-file (no writer is left, or the fd is
    not a pipe after all), or a write found the pipe full (more tokens than the
    pool was created with). Never a token, never a silent hang. Its
    :attr:`kind` is :attr:`Unavailable.BROKEN`.
    """

    def __init__(self, reason: str, *, variable: str | None = None) -> None:
        super().__init__(reason, variable=variable, kind=Unavailable.BROKEN)


class Blocked(TimeoutError):
    """No slot could be had before the deadline.

    Raised by :meth:`makejobs.TokenPool.acquire` when its timeout passes, and
    by :class:`makejobs.Jobserver` when a submission, result or admission
    criterion does not complete in time. A subclass of :class:`TimeoutError`,
    so ``except TimeoutError`` also catches it.
    """


class TokenCountWarning(RuntimeWarning):
    """A pool this process created did not get back exactly its tokens.

    Emitted when the pool is closed: fewer tokens mean some client died or
    leaked them; more mean some client wrote back tokens it never read. make
    reports the same condition as ``INTERNAL: Exiting with N jobserver tokens
    available; should be M!``.
    """


class SubmissionDied(Exception):
    """A job's process ended without delivering a result.

    It was killed by a signal, called ``os._exit``, crashed, or let
    ``SystemExit``/``KeyboardInterrupt`` escape. Only the future of that job
    fails; the message names the exit code or the signal.

    Attributes:
        pid: the job's process id.
        exitcode: its exit status as :attr:`multiprocessing.Process.exitcode`
            reports it (negative for a signal), or None if unknown.
    """

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


def describe_exit(pid: int, exitcode: int | None) -> str:
    """Say how process *pid* ended without a result, in words a user can act on.

    *exitcode* as :attr:`SubmissionDied.exitcode` has it (negative: the signal).
    """
    if exitcode is None:
        return f"job process {pid} ended without a result (its exit status is unknown)"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"job process {pid} was killed by {name} ({-exitcode}) before it returned a result"
    return f"job process {pid} exited with code {exitcode} before it returned a result"


class JobStartFailed(RuntimeError):
    """A job's process could not be started; nothing was submitted.

    Raised by :meth:`makejobs.Jobserver.submit` when the start method failed
    (a fork server that died, a process or file limit reached). The slots
    taken for the job are back. The message says what happened; a fork
    server that died is replaced on the next submit.
    """


class CallbackRaised(Exception):
    """A ``when_done`` callback raised; the original exception is ``__cause__``.

    Surfaced from the next call to ``done``/``wait``/``result``/``when_done`` of
    any future, or ``submit``/``map``/``reclaim_resources`` of the Jobserver, one
    per call. Callbacks registered after the raising one still run, on later
    calls: keep calling until no ``CallbackRaised`` comes if all must run.

    Attributes:
        callback: the callable that raised.
    """

    def __init__(self, message: str, *, callback: object = None) -> None:
        super().__init__(message)
        self.callback = callback


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a job's process.

    Attached as ``__cause__`` of the re-raised exception, so the parent's
    traceback shows where in the child it came from.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb
