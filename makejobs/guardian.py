"""The guardian: tokens come back and jobs stop even when their process is killed.

A process that holds pool tokens for its jobs and is killed outright
(SIGKILL, or SIGTERM with Python's default action, which runs no cleanup)
cannot give anything back itself. make then reports ``INTERNAL: Exiting with
N jobserver tokens available; should be M!``, the build runs short of slots
for good, and the jobs it started run on as orphans, on slots nobody counts.

So the first time a process needs it (it takes a pool token, or starts a
job), makejobs starts a small *guardian* process for it (see
:mod:`makejobs._guardian_main` for what the guardian does and in which
order). This module is the side that talks to it:

* every escrow pipe that holds this process's pool tokens (see
  :mod:`makejobs.token`) is sent to the guardian when it is made, with the
  pool's write end; the guardian only keeps them;
* every job process holds :func:`life_fd`, the write end of a pipe whose read
  end only the guardian has: forked jobs inherit it, and jobs started
  otherwise get it passed explicitly, so the guardian can tell (and on Linux
  find) the jobs that outlive this process.

No signal handler is installed anywhere. A guardian that cannot be started
(no Python executable to run, a process limit) is reported once with a
:class:`RuntimeWarning`; everything else then works as before, without the
recovery. The guardian belongs to the process that started it: a forked
child that needs one starts its own.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import struct
import sys
import threading
import warnings

from . import _posix
from ._guardian_main import ESCROW, FORGET, HEADER, POOL, RECORD

__all__ = ["Guardian", "current", "life_fd"]

_UNSTOPPABLE = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_lock = threading.Lock()
_current: Guardian | None = None
_failed_in: int | None = None  # the pid in which starting one failed (warned once)


class Guardian:
    """This process's handle on its guardian process."""

    def __init__(self) -> None:
        self.owner_pid = os.getpid()
        self.pid = -1
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.life_w = -1
        self._pool_ids: dict[int, int] = {}  # id(core) -> pool id sent
        self._next_id = 0
        self._start()

    def _start(self) -> None:
        parent = os.getpid()
        pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(parent)
            except OSError:
                pidfd = -1
        life_r, life_w = os.pipe()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            passed = [fd for fd in (pidfd, life_r, theirs.fileno()) if fd >= 0]
            # The fds the guardian keeps are dup2()ed above every fd passed, which
            # clears their close-on-exec flag in the new process only.
            base = max(passed) + 1
            targets = {fd: base + i for i, fd in enumerate(passed)}
            actions: list[tuple[int, ...]] = [
                (os.POSIX_SPAWN_DUP2, fd, target) for fd, target in targets.items()
            ]
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            try:
                actions += [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1)]
                program = os.path.join(os.path.dirname(__file__), "_guardian_main.py")
                argv = [
                    sys.executable,
                    "-I",
                    "-S",
                    program,
                    str(parent),
                    str(targets.get(pidfd, -1)),
                    str(targets[life_r]),
                    str(targets[theirs.fileno()]),
                ]
                # Held off from the start (the guardian never takes them): a ^C or
                # a SIGTERM sent to the whole group while it is still starting up
                # must not stop the one process that cleans up after the group.
                self.pid = os.posix_spawn(
                    sys.executable,
                    argv,
                    os.environ,
                    file_actions=actions,
                    setsigmask=_UNSTOPPABLE,
                )
            finally:
                os.close(null)
        except BaseException:
            ours.close()
            _posix.close_quietly(life_w)
            raise
        finally:
            theirs.close()
            _posix.close_quietly(life_r, *([pidfd] if pidfd >= 0 else []))
        self._sock = ours
        self.life_w = life_w
        atexit.register(self._close_socket)

    def _close_socket(self) -> None:
        # At exit: nothing more will be sent. The guardian keeps watching the
        # process itself, so this changes nothing for it.
        sock, self._sock = self._sock, None
        if sock is not None and os.getpid() == self.owner_pid:
            sock.close()

    # -- what the guardian is told ------------------------------------------------------

    def _send(self, what: bytes, pool_id: int, fds: list[int]) -> None:
        sock = self._sock
        if sock is None:
            return
        data = HEADER.pack(what, pool_id)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        try:
            sock.sendmsg([data], ancillary if fds else [])
        except OSError as e:
            # Full (it is not reading: stopped?) or gone. Tokens held from now on
            # are not recovered if this process is killed; everything else works.
            self._sock = None
            sock.close()
            warnings.warn(
                f"makejobs: the guardian process {self.pid} stopped listening ({e});"
                " tokens of this process will not be recovered if it is killed",
                RuntimeWarning,
                stacklevel=4,
            )

    def pool_id(self, key: object, writer: int) -> int:
        """The id under which the pool written through *writer* is known (sent once)."""
        with self._lock:
            pool_id = self._pool_ids.get(id(key))
            if pool_id is None:
                pool_id = self._pool_ids[id(key)] = self._next_id
                self._next_id += 1
                self._send(POOL, pool_id, [writer])
            return pool_id

    def add_escrow(self, key: object, writer: int, escrow_r: int) -> None:
        """From now on the guardian holds the escrow read through *escrow_r*."""
        pool_id = self.pool_id(key, writer)
        with self._lock:
            self._send(ESCROW, pool_id, [escrow_r])

    def add_record(self, key: object, writer: int, record_fd: int) -> None:
        pool_id = self.pool_id(key, writer)
        with self._lock:
            self._send(RECORD, pool_id, [record_fd])

    def forget(self, key: object) -> None:
        """The pool is closed and holds nothing of ours: let the guardian drop it."""
        with self._lock:
            pool_id = self._pool_ids.pop(id(key), None)
            if pool_id is not None:
                self._send(FORGET, pool_id, [])


def current(start: bool = True) -> Guardian | None:
    """This process's guardian, started on first use (None if it cannot be)."""
    global _current, _failed_in
    guardian = _current
    pid = os.getpid()
    if guardian is not None and guardian.owner_pid == pid:
        return guardian
    if not start or _failed_in == pid:
        return None
    with _lock:
        guardian = _current
        if guardian is not None and guardian.owner_pid == pid:
            return guardian
        if guardian is not None:
            # Our parent's, inherited through fork: not ours to use, and its life
            # pipe end stays open here (this process is one of its jobs, or was
            # forked from one of its processes).
            _current = None
        try:
            guardian = Guardian()
        except (OSError, ValueError) as e:
            _failed_in = pid
            warnings.warn(
                f"makejobs: cannot start the guardian process ({e}); tokens held by this"
                " process will not be recovered if it is killed",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        _current = guardian
        return guardian


def life_fd() -> int:
    """The write end every job of this process must hold (-1 without a guardian)."""
    guardian = current()
    return -1 if guardian is None else guardian.life_w
