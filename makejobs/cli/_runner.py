"""The event loop of ``makejobs run``: start commands on pool slots, collect them, stop them.

One thread and one selector watch, at the same time: the pool (only while a
command is waiting for a slot and may start), each command's output pipes,
each command's exit (a pidfd where the OS has them; else the end of its
output), and the signal wake-up pipe. Nothing polls on a timer, except once
a second while commands wait for the load to drop (``-l``) or a progress
line shows an ETA.

Commands are started with :func:`os.posix_spawn` (``vfork`` + ``exec`` in
the C library), not :class:`subprocess.Popen`: with hundreds of short
commands, what ``run`` spends per command is what keeps it from matching
``make -j``. The pool's environment is built once, and the pool's
descriptors are made inheritable for the life of the run, while every other
inherited descriptor is marked close-on-exec once at the start, so a command
inherits exactly what ``subprocess`` would have given it.

How a run ends
==============

* Normally: every command that was started has ended and was reaped.
* SIGINT, SIGTERM, SIGHUP or SIGQUIT: nothing new starts; the signal is
  passed on to every running command's process group, and the loop goes on
  until they have all ended (their output is printed as usual). Members of
  those groups still there :data:`GRACE` seconds later (a ``cmd &`` started
  by ``sh``, which ignores SIGINT) get SIGTERM, and SIGKILL after as long
  again.
* Any other signal whose default action ends a process (SIGUSR1, SIGALRM,
  SIGXCPU, real-time signals...): :class:`Fatal` is raised.
* :class:`Fatal`, a closed standard output (:class:`BrokenPipeError` from
  the printer) or any other exception leaves the loop, and on the way out
  every command still running is stopped: its output pipes are closed, its
  process group gets SIGTERM, and whatever is left of the group after
  :data:`GRACE` seconds gets SIGKILL. Every command is reaped and its slot
  given back before the exception goes on.

On the way out of any of these, ``run`` becomes the subreaper of what its
commands started (Linux), so that it can reap group members orphaned by a
command's death and tell at once when a group is gone. A command that ended
normally keeps what it left running in the background, as under make.
SIGKILL of ``run`` itself cannot be caught; that is left to the pool's
guardian.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .. import _posix
from ..errors import PoolBroken
from ..pool import Token, TokenPool
from ._run_output import Printer, describe_status
from ._supervise import CAUGHT, become_subreaper, in_main_thread

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from types import FrameType
    from typing import Any

    from ._load import LoadLimit

__all__ = ["GRACE", "Fatal", "Job", "Runner"]

#: Seconds a stopped command's process group has between SIGTERM and SIGKILL.
GRACE = 2.0

_HAVE_PIDFD = hasattr(os, "pidfd_open")
# Without waitid (P_PGID) a group's orphans are left to init, and leaders to waitpid.
_HAVE_WAITID = hasattr(os, "waitid") and hasattr(os, "P_PGID")
# Python ignores SIGPIPE and SIGXFSZ; a command must not inherit that (what
# subprocess's restore_signals does).
_DEFAULT_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def _fatal_signals() -> tuple[int, ...]:
    """Asynchronous signals, other than CAUGHT, whose default action ends the process."""
    names = (
        *("SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPOLL"),
        *("SIGPWR", "SIGSTKFLT", "SIGXCPU", "SIGLOST", "SIGEMT"),
    )
    found = {getattr(signal, name) for name in names if hasattr(signal, name)}
    if hasattr(signal, "SIGRTMIN"):
        found.update(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    return tuple(sorted(found - set(CAUGHT)))


_FATAL = _fatal_signals()


class Fatal(Exception):
    """A signal whose default action ends the process arrived; the run stops."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Job:
    """One command line of ``makejobs run`` and what became of it."""

    __slots__ = (
        "error",
        "fds",
        "line",
        "number",
        "pid",
        "pidfd",
        "returncode",
        "runtime",
        "start_time",
        "started",
        "token",
    )

    def __init__(self, number: int, line: str) -> None:
        self.number = number
        self.line = line
        self.pid: int | None = None
        self.token: Token | None = None  # held from start to reaping
        self.fds: dict[int, int] = {}  # open output pipe -> stream it is (1, or 2)
        self.pidfd: int | None = None
        self.returncode: int | None = None  # set when reaped (or could not start)
        self.error: str | None = None
        self.start_time = 0.0  # time.time() at the start, for the job log
        self.started = 0.0  # time.monotonic() at the start
        self.runtime = 0.0

    @property
    def failed(self) -> bool:
        return self.returncode != 0

    def why(self) -> str:
        if self.error is not None:
            return self.error
        assert self.returncode is not None
        return describe_status(self.returncode)


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


