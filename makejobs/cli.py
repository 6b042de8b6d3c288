"""The ``makejobs`` command line (also ``python -m makejobs``).

Subcommands
===========

``makejobs serve [-j N] [--style pipe|fifo] [--strict] -- CMD ...``
    Create a pool of N slots (default: the usable CPUs), export it to CMD
    (``MAKEFLAGS``, ``MFLAGS`` if set, ``CARGO_MAKEFLAGS``, and the pipe's
    descriptors), run CMD and exit with its status. CMD runs on the pool's
    implicit slot, as a make started by make would. At the end every token
    must be back: missing or extra ones are reported on stderr (and make the
    exit status 125 with ``--strict`` when CMD itself succeeded). The pool is
    always a new one, even where another is inherited (as for ``make -jN``
    given to a sub-make).

    Style: ``pipe`` is the default because every GNU make (4.3 dies on a fifo
    pool), cargo and ninja builds that accept pipes (the PyPI ``ninja`` wheel)
    join it. Upstream ninja 1.13 ignores pipe pools: use ``--style fifo`` for
    it (and for make >= 4.4 children that are not marked recursive with
    ``+``). A fifo lives in a private directory under ``$TMPDIR`` and is
    removed on every exit that can be caught (normal exit, errors, SIGINT,
    SIGTERM, SIGHUP, SIGQUIT; not SIGKILL).

    Do not give CMD its own ``-j``: ``make -jN`` and even a bare ``make -j``
    print "-jN forced in submake: resetting jobserver mode" and ignore the
    pool (observed with make 4.3 and 4.4.1); ``ninja -jN`` ignores it too.
    ``cargo -jN`` stays inside the pool.

``makejobs exec [--min A] [--max B] [--wait SECONDS] [--env NAME] -- CMD ...``
    For tools that do not speak the jobserver (``sphinx-build -j``, test
    runners, ``OMP_NUM_THREADS``...): take between A (default 1) and B slots
    of the inherited pool, the process's implicit slot counting as one, put
    their number in ``MAKEJOBS_SLOTS`` (or each ``--env NAME``), run CMD, and
    give every slot back when CMD has exited, however makejobs exits. A
    literal ``$MAKEJOBS_SLOTS`` or ``${MAKEJOBS_SLOTS}`` in CMD's arguments
    (single-quoted, so the shell left it alone) is replaced by the number:
    ``makejobs exec -- sphinx-build -j '$MAKEJOBS_SLOTS' . _build``.

    * Getting A slots waits as long as it takes, or at most ``--wait``
      seconds (exit 124 when they did not come). More slots, up to B, are
      taken when free at once, or as they come until ``--wait`` has passed.
    * B defaults to the pool's size (``-jN`` of ``MAKEFLAGS``) or else the
      usable CPUs. A above a known pool size is lowered to it (it could never
      be satisfied).
    * Without a pool the number is B if given, else the usable CPUs (never
      below A). With a pool that is advertised but unusable (a recipe without
      ``+``...) a warning says why and the number is A, as make falls back to
      ``-j1``.
    * CMD does not get the pool: its ``MAKEFLAGS``/``MFLAGS``/
      ``CARGO_MAKEFLAGS`` say ``-jK`` (K = the slots held) with no jobserver,
      so a make that CMD starts runs at most K jobs and nothing is counted
      twice. A jobserver-aware tool should be run directly, not under exec.
    * More than one waiting ``exec --min A`` with A > 1 can deadlock, each
      holding part of what it needs: give them ``--wait``.

``makejobs run [-j N] [-f FILE] [--keep-going]``
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

``makejobs status [--json]``
    Describe the pool this environment advertises: which variable and its
    value, style, descriptors or fifo path, ``-j``, whether this process can
    use it, why not and what to do. ``--json`` prints the same as one object.

Exit statuses
=============

* ``serve``/``exec``: the command's exit status; 128+N when it was killed by
  signal N. When makejobs itself got SIGINT/SIGTERM/SIGHUP and the command
  died of that same signal, makejobs cleans up and then dies of it too, so
  the calling shell or make sees an interrupted command (as shells do).
  126: the command cannot be executed; 127: command not found; 125: makejobs
  itself failed (no pool could be created; ``--strict`` token check);
  124: ``exec --wait`` ran out before ``--min`` slots came.
* ``run``: 0 when every command succeeded, 1 when any failed or was not
  started, 125 when the pool broke; dies of SIGINT/SIGTERM/SIGHUP it received
  after passing it on and waiting for the commands.
* ``status``: 0 a usable pool is advertised, 1 none is, 2 one is advertised
  but cannot be used.
* 2 for usage errors, like every argparse program.

Signals (``serve`` and ``exec``)
================================

CMD runs in makejobs' process group, so a terminal's ^C already reaches it
and every process it started; makejobs does not send it again (on Linux it
tells a terminal's signal from one sent with ``kill`` by its ``siginfo``).
A SIGINT, SIGTERM, SIGHUP or SIGQUIT sent to makejobs alone is passed on the
way a terminal would deliver it: to CMD and to its descendants that are in
CMD's process group (a make then sees its recipes interrupted, as after ^C).
makejobs then waits for CMD to exit before cleaning up.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from time import monotonic
from types import FrameType
from typing import Any, Callable, TextIO

from . import __version__
from .errors import Blocked, JobserverUnavailable, PoolBroken, TokenCountWarning
from .jobserver import usable_cpus
from .pool import ENVIRON_VARIABLES, Token, TokenPool
from .process import JobPopen
from .protocol import FifoAuth, MakeFlags, PipeAuth, parse_makeflags, replace_auth

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "SLOTS_VARIABLE",
    "main",
]

#: Default variable ``exec`` puts the number of slots in.
SLOTS_VARIABLE = "MAKEJOBS_SLOTS"

EXIT_USAGE = 2
#: ``exec --wait`` passed before ``--min`` slots were held (as timeout(1)).
EXIT_TIMEOUT = 124
#: makejobs itself failed (as env(1)/timeout(1)).
EXIT_FAILED = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

#: Signals makejobs catches while a command runs, passes on, and cleans up after.
_CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: Of those, the ones makejobs dies of after cleaning up (SIGQUIT would dump core).
_REKILL = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

_CLEAR_LINE = "\r\x1b[K"


class _UsageError(Exception):
    """Bad command-line input found after argparse (reported like argparse does)."""


class _Signalled(BaseException):
    """A caught signal arrived while no command was running yet."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# --------------------------------------------------------------------------------------
