"""A job's process: choosing how to start it, starting it, watching it, reaping it,
and reading what it sent back.

Everything here is operating-system work for one job; :mod:`makejobs.future`
decides, from what this module reports, which state a job is in, and
:mod:`makejobs._engine` decides when to look. The two ways to start a job:

* :func:`fork` forks this process. The pid is stored by C code (no bytecode
  runs between ``fork()`` returning and the pid being kept), SIGINT and
  SIGTERM are held off until the job is registered, and where the kernel
  allows (Linux: memfd and pidfd) the child writes its result frame into a
  private memfd and the parent waits on a pidfd for its exit: one wake-up per
  job, like a bare fork and waitpid.
* :func:`start` starts it through a :mod:`multiprocessing` context (spawn,
  forkserver), restarting a dead fork server once.

Either way the job holds the write end of a pipe whose read end the parent
watches: its end-of-file means "this job and everything it forked are gone",
which is when the job's slot may go back.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any, NamedTuple, Protocol, TypeVar

from . import _child, _forkserver, _posix
from .errors import JobStartFailed

__all__ = [
    "AUTO",
    "ForkedProcess",
    "JobProcess",
    "MultiprocessingProcess",
    "Output",
    "Registration",
    "Spawned",
    "fork",
    "memfd_results",
    "resolve_context",
    "start",
    "start_method",
    "threads",
]

F = TypeVar("F", covariant=True)

_INTERRUPTS = _posix.INTERRUPTS
_SIG_BLOCK = _posix.SIG_BLOCK
_SIG_SETMASK = _posix.SIG_SETMASK
_sigmask = _posix.sigmask
_HAVE_PIDFD = hasattr(os, "pidfd_open")
_MFD_CLOEXEC = getattr(os, "MFD_CLOEXEC", 1)
_READ_SIZE = 1 << 16
# Errors multiprocessing lets out when it cannot start a process, its fork
# server being dead or dying: named for what they mean (see start()).
_START_ERRORS = (ChildProcessError, EOFError, ConnectionError, FileNotFoundError)
# What pickling a job or its arguments raises when it cannot be done.
_PICKLING_ERRORS = (pickle.PicklingError, AttributeError, TypeError, ValueError, RecursionError)


# -- the start method ---------------------------------------------------------------------

#: The start method that forks while the process has one thread, else uses the fork server.
AUTO = "auto"


def resolve_context(context: BaseContext | str | None) -> BaseContext | None:
    """The context *context* names, or None for :data:`AUTO`."""
    if context is None:
        return None if _auto_by_default() else multiprocessing.get_context()
    if context == AUTO:
        if not _auto_possible():
            raise ValueError("the 'auto' start method needs both fork and forkserver")
        return None
    if isinstance(context, str):
        return multiprocessing.get_context(context)
    if isinstance(context, BaseContext):
        return context
    raise TypeError(f"context must be None, a start method name or a context, not {context!r}")


def _auto_possible() -> bool:
    methods = multiprocessing.get_all_start_methods()
    return "fork" in methods and "forkserver" in methods


def _auto_by_default() -> bool:
    """Whether a Jobserver without a context uses :data:`AUTO`.

    Where the platform's default start method is fork or forkserver (Linux
    and the BSDs, not macOS, where forking is unsafe even with one thread),
    unless :func:`multiprocessing.set_start_method` chose another method
    (one equal to the platform's default cannot be told from it).
    """
    default = multiprocessing.get_all_start_methods()[0]  # the first is the default
    chosen = multiprocessing.get_start_method(allow_none=True)
    return default in ("fork", "forkserver") and chosen in (None, default) and _auto_possible()


def start_method(context: BaseContext | None) -> tuple[str, BaseContext]:
    """The start method and context of a job about to start (*context* None: :data:`AUTO`)."""
    if context is not None:
        return context.get_start_method(), context
    # One thread (this one) means no other can start one before the fork.
    method = "fork" if threads() == 1 else "forkserver"
    return method, multiprocessing.get_context(method)


def threads() -> int:
    """How many threads this process has, counted as CPython counts them when it
    decides whether to warn that fork() may deadlock: the kernel's count on
    Linux (C threads included), else the threading module's."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


# -- the processes --------------------------------------------------------------------------


class JobProcess:
    """What both kinds of job process share: a pid that is signalled only until reaped."""

    __slots__ = ()

    pid: int
    exitcode: int | None
    reaped: bool

    def kill(self, signum: int) -> None:
        if not self.reaped:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def exit_fd(self) -> int | None:
        """An fd readable once the process has exited, or None if there is none."""
        raise NotImplementedError

    def poll(self, block: bool = False) -> bool:
        """Reap the process if it has exited (waiting when *block*); True once reaped."""
        raise NotImplementedError

    def abandon(self) -> None:
        """In a forked child: the process is the parent's; never signal or reap it here."""
        raise NotImplementedError


class ForkedProcess(JobProcess):
    """A job process we forked ourselves: reaped with waitpid, watched with a pidfd.

    The pidfd is opened when first asked for (:meth:`exit_fd`): at the fork
    when the frame comes in a memfd, else only once the job has written its
    frame and waiting for its exit is all that is left. An unreaped child
    keeps its pid, so opening it late is as safe as at the fork.
    """

    __slots__ = ("_pidfd", "exitcode", "pid", "reaped")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.exitcode = None
        self.reaped = False
        self._pidfd: int | None = None

    def exit_fd(self) -> int | None:
        if self._pidfd is None and _HAVE_PIDFD and not self.reaped:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except ProcessLookupError:
                # Our unreaped child would still have its pid: it was reaped for
                # us (SIGCHLD ignored) or by someone else. Its status is lost.
                self.reaped = True
            except OSError:
                pass
        return self._pidfd

    def poll(self, block: bool = False) -> bool:
        if self.reaped:
            return True
        try:
            pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, None  # someone else reaped it (SIGCHLD ignored?)
        if pid == 0:
            return False
        self.reaped = True
        if status is not None:
            self.exitcode = os.waitstatus_to_exitcode(status)
        self.forget_pidfd(close=True)
        return True

    def forget_pidfd(self, close: bool) -> None:
        # Forgotten before it is closed: a job forked by another thread right
        # after the close could get the same number, and a later cleanup here
        # must not close that.
        pidfd, self._pidfd = self._pidfd, None
        if pidfd is not None and close:
            os.close(pidfd)

    def abandon(self) -> None:
        self.reaped = True
        self.forget_pidfd(close=True)


class MultiprocessingProcess(JobProcess):
    """A job started through a multiprocessing context (spawn, forkserver)."""

    __slots__ = ("_process", "exitcode", "pid", "reaped")

    def __init__(self, process: Any) -> None:
        self._process = process
        self.pid = process.pid
        self.exitcode = None
        self.reaped = False

    def exit_fd(self) -> int | None:
        return None if self.reaped else int(self._process.sentinel)

    def abandon(self) -> None:
        self.reaped = True  # the sentinel is multiprocessing's: it closes it

    def poll(self, block: bool = False) -> bool:
        if self.reaped:
            return True
        self._process.join(None if block else 0)
        if self._process.exitcode is None:
            if not _reaped_elsewhere(self.pid, self._process.sentinel):
                return False
            # Gone, yet multiprocessing cannot reap it: SIGCHLD is ignored (the
            # kernel reaped it, and waitpid fails), or someone else reaped it.
            # Its exit status is lost; what it wrote is not.
            self.reaped = True
            _forget_multiprocessing_child(self._process)
            return True
        self.exitcode = self._process.exitcode
        self.reaped = True
        self._process.close()
        return True


def _reaped_elsewhere(pid: int, sentinel: int) -> bool:
    """True when our child *pid* has exited and can no longer be reaped by us."""
    import select

    readable, _, _ = select.select([sentinel], [], [], 0)
    if not readable:
        return False  # still running (its sentinel closes as it exits)
    if not hasattr(os, "waitid"):  # pragma: no cover - every POSIX system we know has it
        return False
    try:
        # WNOWAIT: only look. An exiting child that is not a zombie yet gives None.
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


def _forget_multiprocessing_child(process: Any) -> None:
    # multiprocessing keeps unreaped children in a module set and polls them on
    # every active_children(); one that can never be reaped would stay forever.
    from multiprocessing import process as mp_process

    children = getattr(mp_process, "_children", None)
    if isinstance(children, set):
        children.discard(process)


# -- what the job sends back ------------------------------------------------------------------


class Output:
    """The job's result channel: the read end of its pipe, and its memfd if it has one.

    With a memfd the job writes its frame there and nothing into the pipe,
    whose end-of-file then only says that the job and all it forked are gone.
    Without one the frame comes through the pipe, read as it arrives so that
    the job never stalls on a full pipe. Every method may be interrupted and
    called again: each looks at where the previous call got to.
    """

    __slots__ = ("_data", "fd", "memfd")

    def __init__(self, fd: int, memfd: int | None) -> None:
        self.fd: int | None = fd
        self.memfd = memfd
        # What the pipe delivered so far: bytes while it came in one read (the
        # usual case), a bytearray once a second chunk had to be appended.
        self._data: bytes | bytearray = b""

    def read(self) -> bool:
        """Read what the pipe has (keeping it); True once it is at end-of-file and closed."""
        fd = self.fd
        if fd is None:
            return True
        try:
            while True:
                chunk = os.read(fd, _READ_SIZE)
                if not chunk:
                    self.fd = None  # forgotten before it is closed: see forget_pidfd
                    os.close(fd)
                    return True
                data = self._data
                if not data:
                    self._data = chunk
                else:
                    if type(data) is bytes:
                        data = self._data = bytearray(data)
                    data += chunk
        except BlockingIOError:
            return False

    def drain(self) -> bool:
        """Read and drop what the pipe has; True once it is at end-of-file and closed.

        With a memfd nothing is written to the pipe; whatever is, is not ours.
        """
        fd = self.fd
        if fd is None:
            return True
        try:
            while os.read(fd, _READ_SIZE):
                pass
        except BlockingIOError:
            return False
        self.fd = None
        os.close(fd)
        return True

    def frame_complete(self) -> bool:
        """Whether the pipe delivered a whole frame (the job writes it last, then exits)."""
        return _child.frame_complete(self._data)

    def decode(self) -> tuple[int, Any]:
        """The job's outcome, from the memfd or from what the pipe delivered."""
        memfd = self.memfd
        data = self._data if memfd is None else _read_memfd(memfd)
        return _child.decode_frame(data)

    def close(self) -> None:
        """Let go of the memfd and the data (the pipe closed itself at end-of-file)."""
        memfd = self.memfd
        if memfd is not None:
            self.memfd = None
            os.close(memfd)
        self._data = b""

    def abandon(self) -> None:
        """In a forked child: close the parent's descriptors of this job."""
        fds = (self.fd, self.memfd)
        self.fd = self.memfd = None
        self._data = b""
        _posix.close_quietly(*(fd for fd in fds if fd is not None))


def _read_memfd(fd: int) -> bytes:
    """Everything written to the memfd *fd* (from offset 0, whatever its offset)."""
    data = os.pread(fd, _READ_SIZE, 0)
    if len(data) < _READ_SIZE:
        return data
    size = os.fstat(fd).st_size
    parts = [data]
    offset = len(data)
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


# None until probed: whether forked jobs hand their frame over in a memfd, their
# exit watched through a pidfd (Linux 5.3 and later), rather than in a pipe.
_memfd_ok: bool | None = None


def memfd_results() -> bool:
    """Whether jobs write their frame into a memfd (and forked ones are watched by pidfd)."""
    global _memfd_ok
    ok = _memfd_ok
    if ok is None:
        ok = False
        if hasattr(os, "memfd_create") and hasattr(os, "pidfd_open"):
            try:
                os.close(os.pidfd_open(os.getpid()))
                os.close(os.memfd_create("makejobs-probe", _MFD_CLOEXEC))
                ok = True
            except OSError:
                pass  # an old kernel, or a sandbox that forbids them
        _memfd_ok = ok
    return ok


# -- starting -----------------------------------------------------------------------------------


class Registration(Protocol[F]):
    """How a start hands its job over: the caller's registry, under its spawn lock.

    :meth:`register` makes the job known (from then on it owns its tokens);
    :meth:`registered` tells afterwards whether that happened, which a start
    interrupted at any bytecode needs to know to stop a job nobody knows.
    """

    @property
    def spawn_lock(self) -> threading.Lock: ...

    def check_open(self) -> None: ...

    def register(self, process: JobProcess, output: Output) -> F: ...

    def registered(self) -> bool: ...


def fork(
    registration: Registration[F],
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    env: _child.Env,
    preexec_fn: Callable[[], Any] | None,
    exports: _child.EncodedExports,
    inherit: tuple[int, ...],
) -> F:
    """Fork the job's process and register it.

    SIGINT and SIGTERM are held off in this thread from before the process
    exists until it is registered, so a KeyboardInterrupt cannot leave a
    started job unknown (its tokens would go back while it runs); one that
    arrives meanwhile is raised afterwards, with the job registered and
    running. A job that was started but not registered (any other exception)
    is killed and reaped before this returns.

    Where the kernel allows (:func:`memfd_results`), the child writes its
    frame into a private memfd and the parent waits for its exit on a pidfd.
    The pipe is still made: nothing is written to it, but its write end, held
    by the job and by whatever it forks, keeps the job running (and its slot
    taken) until the last of those has exited.
    """
    in_memory = memfd_results()
    r = w = m = -1
    # The pid lands here from C: os.fork() is called by a C iterator and its
    # result stored by deque.extend, with no bytecode in between at which a
    # signal handler could raise and lose the pid of a running child.
    box: deque[int] = deque(maxlen=1)
    process: ForkedProcess | None = None
    _flush_std_streams()
    old = _sigmask(_SIG_BLOCK, ())
    try:
        _sigmask(_SIG_BLOCK, _INTERRUPTS)
        if in_memory:
            m = os.memfd_create("makejobs-result", _MFD_CLOEXEC)
        r, w = os.pipe()
        with registration.spawn_lock:
            registration.check_open()
            box.extend(itertools.islice(iter(os.fork, None), 1))
            if box[0] == 0:  # pragma: no cover - runs in the child
                # As little as possible happens here (see _child.run). The
                # pipe is left for the exit to close, after the flush.
                code = 1
                try:
                    _sigmask(_SIG_SETMASK, old)
                    os.close(r)
                    out = m if m >= 0 else w
                    code = _child.run(out, fn, args, kwargs, env, preexec_fn, exports, inherit)
                finally:
                    _flush_std_streams()
                    os._exit(code)
            # Close our copy of the write end before any other job starts, so
            # end-of-file means exactly "this job and what it forked are done".
            os.close(w)
            w = -1
            process = ForkedProcess(box[0])
            if in_memory and process.exit_fd() is None and not process.reaped:
                raise OSError("cannot open a pidfd to watch the job's process")
            os.set_blocking(r, False)
            return registration.register(process, Output(r, m if in_memory else None))
    except BaseException:
        if box and box[0] and not registration.registered():
            # Never registered: it must not run on tokens about to go back.
            with contextlib.suppress(OSError):
                os.kill(box[0], signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(box[0], 0)
            if process is not None:
                process.forget_pidfd(close=True)
            _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
        elif not box:
            _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
        raise
    finally:
        _sigmask(_SIG_SETMASK, old)


class Spawned(NamedTuple):
    """What a job started through multiprocessing is sent: all of it is pickled."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    env: _child.Env
    preexec_fn: Callable[[], Any] | None
    pool: Any  # the TokenPool, which pickles as a handle the job opens again
    exports: _child.Exports


def start(
    registration: Registration[F],
    context: BaseContext,
    life: int,
    job: Spawned,
    *,
    auto: bool,
) -> F:
    """Start *job* through multiprocessing's *context* and register it (see :func:`fork`).

    *life* is the guardian's life pipe (or -1), which the job keeps open;
    *auto*: the start method was chosen by :data:`AUTO`, which an error about
    pickling then explains.
    """
    if context.get_start_method() == "forkserver":
        # Started here, outside the section below: a process inherits the
        # signal mask, and the fork server passes it on to every job.
        _ensure_forkserver(context)
    old = _sigmask(_SIG_BLOCK, ())
    r = w = m = -1
    process: MultiprocessingProcess | None = None
    try:
        _sigmask(_SIG_BLOCK, _INTERRUPTS)
        if memfd_results():
            # As for forked jobs: the frame is read with pread once the
            # process is gone, so an interrupted read never costs it.
            m = os.memfd_create("makejobs-result", _MFD_CLOEXEC)
        r, w = os.pipe()
        with registration.spawn_lock:
            registration.check_open()
            process = _start_process(context, w, m, life, old, job, auto)
            # Close our copy of the write end before any other job starts,
            # so end-of-file means exactly "this job's process is done".
            os.close(w)
            w = -1
            os.set_blocking(r, False)
            return registration.register(process, Output(r, m if m >= 0 else None))
    except BaseException:
        if not registration.registered():
            # Never registered: it must not run on tokens about to go back.
            if process is not None:
                process.kill(signal.SIGKILL)
                process.poll(block=True)
            elif r >= 0:
                _stop_unknown_job(r, w)  # closes w
                w = -1
            _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
        raise
    finally:
        _sigmask(_SIG_SETMASK, old)


def _start_process(
    context: BaseContext,
    w: int,
    memfd: int,
    life: int,
    mask: set[int],
    job: Spawned,
    auto: bool,
) -> MultiprocessingProcess:
    """Start the job's process; a dead fork server is restarted once."""
    method = context.get_start_method()
    for attempt in (1, 2):
        process = context.Process(  # type: ignore[attr-defined]
            target=_child.spawned_main,
            args=(
                _child.ResultFd(w),
                *job,
                None if life < 0 else _child.ResultFd(life),
                tuple(mask),
                None if memfd < 0 else _child.ResultFd(memfd),
            ),
            name="makejobs-job",
        )
        try:
            process.start()
            return MultiprocessingProcess(process)
        except BaseException as e:
            if process.pid is not None:
                # Started but not handed back (an interruption, say): the
                # caller cannot stop it, so it is stopped here.
                with contextlib.suppress(Exception):
                    process.kill()
                    process.join()
            if isinstance(e, _PICKLING_ERRORS):
                why = ""
                if auto:
                    why = (
                        f" (the default start method forks only while the process has"
                        f" one thread; it has {threads()}: pass context='fork' to fork"
                        " anyway)"
                    )
                raise TypeError(
                    f"the job or its arguments cannot be pickled for start method"
                    f" {method!r}: {e}{why}"
                ) from e
            if not isinstance(e, _START_ERRORS):
                raise
            if attempt == 1 and method == "forkserver":
                _forget_dead_forkserver()
                continue
            raise JobStartFailed(
                f"could not start the job's process with start method {method!r}"
                f" ({type(e).__name__}: {e}); if the fork server died (a process or file"
                " limit, or it was killed), the next submit starts a new one"
            ) from e
    raise AssertionError("unreachable")  # pragma: no cover


def _stop_unknown_job(r: int, w: int) -> None:
    """Stop a job whose start was interrupted before multiprocessing handed it back.

    It holds the write end of its result pipe: if, our own copy closed, the
    pipe does not hang up, some process has it, and (but for the fork server
    passing it on) that can only be the job. Found in ``/proc`` (Linux),
    killed, and waited for; elsewhere it is left to end by itself.
    """
    import select

    from ._guardian_main import holders_of

    if w >= 0:
        os.close(w)
    poller = select.poll()
    poller.register(r, select.POLLIN)
    if any(mask & select.POLLHUP for _fd, mask in poller.poll(0)):
        return  # nobody else has it: no job was started
    from multiprocessing import forkserver

    server = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    for pid in holders_of(os.fstat(r).st_ino) - {os.getpid(), server}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    poller.poll(5000)  # until the pipe hangs up: the job is gone


def _ensure_forkserver(context: BaseContext) -> None:
    """Start multiprocessing's fork server now if it is not running (a dead one is replaced).

    A server started here imports makejobs' job side first, so that each job,
    a fork of it, needs not import makejobs again: tens of milliseconds a job.
    """
    from multiprocessing import forkserver

    _forkserver.preload_in_forkserver(context, "makejobs.jobserver")
    try:
        forkserver.ensure_running()
    except _START_ERRORS:
        _forget_dead_forkserver()
        forkserver.ensure_running()


def _forget_dead_forkserver() -> None:
    """Make multiprocessing start a new fork server on next use (the old one died).

    multiprocessing restarts a fork server it can see died (its pid reaped),
    but not one whose socket is gone or that someone else reaped: then every
    start fails. Stopping it (which also waits for it) clears that state.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if server is None or stop is None:
        return
    try:
        stop()
    except (ChildProcessError, OSError):
        # Already reaped elsewhere: clear what _stop() would have.
        for name in ("_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd"):
            if hasattr(server, name):
                setattr(server, name, None)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
