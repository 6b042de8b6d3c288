"""Supervising a command makejobs runs: signals passed on, its exit, dying of a signal.

``serve``, ``exec`` and ``bridge`` run one command in the foreground
(:func:`run_foreground`); ``run`` runs many, each in a process group of its
own. What they share is here.

Signals (``serve`` and ``exec``)
================================

CMD runs in makejobs' process group, so a terminal's ^C already reaches it
and every process it started; makejobs does not send it again (on Linux it
tells a terminal's signal from one sent with ``kill`` by its ``siginfo``).
A SIGINT, SIGTERM, SIGHUP or SIGQUIT sent to makejobs alone is passed on the
way a terminal would deliver it: to CMD and to its descendants that are in
CMD's process group (a make then sees its recipes interrupted, as after ^C).
makejobs then waits for CMD to exit before cleaning up. When makejobs got
SIGINT, SIGTERM or SIGHUP and CMD died of that same signal, makejobs cleans
up and then dies of it too (:func:`die_of`), so the calling shell or make
sees an interrupted command, as shells do.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import threading
from time import monotonic, sleep

from ._console import EXIT_CANNOT_EXECUTE, EXIT_NOT_FOUND, say

# Not typing's TYPE_CHECKING (see makejobs/__init__.py). subprocess is only
# named in annotations: ``makejobs run`` starts its commands without it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable, Mapping, Sequence
    from types import FrameType
    from typing import Any

__all__ = [
    "CAUGHT",
    "REKILL",
    "SignalCatcher",
    "Signalled",
    "become_subreaper",
    "die_of",
    "exit_status",
    "in_main_thread",
    "other_children",
    "reap_others",
    "run_foreground",
    "settle_orphans",
    "shell_status",
    "signal_name",
    "spawn_error",
    "wait_child",
]

#: Signals makejobs catches while a command runs, passes on, and cleans up after.
CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
#: Of those, the ones makejobs dies of after cleaning up (SIGQUIT would dump core).
REKILL = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


class Signalled(BaseException):
    """A caught signal arrived while no command was running yet."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def outcome(self) -> tuple[int, int | None]:
        """The exit status, 128+N, and the signal to die of (N if in :data:`REKILL`)."""
        return 128 + self.signum, (self.signum if self.signum in REKILL else None)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def shell_status(returncode: int) -> int:
    """A Popen returncode as a shell reports it: 128+N for death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def spawn_error(command: str, argv0: str, exc: OSError) -> int:
    """Report a command that could not be started; its shell-style exit status."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        say(command, f"{argv0}: command not found")
        return EXIT_NOT_FOUND
    say(command, f"{argv0}: cannot execute: {exc.strerror or exc}")
    return EXIT_CANNOT_EXECUTE


def die_of(signum: int) -> None:
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


def exit_status(status: int, rekill: int | None) -> int:
    """*status*, the exit status to return, after dying of *rekill* if it is a signal
    (:func:`die_of`: call this once everything is cleaned up)."""
    if rekill is not None:
        die_of(rekill)
    return status


def reap_others(keep: int) -> None:
    """Reap every exited child except *keep* (whose status its Popen collects)."""
    while True:
        try:
            # WNOWAIT peeks, so the main child's status is left for its Popen.
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == keep:
            return
        try:
            os.waitpid(info.si_pid, 0)
        except ChildProcessError:
            return


def other_children(keep: int) -> list[int]:
    """Live children of this process other than *keep* (orphans it adopted)."""
    try:
        import psutil

        return [c.pid for c in psutil.Process().children() if c.pid != keep]
    except Exception:
        return []


