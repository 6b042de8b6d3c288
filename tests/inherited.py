"""Descriptors as a process inherits them from make (shared by the unit tests).

A pipe that make hands to a ``+`` recipe reaches it across exec, so its descriptors are not
close-on-exec; makejobs refuses to join an advertised pipe that is (see
``makejobs.pool.TokenPool.from_makeflags``). Every descriptor Python opens is close-on-exec
(PEP 446), so a test that plays make inside its own process marks the pipe inheritable.
"""

from __future__ import annotations

import errno
import fcntl
import os

from makejobs import FifoAuth, PipeAuth, TokenPool

__all__ = ["advertises", "closed_fd_pair", "inheritable", "inherited_pipe"]


def advertises(auth: PipeAuth | FifoAuth | None, pool: TokenPool) -> bool:
    """True when *auth* names *pool*: in its own form, or a pipe pool by the ``/proc``
    path of its read end (what jobs export, see makejobs.advertise.for_any_child)."""
    if auth == pool.auth:
        return True
    if isinstance(auth, FifoAuth) and isinstance(pool.auth, PipeAuth):
        try:
            return os.path.samefile(auth.path, f"/proc/self/fd/{pool.auth.read_fd}")
        except OSError:
            return False
    return False


def inheritable(*fds: int) -> None:
    """Clear close-on-exec on *fds*, as if they had been inherited across exec."""
    for fd in fds:
        os.set_inheritable(fd, True)


def inherited_pipe(tokens: bytes = b"") -> tuple[int, int]:
    """A new pipe ``(read, write)`` that looks inherited, holding *tokens*."""
    r, w = os.pipe()
    inheritable(r, w)
    if tokens:
        os.write(w, tokens)
    return r, w


def closed_fd_pair(start: int = 900) -> tuple[int, int]:
    """Two consecutive descriptor numbers that are not open in this process right now."""
    fd = start
    while True:
        if not _is_open(fd) and not _is_open(fd + 1):
            return fd, fd + 1
        fd += 2


def _is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError as e:
        if e.errno == errno.EBADF:
            return False
        raise
    return True
