"""A jobserver client that joins only ``fifo:`` pools, as upstream ninja 1.13 does on POSIX.

Usage::

    python fifo_only_client.py [-j N] LOG PREFIX JOBS SECONDS

Runs JOBS jobs of SECONDS each; every job logs a span (``tests/spans.py``) named PREFIX.1,
PREFIX.2, ... while it holds its slot. It reads the pool from ``MAKEFLAGS`` the way
ninja 1.13 does (``ninja-build/ninja:src/jobserver.cc``, ``src/jobserver-posix.cc``):

* words are split on spaces and tabs, with no unescaping;
* a first word without a leading ``-`` that contains ``n`` is a dry run: no jobserver;
* the last ``--jobserver-auth=`` or ``--jobserver-fds=`` word wins;
* negative descriptors (``-2,-2``) disable the jobserver quietly;
* ``R,W`` (a pipe pool) is **refused**: a warning on stderr, then the client runs
  on its own parallelism, like upstream ninja ("Pipe-based protocol is not supported");
* ``fifo:PATH`` is opened ``O_RDONLY|O_NONBLOCK`` and ``O_WRONLY|O_NONBLOCK``; it must
  be a fifo (or a character device); if it cannot be opened, an error on stderr and
  own parallelism.

With a pool, the first job runs on the implicit slot and every further concurrent job
on a byte read from the fifo, written back unchanged when the job ends. Without one,
``-j N`` jobs run at once (default: all JOBS, i.e. unlimited). ``-j N`` given together
with a pool makes the client ignore the pool, as ninja does.

The first stderr line always says which mode was chosen (``fifo-only-client: joined
fifo PATH``, ``... ignoring jobserver: ...``, ``... no jobserver``), so tests can assert
it. Only the standard library is imported.
"""

from __future__ import annotations

import errno
import os
import select
import stat
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # spans.py

import spans

NAME = "fifo-only-client"


def say(message: str) -> None:
    sys.stderr.write(f"{NAME}: {message}\n")
    sys.stderr.flush()


def parse_makeflags(value: str) -> tuple[str, str]:
    """(mode, detail): mode is "none", "pipe" (detail "R,W") or "fifo" (detail PATH)."""
    words = [w for w in value.replace("\t", " ").split(" ") if w]
    if words and not words[0].startswith("-") and "n" in words[0]:
        return "none", "dry run"
    mode, detail = "none", "no --jobserver-auth"
    for word in words:
        for prefix in ("--jobserver-auth=", "--jobserver-fds="):
            if not word.startswith(prefix):
                continue
            value = word[len(prefix) :]
            parts = value.split(",")
            if len(parts) == 2 and all(p.lstrip("-").isdigit() for p in parts):
                if int(parts[0]) < 0 or int(parts[1]) < 0:
                    mode, detail = "none", "negative descriptors"
                else:
                    mode, detail = "pipe", value
            elif prefix == "--jobserver-auth=" and value.startswith("fifo:"):
                mode, detail = "fifo", value[len("fifo:") :]
            else:
                mode, detail = "other", value
    return mode, detail


def open_fifo(path: str) -> tuple[int, int]:
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(reader)
        if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise OSError(errno.EINVAL, "not a fifo")
        writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except BaseException:
        os.close(reader)
        raise
    return reader, writer


class Slots:
    """The implicit slot plus tokens read from the fifo; every token goes back on release."""

    def __init__(self, reader: int | None, writer: int | None, limit: int) -> None:
        self.reader, self.writer, self.limit = reader, writer, limit
        self.lock = threading.Condition()
        self.implicit_free = True
        self.running = 0  # own-parallelism mode only

    def acquire(self) -> bytes | None:
        """Block until a slot is held; the byte read, or None for a slot that is no token."""
        with self.lock:
            if self.reader is None:
                while self.running >= self.limit:
                    self.lock.wait()
                self.running += 1
                return None
            if self.implicit_free:
                self.implicit_free = False
                return None
        while True:
            select.select([self.reader], [], [])
            try:
                byte = os.read(self.reader, 1)
            except BlockingIOError:
                continue  # another client took it first
            if not byte:
                raise OSError("end of file on the jobserver fifo")
            return byte

    def release(self, byte: bytes | None) -> None:
        if byte is not None:
            assert self.writer is not None
            os.write(self.writer, byte)
            return
        with self.lock:
            if self.reader is None:
                self.running -= 1
            else:
                self.implicit_free = True
            self.lock.notify()


def main(argv: list[str]) -> int:
    explicit_j = None
    if argv[:1] == ["-j"] and len(argv) >= 2:
        explicit_j, argv = int(argv[1]), argv[2:]
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    log, prefix, jobs, seconds = argv[0], argv[1], int(argv[2]), float(argv[3])
    mode, detail = parse_makeflags(os.environ.get("MAKEFLAGS", ""))
    reader = writer = None
    if explicit_j is not None and mode != "none":
        say(f"ignoring jobserver: -j{explicit_j} given")
    elif mode == "pipe":
        say(f"ignoring jobserver: pipe-based protocol is not supported ({detail})")
    elif mode == "other":
        say(f"ignoring jobserver: unsupported --jobserver-auth {detail!r}")
    elif mode == "fifo":
        try:
            reader, writer = open_fifo(detail)
        except OSError as e:
            say(f"ignoring jobserver: cannot open fifo {detail!r}: {e.strerror or e}")
        else:
            say(f"joined fifo {detail}")
    else:
        say(f"no jobserver ({detail})")
    slots = Slots(reader, writer, explicit_j or jobs)
    threads = []
    failures: list[BaseException] = []

    def job(index: int, byte: bytes | None) -> None:
        try:
            spans.run_job(log, f"{prefix}.{index}", seconds)
        except BaseException as e:
            failures.append(e)
        finally:
            slots.release(byte)

    try:
        for index in range(1, jobs + 1):
            byte = slots.acquire()
            thread = threading.Thread(target=job, args=(index, byte))
            thread.start()
            threads.append(thread)
    finally:
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