def settle_orphans(keep: int, grace: float) -> list[int]:
    """Reap children other than *keep* as they exit, for at most *grace* seconds.

    Returns the ones still running then (empty as soon as none is left). A
    process that was just signalled, or a helper that ends when its parent
    does, is usually dying rather than running on: judging at once would
    count it as a live orphan. Waits on SIGCHLD where ``sigtimedwait`` exists
    (in the main thread), polling every 0.1 s too, because an orphan whose
    parent dies hands us its children without a SIGCHLD.
    """
    deadline = monotonic() + grace
    by_signal = in_main_thread() and hasattr(signal, "sigtimedwait")
    old_chld = signal.getsignal(signal.SIGCHLD) if by_signal else None
    if old_chld == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # else no SIGCHLD comes
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD}) if by_signal else None
    try:
        while True:
            # Reaped after blocking SIGCHLD: an exit that came before is seen here.
            reap_others(keep)
            orphans = other_children(keep)
            remaining = deadline - monotonic()
            if not orphans or remaining <= 0:
                return orphans
            if by_signal:
                signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.1))
            else:
                sleep(min(remaining, 0.02))
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if old_chld == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def become_subreaper() -> bool:
    """Adopt every orphaned descendant (Linux ``PR_SET_CHILD_SUBREAPER``); True if so."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def in_main_thread() -> bool:
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


class SignalCatcher:
    """Catch :data:`CAUGHT` signals while makejobs prepares and runs a command.

    Before the command exists, a signal raises :class:`Signalled` when
    :attr:`raising` is set (so waiting for slots stops), and is only
    remembered otherwise. Once :attr:`child` is set, a signal caught by the
    handler is passed on to it with :func:`_deliver`: its origin is unknown
    here (see :func:`wait_child`, which knows it). Every caught signal is
    appended to :attr:`received`. Outside the main thread nothing is caught.
    """

    def __init__(self) -> None:
        self.received: list[int] = []
        self.undelivered: list[int] = []
        self.child: subprocess.Popen[Any] | None = None
        self.raising = False
        self.active = in_main_thread()
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SignalCatcher:
        if self.active:
            for signum in CAUGHT:
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
            raise Signalled(signum)
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
        if returncode < 0 and -returncode in REKILL and -returncode in self.received:
            return -returncode
        return None


def wait_child(
    child: subprocess.Popen[Any],
    catcher: SignalCatcher,
    *,
    every_second: Callable[[], None] | None = None,
) -> None:
    """Wait for *child* to exit, passing on signals that a terminal did not deliver.

    Other children that exit meanwhile (orphans re-parented to us when we are
    a subreaper) are reaped. *every_second*, if given, is called about once a
    second and after each such exit.

    Where ``sigwaitinfo`` exists the caught signals and SIGCHLD are blocked
    and taken synchronously with their ``siginfo``: a signal sent by a
    process (``kill``) is passed on; one from the terminal is not, because
    the child, in our process group, got it too, unless the child has a
    process group of its own. Elsewhere every caught signal is passed on by
    the handler.
    """
    if not catcher.active or not hasattr(signal, "sigtimedwait"):
        from subprocess import TimeoutExpired  # loaded already: *child* is a Popen

        while True:
            try:
                child.wait(None if every_second is None else 1.0)
                return
            except TimeoutExpired:
                reap_others(child.pid)
                if every_second is not None:
                    every_second()
    watched = {*CAUGHT, signal.SIGCHLD}
    # With SIGCHLD ignored the kernel reaps children itself and no SIGCHLD
    # arrives; the default disposition keeps both working.
    old_chld = signal.getsignal(signal.SIGCHLD)
    if old_chld == signal.SIG_IGN:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    try:
        # Checked after blocking: a SIGCHLD that came before is not pending.
        while child.poll() is None:
            info = signal.sigtimedwait(watched, 1.0)
            if info is None or info.si_signo == signal.SIGCHLD:
                reap_others(child.pid)
                if every_second is not None:
                    every_second()
                continue
            signum = info.si_signo
            catcher.received.append(signum)
            if _sent_by_a_process(info) or not _in_our_group(child.pid):
                _deliver(child, signum)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if old_chld == signal.SIG_IGN:
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)


def run_foreground(
    name: str,
    catcher: SignalCatcher,
    argv: Sequence[str],
    env: Mapping[str, str] | None,
    pass_fds: Sequence[int] = (),
    *,
    started: Callable[[subprocess.Popen[Any]], None] | None = None,
    every_second: Callable[[], None] | None = None,
) -> tuple[int, int | None]:
    """Run CMD, *argv*, until it exits, passing signals on; its exit status and the
    signal to die of.

    From here on a signal no longer raises :class:`Signalled` (CMD is about to run, and
    gets it). *started* is called with CMD's Popen as soon as it runs; *every_second*
    is :func:`wait_child`'s. The status is CMD's as a shell reports it (128+N when
    signal N killed it) with :meth:`SignalCatcher.rekill_signal`, to die of once
    everything is cleaned up; for a CMD that cannot be started, 126 or 127 (*name*
    says why on stderr: :func:`spawn_error`) and None.
    """
    import subprocess  # loaded already by the commands that get here; run does not

    catcher.raising = False
    try:
        child = subprocess.Popen(argv, env=env, pass_fds=pass_fds)
    except OSError as e:
        return spawn_error(name, argv[0], e), None
    if started is not None:
        started(child)
    catcher.attach(child)
    wait_child(child, catcher, every_second=every_second)
    assert child.returncode is not None
    return shell_status(child.returncode), catcher.rekill_signal(child.returncode)
