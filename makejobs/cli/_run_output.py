"""What ``makejobs run`` does with its commands' output: hold it, print it, log it.

Holding (:class:`Spool`)
========================

What a command writes is held until it may be printed. All spools together
keep at most :data:`MEMORY_BUDGET` bytes in memory; a spool whose next piece
would go past that moves what it holds to an unnamed temporary file (in
``$TMPDIR``) and keeps writing there. So one command that writes gigabytes,
or many held back by ``--keep-order``, cost disk, not memory.

Printing (:class:`Printer`)
===========================

* Grouped (the default, like ``make -O``): a command's output is printed in
  one piece when it ends, standard output to ours and standard error to ours.
* ``--line-buffer``: complete lines are printed as they come, so lines of
  different commands never mix within a line. The end of a line that has
  not come yet is held, up to :data:`LONGEST_LINE` bytes; a longer line is
  printed in pieces of that size.
* ``--keep-order``: commands are printed in input order. A command that ends
  before those above it is held until they are printed. With
  ``--line-buffer``, the first unfinished command streams its lines; the
  others are held until it is their turn.

A failed command is followed by ``makejobs run: command N failed (...)`` on
standard error, printed where its output is. A ``--joblog`` line is written
when a command's output has been printed, as GNU parallel does.

While standard error is a terminal, a progress line (:class:`Progress`) is
kept at its bottom and cleared before anything else is printed.

A reader that goes away (``makejobs run | head -1``) shows as
:class:`BrokenPipeError` from the printing methods; the caller stops.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque

from ._console import say
from ._supervise import signal_name

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import BinaryIO, TextIO

__all__ = [
    "LONGEST_LINE",
    "MEMORY_BUDGET",
    "JobLog",
    "Printer",
    "Progress",
    "Spool",
    "describe_status",
]

#: Bytes of output all spools together keep in memory before using temporary files.
MEMORY_BUDGET = 8 << 20
#: With --line-buffer, the longest line held back waiting for its end.
LONGEST_LINE = 1 << 20
_COPY_SIZE = 1 << 20
_CLEAR_LINE = b"\r\x1b[K"


def describe_status(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal_name(-returncode)}"
    return f"exit {returncode}"


class _Budget:
    """Bytes held in memory by every spool of one run."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class Spool:
    """What a command wrote to one stream: in memory, or past the budget in a temporary file."""

    __slots__ = ("_budget", "_chunks", "_file", "_held", "size")

    def __init__(self, budget: _Budget) -> None:
        self._budget = budget
        self._chunks: list[bytes] = []
        self._held = 0  # bytes in _chunks
        self._file: BinaryIO | None = None
        #: Every byte appended so far.
        self.size = 0

    def append(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None:
            budget = self._budget
            if budget.used + len(data) <= budget.limit or not self._spill():
                self._chunks.append(data)
                self._held += len(data)
                budget.used += len(data)
                return
        assert self._file is not None
        self._file.write(data)

    def _spill(self) -> bool:
        """Move what is held to a new temporary file; False if none can be made."""
        import tempfile  # only when some output is large: its imports cost start-up

        try:
            file = tempfile.TemporaryFile(prefix="makejobs-run-")  # noqa: SIM115 (kept open)
            file.writelines(self._chunks)
        except OSError as e:
            if self._budget.limit >= 0:
                say("run", f"cannot spool output to a temporary file ({e}); keeping it in memory")
                self._budget.limit = -1  # say it once, and stop trying
            return False
        self._file = file
        self._release_memory()
        return True

    def _release_memory(self) -> None:
        self._budget.used -= self._held
        self._held = 0
        self._chunks = []

    def pieces(self) -> Iterable[bytes]:
        """Everything appended so far, in order, in pieces of at most about 1 MiB."""
        if self._file is None:
            # One write for what came in many reads; read before close() drops it.
            chunks = self._chunks
            return chunks if len(chunks) < 2 else [b"".join(chunks)]
        return self._read_file()

    def _read_file(self) -> Iterator[bytes]:
        file = self._file
        assert file is not None
        file.flush()
        file.seek(0)
        while True:
            piece = file.read(_COPY_SIZE)
            if not piece:
                break
            yield piece
        file.seek(0, os.SEEK_END)

    def close(self) -> None:
        """Free the memory and the temporary file; the spool is empty afterwards."""
        self._release_memory()
        if self._file is not None:
            self._file.close()
            self._file = None


class Progress:
    """``[done/total] R running, F failed, ETA 1m05s`` at the bottom of a terminal."""

    def __init__(self, stream: BinaryIO, total: int) -> None:
        self._stream = stream
        self._total = total
        self._started = time.monotonic()
        self._shown = False

    def text(self, done: int, running: int, failed: int) -> str:
        text = f"[{done}/{self._total}] {running} running"
        if failed:
            text += f", {failed} failed"
        if 0 < done < self._total:
            # Commands so far took this long each, counted in wall time at the
            # parallelism actually reached (what GNU parallel's --eta does).
            per_command = (time.monotonic() - self._started) / done
            text += f", ETA {_duration(per_command * (self._total - done))}"
        return text

    def draw(self, done: int, running: int, failed: int) -> None:
        self._stream.write(_CLEAR_LINE + self.text(done, running, failed).encode())
        self._stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self._stream.write(_CLEAR_LINE)
            self._stream.flush()
            self._shown = False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


class JobLog:
    """``--joblog FILE``: one line per command in GNU parallel's format.

    Tab-separated, after a header line, exactly the columns GNU parallel
    writes: ``Seq`` (the command's line number among the commands, from 1),
    ``Host`` (``:``, this machine), ``Starttime`` (seconds since the epoch,
    3 decimals), ``JobRuntime`` (seconds, 3 decimals, truncated, padded to 10
    characters), ``Send`` (0: nothing is transferred), ``Receive`` (bytes the
    command wrote to standard output, as GNU parallel counts them),
    ``Exitval``, ``Signal`` (the signal that killed it, else 0; Exitval is
    then 0) and ``Command``, its newlines (from ``\\`` continuations) written
    as NUL like GNU parallel does. ``+FILE`` appends without a header.
    """

    HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"

    def __init__(self, path: str) -> None:
        append = path.startswith("+")
        self.path = path[1:] if append else path
        self._file: BinaryIO | None = open(self.path, "ab" if append else "wb")  # noqa: SIM115
        if not append:
            self._write(self.HEADER.encode())

    def record(
        self,
        number: int,
        start: float,
        runtime: float,
        received: int,
        returncode: int,
        command: str,
    ) -> None:
        exitval, signum = (0, -returncode) if returncode < 0 else (returncode, 0)
        runtime = int(runtime * 1000) / 1000
        line = (
            f"{number}\t:\t{start:.3f}\t{runtime:10.3f}\t0\t{received}\t{exitval}\t{signum}"
            f"\t{command.replace(chr(10), chr(0))}\n"
        )
        self._write(line.encode("utf-8", "surrogateescape"))

    def _write(self, data: bytes) -> None:
        if self._file is None:
            return
        try:
            self._file.write(data)
            self._file.flush()  # a log read while the run goes on is up to date
        except OSError as e:
            say("run", f"cannot write the job log {self.path}: {e}; no more lines go to it")
            self.close()

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                pass


class _Slot:
    """What the printer keeps for one command: its spools and, streaming, its unfinished lines."""

    __slots__ = ("done", "job", "partial", "received", "spools", "streaming")

    def __init__(self, job: PrintedJob) -> None:
        self.job = job
        # stream (1, 2) -> what is held of it, made when the first byte comes (most
        # commands of a build write nothing). Merged streams all come as stream 1.
        self.spools: dict[int, Spool] = {}
        self.partial: dict[int, bytes] = {}  # stream (1, 2) -> the start of a line
        self.received = 0  # bytes written to standard output (for the job log)
        self.streaming = False
        self.done = False

    def unspool(self, emit: Callable[[int, bytes], None]) -> None:
        """Hand what the spools hold to *emit* (stream, bytes), standard output first, and
        free them; what standard output held counts as :attr:`received`."""
        for stream in (1, 2):
            spool = self.spools.pop(stream, None)
            if spool is not None:
                if stream == 1:
                    self.received += spool.size
                for piece in spool.pieces():
                    emit(stream, piece)
                spool.close()


if TYPE_CHECKING:
    from typing import Protocol

    class PrintedJob(Protocol):
        """What the printer reads from a command of ``makejobs run``."""

        number: int
        line: str
        returncode: int | None
        start_time: float  # time.time() when it was started
        runtime: float  # seconds it ran

        @property
        def failed(self) -> bool: ...

        def why(self) -> str: ...


class Printer:
    """Prints the commands' output as the options say (see the module docstring)."""

    def __init__(
        self,
        *,
        merge: bool,
        line_buffer: bool,
        keep_order: bool,
        joblog: JobLog | None,
        progress: Progress | None,
    ) -> None:
        self.merge = merge
        self.line_buffer = line_buffer
        self.keep_order = keep_order
        self.joblog = joblog
        self.progress = progress
        self._budget = _Budget(MEMORY_BUDGET)
        self._slots: dict[int, _Slot] = {}  # job number -> slot, while not printed
        self._order: deque[_Slot] = deque()  # --keep-order: started, not printed, in order
        self._out = _binary(sys.stdout)
        self._err = _binary(sys.stderr)
        self._at_line_start = True  # on a terminal shared by output and progress line

    # -- events from the runner ----------------------------------------------------

    def start(self, job: PrintedJob) -> None:
        """*job* is about to start: its output is expected."""
        slot = _Slot(job)
        self._slots[job.number] = slot
        if self.keep_order:
            self._order.append(slot)
            slot.streaming = self.line_buffer and self._order[0] is slot
        else:
            slot.streaming = self.line_buffer

    def output(self, job: PrintedJob, stream: int, data: bytes) -> None:
        """*job* wrote *data* to *stream* (1 or 2; 1 when the streams are merged)."""
        slot = self._slots[job.number]
        if slot.streaming:
            if stream == 1:
                slot.received += len(data)
            self._stream(slot, stream, data)
            return
        spool = slot.spools.get(stream)
        if spool is None:
            spool = slot.spools[stream] = Spool(self._budget)
        spool.append(data)

    def finish(self, job: PrintedJob) -> None:
        """*job* ended (or could not start): print it now, or when its turn comes."""
        slot = self._slots[job.number]
        slot.done = True
        if not self.keep_order:
            self._print(slot)
            return
        order = self._order
        while order and order[0].done:
            self._print(order.popleft())
        if order and self.line_buffer and not order[0].streaming:
            self._catch_up(order[0])

    def discard(self) -> None:
        """Print nothing more; free what is held (after a closed output or an error)."""
        for slot in self._slots.values():
            for spool in slot.spools.values():
                spool.close()
        self._slots.clear()
        self._order.clear()

    def close(self) -> None:
        self.discard()
        if self.joblog is not None:
            self.joblog.close()

    # -- printing ------------------------------------------------------------------

    def _print(self, slot: _Slot) -> None:
        job = slot.job
        del self._slots[job.number]
        if slot.streaming:
            for stream, rest in slot.partial.items():
                if rest:
                    self._write(stream, rest)
            slot.partial.clear()
        else:
            slot.unspool(self._write)
        if job.failed:
            self._clear_progress()
            say("run", f"command {job.number} failed ({job.why()}): {job.line}")
            self._at_line_start = True
        if self.joblog is not None:
            assert job.returncode is not None
            self.joblog.record(
                job.number, job.start_time, job.runtime, slot.received, job.returncode, job.line
            )

    def _catch_up(self, slot: _Slot) -> None:
        """*slot* is now first in line: print what it held, then let it stream."""
        slot.streaming = True
        slot.unspool(lambda stream, data: self._stream(slot, stream, data))

    def _stream(self, slot: _Slot, stream: int, data: bytes) -> None:
        """Print the complete lines of what *slot* wrote so far; hold the last, unfinished one."""
        held = slot.partial.get(stream)
        if held:
            data = held + data
        end = data.rfind(b"\n") + 1
        if len(data) - end > LONGEST_LINE:
            end = len(data)  # a line this long is printed in pieces
        if end:
            self._write(stream, data[:end])
        slot.partial[stream] = data[end:]

    def _write(self, stream: int, data: bytes) -> None:
        target = self._out if stream == 1 else self._err
        if target is None:
            return
        if self.progress is not None:
            self.progress.clear()
        (sys.stdout if stream == 1 else sys.stderr).flush()  # text written before, if any
        target.write(data)
        target.flush()
        self._at_line_start = data.endswith(b"\n")

    # -- the progress line -----------------------------------------------------------

    def _clear_progress(self) -> None:
        if self.progress is not None:
            self.progress.clear()

    def draw_progress(self, done: int, running: int, failed: int) -> None:
        progress = self.progress
        if progress is None:
            return
        if not self._at_line_start and self.merge:
            # Output ending mid-line shares the terminal: clearing the line
            # would erase it, so the progress line goes below it.
            self._err_write(b"\n")
            self._at_line_start = True
        progress.draw(done, running, failed)

    def clear_progress(self) -> None:
        self._clear_progress()

    def _err_write(self, data: bytes) -> None:
        if self._err is not None:
            self._err.write(data)
            self._err.flush()


def _binary(stream: TextIO | None) -> BinaryIO | None:
    """The byte stream under *stream*; None when there is none (a closed descriptor)."""
    return getattr(stream, "buffer", None)
