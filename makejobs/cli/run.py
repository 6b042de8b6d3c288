"""``makejobs run [-j N] [-f FILE] [--keep-going]``

Run shell command lines (``/bin/sh -c``) from FILE (``-`` or no ``-f``:
standard input) in parallel, each on one slot of the inherited pool, or
of a new pool of N (default: the usable CPUs) when there is none. Under
an inherited pool ``-j N`` caps how many commands run at once (the pool
still bounds everything, as for ``cargo -j``). An advertised but unusable
pool runs one command at a time with a warning (as make does), unless
``-j N`` asks for a new pool of N. Blank lines and lines starting with
``#`` are skipped; all lines are read before the first command starts.

Every command gets the pool exported (its slot is its implicit slot), its
standard input from ``/dev/null``, and its own process group (signals sent
to ``run`` are passed on to each command's whole group). Its output is
collected and printed in one piece when it ends, like ``make -O``: stdout
and stderr stay separate unless makejobs' own stdout and stderr are the
same file, in which case the command's streams are merged in order.
While stderr is a terminal a progress line ``[done/total] running,
failed`` is kept at its bottom. Without ``--keep-going`` no command is
started after the first failure (those running finish); at the end a
summary lists the failed commands and the exit status is 1.

Commands are started with :func:`os.posix_spawn` (``vfork`` + ``exec`` in
the C library), not :class:`subprocess.Popen`: with hundreds of short
commands, what ``run`` spends per command is what keeps it from matching
``make -j``. The pool's environment is built once, and the pool's
descriptors are made inheritable for the life of the run, while every
other inherited descriptor is marked close-on-exec once at the start, so
a command inherits exactly what ``subprocess`` would have given it.
"""

from __future__ import annotations

import argparse
import os
import selectors
import signal
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .. import _posix
from ..errors import JobserverUnavailable, PoolBroken
from ..pool import Token, TokenPool
from ._args import UsageError, check_slots, fill
from ._console import EXIT_FAILED, say
from ._supervise import CAUGHT, REKILL, die_of, in_main_thread, signal_name
from ._token_count import close_counting

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any, TextIO

__all__ = ["command", "configure"]

_CLEAR_LINE = "\r\x1b[K"
_SHELL = "/bin/sh"
# Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (what
# subprocess's restore_signals does).
_DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit {returncode}"


def _read_commands(path: str | None) -> list[str]:
    """Command lines from *path* (None or ``-``: stdin), minus blank and ``#`` lines."""
    if path is None or path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    return [
        line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _same_file(a: TextIO, b: TextIO) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError):
        return False


@contextmanager
def _inheritance(keep: Sequence[int]) -> Iterator[None]:
    """Let commands inherit exactly stdin/stdout/stderr and *keep* while the block runs.

    posix_spawn closes nothing: a command gets every descriptor not marked
    close-on-exec. So descriptors this process inherited are marked once (as
    ``subprocess`` would close them in every child) and *keep*, the pool's
    descriptors, are made inheritable; *keep* gets its old flag back at the end.
    Flags belong to this process's descriptors, not to what they share with
    other processes, so nobody else sees the change.
    """
    for fd in _posix.open_descriptors():
        if fd > 2 and fd not in keep:  # stdin, stdout and stderr are the commands' too
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # closed meanwhile (listdir's own descriptor)
    before = [os.get_inheritable(fd) for fd in keep]
    for fd in keep:
        os.set_inheritable(fd, True)
    try:
        yield
    finally:
        for fd, was in zip(keep, before):
            try:
                os.set_inheritable(fd, was)
            except OSError:
                pass  # the pool is gone (closed while unwinding)


_HAVE_PIDFD = hasattr(os, "pidfd_open")


def _reap(pid: int) -> int:
    """Wait for *pid*; its exit status as subprocess reports it (-N: killed by signal N)."""
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class _Job:
    """One command line of ``makejobs run`` and what it produced."""

    __slots__ = (
        "err",
        "error",
        "fds",
        "line",
        "number",
        "out",
        "pid",
        "pidfd",
        "returncode",
        "token",
    )

    def __init__(self, number: int, line: str) -> None:
        self.number = number
        self.line = line
        self.pid: int | None = None
        self.token: Token | None = None  # held from start to reaping
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.fds: dict[int, list[bytes]] = {}  # open output fd -> buffer
        self.pidfd: int | None = None
        self.returncode: int | None = None
        self.error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None or self.returncode != 0

    def why(self) -> str:
        if self.error is not None:
            return self.error
        assert self.returncode is not None
        return _describe_status(self.returncode)


