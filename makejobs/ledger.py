"""The token ledger: recover tokens of makejobs clients that were killed.

Nobody can give back the tokens of a process that was SIGKILLed while
holding them: make, ninja and cargo lose them for the rest of the build. A
pool that makejobs created can do better for its makejobs clients, within
limits this module states exactly.

How it works:

* The pool's creator makes a private ledger directory and exports it to
  children (``MAKEJOBS_LEDGER``), with a ``pool`` file naming the pool's pipe
  or fifo by device and inode, so a client of some other pool never writes
  here.
* A makejobs client holding tokens has a *record* in the directory: a file
  whose first 8 bytes count the tokens it holds, and on which it holds an
  exclusive ``flock``. The count goes up *after* a token is read and down
  *before* it is written back, so a death in between loses that token rather
  than duplicating it: recovery can only ever give back too few, never too
  many.
* A ``flock`` belongs to an open file description, which every forked child
  inherits (and every child handed the record fd through ``pass_fds``). The
  lock is therefore released only when the holder *and every descendant that
  inherited the record* are gone. Those are exactly the processes that could
  still be running on the tokens.
* :meth:`Ledger.recover` takes each record's lock without waiting. When it
  can, nobody holding the record is alive: the counted tokens are written
  back and the record removed.

What it cannot know: a descendant that did not inherit the record (one
started with ``close_fds`` and no ``pass_fds``, a daemon that closed its
fds) may still be running on a dead holder's slot. Recovering then would
briefly allow one job too many. ``makejobs serve`` closes that gap by
becoming the *subreaper* of the whole build: every orphan is re-parented to
it, so it recovers only while it has no orphan left, and then no descendant
of a dead holder can exist. Callers of :meth:`TokenPool.recover` outside
``serve`` must make the same guarantee themselves.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from collections.abc import Callable

__all__ = [
    "LEDGER_PREFIX",
    "LEDGER_VARIABLE",
    "Books",
    "Ledger",
    "Record",
    "find_stale_ledgers",
    "ledger_pool",
    "pool_identity",
    "record_counts",
    "remove_stale_ledgers",
]

#: The environment variable that tells children where the ledger is.
LEDGER_VARIABLE = "MAKEJOBS_LEDGER"

#: How the name of every ledger directory starts.
LEDGER_PREFIX = "makejobs-ledger-"

_COUNT = struct.Struct("<q")
_POOL_FILE = "pool"
_HOLDER_PREFIX = "holder-"


def pool_identity(fd: int) -> str:
    """Name the pipe or fifo behind *fd* by kind, device and inode."""
    st = os.fstat(fd)
    kind = "fifo" if stat.S_ISFIFO(st.st_mode) else "other"
    return f"{kind}:{st.st_dev}:{st.st_ino}"


class Ledger:
    """The creator's side: the directory, and recovery of dead holders' tokens."""

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def create(cls, reader: int, *, dir: str | None = None) -> Ledger:
        """A new, private (mode 0700) ledger for the pool read through *reader*."""
        # tempfile and shutil are imported where used: every makejobs command
        # imports this module, few of them keep a ledger.
        import tempfile

        path = tempfile.mkdtemp(prefix="makejobs-ledger-", dir=dir)
        with open(os.path.join(path, _POOL_FILE), "w", encoding="ascii") as f:
            f.write(pool_identity(reader))
        return cls(path)

    def recover(self, give_back: Callable[[int], None]) -> int:
        """Give back the tokens of every record nobody alive holds; return how many.

        *give_back(n)* writes *n* tokens into the pool. Records of live holders
        are left alone; so are records whose lock cannot be taken right now.
        """
        total = 0
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return 0
        for name in names:
            if not name.startswith(_HOLDER_PREFIX):
                continue
            record_path = os.path.join(self.path, name)
            try:
                fd = os.open(record_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                        continue  # someone holding this record is alive
                    raise
                data = os.pread(fd, _COUNT.size, 0)
                count = _COUNT.unpack(data)[0] if len(data) == _COUNT.size else 0
                if count > 0:
                    give_back(count)
                    total += count
                os.unlink(record_path)
            finally:
                os.close(fd)
        return total

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.path, ignore_errors=True)


class Record:
    """A client's record: the count of tokens it holds, under its own lock."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.count = 0
        self._lock = threading.Lock()

    @classmethod
    def open(cls, ledger_path: str, reader: int) -> Record | None:
        """This process's record in the ledger at *ledger_path*, or None when that
        ledger is not for the pool read through *reader* (or cannot be used)."""
        try:
            with open(os.path.join(ledger_path, _POOL_FILE), encoding="ascii") as f:
                if f.read() != pool_identity(reader):
                    return None
            # Lock under a temporary name, then rename: recovery only looks at
            # holder-* files, so it never sees a record before it is locked.
            import tempfile

            fd, temporary = tempfile.mkstemp(prefix="new-", dir=ledger_path)
        except OSError:
            return None
        try:
            os.set_inheritable(fd, False)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.pwrite(fd, _COUNT.pack(0), 0)
            final = os.path.join(ledger_path, _HOLDER_PREFIX + os.path.basename(temporary)[4:])
            os.rename(temporary, final)
        except OSError:
            os.close(fd)
            try:
                os.unlink(temporary)
            except OSError:
                pass
            return None
        return cls(fd, final)

    def add(self, delta: int) -> None:
        """Change the recorded count; written through before the caller goes on."""
        with self._lock:
            self.count += delta
            os.pwrite(self.fd, _COUNT.pack(self.count), 0)

    def close(self) -> None:
        """Drop the record (the holder gave everything back, or is closing)."""
        with self._lock:
            if self.count == 0:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class Books:
    """One process's side of one pool's ledger: its record, and its ancestors' records.

    The pool counts every token it takes from the pool with :meth:`took`
    (after the token is taken) and every one it gives back with
    :meth:`giving_back` (before it is given back); the record is opened the
    first time. ``on_open`` is told of a record as it is opened (the guardian
    keeps a copy of it: see :mod:`makejobs.guardian`). A forked child keeps
    its parent's record open as an inherited one (:meth:`after_fork`): its
    lock says that a process running on the parent's tokens is alive.
    """

    def __init__(self, path: str | None, inherited: tuple[int, ...] = ()) -> None:
        #: The creator's ledger (set when the pool is created with one).
        self.ledger: Ledger | None = None
        #: The ledger directory this pool's clients record into, if any.
        self.path = path
        self.record: Record | None = None
        self.inherited = list(inherited)

    def took(self, reader: int, on_open: Callable[[Record], None]) -> None:
        record = self.record
        if record is None and self.path is not None:
            record = self.record = Record.open(self.path, reader)
            if record is None:
                self.path = None  # not this pool's ledger: stop trying
            else:
                on_open(record)
        if record is not None:
            record.add(1)

    def giving_back(self, count: int) -> None:
        if self.record is not None and count:
            self.record.add(-count)

    def fds(self) -> list[int]:
        """The records a child must inherit (ours, then our ancestors')."""
        return [*([] if self.record is None else [self.record.fd]), *self.inherited]

    def after_fork(self) -> None:
        if self.record is not None:
            self.inherited.append(self.record.fd)
            self.record = None

    def close(self, owner: bool) -> None:
        if self.record is not None:
            self.record.close()
            self.record = None
        inherited, self.inherited = self.inherited, []
        for fd in inherited:
            try:
                os.close(fd)
            except OSError:
                pass
        if owner and self.ledger is not None:
            self.ledger.close()


