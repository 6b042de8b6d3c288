"""What runs inside a job's process, and the wire format of its result.

The child writes exactly one frame to its private result pipe and exits:
an 8-byte big-endian length, then a pickle of ``(kind, payload)``. A frame
that is missing or short means the process died before it finished, which
the parent reports as :class:`~makejobs.errors.SubmissionDied` on that one
future. The pipe, not the process's exit, is the contract: a pipe that is
still open (a grandchild kept it) keeps the future running.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from .errors import RemoteTraceback
from .pool import TokenPool

__all__ = ["DIED", "HEADER", "OK", "RAISED", "Env", "decode", "run_job"]

HEADER = struct.Struct(">Q")
OK = "ok"
RAISED = "raised"
#: The function ended the process on purpose (SystemExit, KeyboardInterrupt).
DIED = "died"

Env = tuple[tuple[str, "str | None"], ...]


def _encode(kind: str, payload: Any) -> bytes:
    body = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def _describe_unpicklable(what: str, value: object, error: BaseException) -> tuple[str, Any]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return RAISED, (
        RuntimeError(f"{what} of type {type(value).__qualname__} cannot be pickled: {error}"),
        text,
    )


def _outcome(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    preexec_fn: Callable[[], Any] | None,
) -> tuple[str, Any]:
    try:
        manager = preexec_fn() if preexec_fn is not None else None
        if manager is not None and hasattr(manager, "__enter__"):
            with manager:
                value = fn(*args, **kwargs)
        else:
            value = fn(*args, **kwargs)
        return OK, value
    except Exception as e:
        return RAISED, (e, "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    except BaseException as e:  # SystemExit, KeyboardInterrupt, GeneratorExit
        return DIED, _died(e)


def _died(e: BaseException) -> tuple[str, int]:
    """The payload for a job that ended its process on purpose, and its exit code."""
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    else:
        code = 1
    return text, code


def _frame(kind: str, payload: Any) -> bytes:
    try:
        return _encode(kind, payload)
    except Exception as e:
        if kind == OK:
            return _encode(*_describe_unpicklable("the result", payload, e))
        if kind == RAISED:
            exc, text = payload
            return _encode(RAISED, (RuntimeError(f"{exc!r} (unpicklable: {e})"), text))
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError:
            return  # the parent is gone or closed its end; nobody is listening
        view = view[written:]


#: The variables through which a job's children find the pool.
EXPORTED = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")
#: ``(name, value)`` pairs for EXPORTED, computed by the parent (see Jobserver._exports).
Exports = tuple[tuple[str, str], ...]


def pool_exports(pool: TokenPool) -> Exports:
    """The EXPORTED values that advertise *pool*, given this process's environment."""
    exported = pool.environ(os.environ)
    return tuple((name, exported[name]) for name in EXPORTED if name in exported)


def apply_environment(env: Env, pool: TokenPool | None, exports: Exports | None = None) -> None:
    """Export *pool* to this process's environment, then apply the user's *env* diff.

    *exports* are the variables advertising *pool* when the parent computed
    them already (Jobserver does: parsing and formatting MAKEFLAGS in a freshly
    forked child costs every job a few hundred microseconds of copy-on-write
    page faults); None computes them here.

    Afterwards anything this job starts (``make``, ``ninja``, ``cargo``, another
    makejobs program) joins the same pool, with this job's slot as its
    implicit slot.
    """
    if pool is not None:
        if exports is None:
            exports = pool_exports(pool)
        for variable, text in exports:
            os.environ[variable] = text
        for fd in pool.pass_fds:
            os.set_inheritable(fd, True)
    for name, value in env:
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def run_job(
    result_fd: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    env: Env,
    preexec_fn: Callable[[], Any] | None,
    pool: TokenPool | None,
    exports: Exports | None = None,
) -> int:
    """Run one job in this (child) process; return the exit code to use."""
    try:
        apply_environment(env, pool, exports)
        kind, payload = _outcome(fn, args, kwargs, preexec_fn)
    except BaseException as e:
        kind, payload = DIED, _died(e)
    # Tokens the job took and forgot are returned, not lost for the whole build.
    _return_leftover_tokens()
    # A job that ended its process on purpose exits as it asked, after saying why.
    code = payload[1] if kind == DIED else 0
    _write_all(result_fd, _frame(kind, payload))
    with contextlib.suppress(OSError):
        os.close(result_fd)
    return code


def _return_leftover_tokens() -> None:
    from .pool import live_pools

    for pool in live_pools():
        with contextlib.suppress(Exception):
            pool.return_held("a job ended")


class ResultFd:
    """A picklable handle on the write end of a result pipe, for spawn/forkserver children.

    The fd travels with the process while multiprocessing pickles it (spawn:
    inherited by the new process; forkserver: sent along with the request),
    never through multiprocessing's resource sharer. Through the sharer, a
    child that dies before unpickling its job would leave a copy of the write
    end open in this process forever (its future would never complete), and
    every child would pay for an HMAC handshake (importing hashlib/OpenSSL).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._dup: Any = None

    def __getstate__(self) -> object:
        from multiprocessing import context
        from multiprocessing.reduction import DupFd

        if context.get_spawning_popen() is None:
            raise TypeError("a ResultFd can only be pickled while starting a process")
        return DupFd(self._fd)

    def __setstate__(self, dup: Any) -> None:
        self._fd = -1
        self._dup = dup

    def detach(self) -> int:
        fd: int = self._dup.detach()
        return fd


def spawned_main(
    result: ResultFd,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    env: Env,
    preexec_fn: Callable[[], Any] | None,
    pool: TokenPool | None,
    exports: Exports | None = None,
) -> None:
    """Entry point of a job started through a multiprocessing context."""
    fd = result.detach()
    os.set_inheritable(fd, False)  # exec'd grandchildren must not pin the pipe
    code = run_job(fd, fn, args, kwargs, env, preexec_fn, pool, exports)
    if code:
        sys.exit(code)


def decode(body: bytes) -> tuple[str, Any]:
    """Unpickle a frame body; any failure is reported as a RuntimeError outcome."""
    try:
        kind, payload = pickle.loads(body)
    except Exception as e:
        return RAISED, (RuntimeError(f"the job's result could not be unpickled here: {e!r}"), None)
    return kind, payload


def attach_traceback(exc: BaseException, text: str | None) -> BaseException:
    """Chain the child's formatted traceback to *exc* as its ``__cause__``."""
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc
