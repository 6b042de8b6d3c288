"""The POSIX file-descriptor layer under the token pool.

Everything here is a thin, checked wrapper over one or two system calls, kept
apart from the pool logic so that the platform rules live in one place:

* An inherited pipe's open file description is shared with make and every
  sibling. Its file-status flags (``O_NONBLOCK``) must never be changed, so on
  Linux we reopen ``/proc/self/fd/N``, which yields a *private* description we
  may make non-blocking. Elsewhere we ``dup`` and cope with either mode.
* A fifo is never opened with a blocking ``O_RDONLY``: a stale fifo (nobody
  holds it open) would hang that call forever. We open the write end first,
  non-blocking, which fails with ``ENXIO`` exactly when the fifo is stale.
* Only a fifo or a pipe is a pool. A fifo path is checked before it is opened
  (opening a device can have effects) and each opened end again with
  ``fstat`` before it is read or written (the path may have been swapped).
* Every descriptor we open is close-on-exec; children get pool fds only when
  they are handed over explicitly (``pass_fds``).
* ``os.read``/``os.write``/``poll`` already retry ``EINTR`` (PEP 475);
  ``EAGAIN`` after a readable poll means another client took the token first.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import signal
import stat
import sys
import termios

from .errors import PoolBroken, Unavailable

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = [
    "PIPE_CAPACITY_MAX",
    "NotInherited",
    "Unusable",
    "available_tokens",
    "check_inherited",
    "close_quietly",
    "combine",
    "describe_mode",
    "drain",
    "dup_cloexec",
    "end_of_file",
    "fill",
    "move",
    "open_descriptors",
    "open_fifo_ends",
    "open_new_fifo_ends",
    "open_pipe_ends",
    "pool_full",
    "pool_without_reader",
    "private_pipe",
    "usable_cpus",
    "wait_readable",
    "write_token",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_LINUX = sys.platform.startswith("linux")
# Linux refuses larger pipes to unprivileged users by default (fs.pipe-max-size).
PIPE_CAPACITY_MAX = 1 << 20
# poll() takes an int of milliseconds; beyond this it overflows.
_MAX_POLL_MS = 2**31 - 1


class Unusable(Exception):
    """An fd or path cannot serve as a jobserver; ``str()`` says why, ``kind`` which case."""

    def __init__(self, message: str, kind: Unavailable = Unavailable.INACCESSIBLE) -> None:
        super().__init__(message)
        self.kind = kind


def describe_mode(mode: int) -> str:
    """Name the kind of file *mode* describes, for error messages."""
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device (a terminal or /dev/null, say)"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "an unknown kind of file"


def _check_fd(fd: int, want_read: bool) -> os.stat_result:
    """Check that inherited *fd* is an open pipe end with the right access."""
    end = "read" if want_read else "write"
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        if e.errno == errno.EBADF:
            raise Unusable(
                f"the {end} fd {fd} is not open in this process", Unavailable.NOT_OPEN
            ) from None
        raise Unusable(f"cannot inspect the {end} fd {fd}: {e.strerror}") from None
    if not stat.S_ISFIFO(st.st_mode):
        raise Unusable(
            f"the {end} fd {fd} is {describe_mode(st.st_mode)}, not a pipe;"
            " it must never be read as a jobserver",
            Unavailable.NOT_A_PIPE,
        )
    mode = flags & os.O_ACCMODE
    allowed = (os.O_RDONLY, os.O_RDWR) if want_read else (os.O_WRONLY, os.O_RDWR)
    if mode not in allowed:
        other = "write-only" if want_read else "read-only"
        raise Unusable(
            f"the {end} fd {fd} is open {other}: the two fds look swapped or reused",
            Unavailable.WRONG_ACCESS,
        )
    return st


class NotInherited(Unusable):
    """An advertised pipe fd is close-on-exec: it is this process's own, not make's."""

    def __init__(self, message: str) -> None:
        super().__init__(message, Unavailable.NOT_INHERITED)


def check_inherited(read_fd: int, write_fd: int) -> None:
    """Check that an advertised pipe pool reached this process across exec.

    A descriptor inherited across exec cannot be close-on-exec, and every
    descriptor Python opens is (PEP 446). So a close-on-exec fd under numbers
    that the environment advertises was opened by this process itself: make
    4.3 leaves ``--jobserver-auth=3,4`` in ``MAKEFLAGS`` for a recipe without
    ``+`` but closes fds 3 and 4, and a program's first ``os.pipe()`` then
    gets those very numbers. Only for pools named by the environment: a pool
    this process already holds, or rebuilt from a pickle, is its own on
    purpose.

    Raises:
        Unusable: an fd is closed, not a pipe or has the wrong access mode
            (the checks of :func:`open_pipe_ends`).
        NotInherited: an fd is close-on-exec.
    """
    for fd, want_read in ((read_fd, True), (write_fd, False)):
        _check_fd(fd, want_read)
    for fd, end in ((read_fd, "read"), (write_fd, "write")):
        if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
            raise NotInherited(
                f"the {end} fd {fd} is close-on-exec, which a descriptor inherited"
                " across exec never is: this process opened it itself, so the"
                " advertised numbers are stale and name one of its own files"
            )


def _reopen(fd: int, flags: int) -> int | None:
    """Open a private description of *fd* (Linux ``/proc``); None if impossible."""
    if not _LINUX:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", flags | _CLOEXEC)
    except OSError:
        return None


def open_pipe_ends(read_fd: int, write_fd: int) -> tuple[int, int, bool]:
    """Validate an inherited pipe pool and open our own ends of it.

    Returns ``(reader, writer, private)``. When *private* is true both are new
    open file descriptions (Linux), the reader non-blocking, and the inherited
    descriptions are untouched. Otherwise they are close-on-exec ``dup``s that
    share make's description, whose blocking mode we leave as we found it.

    Raises:
        Unusable: an fd is closed, not a pipe, has the wrong access mode, or the
            two fds are ends of different pipes.
    """
    rst = _check_fd(read_fd, want_read=True)
    wst = _check_fd(write_fd, want_read=False)
    # Both ends of one pipe share an inode on Linux; numbers reused by a shell
    # pipeline (make 4.3 leaves stale numbers in MAKEFLAGS) usually do not.
    if _LINUX and (rst.st_dev, rst.st_ino) != (wst.st_dev, wst.st_ino):
        raise Unusable(
            f"fds {read_fd} and {write_fd} are ends of two different pipes",
            Unavailable.TWO_PIPES,
        )
    reader = _reopen(read_fd, os.O_RDONLY | os.O_NONBLOCK)
    if reader is not None:
        writer = _reopen(write_fd, os.O_WRONLY | os.O_NONBLOCK)
        if writer is not None:
            return reader, writer, True
        os.close(reader)
    return dup_cloexec(read_fd), dup_cloexec(write_fd), False


def open_fifo_ends(path: str) -> tuple[int, int]:
    """Open our own non-blocking read and write ends of the fifo at *path*.

    Only a fifo is a pool. *path* is checked with ``stat`` before anything opens
    it: opening a device can have effects of its own (a watchdog is armed, a
    tape rewinds), and reading or writing one certainly does (``/dev/random``
    hands out endless "tokens", ``/dev/kmsg`` logs what is written to it).
    Character devices are refused even though ninja and LLVM accept them as
    emulated fifos (CUSE): nothing tells one from ``/dev/random`` without
    opening it, and the jobserver protocol names a fifo.

    The write end is opened first: with ``O_NONBLOCK`` that fails with ``ENXIO``
    when no process has the fifo open for reading, i.e. the make that created
    it is gone. A blocking ``O_RDONLY`` open would hang forever instead. Each
    open is non-blocking and followed by ``fstat``, before anything is read or
    written, so a path swapped for something else after the check (or between
    the two opens) is refused too.

    Raises:
        Unusable: the path is missing, not a fifo, stale, cannot be opened, or
            changed while it was being opened.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise Unusable(
            f"the fifo {path!r} does not exist: the make that created it has"
            " probably exited, or this process runs in a sandbox with a private"
            " /tmp (set MAKE_TMPDIR or TMPDIR to a shared directory)",
            Unavailable.FIFO_MISSING,
        ) from None
    except OSError as e:
        raise Unusable(f"cannot inspect the fifo {path!r}: {e.strerror}") from None
    if not stat.S_ISFIFO(st.st_mode):
        raise Unusable(
            f"{path!r} is {describe_mode(st.st_mode)}, not a fifo; only a fifo is"
            " a jobserver pool, so it was not opened",
            Unavailable.NOT_A_FIFO,
        )
    writer = _open_fifo_end(path, os.O_WRONLY, st)
    try:
        reader = _open_fifo_end(path, os.O_RDONLY, st)
    except BaseException:
        os.close(writer)
        raise
    return reader, writer


def _open_fifo_end(path: str, access: int, expected: os.stat_result) -> int:
    """Open one end of the fifo *path*, which ``stat`` found to be *expected*.

    Non-blocking (an open never waits for a peer, and the check below comes
    before any read or write) and without becoming our controlling terminal,
    whatever the path names by now.
    """
    end = "writing" if access == os.O_WRONLY else "reading"
    try:
        fd = os.open(path, access | os.O_NONBLOCK | _NOCTTY | _CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENXIO and access == os.O_WRONLY:
            raise Unusable(
                f"the fifo {path!r} is stale: no process has it open, so the make"
                " that created it has exited (or was killed and left it behind)",
                Unavailable.FIFO_STALE,
            ) from None
        raise Unusable(f"cannot open the fifo {path!r} for {end}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise Unusable(f"cannot inspect the fifo {path!r}: {e.strerror}") from None
    if not stat.S_ISFIFO(st.st_mode) or (st.st_dev, st.st_ino) != (
        expected.st_dev,
        expected.st_ino,
    ):
        os.close(fd)
        now = "another fifo" if stat.S_ISFIFO(st.st_mode) else describe_mode(st.st_mode)
        raise Unusable(
            f"{path!r} changed while it was being opened: it is {now} now, not the"
            " fifo that was checked; nothing was read from it or written to it",
            Unavailable.FIFO_CHANGED,
        )
    return fd


def open_new_fifo_ends(path: str) -> tuple[int, int]:
    """New non-blocking ends of a fifo this process holds (or just made): the reader
    first, so the writer's non-blocking open succeeds."""
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _CLOEXEC)
    try:
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | _CLOEXEC)
    except BaseException:
        os.close(reader)
        raise
    return reader, writer