# Small helpers


def _say(command: str, message: str) -> None:
    """One line on stderr, prefixed like ``makejobs serve: ...``."""
    sys.stderr.write(f"makejobs {command}: {message}\n")
    sys.stderr.flush()


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {_signal_name(-returncode)}"
    return f"exit {returncode}"


def _shell_status(returncode: int) -> int:
    """A Popen returncode as a shell reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _split_command(words: Sequence[str]) -> list[str]:
    # argparse.REMAINDER keeps the "--" that separates our options from CMD.
    command = list(words)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise _UsageError("a command to run is required after the options (use -- CMD ...)")
    return command


def _spawn_error(command: str, argv0: str, exc: OSError) -> int:
    """Report a command that could not be started; its shell-style exit status."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        _say(command, f"{argv0}: command not found")
        return EXIT_NOT_FOUND
    _say(command, f"{argv0}: cannot execute: {exc.strerror or exc}")
    return EXIT_CANNOT_EXECUTE


def _die_of(signum: int) -> None:
    """End this process by *signum* with its default action (after cleanup).

    The caller's shell or make then sees "killed by SIGINT" and can stop too,
    which a plain exit status of 130 does not tell it. Returns only if the
    signal does not kill (then the caller exits with 128+N).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
    os.kill(os.getpid(), signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _descendants(pid: int) -> list[int]:
    """Process ids of every descendant of *pid* (empty if unknown)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _deliver(child: subprocess.Popen[Any], signum: int) -> None:
    """Send *signum* where a terminal would: to *child* and its descendants in its group.

    Descendants that left the child's process group (daemons, sessions of
    their own) are spared, as a terminal's ^C would spare them. The tree is
    listed before anyone is signalled, so processes re-parented by a fast
    exit are not missed.
    """
    if child.returncode is not None:
        return
    try:
        group = os.getpgid(child.pid)
    except OSError:
        return
    for pid in _descendants(child.pid):
        try:
            if os.getpgid(pid) == group:
                os.kill(pid, signum)
        except OSError:
            pass
    try:
        child.send_signal(signum)
    except OSError:
        pass


def _sent_by_a_process(info: signal.struct_siginfo) -> bool:
    """True if a siginfo describes ``kill()``/``sigqueue()``, not a terminal (or the kernel)."""
    if info.si_pid != 0:
        return True
    # A sender in another pid namespace shows pid 0 but still a user si_code
    # (SI_USER 0, SI_QUEUE -1, SI_TKILL -6); the terminal's is SI_KERNEL (0x80).
    return sys.platform.startswith("linux") and info.si_code <= 0


def _in_our_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == os.getpgrp()
    except OSError:
        return True  # gone: nothing to pass on


