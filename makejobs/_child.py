"""What runs inside a job's process, and the wire format of its result.

The child writes exactly one frame to its private result fd and exits: an
8-byte big-endian length, then a body: a pickle of ``(kind, payload)``, or,
for a job that returned a plain int, float, complex, str, bytes, bool or
None, ``b"M"`` and the :mod:`marshal` of that value (marshal is exact for
those types, and costs a forked child about half the page faults pickle
does). A frame that is missing or short means the process died before it
finished, which the parent reports as :class:`~makejobs.errors.SubmissionDied`
on that one future.

The result fd is a memfd for forked jobs on Linux (read by the parent once
the process is reaped), elsewhere the write end of the job's pipe. Either
way the pipe is the contract: a pipe that is still open (a grandchild kept
it, and runs on the job's slot) keeps the future running.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import pickle
import struct
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from . import _core, _forks, _outcomes, _posix
from .errors import RemoteTraceback
from .pool import TokenPool

__all__ = [
    "DIED",
    "HEADER",
    "LOST",
    "OK",
    "RAISED",
    "ChunkResult",
    "Env",
    "decode_frame",
    "frame_complete",
    "run",
    "run_chunk",
    "run_job",
]

HEADER = struct.Struct(">Q")
_dumps = pickle.dumps
_gc_freeze = gc.freeze
_gc_isenabled = gc.isenabled
_PROTOCOL = pickle.HIGHEST_PROTOCOL
#: Marks a body that is the marshal of an OK value (a pickle starts with PROTO, 0x80).
_MARSHAL_TAG = b"M"
_MARSHAL_VERSION = 2  # no back-references: no hash table to build
#: Exact types whose values marshal round-trips exactly (no subclasses: an
#: IntEnum or a str subclass must come back as itself, which only pickle does).
_MARSHALLED = frozenset({int, float, complex, str, bytes, bool, type(None)})
# How the job ended: the one vocabulary of makejobs._outcomes.
OK, RAISED, DIED, LOST = _outcomes.OK, _outcomes.RAISED, _outcomes.DIED, _outcomes.LOST

Env = tuple[tuple[str, "str | None"], ...]


def _encode(kind: int, payload: Any) -> bytes:
    body = _dumps((kind, payload), _PROTOCOL)
    return HEADER.pack(len(body)) + body


def _describe_unpicklable(what: str, value: object, error: BaseException) -> tuple[int, Any]:
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return RAISED, (
        RuntimeError(f"{what} of type {type(value).__qualname__} cannot be pickled: {error}"),
        text,
    )


def _call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    preexec_fn: Callable[[], Any],
) -> Any:
    """``fn(*args, **kwargs)`` after *preexec_fn*, inside the context manager it returned."""
    manager = preexec_fn()
    if manager is not None and hasattr(manager, "__enter__"):
        with manager:
            return fn(*args, **kwargs)
    return fn(*args, **kwargs)


def _formatted(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))


def _died(e: BaseException) -> tuple[str, int]:
    """The payload for a job that ended its process on purpose, and its exit code."""
    text = _formatted(e)
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    else:
        code = 1
    return text, code


def _frame(kind: int, payload: Any) -> bytes:
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
    try:
        written = os.write(fd, data)
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(fd, view) :]
    except OSError:
        pass  # the parent is gone or closed its end; nobody is listening


#: The variables through which a job's children find the pool.
EXPORTED = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")
#: ``(name, value)`` pairs for EXPORTED, computed by the parent (see Jobserver._exports).
Exports = tuple[tuple[str, str], ...]
#: Exports encoded as ``os.environ`` stores them on POSIX (see :func:`encode_exports`).
EncodedExports = tuple[tuple[bytes, bytes], ...]


def exported_here() -> tuple[object, ...]:
    """This process's current EXPORTED values, as a key for caching what jobs export.

    Read from ``os.environ``'s own dict (bytes to bytes on POSIX) when it is
    there: ``os.environ.get()`` raises and catches a KeyError inside for each
    variable that is not set, which costs every job dozens of page faults in
    a process that has just forked.
    """
    data = getattr(os.environ, "_data", None)
    if type(data) is dict:
        get = data.get
        return (get(b"MAKEFLAGS"), get(b"MFLAGS"), get(b"CARGO_MAKEFLAGS"))
    return tuple(os.environ.get(name) for name in EXPORTED)


def pool_exports(pool: TokenPool) -> Exports:
    """The EXPORTED values that advertise *pool* to a job's children, whatever starts them.

    The form is :func:`makejobs.advertise.for_any_child`'s: a pipe pool
    created here is named by its ``/proc`` path where that reaches the most
    consumers (a plain ``subprocess.run`` closes inherited fds), and a pool
    this process was given keeps the form it was given in.
    """
    from .advertise import for_any_child

    with for_any_child(pool, os.environ) as advertised:
        exported = advertised.environ
    return tuple((name, exported[name]) for name in EXPORTED if name in exported)


def encode_exports(exports: Exports) -> EncodedExports:
    """*exports* as the bytes ``os.environ`` keeps and ``os.putenv`` takes, computed once
    by the parent so that a forked job does not encode them again."""
    return tuple((os.fsencode(name), os.fsencode(text)) for name, text in exports)


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
    """Run one job in this (child) process; return the exit code to use.

    The result frame is written but *result_fd* is left open: the caller
    closes it (or lets the process exit close it).
    """
    inherit: tuple[int, ...] = ()
    encoded: EncodedExports = ()
    if pool is not None:
        if exports is None:
            exports = pool_exports(pool)
        encoded = encode_exports(exports)
        inherit = pool.pass_fds
    return run(result_fd, fn, args, kwargs, env, preexec_fn, encoded, inherit)


def run(
    result_fd: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    env: Env,
    preexec_fn: Callable[[], Any] | None,
    exports: EncodedExports,
    inherit: tuple[int, ...],
) -> int:
    """:func:`run_job` with the pool's *exports* and the fds its children must
    *inherit* computed by the parent (as a forked job's are).

    A forked job starts with every page of memory shared with its parent, and
    each page it writes to (a reference count changing is a write) costs a
    copy-on-write fault, which is most of what a job costs beyond the fork
    itself. So this is one function (each Python function called touches its
    own pages), keeps to C-level calls on the usual path and allocates little:
    the pool's exports go straight into ``os.environ``'s dict and ``putenv``
    (what ``os.environ[name] = text`` does, without its encoding calls), plain
    results are marshalled, nothing is imported, and the pools are left alone
    unless this process used one (see :func:`makejobs._core.return_held_everywhere`).

    With automatic garbage collection on, everything inherited is frozen out
    of the collector's reach first (:func:`gc.freeze`, a few list splices): a
    job that allocates enough to trigger a collection of the older
    generations would otherwise walk, and so copy, every page of objects its
    parent had (measured: 150 ms instead of 30 for a job making 50,000 small
    objects under a parent holding 200,000).
    """
    if _gc_isenabled():
        _gc_freeze()
    try:
        environ = os.environ
        if exports:
            data = getattr(environ, "_data", None)
            if type(data) is dict:  # CPython's os._Environ on POSIX: bytes to bytes
                putenv = os.putenv
                for bname, btext in exports:
                    putenv(bname, btext)
                    data[bname] = btext
            else:
                for bname, btext in exports:
                    environ[os.fsdecode(bname)] = os.fsdecode(btext)
        for fd in inherit:
            os.set_inheritable(fd, True)
        for name, value in env:
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        try:
            if preexec_fn is None:
                payload = fn(*args, **kwargs)
            else:
                payload = _call(fn, args, kwargs, preexec_fn)
            kind = OK
        except Exception as e:
            kind, payload = RAISED, (e, _formatted(e))
    except BaseException as e:  # SystemExit, KeyboardInterrupt, GeneratorExit
        kind, payload = DIED, _died(e)
    # Tokens the job took and forgot are returned, not lost for the whole build;
    # those of jobs it started and left running are theirs until they end.
    if _forks.touched_here():
        _finish_own_jobs()
        _core.return_held_everywhere("a job ended")
    # A job that ended its process on purpose exits as it asked, after saying why.
    code: int = payload[1] if kind == DIED else 0
    try:
        if kind == OK and type(payload) in _MARSHALLED:
            body = _MARSHAL_TAG + marshal.dumps(payload, _MARSHAL_VERSION)
        else:
            body = _dumps((kind, payload), _PROTOCOL)
        frame = HEADER.pack(len(body)) + body
    except Exception:  # unpicklable, or too big for marshal
        frame = _frame(kind, payload)
    _write_all(result_fd, frame)
    return code


#: Called before a job that used a pool returns its forgotten tokens: the engine
#: (makejobs._engine, which imports this module) waits there for the jobs this
#: job submitted and left running, whose tokens are theirs until they end.
before_job_exit: list[Callable[[], None]] = []


def _finish_own_jobs() -> None:
    for hook in before_job_exit:
        with contextlib.suppress(Exception):
            hook()


#: In a spawned job or worker: the submitting process's life pipe end, kept open until exit.
_life = -1


def keep_life(fd: int) -> None:
    """Hold *fd*, the life pipe end of the process that started us, until we exit."""
    global _life
    os.set_inheritable(fd, False)
    _life = fd


class ResultFd:
    """A picklable handle on the write end of a pipe (the result pipe, the life
    pipe) for spawn/forkserver children.

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
    life: ResultFd | None = None,
    sigmask: tuple[int, ...] | None = None,
    memfd: ResultFd | None = None,
) -> None:
    """Entry point of a job started through a multiprocessing context.

    *life* is the write end of the submitting process's life pipe (see
    :mod:`makejobs.guardian`): held, untouched, for as long as the job runs.
    *sigmask* is the submitting thread's signal mask outside makejobs: the
    job was started while SIGINT and SIGTERM were held off there, and a new
    process inherits the mask of the thread that started it. With *memfd* the
    frame is written there, and the result pipe only tells when we are gone.
    """
    if sigmask is not None:
        _posix.sigmask(_posix.SIG_SETMASK, sigmask)
    if life is not None:
        keep_life(life.detach())
    fd = result.detach()
    os.set_inheritable(fd, False)  # exec'd grandchildren must not pin the pipe
    out = fd
    if memfd is not None:
        out = memfd.detach()
        os.set_inheritable(out, False)
    code = run_job(out, fn, args, kwargs, env, preexec_fn, pool, exports)
    # Closed now: multiprocessing has more to do before this process exits.
    with contextlib.suppress(OSError):
        os.close(fd)
    if code:
        sys.exit(code)