# -- what killed creators leave behind ----------------------------------------------------
#
# Ledger.close() removes the directory, but a creator that is SIGKILLed (or
# loses power) cannot. The directory is then of no use to anyone: only its
# creator recovers tokens, and clients merely write counts into it. It is
# safe to remove once no process has the pool open any more, which on Linux
# /proc can tell (see makejobs._procfs).


def ledger_pool(path: str) -> tuple[str, int, int] | None:
    """The pool the ledger at *path* is for: (kind, device, inode), or None if unreadable.

    *kind* is ``"fifo"`` for pipes and named pipes alike (what :func:`pool_identity`
    writes).
    """
    try:
        with open(os.path.join(path, _POOL_FILE), encoding="ascii") as f:
            kind, device, inode = f.read().split(":")
        return kind, int(device), int(inode)
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def record_counts(path: str) -> dict[tuple[int, int], int]:
    """Each holder record in the ledger at *path*: its file's (device, inode) -> tokens counted.

    A record's lock is held by the client it counts for (``flock``, so
    ``/proc/locks`` names that client's pid for the same device and inode).
    Records that vanish while being read are left out.
    """
    counts: dict[tuple[int, int], int] = {}
    try:
        names = os.listdir(path)
    except OSError:
        return counts
    for name in names:
        if not name.startswith(_HOLDER_PREFIX):
            continue
        try:
            fd = os.open(os.path.join(path, name), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            data = os.pread(fd, _COUNT.size, 0)
        except OSError:
            continue
        finally:
            os.close(fd)
        count = _COUNT.unpack(data)[0] if len(data) == _COUNT.size else 0
        counts[(st.st_dev, st.st_ino)] = count
    return counts


def _pipe_device() -> int:
    """The device number every anonymous pipe has (Linux's pipefs)."""
    r, w = os.pipe()
    try:
        return os.fstat(r).st_dev
    finally:
        os.close(r)
        os.close(w)


def find_stale_ledgers(parent: str, *, min_age: float = 10.0) -> list[str]:
    """Ledger directories under *parent* that nobody can use any more.

    A directory qualifies when it is named like a ledger, belongs to this
    user, was last changed more than *min_age* seconds ago, names its pool,
    and no process has that pool open. Only where ``/proc`` shows every
    process's descriptors (Linux) is anything found: elsewhere the answer is
    always empty. Processes of other users cannot be inspected; they cannot
    use this user's private ledger either.
    """
    from . import _procfs

    if not _procfs.supported():
        return []
    try:
        entries = [e for e in os.scandir(parent) if e.name.startswith(LEDGER_PREFIX)]
    except OSError:
        return []
    if not entries:
        return []
    import time

    now = time.time()
    uid = os.getuid()
    pipes = _pipe_device()
    stale = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or now - st.st_mtime < min_age:
            continue
        pool = ledger_pool(entry.path)
        if pool is None or pool[0] != "fifo":
            continue
        key = (pool[1], pool[2])
        if key[0] == pipes:
            holders = _procfs.scan_holders(key)
        else:
            # A named fifo: look for it next to the ledger, where a fifo pool keeps it.
            holders = _procfs.scan_holders(key, path=_fifo_beside(entry.path, key), named=True)
        if not holders.fds:
            stale.append(entry.path)
    return stale


def _fifo_beside(ledger_path: str, key: tuple[int, int]) -> str | None:
    parent = os.path.dirname(ledger_path)
    try:
        for entry in os.scandir(parent):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == key:
                return entry.path
    except OSError:
        pass
    return None


def remove_stale_ledgers(parent: str, *, min_age: float = 10.0) -> list[str]:
    """Remove what :func:`find_stale_ledgers` finds under *parent*; the paths removed."""
    import shutil

    removed = []
    for path in find_stale_ledgers(parent, min_age=min_age):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            removed.append(path)
    return removed
