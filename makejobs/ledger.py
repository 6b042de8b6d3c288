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

__all__ = ["LEDGER_VARIABLE", "Ledger", "Record", "pool_identity"]

#: The environment variable that tells children where the ledger is.
LEDGER_VARIABLE = "MAKEJOBS_LEDGER"

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