def frame_complete(data: bytes | bytearray) -> bool:
    """True when *data* is a whole frame (its header's length matches)."""
    size = HEADER.size
    return len(data) >= size and HEADER.unpack_from(data)[0] == len(data) - size


def decode_frame(data: bytes | bytearray) -> tuple[int, Any]:
    """The ``(kind, payload)`` of everything the job wrote to its result fd.

    A missing or short frame (the process died first) is ``(LOST, None)``. A
    body that cannot be unpickled here is a ``RAISED`` outcome, so that it
    reaches the job's own ``result()`` and nothing else: an Exception as a
    RuntimeError that says so, and any other BaseException (a ``__setstate__``
    raising KeyboardInterrupt or SystemExit) as itself. Raised from here, it
    would escape from whichever call happened to complete the job (a submit, a
    wait on another job, close) with the job half done, and from every later
    call that tried again.
    """
    size = HEADER.size
    if len(data) < size or HEADER.unpack_from(data)[0] != len(data) - size:
        return LOST, None
    body = memoryview(data)[size:]
    try:
        if body[:1] == _MARSHAL_TAG:
            return OK, marshal.loads(body[1:])
        kind, payload = pickle.loads(body)
    except Exception as e:
        return RAISED, (RuntimeError(f"the job's result could not be unpickled here: {e!r}"), None)
    except BaseException as e:
        return RAISED, (e, None)
    return kind, payload


def attach_traceback(exc: BaseException, text: str | None) -> BaseException:
    """Chain the child's formatted traceback to *exc* as its ``__cause__``."""
    if text:
        exc.__cause__ = RemoteTraceback(text)
    return exc


#: What :func:`run_chunk` returns: the values, then the error and its traceback's text.
ChunkResult = tuple[list[Any], Union[tuple[BaseException, str], None]]


def run_chunk(
    fn: Callable[..., Any], calls: Iterable[tuple[tuple[Any, ...], dict[str, Any]]]
) -> ChunkResult:
    """Call ``fn(*args, **kwargs)`` for each call, in order, until one raises.

    The values of the calls before, then what the one that raised raised and
    its formatted traceback (which does not pickle with it), or None.
    """
    values: list[Any] = []
    for args, kwargs in calls:
        try:
            values.append(fn(*args, **kwargs))
        except Exception as e:
            return values, (e, "".join(traceback.format_exception(type(e), e, e.__traceback__)))
    return values, None