class Runner:
    """Runs the command lines of one ``makejobs run`` (see the module docstring)."""

    def __init__(
        self,
        pool: TokenPool,
        lines: Sequence[str],
        printer: Printer,
        *,
        shell: str,
        limit: int | None,
        load: LoadLimit | None,
        keep_going: bool,
        merge: bool,
    ) -> None:
        self.pool = pool
        self.pending: deque[Job] = deque(Job(i, line) for i, line in enumerate(lines, 1))
        self.total = len(self.pending)
        self.running: list[Job] = []
        self.finished: list[Job] = []
        self.failed = 0
        self.printer = printer
        self.timed = printer.joblog is not None  # start and run times are for the job log
        self.shell = shell
        self.limit = limit
        self.load = load
        self.load_blocked = False
        self.keep_going = keep_going
        self.merge = merge
        self.stopping = False
        self.broken: str | None = None
        self.interrupted: int | None = None
        self.signals: list[int] = []
        self.signalled: set[int] = set()  # process groups a caught signal was passed to
        self.selector = selectors.DefaultSelector()
        self.environ = pool.environ()  # every command gets the same one
        self.watching_pool = False
        self._wake_r: int | None = None

    # -- commands -------------------------------------------------------------

    def _start(self, job: Job, token: Token) -> None:
        job.token = token
        self.printer.start(job)
        out_r, out_w = os.pipe()
        err_r, err_w = (out_r, out_w) if self.merge else os.pipe()
        if self.timed:
            job.start_time = time.time()
            job.started = time.monotonic()
        try:
            job.pid = os.posix_spawn(
                self.shell,
                [self.shell, "-c", job.line],
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
            job.error = f"cannot start {self.shell}: {e.strerror or e}"
            job.returncode = 127 if e.errno == errno.ENOENT else 126  # as a shell says it
            self._finish(job)
            return
        else:
            # From here on it is running: whatever happens, the way out stops it.
            self.running.append(job)
        finally:
            # Only the command may hold the write ends: their end-of-file is its exit.
            for fd in {out_w, err_w}:
                os.close(fd)
        job.fds[out_r] = 1
        if err_r != out_r:
            job.fds[err_r] = 2
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

    def _give_back(self, job: Job) -> None:
        """Return the command's slot to the pool (once its process is reaped)."""
        token, job.token = job.token, None
        if token is None:
            return
        try:
            self.pool.release(token)
        except PoolBroken as e:
            self.broken = str(e)
            self.stopping = True

    def _read(self, job: Job, fd: int, *, until_empty: bool) -> None:
        """Read what *fd* has (all of it when *until_empty*); close it at end-of-file."""
        stream = job.fds[fd]
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not data:
                self._close_output(job, fd)
                return
            self.printer.output(job, stream, data)
            if not until_empty:
                return

    def _close_output(self, job: Job, fd: int) -> None:
        del job.fds[fd]
        self.selector.unregister(fd)
        os.close(fd)

    def _close_pidfd(self, job: Job) -> None:
        pidfd, job.pidfd = job.pidfd, None
        if pidfd is not None:
            self.selector.unregister(pidfd)
            os.close(pidfd)

    def _exited(self, job: Job) -> None:
        """The command's process ended: reap it (its slot goes back), collect its output."""
        assert job.pid is not None
        self._close_pidfd(job)
        _, status = os.waitpid(job.pid, 0)
        job.returncode = os.waitstatus_to_exitcode(status)
        if self.timed:
            job.runtime = time.monotonic() - job.started
        self._give_back(job)
        # What it wrote before exiting is in the pipes; a background process
        # that inherited them must not hold this command's output hostage.
        for fd in list(job.fds):
            self._read(job, fd, until_empty=True)
        for fd in list(job.fds):
            self._close_output(job, fd)
        self.running.remove(job)
        self._finish(job)

    def _finish(self, job: Job) -> None:
        self.finished.append(job)
        if job.failed:
            self.failed += 1
            if not self.keep_going:
                self.stopping = True
        self.printer.finish(job)

    def _launch_ready(self) -> None:
        """Start pending commands while slots are free right now (and the load allows)."""
        self.load_blocked = False
        while self.pending and not self.stopping:
            if self.limit is not None and len(self.running) >= self.limit:
                return
            if self.load is not None and self.running and self.load.too_high():
                self.load_blocked = True
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
            if self.load is not None:
                self.load.started()

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
            if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
                # Inherited "ignore" makes the kernel reap our commands itself,
                # and their exit statuses would be lost.
                old_handlers[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in (*CAUGHT, *_FATAL):
                try:
                    old_handlers[signum] = signal.signal(signum, self._on_signal)
                except (OSError, ValueError):
                    pass  # reserved here (some real-time signals)
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
            if signum not in CAUGHT:
                raise Fatal(signum)
            if self.interrupted is None:
                self.interrupted = signum
                # Orphans of the groups signalled now come to us (see _end_groups).
                become_subreaper()
            self.stopping = True
            for job in self.running:
                assert job.pid is not None
                self.signalled.add(job.pid)
                _signal_group(job.pid, signum)

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Run every command (or until stopped) and wait for all that started.

        Raises what the loop raised (:class:`Fatal`, :class:`BrokenPipeError`
        from a closed output...) after stopping and reaping every command
        still running.
        """
        try:
            with self._signals(), _inheritance(self.pool.pass_fds):
                try:
                    self._loop()
                except BaseException:
                    self.printer.discard()
                    raise
                finally:
                    self._stop_running()
                    self._sweep_signalled_groups()
                    self._watch_pool(False)
        finally:
            self.selector.close()

    def _loop(self) -> None:
        while True:
            if self.signals and self._wake_r is not None:
                self._handle_signals()
            self._launch_ready()
            self._draw()
            may_start = (
                bool(self.pending)
                and not self.stopping
                and (self.limit is None or len(self.running) < self.limit)
            )
            if not self.running and not may_start:
                break
            self._watch_pool(may_start and not self.load_blocked)
            # make looks at the load again every second; an ETA ticks as well.
            ticking = self.load_blocked or self.printer.progress is not None
            for key, _events in self.selector.select(1.0 if ticking else None):
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
        self.printer.clear_progress()

    def _draw(self) -> None:
        if self.printer.progress is not None:
            self.printer.draw_progress(len(self.finished), len(self.running), self.failed)

    # -- stopping what is left -------------------------------------------------

    def _stop_running(self) -> None:
        """Stop every command still running, reap it and give its slot back.

        Empty after a normal end. After an exception its output is of no use
        any more: the pipes are closed (a command still writing gets SIGPIPE),
        each process group gets SIGTERM, and SIGKILL when anything of it is
        left after :data:`GRACE` seconds.
        """
        if not self.running:
            return
        jobs, self.running = self.running, []
        become_subreaper()
        leaders: dict[int, Job] = {}
        for job in jobs:
            self._close_pidfd(job)
            for fd in list(job.fds):
                self._close_output(job, fd)
            if job.returncode is None and job.pid is not None:
                leaders[job.pid] = job  # each command leads a process group of its own
                _signal_group(job.pid, signal.SIGTERM)
        _end_groups(list(leaders), leaders, then=(signal.SIGKILL,))
        for job in jobs:
            self._give_back(job)

    def _sweep_signalled_groups(self) -> None:
        """After a passed-on signal, end what is left of the groups it was passed to.

        Each command's shell has ended and been reaped, but a process of its
        group may ignore the signal (``sh`` starts ``cmd &`` with SIGINT and
        SIGQUIT ignored): whatever is still there after :data:`GRACE` seconds
        gets SIGTERM, and SIGKILL after as long again.
        """
        if self.signalled:
            _end_groups(sorted(self.signalled), {}, then=(signal.SIGTERM, signal.SIGKILL))
            self.signalled.clear()


def _end_groups(groups: list[int], leaders: dict[int, Job], then: tuple[int, ...]) -> None:
    """Wait for process *groups* to empty, sending the signals *then* one per :data:`GRACE`.

    This process reaps what it can meanwhile: *leaders* (their exit status
    is recorded) and, being the subreaper of what the commands started
    (Linux), any member orphaned by its parent's death; so a group counts as
    gone as soon as it is, whatever the system's init does. A group still
    there :data:`GRACE` seconds after the last signal is left (not ours to
    end, or stuck in the kernel) once its leader has been waited for.
    """
    left = list(then)
    deadline = time.monotonic() + GRACE
    while True:
        groups = [pgid for pgid in groups if _reap_group(pgid, leaders)]
        if not groups:
            return
        if time.monotonic() >= deadline:
            if not left:
                # Still there GRACE after the last signal: not ours to end (EPERM), or
                # stuck in the kernel. Waiting longer would hang run's own exit.
                break
            signum = left.pop(0)
            for pgid in groups:
                _signal_group(pgid, signum)
            # Even SIGKILL takes effect asynchronously, and an orphan it makes is
            # re-parented to us only as its parent dies: keep reaping until the group
            # is empty, or run would exit leaving members for init to find.
            deadline = time.monotonic() + GRACE
        time.sleep(0.01)  # a bounded wait for processes to die, on a rare path
    for job in leaders.values():
        if job.returncode is None and job.pid is not None:
            _, status = os.waitpid(job.pid, 0)
            job.returncode = os.waitstatus_to_exitcode(status)
    for pgid in groups:
        _reap_group(pgid, leaders)


def _reap_group(pgid: int, leaders: dict[int, Job]) -> bool:
    """Reap the exited children of ours in process group *pgid*; True while it has members."""
    while _HAVE_WAITID:
        try:
            info = os.waitid(os.P_PGID, pgid, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            break  # no child of ours left in it
        if info is None:
            break  # children there, none has exited
        job = leaders.get(info.si_pid)
        if job is not None:
            killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
            job.returncode = -info.si_status if killed else info.si_status
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # there, but not ours to signal (EPERM)
    return True


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except OSError:
        pass  # gone already