class _SignalCatcher:
    """Catch :data:`_CAUGHT` signals while makejobs prepares and runs a command.

    Before the command exists, a signal raises :class:`_Signalled` when
    :attr:`raising` is set (so waiting for slots stops), and is only
    remembered otherwise. Once :attr:`child` is set, a signal caught by the
    handler is passed on to it with :func:`_deliver`: its origin is unknown
    here (see :func:`_wait_child`, which knows it). Every caught signal is
    appended to :attr:`received`. Outside the main thread nothing is caught.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.undelivered: list[int] = []
        self.child: subprocess.Popen[Any] | None = None
        self.raising = False
        self.active = _in_main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalCatcher:
        if self.active:
            for signum in _CAUGHT:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self.child is not None:
            _deliver(self.child, signum)
        elif self.raising:
            raise _Signalled(signum)
        else:
            self.undelivered.append(signum)

    def attach(self, child: subprocess.Popen[Any]) -> None:
        """From now on pass signals on to *child*; pass on those that came during its start."""
        self.child = child
        pending, self.undelivered = self.undelivered, []
        for signum in pending:
            _deliver(child, signum)

    def rekill_signal(self, returncode: int) -> int | None:
        """The signal to die of: the child died of a signal we received too (else None)."""
        if returncode < 0 and -returncode in _REKILL and -returncode in self.received:
            return -returncode
        return None


def _wait_child(child: subprocess.Popen[Any], catcher: _SignalCatcher) -> None:
    """Wait for *child* to exit, passing on signals that a terminal did not deliver.

    Where ``sigwaitinfo`` exists the caught signals and SIGCHLD are blocked
    and taken synchronously with their ``siginfo``: a signal sent by a
    process (``kill``) is passed on; one from the terminal is not, because
    the child, in our process group, got it too, unless the child has a
    process group of its own. Elsewhere every caught signal is passed on by
    the handler.
    """
    if not catcher.active or not hasattr(signal, "sigwaitinfo"):
        child.wait()
        return
    watched = {*_CAUGHT, signal.SIGCHLD}
    # With SIGCHLD ignored the kernel reaps children itself and no SIGCHLD
    # arrives; the default disposition keeps both working.
    old_chld = signal.getsignal(signal.SIGCHLD)
    if old_chld == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        # Checked after blocking: a SIGCHLD that came before is not pending.
        while child.poll() is None:
            info = signal.sigwaitinfo(watched)
            signum = info.si_signo
            if signum == signal.SIGCHLD:
                continue
            catcher.received.append(signum)
            if _sent_by_a_process(info) or not _in_our_group(child.pid):
                _deliver(child, signum)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if old_chld == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def _check_slots(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def _check_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {value!r}")
    return number


def _check_variable(value: str) -> str:
    if not value or "=" in value or "\0" in value:
        raise argparse.ArgumentTypeError(f"not a usable environment variable name: {value!r}")
    return value


# --------------------------------------------------------------------------------------
# serve


def _close_counting(pool: TokenPool) -> int | None:
    """Close *pool*; the number of tokens it found (warnings are reported by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenCountWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        return pool.close()


def _report_tokens(found: int | None, expected: int) -> bool:
    """Print a line when a created pool did not get exactly its tokens back; True if so."""
    if found is None or found == expected:
        return False
    if found < expected:
        missing = expected - found
        _say(
            "serve",
            f"{missing} jobserver token(s) missing at the end ({found} of {expected} came"
            " back): a process died holding them or never gave them back",
        )
    else:
        _say(
            "serve",
            f"{found - expected} extra jobserver token(s) at the end ({found}, expected"
            f" {expected}): a process wrote back tokens it never took",
        )
    return True


def _cmd_serve(args: argparse.Namespace) -> int:
    command = _split_command(args.command)
    slots: int = args.jobs if args.jobs is not None else usable_cpus()
    status = EXIT_FAILED
    rekill: int | None = None
    with _SignalCatcher() as catcher:
        # Until the command runs, a signal stops everything (the pool is
        # still cleaned up by the finally below).
        catcher.raising = True
        pool: TokenPool | None = None
        try:
            try:
                pool = TokenPool.create(slots, style=args.style)
            except (OSError, ValueError) as e:
                _say("serve", f"cannot create a pool of {slots} slots: {e}")
                return EXIT_FAILED
            env = pool.environ()
            catcher.raising = False
            try:
                child = subprocess.Popen(command, env=env, pass_fds=pool.pass_fds)
            except OSError as e:
                status = _spawn_error("serve", command[0], e)
            else:
                catcher.attach(child)
                _wait_child(child, catcher)
                assert child.returncode is not None
                status = _shell_status(child.returncode)
                rekill = catcher.rekill_signal(child.returncode)
        except _Signalled as s:
            status = 128 + s.signum
            rekill = s.signum if s.signum in _REKILL else None
        finally:
            if pool is not None:
                found = _close_counting(pool)
                if _report_tokens(found, slots - 1) and args.strict and status == 0:
                    status = EXIT_FAILED
    if rekill is not None:
        _die_of(rekill)
    return status


# --------------------------------------------------------------------------------------
# exec


def _child_environ_without_pool(slots: int, names: Sequence[str]) -> dict[str, str]:
    """os.environ for an exec'd command: slot count set, the pool replaced by ``-jK``."""
    env = dict(os.environ)
    for variable in ENVIRON_VARIABLES:
        value = env.get(variable)
        if value and parse_makeflags(value).advertises_pool():
            # No auth words left and -jK instead: a make started by the
            # command runs K jobs of its own, which are exactly our slots.
            env[variable] = replace_auth(value, None, jobs=slots)
    for name in names:
        env[name] = str(slots)
    return env


def _substitute(command: Sequence[str], names: Sequence[str], slots: int) -> list[str]:
    """CMD with each literal ``$NAME``/``${NAME}`` replaced by the number of slots.

    A single-quoted argument reaches us unexpanded, so ``makejobs exec --
    sphinx-build -j '$MAKEJOBS_SLOTS'`` works without a ``sh -c`` around it.
    """
    out = []
    for word in command:
        for name in names:
            word = word.replace("${" + name + "}", str(slots))
            word = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", str(slots), word)
        out.append(word)
    return out


def _advertised(environ: Mapping[str, str]) -> bool:
    return any(
        parse_makeflags(environ.get(variable) or "").advertises_pool()
        for variable in ENVIRON_VARIABLES
    )


def _take_slots(
    pool: TokenPool, least: int, most: int, wait: float | None, tokens: list[Token]
) -> None:
    """Append between *least* and *most* slots of *pool* to *tokens*.

    Raises Blocked when *wait* passes before *least* are held (the tokens
    taken so far stay in *tokens* for the caller to give back).
    """
    deadline = None if wait is None else monotonic() + wait
    while len(tokens) < least:
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        tokens.append(pool.acquire(remaining))
    while len(tokens) < most:
        token = pool.try_acquire()
        if token is None:
            if deadline is None:
                return
            remaining = deadline - monotonic()
            if remaining <= 0:
                return
            try:
                token = pool.acquire(remaining)
            except Blocked:
                return
        tokens.append(token)


def _cmd_exec(args: argparse.Namespace) -> int:
    command = _split_command(args.command)
    names: list[str] = args.env or [SLOTS_VARIABLE]
    least: int = args.min
    if args.max is not None and args.max < least:
        raise _UsageError(f"--max {args.max} is below --min {least}")
    status = EXIT_FAILED
    rekill: int | None = None
    tokens: list[Token] = []
    pool: TokenPool | None = None
    with _SignalCatcher() as catcher:
        catcher.raising = True
        try:
            try:
                pool = TokenPool.from_environ()
            except JobserverUnavailable as e:
                _say("exec", f"{e}; using {least} slot(s)")
                count = least
            else:
                if pool is None:
                    count = max(least, args.max if args.max is not None else usable_cpus())
                else:
                    most = args.max if args.max is not None else (pool.slots or usable_cpus())
                    if pool.slots is not None and least > pool.slots:
                        _say(
                            "exec",
                            f"--min {least} is more than the whole pool (-j{pool.slots});"
                            f" waiting for {pool.slots}",
                        )
                        least = pool.slots
                    most = max(most, least)
                    try:
                        _take_slots(pool, least, most, args.wait, tokens)
                    except Blocked:
                        _say(
                            "exec",
                            f"only {len(tokens)} of the {least} slots --min asks for came"
                            f" within {args.wait:g} s; not running {command[0]}",
                        )
                        return EXIT_TIMEOUT
                    count = len(tokens)
            env = (
                _child_environ_without_pool(count, names)
                if _advertised(os.environ)
                else {**os.environ, **{name: str(count) for name in names}}
            )
            catcher.raising = False
            try:
                child = subprocess.Popen(_substitute(command, names, count), env=env)
            except OSError as e:
                status = _spawn_error("exec", command[0], e)
            else:
                catcher.attach(child)
                _wait_child(child, catcher)
                assert child.returncode is not None
                status = _shell_status(child.returncode)
                rekill = catcher.rekill_signal(child.returncode)
        except _Signalled as s:
            status = 128 + s.signum
            rekill = s.signum if s.signum in _REKILL else None
        except PoolBroken as e:
            _say("exec", str(e))
            status = EXIT_FAILED
        finally:
            # Only now is the command reaped: every slot goes back, even if
            # the pool misbehaves for one of them.
            if pool is not None:
                for token in tokens:
                    try:
                        pool.release(token)
                    except PoolBroken as e:
                        _say("exec", str(e))
                pool.close()
    if rekill is not None:
        _die_of(rekill)
    return status


# --------------------------------------------------------------------------------------
# run


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


def _own_process_group() -> dict[str, Any]:
    """Popen arguments that start the child in a process group of its own."""
    if sys.version_info >= (3, 11):
        return {"process_group": 0}
    return {"preexec_fn": os.setpgrp}


@dataclass(eq=False)
class _Job:
    """One command line of ``makejobs run`` and what it produced."""

    number: int
    line: str
    proc: JobPopen | None = None
    out: list[bytes] = field(default_factory=list)
    err: list[bytes] = field(default_factory=list)
    fds: dict[int, list[bytes]] = field(default_factory=dict)  # open output fd -> buffer
    pidfd: int | None = None
    returncode: int | None = None
    error: str | None = None

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
            _say("run", f"command {job.number} failed ({job.why()}): {job.line}")
        self._draw()

    # -- commands -------------------------------------------------------------

    def _start(self, job: _Job, token: Token) -> None:
        try:
            proc = JobPopen(
                job.line,
                pool=self.pool,
                token=token,
                shell=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if self.merge else subprocess.PIPE,
                **_own_process_group(),
            )
        except OSError as e:
            job.error = f"cannot start /bin/sh: {e}"
            self._finish(job)
            return
        job.proc = proc
        self.running.append(job)
        for stream, buffer in ((proc.stdout, job.out), (proc.stderr, job.err)):
            if stream is not None:
                fd = stream.fileno()
                os.set_blocking(fd, False)
                job.fds[fd] = buffer
                self.selector.register(fd, selectors.EVENT_READ, ("output", job))
        if hasattr(os, "pidfd_open"):
            try:
                job.pidfd = os.pidfd_open(proc.pid)
            except OSError:
                job.pidfd = None
        if job.pidfd is not None:
            self.selector.register(job.pidfd, selectors.EVENT_READ, ("exit", job))
        self._draw()

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
        assert job.proc is not None
        for stream in (job.proc.stdout, job.proc.stderr):
            if stream is not None and not stream.closed and stream.fileno() == fd:
                stream.close()

    def _exited(self, job: _Job) -> None:
        """The command's process ended: reap it (its slot goes back), collect its output."""
        assert job.proc is not None
        if job.pidfd is not None:
            self.selector.unregister(job.pidfd)
            os.close(job.pidfd)
            job.pidfd = None
        job.returncode = job.proc.wait()
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
        if not _in_main_thread():
            yield
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        old_handlers: dict[int, Any] = {}
        old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        try:
            for signum in _CAUGHT:
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
                assert job.proc is not None
                try:
                    os.killpg(job.proc.pid, signum)
                except OSError:
                    pass

    # -- the loop --------------------------------------------------------------

    def run(self) -> None:
        """Run every command (or until stopped) and wait for all that started."""
        with self._signals():
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
            _say("run", f"interrupted by {_signal_name(self.interrupted)}")
        if self.broken is not None:
            _say("run", f"the jobserver pool broke: {self.broken}")
        if failed:
            lines = [f"{len(failed)} of {self.total} command(s) failed:"]
            lines += [f"  [{job.number}] {job.why()}: {job.line}" for job in failed]
            _say("run", "\n".join(lines))
        if not_started:
            hint = (
                " (--keep-going runs them anyway)"
                if failed and not self.keep_going and self.interrupted is None
                else ""
            )
            _say("run", f"{not_started} command(s) not started{hint}")
        if self.broken is not None:
            return EXIT_FAILED
        return 1 if failed or not_started else 0


def _pool_for_run(jobs: int | None) -> tuple[TokenPool, bool, int | None]:
    """The pool ``run`` uses: (pool, created here, cap on running commands)."""
    try:
        pool = TokenPool.from_environ()
    except JobserverUnavailable as e:
        if jobs is not None:
            _say("run", f"{e}; using a new pool of {jobs} slot(s) (-j {jobs})")
            return TokenPool.create(jobs), True, None
        _say("run", f"{e}; running one command at a time")
        return TokenPool.create(1), True, None
    if pool is None:
        return TokenPool.create(jobs if jobs is not None else usable_cpus()), True, None
    return pool, False, jobs


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        lines = _read_commands(args.file)
    except OSError as e:
        raise _UsageError(f"cannot read commands: {e}") from None
    if not lines:
        return 0
    try:
        pool, created, limit = _pool_for_run(args.jobs)
    except (OSError, ValueError) as e:
        _say("run", f"cannot create a pool: {e}")
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
            found = _close_counting(pool)
            if found is not None and found != expected:
                _say("run", f"{found} of {expected} jobserver token(s) came back at the end")
        else:
            pool.close()
    status = runner.summary()
    if runner.interrupted is not None and runner.interrupted in _REKILL:
        _die_of(runner.interrupted)
        return 128 + runner.interrupted
    return status


# --------------------------------------------------------------------------------------
# status


def _style_of(flags: MakeFlags) -> str:
    if isinstance(flags.auth, PipeAuth):
        return "pipe"
    if isinstance(flags.auth, FifoAuth):
        return "fifo"
    if flags.disabled:
        return "disabled"
    return "unsupported"


def _status_report(environ: Mapping[str, str]) -> dict[str, Any]:
    """Everything ``status`` says, as a JSON-ready dict (see ``_cmd_status``)."""
    variables = {name: environ.get(name) for name in ENVIRON_VARIABLES}
    report: dict[str, Any] = {
        "advertised": False,
        "usable": False,
        "variable": None,
        "value": None,
        "style": None,
        "read_fd": None,
        "write_fd": None,
        "path": None,
        "jobs": None,
        "dry_run": False,
        "available": None,
        "reason": None,
        "problems": [],
        "hints": [],
        "variables": variables,
    }
    hints: list[str] = report["hints"]
    chosen: tuple[str, str, MakeFlags] | None = None
    for name in ENVIRON_VARIABLES:
        value = variables[name]
        if value:
            flags = parse_makeflags(value)
            if flags.advertises_pool():
                chosen = (name, value, flags)
                break
    if chosen is None:
        makeflags = parse_makeflags(variables["MAKEFLAGS"] or "")
        report["jobs"] = makeflags.jobs
        report["dry_run"] = makeflags.dry_run
        report["problems"] = list(makeflags.problems)
        report["reason"] = (
            "no --jobserver-auth in " + ", ".join(ENVIRON_VARIABLES) + ": no pool to share"
        )
        if variables["MAKEFLAGS"] is not None:
            hints.append(
                "MAKEFLAGS is set but names no pool: make creates one only for -jN with"
                " N > 1 (make -j1 and a bare make -j run without a jobserver)"
            )
        hints.append(
            "to share one limit: run this under `make -jN` (a recipe line starting with '+'"
            " when make uses a pipe), or under `makejobs serve -j N -- COMMAND`"
        )
        return report
    name, value, flags = chosen
    report.update(
        advertised=True,
        variable=name,
        value=value,
        style=_style_of(flags),
        jobs=flags.jobs,
        dry_run=flags.dry_run,
        problems=list(flags.problems),
    )
    if isinstance(flags.auth, PipeAuth):
        report["read_fd"] = flags.auth.read_fd
        report["write_fd"] = flags.auth.write_fd
    elif isinstance(flags.auth, FifoAuth):
        report["path"] = flags.auth.path
    elif flags.unsupported is not None:
        report["path"] = None
    try:
        pool = TokenPool.from_makeflags(flags, variable=name)
    except JobserverUnavailable as e:
        report["reason"] = e.reason
        if flags.disabled or isinstance(flags.auth, PipeAuth):
            hints.append(
                "in a Makefile, start the recipe line with '+' (or use $(MAKE) in it) so make"
                " passes the pool on; from Python, pass the pool's fds with pass_fds="
                " (subprocess closes every other fd)"
            )
            hints.append(
                "make >= 4.4 shares a fifo pool with every recipe, '+' or not; make 4.3 and"
                " `make --jobserver-style=pipe` do not"
            )
        elif isinstance(flags.auth, FifoAuth):
            hints.append(
                "the fifo must be reachable from here: not inside a sandbox or container with"
                " its own /tmp, and the make that made it must still be running"
            )
        else:
            hints.append(
                "this looks like another platform's jobserver (a Windows semaphore name);"
                " makejobs on POSIX joins pipe ('R,W') and fifo ('fifo:PATH') pools only"
            )
        return report
    try:
        report["usable"] = True
        report["available"] = pool.available()
    finally:
        pool.close()
    size = f"{flags.jobs} slots" if flags.jobs else "its slots"
    hints.append(
        f"programs started from here that speak the jobserver (make and ninja without -j,"
        f" cargo, makejobs) share {size} with everything else in this build"
    )
    hints.append(
        "do not give make or ninja a -j of their own here: they would ignore the pool"
        " and start their own"
    )
    if flags.dry_run:
        hints.append("make runs with -n (dry run): commands are printed, not run")
    return report


def _format_status(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if report["usable"]:
        lines.append("jobserver: usable")
    elif report["advertised"]:
        lines.append("jobserver: advertised but NOT usable")
    else:
        lines.append("jobserver: none advertised")
    if report["variable"] is not None:
        lines.append(f"  variable:   {report['variable']}={report['value']!r}")
    style = report["style"]
    if style == "pipe":
        lines.append(f"  style:      pipe (fds {report['read_fd']},{report['write_fd']})")
    elif style == "fifo":
        lines.append(f"  style:      fifo ({report['path']})")
    elif style is not None:
        lines.append(f"  style:      {style}")
    jobs = report["jobs"]
    lines.append(f"  -j:         {jobs if jobs is not None else 'not given'}")
    if report["available"] is not None:
        lines.append(f"  free now:   {report['available']} token(s) (changes as jobs run)")
    if report["reason"] is not None and not report["usable"]:
        lines.append(f"  why not:    {report['reason']}")
    for problem in report["problems"]:
        lines.append(f"  note:       {problem}")
    for hint in report["hints"]:
        lines.append(f"  hint:       {hint}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    report = _status_report(os.environ)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_format_status(report))
    if report["usable"]:
        return 0
    return 2 if report["advertised"] else 1


# --------------------------------------------------------------------------------------
# parser and entry point


_Formatter = argparse.RawDescriptionHelpFormatter
_HELP_WIDTH = 88


def _fill(text: str) -> str:
    """Wrap each paragraph of *text* for --help; indented paragraphs (examples) stay as is."""
    paragraphs = text.split("\n\n")
    return "\n\n".join(
        p if p.startswith(" ") else textwrap.fill(p, _HELP_WIDTH) for p in paragraphs
    )


def _build_parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "makejobs",
        formatter_class=_Formatter,
        description=_fill(
            "Share the GNU make jobserver (the token pool of make -jN, ninja and"
            " cargo) with any command."
        ),
        epilog="Run `makejobs COMMAND --help` for each command. Exit status 2 means a usage"
        " error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        formatter_class=_Formatter,
        help="create a pool of N slots and run a command under it",
        description=_fill(
            "Create a jobserver pool of N slots, export it to CMD (MAKEFLAGS,"
            " CARGO_MAKEFLAGS and, for a pipe, its fds), run CMD on the pool's implicit slot and"
            " exit with CMD's status (128+N if a signal killed it). At the end every token must"
            " be back; missing or extra tokens are reported on stderr."
        ),
        epilog="""\
styles:
  pipe (default)  works with every GNU make (4.3 dies on fifo pools), cargo, and ninja
                  builds that accept pipes (the PyPI ninja wheel)
  fifo            needed by upstream ninja 1.13 (it ignores pipe pools) and reaches make
                  >= 4.4 recipes not marked '+'; removed on every catchable exit

Give CMD no -j of its own: `make -jN` and even `make -j` ignore the pool ("forced in
submake"), so does `ninja -jN`; `cargo -jN` stays within it. The pool is always a new
one, even under an inherited pool.

Signals: a SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to makejobs is passed on to CMD and its
process-group descendants (a terminal's ^C already reached them and is not sent twice);
makejobs then waits for CMD, cleans up, and dies of the same signal if CMD did.

exit status: CMD's; 125 no pool could be made (or --strict found a token mismatch after
CMD succeeded); 126 CMD cannot be executed; 127 CMD not found.

example: makejobs serve -j 8 -- make""",
    )
    serve.add_argument(
        "-j",
        "--jobs",
        type=_check_slots,
        metavar="N",
        help="total parallelism: N-1 tokens plus CMD's implicit slot (default: usable CPUs)",
    )
    serve.add_argument(
        "--style",
        choices=("pipe", "fifo"),
        default="pipe",
        help="how the pool is shared (default: pipe; see below)",
    )
    serve.add_argument(
        "--strict",
        action="store_true",
        help="exit 125 when tokens are missing or extra at the end although CMD succeeded",
    )
    serve.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run"
    )
    serve.set_defaults(func=_cmd_serve)

    exec_ = sub.add_parser(
        "exec",
        formatter_class=_Formatter,
        help="hold slots of the inherited pool for a tool that takes a job count",
        description=_fill(
            "Take between --min and --max slots of the inherited pool (this"
            " process's implicit slot counts as one), put their number in the environment, run"
            " CMD, and give every slot back when it exits. For tools that do not speak the"
            " jobserver but take a job count. A literal $NAME or ${NAME} in CMD's arguments"
            " (single-quoted, so the shell left it alone) becomes the number too, e.g.\n\n"
            "  makejobs exec --max 8 -- sphinx-build -j '$MAKEJOBS_SLOTS' . _build"
        ),
        epilog=f"""\
without a pool: the number is --max if given, else the usable CPUs (never below --min).
with a pool that is advertised but unusable: a warning, and the number is --min (as make
falls back to -j1).

CMD does not join the pool: its MAKEFLAGS/MFLAGS/CARGO_MAKEFLAGS say -jK (K = the slots
held) without a jobserver, so a make it starts runs at most K jobs and nothing is counted
twice. Run jobserver-aware tools (make, ninja, cargo) directly instead.

Several waiting `exec --min A` with A > 1 can deadlock, each holding part of what it
needs; give them --wait.

exit status: CMD's (128+N if signal N killed it); 124 --wait passed before --min slots
were held; 126 CMD cannot be executed; 127 CMD not found. Default variable:
{SLOTS_VARIABLE}.""",
    )
    exec_.add_argument(
        "--min",
        type=_check_slots,
        default=1,
        metavar="A",
        help="slots required before CMD starts (default 1: the implicit slot, never waits)",
    )
    exec_.add_argument(
        "--max",
        type=_check_slots,
        metavar="B",
        help="most slots to take (default: the pool's -jN, else the usable CPUs)",
    )
    exec_.add_argument(
        "--wait",
        type=_check_seconds,
        metavar="SECONDS",
        help="time allowed for collecting slots: --min must be reached by then, and more"
        " slots up to --max are waited for until then (default: wait for --min as long as"
        " needed, take more only if free at once)",
    )
    exec_.add_argument(
        "--env",
        action="append",
        type=_check_variable,
        metavar="NAME",
        help=f"variable that gets the number of slots (repeatable; default {SLOTS_VARIABLE})",
    )
    exec_.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run"
    )
    exec_.set_defaults(func=_cmd_exec)

    run = sub.add_parser(
        "run",
        formatter_class=_Formatter,
        help="run shell command lines in parallel on the pool",
        description=_fill(
            "Run shell command lines (one per line, via /bin/sh -c) in parallel, each"
            " on one slot of the inherited pool, or of a new pool of N when there is none. Each"
            " command gets the pool exported, stdin from /dev/null and its own process group;"
            " its output is printed in one piece when it ends (like make -O)."
        ),
        epilog="""\
Blank lines and lines starting with '#' are skipped; all lines are read before the
first command starts. Under an inherited pool, -j N only caps how many commands run at
once. An advertised but unusable pool runs one command at a time (with a warning)
unless -j N asks for a new pool. A progress line is shown on stderr when it is a
terminal. Without --keep-going nothing new starts after the first failure.

exit status: 0 all commands succeeded; 1 some failed or were not started; 125 the pool
broke. SIGINT/SIGTERM/SIGHUP are passed on to every running command's process group;
makejobs waits for them and then dies of the same signal.

example: printf '%s\\n' 'gzip -k a.log' 'gzip -k b.log' | makejobs run -j 4""",
    )
    run.add_argument(
        "-j",
        "--jobs",
        type=_check_slots,
        metavar="N",
        help="size of the new pool when none is inherited (default: usable CPUs); under an"
        " inherited pool, the most commands running at once",
    )
    run.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="read command lines from FILE (default, or '-': standard input)",
    )
    run.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="start the remaining commands even after one failed",
    )
    run.set_defaults(func=_cmd_run)

    status = sub.add_parser(
        "status",
        formatter_class=_Formatter,
        help="describe the pool this environment advertises",
        description=_fill(
            "Describe the jobserver pool this environment advertises (CARGO_MAKEFLAGS,"
            " MAKEFLAGS, MFLAGS): the variable, style, fds or fifo path, -j, whether it can be"
            " used from here and, if not, why and what to do."
        ),
        epilog="exit status: 0 a usable pool is advertised; 1 none is; 2 one is advertised"
        " but cannot be used (or a usage error).",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead")
    status.set_defaults(func=_cmd_status)
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the ``makejobs`` command line with *argv* (default ``sys.argv[1:]``).

    Returns the exit status (see the module docstring). ``--help`` and usage
    errors raise :class:`SystemExit` as argparse does (status 0 and 2). A
    command that ends because makejobs received SIGINT/SIGTERM/SIGHUP
    re-raises that signal on this process after cleaning up.
    """
    parser = _build_parser(prog)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except _UsageError as e:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.subcommand}: error: {e}\n")
    except KeyboardInterrupt:
        # ^C outside the supervised parts (say, while `run` reads its commands):
        # no traceback, and the caller still learns that we were interrupted.
        if _in_main_thread():
            _die_of(signal.SIGINT)
        return 128 + signal.SIGINT