class _Runner:
    """The single-threaded event loop of ``makejobs run``.

    One selector watches, at the same time: the pool (only while a command is
    waiting for a slot and may start), each command's output pipes, each
    command's exit (a pidfd where the OS has them; else the end of its
    output), and the signal wake-up pipe. Nothing polls on a timer.
    """

    def __init__(
        self,
        pool: TokenPool,
        lines: Sequence[str],
        *,
        limit: int | None,
        keep_going: bool,
        merge: bool,
        progress: bool,
    ) -> None:
        self.pool = pool
        self.pending: deque[_Job] = deque(_Job(i, line) for i, line in enumerate(lines, 1))
        self.total = len(self.pending)
        self.running: list[_Job] = []
        self.finished: list[_Job] = []
        self.limit = limit
        self.keep_going = keep_going
        self.merge = merge
        self.progress = progress
        self.stopping = False
        self.broken: str | None = None
        self.interrupted: int | None = None
        self.signals: list[int] = []
        self.selector = selectors.DefaultSelector()
        self.environ = pool.environ()  # every command gets the same one
        self.watching_pool = False
        self._wake_r: int | None = None

    # -- output ---------------------------------------------------------------

    def _progress_text(self) -> str:
        failed = sum(job.failed for job in self.finished)
        text = f"[{len(self.finished)}/{self.total}] {len(self.running)} running"
        if failed:
            text += f", {failed} failed"
        return text

    def _draw(self) -> None:
        if self.progress:
            sys.stderr.write(_CLEAR_LINE + self._progress_text())
            sys.stderr.flush()

    def _clear(self) -> None:
        if self.progress:
            sys.stderr.write(_CLEAR_LINE)
            sys.stderr.flush()

    def _emit(self, job: _Job) -> None:
        self._clear()
        out = b"".join(job.out)
        err = b"".join(job.err)
        if out:
            sys.stdout.flush()
            sys.stdout.buffer.write(out)
            sys.stdout.buffer.flush()
        if err:
            sys.stderr.flush()
            sys.stderr.buffer.write(err)
            sys.stderr.buffer.flush()
        if job.failed:
            say("run", f"command {job.number} failed ({job.why()}): {job.line}")
        self._draw()

    # -- commands -------------------------------------------------------------

    def _start(self, job: _Job, token: Token) -> None:
        job.token = token
        out_r, out_w = os.pipe()
        err_r, err_w = (out_r, out_w) if self.merge else os.pipe()
        try:
            job.pid = os.posix_spawn(
                _SHELL,
                [_SHELL, "-c", job.line],
                self.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                setpgroup=0,
                setsigdef=_DEFAULT_SIGNALS,
            )
        except OSError as e:
            for fd in {out_r, err_r}:  # the write ends are closed below
                os.close(fd)
            self._give_back(job)
            job.error = f"cannot start {_SHELL}: {e.strerror or e}"
            self._finish(job)
            return
        finally:
            # Only the command may hold the write ends: their end-of-file is its exit.
            for fd in {out_w, err_w}:
                os.close(fd)
        self.running.append(job)
        job.fds[out_r] = job.out
        if err_r != out_r:
            job.fds[err_r] = job.err
        for fd in job.fds:
            os.set_blocking(fd, False)
            self.selector.register(fd, selectors.EVENT_READ, ("output", job))
        if _HAVE_PIDFD:
            try:
                job.pidfd = os.pidfd_open(job.pid)
            except OSError:
                job.pidfd = None
        if job.pidfd is not None:
            self.selector.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        self._draw()

    def _give_back(self, job: _Job) -> None:
        """Return the command's slot to the pool (once its process is reaped)."""
        token, job.token = job.token, None
        if token is None:
            return
        try:
            self.pool.release(token)
        except PoolBroken as e:
            self.broken = str(e)
            self.stopping = True

    def _read(self, job: _Job, fd: int, *, until_empty: bool) -> None:
        """Read what *fd* has (all of it when *until_empty*); close it at end-of-file."""
        buffer = job.fds[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_output(job, fd)
                return
            buffer.append(data)
            if not until_empty:
                return

    def _close_output(self, job: _Job, fd: int) -> None:
        self.selector.unregister(fd)
        del job.fds[fd]
        os.close(fd)

    def _exited(self, job: _Job) -> None:
        """The command's process ended: reap it (its slot goes back), collect its output."""
        assert job.pid is not None
        if job.pidfd is not None:
            self.selector.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None
        job.returncode = _reap(job.pid)
        self._give_back(job)
        # What it wrote before exiting is in the pipes; a background process
        # that inherited them must not hold this command's output hostage.
        for fd in list(job.fds):
            self._read(job, fd, until_empty=True)
        for fd in list(job.fds):
            self._close_output(job, fd)
        self.running.remove(job)
        self._finish(job)

    def _finish(self, job: _Job) -> None:
        self.finished.append(job)
        if job.failed and not self.keep_going:
            self.stopping = True
        self._emit(job)

    def _launch_ready(self) -> None:
        """Start pending commands while slots are free right now."""
        while self.pending and not self.stopping:
            if self.limit is not None and len(self.running) >= self.limit:
                return
            try:
                token = self.pool.try_acquire()
            except (PoolBroken, ValueError) as e:
                self.broken = str(e)
                self.stopping = True
                return
            if token is None:
                return
            self._start(self.pending.popleft(), token)

    def _watch_pool(self, wanted: bool) -> None:
        # A readable pool that we do not read would wake the loop forever.
        if wanted and not self.watching_pool:
            self.selector.register(self.pool.fileno(), selectors.EVENT_READ, ("pool", None))
        elif not wanted and self.watching_pool:
            self.selector.unregister(self.pool.fileno())
        self.watching_pool = wanted

    # -- signals ---------------------------------------------------------------

    @contextmanager
    def _signals(self) -> Iterator[None]:
        if not in_main_thread():
            yield
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_handlers: dict[int, Any] = {}
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        try:
            for signum in CAUGHT:
                old_handlers[signum] = signal.signal(signum, self._on_signal)
            self._wake_r = r
            self.selector.register(r, selectors.EVENT_READ, ("signal", None))
            yield
        finally:
            for caught, old in old_handlers.items():
                signal.signal(caught, old)
            signal.set_wakeup_fd(old_wakeup)
            if self._wake_r is not None:
                self.selector.unregister(r)
                self._wake_r = None
            os.close(r)
            os.close(w)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # The wake-up fd gets the signal's number and wakes the selector; the
        # loop acts on the list (never inside the handler, mid-bookkeeping).
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        assert self._wake_r is not None
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        pending, self.signals = self.signals, []
        for signum in pending:
            if self.interrupted is None:
                self.interrupted = signum
            self.stopping = True
            for job in self.running:
                assert job.pid is not None
                try:
                    os.killpg(job.pid, signum)
                except OSError:
                    pass

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Run every command (or until stopped) and wait for all that started."""
        with self._signals(), _inheritance(self.pool.pass_fds):
            self._draw()
            while True:
                if self.signals and self._wake_r is not None:
                    self._handle_signals()
                self._launch_ready()
                may_start = (
                    bool(self.pending)
                    and not self.stopping
                    and (self.limit is None or len(self.running) < self.limit)
                )
                if not self.running and not may_start:
                    break
                self._watch_pool(may_start)
                for key, _events in self.selector.select():
                    kind, job = key.data
                    if kind == "output":
                        if key.fd in job.fds:
                            self._read(job, key.fd, until_empty=False)
                            if job.pidfd is None and not job.fds and job in self.running:
                                self._exited(job)  # no pidfd: end of output means the end
                    elif kind == "exit":
                        if job in self.running:
                            self._exited(job)
                    elif kind == "signal":
                        self._handle_signals()
                    # "pool": the next _launch_ready() reads the token.
            self._watch_pool(False)
            self._clear()
        self.selector.close()

    def summary(self) -> int:
        """Print the failures and what was not started; the exit status."""
        failed = [job for job in self.finished if job.failed]
        not_started = len(self.pending)
        if self.interrupted is not None:
            say("run", f"interrupted by {signal_name(self.interrupted)}")
        if self.broken is not None:
            say("run", f"the jobserver pool broke: {self.broken}")
        if failed:
            lines = [f"{len(failed)} of {self.total} command(s) failed:"]
            lines += [f"  [{job.number}] {job.why()}: {job.line}" for job in failed]
            say("run", "\n".join(lines))
        if not_started:
            hint = (
                " (--keep-going runs them anyway)"
                if failed and not self.keep_going and self.interrupted is None
                else ""
            )
            say("run", f"{not_started} command(s) not started{hint}")
        if self.broken is not None:
            return EXIT_FAILED
        return 1 if failed or not_started else 0


def _pool_for_run(jobs: int | None) -> tuple[TokenPool, bool, int | None]:
    """The pool ``run`` uses: (pool, created here, cap on running commands)."""
    try:
        pool = TokenPool.from_environ()
    except JobserverUnavailable as e:
        if jobs is not None:
            say("run", f"{e}; using a new pool of {jobs} slot(s) (-j {jobs})")
            return TokenPool.create(jobs), True, None
        say("run", f"{e}; running one command at a time")
        return TokenPool.create(1), True, None
    if pool is None:
        return TokenPool.create(jobs if jobs is not None else _posix.usable_cpus()), True, None
    return pool, False, jobs


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs run``; the exit status (see :mod:`makejobs.cli`)."""
    try:
        lines = _read_commands(args.file)
    except OSError as e:
        raise UsageError(f"cannot read commands: {e}") from None
    if not lines:
        return 0
    try:
        pool, created, limit = _pool_for_run(args.jobs)
    except (OSError, ValueError) as e:
        say("run", f"cannot create a pool: {e}")
        return EXIT_FAILED
    runner = _Runner(
        pool,
        lines,
        limit=limit,
        keep_going=args.keep_going,
        merge=_same_file(sys.stdout, sys.stderr),
        progress=_isatty(sys.stderr),
    )
    try:
        runner.run()
    finally:
        if created:
            expected = (pool.slots or 1) - 1
            found = close_counting(pool)
            if found is not None and found != expected:
                say("run", f"{found} of {expected} jobserver token(s) came back at the end")
        else:
            pool.close()
    status = runner.summary()
    if runner.interrupted is not None and runner.interrupted in REKILL:
        die_of(runner.interrupted)
        return 128 + runner.interrupted
    return status


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``run`` parser its description, options and command."""
    parser.description = fill(
        "Run shell command lines (one per line, via /bin/sh -c) in parallel, each"
        " on one slot of the inherited pool, or of a new pool of N when there is none. Each"
        " command gets the pool exported, stdin from /dev/null and its own process group;"
        " its output is printed in one piece when it ends (like make -O)."
    )
    parser.epilog = """\
Blank lines and lines starting with '#' are skipped; all lines are read before the
first command starts. Under an inherited pool, -j N only caps how many commands run at
once. An advertised but unusable pool runs one command at a time (with a warning)
unless -j N asks for a new pool. A progress line is shown on stderr when it is a
terminal. Without --keep-going nothing new starts after the first failure.

exit status: 0 all commands succeeded; 1 some failed or were not started; 125 the pool
broke. SIGINT/SIGTERM/SIGHUP are passed on to every running command's process group;
makejobs waits for them and then dies of the same signal.

example: printf '%s\\n' 'gzip -k a.log' 'gzip -k b.log' | makejobs run -j 4"""
    parser.add_argument(
        "-j",
        "--jobs",
        type=check_slots,
        metavar="N",
        help="size of the new pool when none is inherited (default: usable CPUs); under an"
        " inherited pool, the most commands running at once",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="read command lines from FILE (default, or '-': standard input)",
    )
    parser.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="start the remaining commands even after one failed",
    )
    parser.set_defaults(func=command)
