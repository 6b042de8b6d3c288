"""Other processes as Linux's ``/proc`` shows them: who has a file open, and who they are.

The diagnostics (``makejobs status`` listing a pool's holders, ``makejobs
doctor``, ``serve`` deciding whether a dead serve's leftovers are still in
use) need to know which processes hold a pipe or fifo. Only ``/proc`` says
that: ``/proc/PID/fd/N`` is a link whose text is ``pipe:[INODE]`` for a pipe
and the path for a fifo, and whose target ``stat`` gives the file's device
and inode either way.

Everything here is best effort and never raises for a process that exits
while it is being read, or that belongs to another user (without privileges
its ``fd`` directory cannot be listed): such processes are left out and
counted in :attr:`Scan.hidden`. On systems without ``/proc`` (macOS, the
BSDs) :func:`supported` is false and the scans find nothing.
"""

from __future__ import annotations

import os
import stat

__all__ = [
    "Scan",
    "Stat",
    "children_supported",
    "cmdline",
    "environ",
    "file_key",
    "mount_namespace",
    "pids",
    "process_stat",
    "record_locks",
    "scan_holders",
    "supported",
    "task_children",
]

_PROC = "/proc"


def supported() -> bool:
    """True where ``/proc/PID/fd`` lists a process's descriptors (Linux)."""
    return os.path.isdir(f"{_PROC}/self/fd")


def file_key(st: os.stat_result) -> tuple[int, int]:
    """A file's identity: (device, inode)."""
    return (st.st_dev, st.st_ino)


def pids() -> list[int]:
    """Every process id ``/proc`` lists, ascending (empty without ``/proc``)."""
    try:
        names = os.listdir(_PROC)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


class Stat:
    """A few fields of ``/proc/PID/stat``.

    Attributes:
        ppid: the parent's pid.
        state: the state letter (``R``, ``S``, ``Z`` for a zombie...).
        start: when it started, in clock ticks since boot (with the pid, it
            names the process: pids are reused, start times are not).
        comm: the program name the kernel keeps (changes on ``exec``).
        threads: how many threads it has.
    """

    __slots__ = ("comm", "ppid", "start", "state", "threads")

    def __init__(self, ppid: int, state: str, start: int, comm: bytes, threads: int) -> None:
        self.ppid = ppid
        self.state = state
        self.start = start
        self.comm = comm
        self.threads = threads


def _read(path: str, size: int = 65536) -> bytes | None:
    """The start of a /proc file (os calls, no file object: the tracer reads many)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def process_stat(pid: int) -> Stat | None:
    """The :class:`Stat` of *pid*, or None if it is gone."""
    data = _read(f"{_PROC}/{pid}/stat", 4096)
    if data is None:
        return None
    # The command name is in parentheses and may itself contain ") ", so the
    # fields are counted from the last one.
    close = data.rfind(b")")
    fields = data[close + 2 :].split()
    try:
        return Stat(
            int(fields[1]),
            fields[0].decode("ascii", "replace"),
            int(fields[19]),
            data[data.find(b"(") + 1 : close],
            int(fields[17]),
        )
    except (IndexError, ValueError):
        return None


def task_children(pid: int, *, every_thread: bool = True) -> list[int]:
    """The children of *pid* (``/proc/PID/task/TID/children``).

    With *every_thread* false only the children its main thread started (or
    adopted) are read, which saves listing its threads. Empty for a process
    that is gone, and on kernels built without ``CONFIG_PROC_CHILDREN`` (see
    :func:`children_supported`).
    """
    if every_thread:
        try:
            tasks = os.listdir(f"{_PROC}/{pid}/task")
        except OSError:
            return []
    else:
        tasks = [str(pid)]
    children: list[int] = []
    for tid in tasks:
        data = _read(f"{_PROC}/{pid}/task/{tid}/children")
        if data:
            children.extend(int(word) for word in data.split())
    return children


def children_supported() -> bool:
    """True where :func:`task_children` works (Linux >= 3.5 with CONFIG_PROC_CHILDREN)."""
    return os.path.exists(f"{_PROC}/self/task/{os.getpid()}/children")


def cmdline(pid: int) -> list[str]:
    """The command line of *pid* (empty for a zombie, a kernel thread or a gone process)."""
    data = _read(f"{_PROC}/{pid}/cmdline", 1 << 20)
    return [os.fsdecode(arg) for arg in data.split(b"\0")[:-1]] if data else []


def environ(pid: int) -> dict[str, str] | None:
    """The environment *pid* started with, or None when it cannot be read (another user)."""
    try:
        with open(f"{_PROC}/{pid}/environ", "rb") as f:
            data = f.read()
    except OSError:
        return None
    result: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, eq, value = entry.partition(b"=")
        if eq:
            result[os.fsdecode(name)] = os.fsdecode(value)
    return result


def mount_namespace(pid: int | str) -> str | None:
    """The mount namespace of *pid* (``"self"`` for this process), e.g. ``mnt:[4026531841]``."""
    try:
        return os.readlink(f"{_PROC}/{pid}/ns/mnt")
    except OSError:
        return None


class Scan:
    """The processes holding one file open, found by :func:`scan_holders`.

    Attributes:
        fds: pid -> the descriptor numbers it has open on the file.
        hidden: processes whose descriptors could not be listed (other users).
    """

    def __init__(self) -> None:
        self.fds: dict[int, list[int]] = {}
        self.hidden = 0


def scan_holders(key: tuple[int, int], *, path: str | None = None, named: bool = False) -> Scan:
    """The processes with a descriptor open on the file *key* (see :func:`file_key`).

    For a pipe, the link text names the inode, so no ``stat`` is needed. For
    a fifo pass its *path*: only links ending in the same file name are
    ``stat``-ed (a link shows the path as the holder's mount namespace sees
    it, so the text alone is not compared). For a fifo whose path is not
    known (it was removed) pass *named*: then every link to a path is
    ``stat``-ed, which costs more.
    """
    pipe_text = f"pipe:[{key[1]}]"
    name = None if path is None else os.path.basename(path)
    every_path = named and path is None
    scan = Scan()
    for pid in pids():
        directory = f"{_PROC}/{pid}/fd"
        try:
            fds = os.listdir(directory)
        except PermissionError:
            scan.hidden += 1
            continue
        except OSError:
            continue  # gone
        for fd in fds:
            try:
                text = os.readlink(f"{directory}/{fd}")
            except OSError:
                continue
            if text == pipe_text:
                pass
            elif text.startswith("/") and (
                every_path or (name is not None and os.path.basename(text).startswith(name))
            ):
                try:
                    st = os.stat(f"{directory}/{fd}")
                except OSError:
                    continue
                if not stat.S_ISFIFO(st.st_mode) or file_key(st) != key:
                    continue
            else:
                continue
            scan.fds.setdefault(pid, []).append(int(fd))
    return scan


def record_locks() -> dict[tuple[int, int], int]:
    """``flock`` locks now held: (device, inode) of the locked file -> the locker's pid."""
    try:
        with open(f"{_PROC}/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    locks: dict[tuple[int, int], int] = {}
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4242 00:2f:1234 0 EOF"; "->" marks a waiter.
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or "->" in fields:
            continue
        try:
            major, minor, inode = fields[5].split(":")
            device = os.makedev(int(major, 16), int(minor, 16))
            locks[(device, int(inode))] = int(fields[4])
        except ValueError:
            continue
    return locks
