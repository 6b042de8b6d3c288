"""The guardian process: what is left to do when a makejobs process dies without cleanup.

This file is run as a program (``python -I -S _guardian_main.py ...``) by
:mod:`makejobs.guardian`, one guardian per process that holds pool tokens or
runs jobs. It imports only the standard library, so it starts in a few
milliseconds and never imports the package it watches.

While the watched process (the *parent*) lives, the guardian only collects
what the parent sends it over a Unix socket: the write end of each pool the
parent takes tokens from, the read end of each *escrow* pipe that holds the
parent's tokens (see :mod:`makejobs.token`), and the parent's ledger records.
It never reads a token while the parent lives.

When the parent is gone (its pidfd polls readable; elsewhere its pid is no
longer our parent's), in this order:

1. the parent's jobs are stopped. Every job holds the write end of the
   parent's *life pipe*, whose read end only the guardian has; a hang-up on
   it means no job is left. Otherwise (Linux) the processes holding the pipe
   and their descendants are found in ``/proc``, sent SIGTERM, and after a
   short grace SIGKILL, until the pipe hangs up. Elsewhere the guardian
   waits for the jobs to end by themselves;
2. only then is every byte left in an escrow moved back to its pool (the
   ledger record's count lowered first, as the ledger requires), so no token
   is ever given back while the job that held it may still run;
3. the guardian exits, and with it its hold on the pools.

SIGINT, SIGTERM, SIGHUP and SIGQUIT are ignored (and held off from the moment
the guardian is started, before Python sets that up): a ^C or a ``kill`` of
the whole process group must not stop the one process that cleans up after it.
"""

from __future__ import annotations

import array
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import termios
import time

# Message kinds sent by makejobs.guardian (one byte, then a little-endian u32 pool id).
POOL = b"P"  # the pool's write end
ESCROW = b"E"  # an escrow's read end, holding that pool's tokens
RECORD = b"R"  # the ledger record counting this process's tokens of that pool
FORGET = b"F"  # the pool is closed: drop what we hold of it
HEADER = struct.Struct("<cI")
MAX_FDS = 4

#: Grace between SIGTERM and SIGKILL for the jobs of a dead parent.
GRACE = 0.3
#: Give up waiting for killed jobs to vanish after this long (a process stuck
#: in the kernel): their tokens then go back anyway.
KILL_PATIENCE = 10.0
_COUNT = struct.Struct("<q")
_SPLICE = getattr(os, "splice", None)
_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)


class PoolHold:
    __slots__ = ("escrows", "record", "writer")

    def __init__(self) -> None:
        self.writer = -1
        self.record = -1
        self.escrows: list[int] = []


def receive(sock: socket.socket, pools: dict[int, PoolHold]) -> bool:
    """Take every message waiting; False once the socket is at end-of-file."""
    space = socket.CMSG_SPACE(MAX_FDS * 4)
    while True:
        try:
            data, ancillary, _flags, _addr = sock.recvmsg(HEADER.size, space)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(array.array("i", payload[:usable]))
        for fd in fds:
            os.set_inheritable(fd, False)
        if len(data) != HEADER.size:
            close_all(fds)
            continue
        what, pool_id = HEADER.unpack(data)
        hold = pools.setdefault(pool_id, PoolHold())
        if what == FORGET:
            close_all([hold.writer, hold.record, *hold.escrows, *fds])
            del pools[pool_id]
        elif what == POOL and fds:
            close_all([hold.writer, *fds[1:]])
            hold.writer = fds[0]
        elif what == RECORD and fds:
            close_all([hold.record, *fds[1:]])
            hold.record = fds[0]
        elif what == ESCROW and fds:
            hold.escrows.extend(fds)
        else:
            close_all(fds)