def private_pipe() -> tuple[int, int]:
    """A private non-blocking, close-on-exec pipe (an escrow, a wake-up pipe...)."""
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        os.set_blocking(w, False)
    except BaseException:
        close_quietly(r, w)
        raise
    return r, w


# -- signals ---------------------------------------------------------------------------
#
# The C function (ints in, a set of ints out): signal.pthread_sigmask wraps it and
# builds a set of Signals enums, which in a freshly forked child is mostly
# copy-on-write page faults.
sigmask: Callable[[int, Iterable[int]], set[int]] = getattr(
    sys.modules.get("_signal"), "pthread_sigmask", signal.pthread_sigmask
)
SIG_BLOCK = int(signal.SIG_BLOCK)
SIG_SETMASK = int(signal.SIG_SETMASK)
#: The signals whose Python handlers raise in the middle of our bookkeeping
#: (KeyboardInterrupt, or a SIGTERM handler's exception). Held off around the
#: few sections that must not be split, in this thread: the pattern is
#: ``old = sigmask(SIG_BLOCK, ())`` (only asks), then ``try: sigmask(SIG_BLOCK,
#: INTERRUPTS) ... finally: sigmask(SIG_SETMASK, old)``, so that an exception
#: raised at any point leaves the mask as it was.
INTERRUPTS = frozenset({int(signal.SIGINT), int(signal.SIGTERM)})


# -- moving tokens between pipes -----------------------------------------------------
#
# A token that is read into Python is, until it is written somewhere, held only by a
# local variable: an exception raised between the two calls (a KeyboardInterrupt
# can arrive at any bytecode) would lose it. splice(2) moves bytes from one pipe to
# another in a single system call, so a token is always in exactly one pipe: the
# pool's, or one holder's escrow. Python 3.9 has no os.splice, so there it comes
# from libc through ctypes; other systems fall back to read and write.

_SPLICE_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_splice: Any = getattr(os, "splice", None)


def _libc_splice() -> Any:
    """splice(2) through ctypes, for Linux on Python < 3.10; None if unavailable."""
    try:
        import ctypes
    except ImportError:  # pragma: no cover
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    function = getattr(libc, "splice", None)
    if function is None:  # pragma: no cover
        return None
    function.restype = ctypes.c_ssize_t
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
    ]

    def splice(src: int, dst: int, count: int, flags: int = 0) -> int:
        result: int = function(src, None, dst, None, count, flags)
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))  # the matching subclass, as os.splice
        return result

    return splice


if _splice is None and _LINUX:
    _splice = _libc_splice()

#: True when tokens move between pipes in one system call (see move()).
ATOMIC_MOVES = _splice is not None


def move(src: int, dst: int, limit: int = 1 << 16) -> int:
    """Move up to *limit* bytes from the non-blocking pipe *src* into the pipe *dst*.

    Returns how many moved: 0 when *src* is empty or *dst* is full (look at
    *src* with :func:`available_tokens` to tell which). With splice(2) the
    bytes never pass through this process, so the move is all or nothing
    whatever exception interrupts the caller.

    Raises:
        EOFError: *src* is at end-of-file (no writer is left and it is empty).
        BrokenPipeError: *dst* has no reader left.
    """
    if _splice is not None:
        try:
            moved: int = _splice(src, dst, limit, flags=_SPLICE_F_NONBLOCK)
        except BlockingIOError:
            return 0
        if moved == 0:
            raise EOFError(f"fd {src} is at end-of-file")
        return moved
    try:
        data = os.read(src, limit)
    except BlockingIOError:
        return 0
    if not data:
        raise EOFError(f"fd {src} is at end-of-file")
    try:
        return os.write(dst, data)
    except BaseException as e:
        # Put the bytes back where they came from rather than drop them.
        try:
            os.write(src, data)
        except OSError:
            pass
        if isinstance(e, BlockingIOError):
            return 0  # dst is full, as splice reports it
        raise