def close_all(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


def parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def wait_for_parent(
    parent: int, pidfd: int, sock: socket.socket, pools: dict[int, PoolHold]
) -> None:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    # Without a pidfd, our own parent changing is the sign (we are its child).
    timeout = -1 if pidfd >= 0 else 200
    open_socket = True
    while True:
        for fd, _mask in poller.poll(timeout):
            if fd == pidfd:
                return
            if fd == sock.fileno() and open_socket and not receive(sock, pools):
                # Only our parent and its forks held the other end: stop watching
                # it, and keep watching the parent itself.
                poller.unregister(fd)
                open_socket = False
        if pidfd < 0 and parent_gone(parent):
            return


def pipe_inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def holders_of(inode: int) -> set[int]:
    """Pids of processes with the pipe *inode* open (Linux /proc), never our own."""
    target = f"pipe:[{inode}]"
    me = os.getpid()
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        directory = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(directory)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{directory}/{fd}") == target:
                    found.add(int(entry))
                    break
            except OSError:
                continue
    return found


def children_map() -> dict[int, list[int]]:
    """Every process's children, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold anything: parse after it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def with_descendants(pids: set[int]) -> set[int]:
    children = children_map()
    result = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in result:
            continue
        result.add(pid)
        todo.extend(children.get(pid, ()))
    result.discard(os.getpid())
    return result


def hung_up(fd: int, timeout: float) -> bool:
    """True once nobody holds the other end of the pipe *fd* (waits up to *timeout*)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        for _fd, mask in poller.poll(max(0, int(remaining * 1000))):
            if mask & (select.POLLHUP | select.POLLERR):
                return True
            # Nothing is ever written to the life pipe; drain whatever is.
            try:
                os.read(fd, 4096)
            except OSError:
                pass
        if remaining <= 0:
            return False


def signal_all(pids: set[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def stop_jobs(life: int) -> None:
    """Return once no job of the dead parent runs (see the module docstring)."""
    if hung_up(life, 0):
        return
    inode = pipe_inode(life)
    if not os.path.isdir("/proc/self/fd"):
        hung_up(life, float("inf"))  # no way to find them: wait for them to end
        return
    signal_all(with_descendants(holders_of(inode)), signal.SIGTERM)
    if hung_up(life, GRACE):
        return
    deadline = time.monotonic() + KILL_PATIENCE
    while time.monotonic() < deadline:
        signal_all(with_descendants(holders_of(inode)), signal.SIGKILL)
        if hung_up(life, 0.2):
            return


def held(fd: int) -> int:
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return 0
    return buf[0]


def move_all(src: int, dst: int) -> None:
    while True:
        try:
            if _SPLICE is not None:
                if _SPLICE(src, dst, 1 << 16, flags=_NONBLOCK) <= 0:
                    return
            else:
                data = os.read(src, 1 << 16)
                if not data:
                    return
                os.write(dst, data)
        except OSError:
            return


def give_back(pools: dict[int, PoolHold]) -> int:
    total = 0
    for hold in pools.values():
        for escrow in hold.escrows:
            count = held(escrow)
            if count and hold.writer >= 0:
                if hold.record >= 0:
                    lower_record(hold.record, count)
                move_all(escrow, hold.writer)
                total += count - held(escrow)
    return total


def lower_record(fd: int, count: int) -> None:
    """The ledger's rule: the count goes down before the tokens go back."""
    try:
        data = os.pread(fd, _COUNT.size, 0)
        current = _COUNT.unpack(data)[0] if len(data) == _COUNT.size else 0
        os.pwrite(fd, _COUNT.pack(max(0, current - count)), 0)
    except OSError:
        pass


def close_inherited(keep: set[int]) -> None:
    """Drop every fd we did not ask for (posix_spawn passes all inheritable ones)."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        try:
            names = os.listdir("/dev/fd")
        except OSError:
            return
    for name in names:
        fd = int(name)
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def main(argv: list[str]) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)
    parent, pidfd, life, control = (int(word) for word in argv[1:5])
    close_inherited({pidfd, life, control})
    sock = socket.socket(fileno=control)
    sock.setblocking(False)
    pools: dict[int, PoolHold] = {}
    if not parent_gone(parent):
        wait_for_parent(parent, pidfd, sock, pools)
    receive(sock, pools)  # what the parent sent just before it died
    stop_jobs(life)
    returned = give_back(pools)
    if returned and os.environ.get("MAKEJOBS_GUARDIAN_VERBOSE"):
        sys.stderr.write(f"makejobs guardian: gave back {returned} token(s) of process {parent}\n")
    return 0


if __name__ == "__main__":
    try:
        code = main(sys.argv)
    except BaseException as e:  # never a traceback into the build's output
        if os.environ.get("MAKEJOBS_GUARDIAN_VERBOSE"):
            sys.stderr.write(f"makejobs guardian failed: {e!r}\n")
        code = 1
    os._exit(code)