def combine(*fds: int) -> select.epoll | None:
    """One pollable fd that is readable when any of *fds* is (Linux epoll), else None."""
    if not hasattr(select, "epoll"):
        return None
    combined = select.epoll()  # close-on-exec by default
    try:
        for fd in fds:
            combined.register(fd, select.EPOLLIN)
    except BaseException:
        combined.close()
        raise
    return combined


def wait_readable(fds: int | tuple[int, ...], timeout: float | None) -> bool:
    """Wait until one of *fds* is readable (or hung up); False if *timeout* passed first."""
    poller = select.poll()
    for fd in (fds,) if isinstance(fds, int) else fds:
        poller.register(fd, select.POLLIN)
    if timeout is None:
        ms = -1
    else:
        ms = min(_MAX_POLL_MS, max(0, int(timeout * 1000 + 0.999)))
    return bool(poller.poll(ms))


def end_of_file(fd: int) -> PoolBroken:
    """The error for a read of 0 bytes from the pool, which is never a token."""
    return PoolBroken(
        f"reading the jobserver (fd {fd}) returned end-of-file: no process"
        " holds its write end any more, so the pool is gone"
    )


def pool_full(fd: int) -> PoolBroken:
    """The error for a pool that cannot take a token back (it holds more than it should)."""
    return PoolBroken(
        f"the jobserver (fd {fd}) is full: more tokens were written back than"
        " it was created with, so one token is being dropped"
    )


def pool_without_reader(fd: int) -> PoolBroken:
    """The error for a pool nobody reads any more."""
    return PoolBroken(
        f"the jobserver (fd {fd}) has no reader left: the make that owned it"
        " exited, so the token cannot be returned"
    )


def write_token(fd: int, byte: bytes) -> None:
    """Write one token byte back.

    Raises:
        PoolBroken: the pool is full (someone wrote back more tokens than it
            holds) or nobody reads it any more (its make exited).
    """
    try:
        os.write(fd, byte)
    except BlockingIOError:
        raise pool_full(fd) from None
    except BrokenPipeError:
        raise pool_without_reader(fd) from None


def fill(fd: int, count: int, byte: bytes) -> None:
    """Write *count* token bytes into the non-blocking write end *fd*.

    Grows the pipe first if it would not hold them (Linux ``F_SETPIPE_SZ``),
    and raises ValueError instead of blocking when it still cannot.
    """
    if count <= 0:
        return
    try:
        capacity = fcntl.fcntl(fd, _F_GETPIPE_SZ)
    except OSError:
        capacity = None
    if capacity is not None and count > capacity:
        try:
            capacity = fcntl.fcntl(fd, _F_SETPIPE_SZ, min(count, 2**31 - 1))
        except OSError:
            pass
    # Written in bounded chunks: a huge count must fail on the pipe's
    # capacity, not first allocate gigabytes of token bytes.
    chunk = byte * min(count, 1 << 16)
    written = 0
    try:
        while written < count:
            written += os.write(fd, chunk[: count - written])
    except BlockingIOError:
        raise ValueError(
            f"a pool of {count + 1} slots needs room for {count} tokens, but the"
            f" pipe here holds only {written} bytes (see /proc/sys/fs/pipe-max-size);"
            " use fewer slots"
        ) from None


def drain(fd: int) -> int:
    """Read every token currently in the non-blocking *fd*; return the count."""
    total = 0
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return total
        if not chunk:
            return total
        total += len(chunk)


def available_tokens(fd: int) -> int | None:
    """The number of tokens waiting in the pool right now, if the OS says."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return None
    return buf[0]


def dup_cloexec(fd: int) -> int:
    """A close-on-exec duplicate of *fd* (same open file description)."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0)


def close_quietly(*fds: int) -> None:
    """Close each fd, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def open_descriptors() -> list[int]:
    """The descriptors open in this process, in order (empty if it cannot be told).

    Read from ``/proc/self/fd`` (Linux) or ``/dev/fd`` (BSD, macOS). The
    descriptor that listed the directory is in the list, closed by now.
    """
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        return sorted(int(name) for name in names if name.isdigit())
    return []


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
