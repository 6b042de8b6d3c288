"""``serve --trace FILE``: record a build as Chrome Trace Event JSON.

What is recorded, by one background thread of ``serve``:

* **Busy slots**, a counter track: every :data:`SAMPLE_INTERVAL` seconds
  the tokens waiting in the pool are counted (``FIONREAD`` through
  :meth:`TokenPool.available`), and busy = N - free (the first slot, on
  which CMD runs, counts as busy for the whole build, as it is in make's
  own accounting). Only changes are written. While the count has not
  changed for :data:`STEADY_SAMPLES` samples (a build keeping every slot
  busy), it is taken every :data:`TREE_INTERVAL` only, until it moves:
  waking up is most of what tracing costs. The recorder thread runs at
  the lowest priority (nice 19), so on a machine whose CPUs are all busy
  its samples may come a few milliseconds late.
* **One span per descendant process** of serve: every
  :data:`TREE_INTERVAL` seconds the tree is followed down from serve
  (Linux: ``/proc/PID/task/TID/children`` of serve and of every live
  descendant, and one ``poll`` of their pidfds for the exits, which costs
  the same however many other processes the machine runs; children of a
  descendant's other threads are looked for every tenth sample; elsewhere:
  psutil lists every process and keeps those whose parent is serve or a
  descendant). Each process found becomes a span:
  pid, parent, command line (read again when it ``exec``-s, so the program
  it became is what is shown), start (the kernel's start time, exact to a
  clock tick however late the process was found), and end (the first
  sample in which it is gone or a zombie, so at most one interval late). A
  process that starts and ends between two samples is not seen.

The file (:data:`FORMAT`) is a JSON object that Perfetto
(ui.perfetto.dev) and ``chrome://tracing`` open::

    {"traceEvents": [...], "displayTimeUnit": "ms",
     "otherData": {"makejobs_trace": 1, "slots": N, "command": [...],
                   "duration_us": ..., "recorder_cpu_s": ..., ...}}

Events: metadata (``"ph": "M"``) naming the process and one thread per
*lane*; the counter ``"busy slots"`` (``"ph": "C"``, series ``busy`` and
``idle``, which add up to N); and a complete event (``"ph": "X"``) per
process with ``args`` ``{pid, ppid, cmdline}``, placed on the first lane
free at its start so that overlapping processes never share one. Times are
microseconds from the start of the trace, which ``otherData`` gives as
``started`` (wall clock, seconds since the epoch) and ``monotonic_origin_s``
(``CLOCK_MONOTONIC``, to line the trace up with other logs).
``recorder_cpu_s`` is the CPU time the sampling thread used: what tracing
cost. ``makejobs plot`` draws the file.
"""

from __future__ import annotations

import os
import select
import threading
import time

from .. import _procfs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..pool import TokenPool

__all__ = [
    "FORMAT",
    "SAMPLE_INTERVAL",
    "STEADY_SAMPLES",
    "TREE_INTERVAL",
    "TraceRecorder",
    "lanes",
]

#: The value of ``otherData["makejobs_trace"]``: the version of this layout.
FORMAT = 1
#: Seconds between two counts of the free tokens.
SAMPLE_INTERVAL = 0.005
#: Seconds between two samples of the process tree.
TREE_INTERVAL = 0.02
#: After this many samples without a change the busy slots are counted only
#: every TREE_INTERVAL, until the count changes again.
STEADY_SAMPLES = 20


class _Span:
    """One descendant process: found alive, ended when first seen gone."""

    __slots__ = ("cmdline", "end", "pid", "pidfd", "ppid", "process", "recheck", "start")

    def __init__(self, pid: int, ppid: int, start: float) -> None:
        self.pid = pid
        self.ppid = ppid
        self.start = start
        self.end: float | None = None
        self.cmdline: list[str] = []
        self.recheck = False  # Linux: read the command line again next time
        self.pidfd = -1  # Linux: readable once the process has exited
        self.process: Any = None  # elsewhere: its psutil.Process


def lanes(spans: list[tuple[float, float]]) -> list[int]:
    """A lane for each (start, end) span: the lowest one free at its start.

    Of spans starting together the longest goes first, so a parent (a make)
    takes a lower lane than the jobs it starts in the same instant.
    """
    order = sorted(range(len(spans)), key=lambda i: (spans[i][0], -spans[i][1]))
    ends: list[float] = []
    result = [0] * len(spans)
    for i in order:
        start, end = spans[i]
        for lane, busy_until in enumerate(ends):
            if busy_until <= start:
                ends[lane] = end
                result[i] = lane
                break
        else:
            result[i] = len(ends)
            ends.append(end)
    return result


def _label(cmdline: list[str], pid: int) -> str:
    if not cmdline:
        return f"pid {pid}"
    words = [os.path.basename(cmdline[0]), *cmdline[1:]]
    text = " ".join(words)
    return text if len(text) <= 60 else text[:57] + "..."


class TraceRecorder:
    """Sample a pool's busy slots and the process tree under this process.

    Create it (the file is opened, so an unwritable *path* fails at once
    with :class:`OSError`), :meth:`start` it before the command starts and
    :meth:`stop` it after the command has exited: the file is written then.
    """

    def __init__(self, path: str, pool: TokenPool, slots: int, command: list[str]) -> None:
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._pool = pool
        self._slots = slots
        self._command = command
        self._stopping = False
        self._linux = False
        self._psutil: Any = None
        self._poller: select.poll | None = None
        self._pidfds: dict[int, int] = {}  # pidfd -> pid, for the live spans
        self._tree_samples = 0
        self._thread = threading.Thread(target=self._run, name="makejobs-trace", daemon=True)
        self._busy: list[tuple[float, int]] = []
        self._live: dict[int, _Span] = {}
        self._done: list[_Span] = []
        self._seen: set[int] = set()
        self._root = os.getpid()
        self._boot0 = 0.0
        self._ticks = 100
        self._mono0 = 0.0
        self._wall0 = 0.0
        self._end = 0.0
        self._cpu = 0.0

    # -- sampling (the recorder's thread) ------------------------------------------------

    def start(self) -> None:
        """Start sampling (before the command is started)."""
        self._linux = _procfs.children_supported()
        if self._linux:
            self._ticks = os.sysconf("SC_CLK_TCK")
            self._boot0 = time.clock_gettime(time.CLOCK_BOOTTIME)
            if hasattr(os, "pidfd_open"):
                try:
                    os.close(os.pidfd_open(os.getpid()))
                    self._poller = select.poll()
                except OSError:
                    pass  # Linux < 5.3: the exit is seen in /proc/PID/stat instead
        else:
            import psutil  # only a traced serve pays for it

            self._psutil = psutil
            self._seen = set(psutil.pids())  # what runs already is no descendant of ours
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self._thread.start()

    def _run(self) -> None:
        import signal

        # Serve's main thread takes SIGCHLD and the signals it passes on with
        # sigtimedwait: were they delivered to this thread, it would miss them.
        signal.pthread_sigmask(
            signal.SIG_BLOCK,
            {signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT},
        )
        # The lowest priority (Linux lets a thread have its own): the recorder
        # then takes CPU time the build leaves, or waits a few milliseconds,
        # instead of preempting a compiler at every sample. On a build that
        # keeps every CPU busy this halved what tracing cost (see
        # benchmarks/trace_overhead.py); samples come a little later there.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
        sample_tree = self._sample_tree_linux if self._linux else self._sample_tree_psutil
        every = max(1, round(TREE_INTERVAL / SAMPLE_INTERVAL))
        tick = 0
        unchanged = 0
        # time.sleep, not Event.wait: a wake-up costs half as much, and
        # stopping may take one interval. Wake-ups are most of what tracing
        # costs, so while the count holds still (a saturated build) it is
        # taken only with the tree, and every SAMPLE_INTERVAL again as soon
        # as it moves.
        while not self._stopping:
            unchanged = 0 if self._sample_busy() else unchanged + 1
            steady = unchanged >= STEADY_SAMPLES
            if steady or tick % every == 0:
                sample_tree()
            tick += 1
            time.sleep(TREE_INTERVAL if steady else SAMPLE_INTERVAL)
        self._cpu = time.thread_time()  # what sampling cost, for otherData

    def _now(self) -> float:
        return time.monotonic() - self._mono0

    def _sample_busy(self) -> bool:
        """Count the busy slots; True if the count changed."""
        free = self._pool.available()
        if free is None:
            return False
        busy = self._slots - free
        if not self._busy or self._busy[-1][1] != busy:
            self._busy.append((self._now(), busy))
            return True
        return False

    def _sample_tree_linux(self) -> None:
        """Follow the tree down from serve through /proc/PID/task/TID/children.

        Per sample this reads one file per live descendant (the children of
        its main thread; every tenth sample, of all its threads) and polls
        their pidfds once to see which have exited, plus two reads for each
        new process (its start and command line) and one on the sample after
        (its command line again: a process is often found between its fork
        and its exec). The cost grows with the build, not with the number
        of processes on the machine, as listing all of /proc would.
        """
        now = self._now()
        self._tree_samples += 1
        if self._poller is not None:
            for fd, _event in self._poller.poll(0):
                pid = self._pidfds.get(fd)
                if pid is not None:
                    self._end_span(pid, now)
        else:
            for pid in list(self._live):
                info = _procfs.process_stat(pid)
                if info is None or info.state == "Z":
                    self._end_span(pid, now)
        every_thread = self._tree_samples % 10 == 1
        # serve's children are its main thread's: it starts CMD, and orphans
        # go to the first live thread of a subreaper.
        root = self._root
        found = [(root, pid) for pid in _procfs.task_children(root, every_thread=False)]
        for parent, span in list(self._live.items()):
            if span.recheck:
                span.recheck = False
                span.cmdline = _procfs.cmdline(parent) or span.cmdline
            for pid in _procfs.task_children(parent, every_thread=every_thread):
                found.append((parent, pid))
        for parent, pid in found:
            if pid not in self._live:
                self._add_linux(parent, pid)

    def _add_linux(self, parent: int, pid: int) -> None:
        """Start a span for a process just found, and look for its children at once."""
        info = _procfs.process_stat(pid)
        if info is None or info.state == "Z":
            return  # came and went between two samples
        span = _Span(pid, parent, max(0.0, info.start / self._ticks - self._boot0))
        if self._poller is not None:
            try:
                span.pidfd = os.pidfd_open(pid)
            except OSError:
                return  # gone already
            self._pidfds[span.pidfd] = pid
            self._poller.register(span.pidfd, select.POLLIN)
        span.cmdline = _procfs.cmdline(pid)
        span.recheck = True
        self._live[pid] = span
        for child in _procfs.task_children(pid):
            if child not in self._live:
                self._add_linux(pid, child)

    def _sample_tree_psutil(self) -> None:
        """Find new descendants in a listing of every process (where /proc cannot say)."""
        psutil = self._psutil
        now = self._now()
        current = set(psutil.pids())
        for pid in self._seen - current:
            self._end_span(pid, now)
        pending = sorted(current - self._seen)
        self._seen = current
        # A parent found in this same listing is added first, so its children
        # (usually later pids, but pids wrap) are recognised: repeat until
        # nothing more is added.
        while pending:
            later = []
            for pid in pending:
                try:
                    process = psutil.Process(pid)
                    ppid = process.ppid()
                    started = float(process.create_time()) - self._wall0
                except psutil.Error:
                    continue
                if ppid == self._root or ppid in self._live:
                    span = _Span(pid, ppid, max(0.0, started))
                    span.process = process
                    self._live[pid] = span
                elif ppid in pending:
                    later.append(pid)
            if len(later) == len(pending):
                break
            pending = later
        for pid, span in list(self._live.items()):
            try:
                if span.process.status() == psutil.STATUS_ZOMBIE:
                    self._end_span(pid, now)
                    continue
                cmdline = span.process.cmdline()
            except psutil.Error:
                self._end_span(pid, now)
                continue
            if cmdline:
                span.cmdline = cmdline

    def _end_span(self, pid: int, now: float) -> None:
        span = self._live.pop(pid, None)
        if span is not None:
            span.end = now
            span.process = None
            if span.pidfd >= 0:
                assert self._poller is not None
                self._poller.unregister(span.pidfd)
                del self._pidfds[span.pidfd]
                os.close(span.pidfd)
                span.pidfd = -1
            self._done.append(span)

    # -- the end ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop sampling, close the spans still open, and write the file."""
        self._stopping = True
        if self._thread.is_alive():
            self._thread.join()
        self._end = self._now()
        self._sample_busy()
        for pid in list(self._live):
            self._end_span(pid, self._end)
        with self._file:
            import json

            json.dump(self._document(), self._file, separators=(",", ":"))
            self._file.write("\n")

    def _document(self) -> dict[str, Any]:
        root = self._root
        micro = 1e6
        events: list[dict[str, Any]] = [
            {
                "name": "process_name",
                "ph": "M",
                "pid": root,
                "args": {"name": "makejobs serve -j" + str(self._slots)},
            }
        ]
        for t, busy in self._busy:
            events.append(
                {
                    "name": "busy slots",
                    "ph": "C",
                    "pid": root,
                    "ts": round(t * micro),
                    "args": {"busy": busy, "idle": self._slots - busy},
                }
            )
        spans = sorted(self._done, key=lambda s: (s.start, s.pid))
        placed = lanes([(s.start, s.end if s.end is not None else s.start) for s in spans])
        for lane in sorted(set(placed)):
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": root,
                    "tid": lane + 1,
                    "args": {"name": f"lane {lane + 1}"},
                }
            )
        for span, lane in zip(spans, placed):
            end = span.end if span.end is not None else self._end
            events.append(
                {
                    "name": _label(span.cmdline, span.pid),
                    "cat": "process",
                    "ph": "X",
                    "pid": root,
                    "tid": lane + 1,
                    "ts": round(span.start * micro),
                    "dur": max(0, round((end - span.start) * micro)),
                    "args": {"pid": span.pid, "ppid": span.ppid, "cmdline": span.cmdline},
                }
            )
        return {
            "traceEvents": events,
            "displayTimeUnit": "ms",
            "otherData": {
                "makejobs_trace": FORMAT,
                "slots": self._slots,
                "command": self._command,
                "started": self._wall0,
                "monotonic_origin_s": self._mono0,
                "duration_us": round(self._end * micro),
                "sample_interval_ms": SAMPLE_INTERVAL * 1000,
                "process_interval_ms": TREE_INTERVAL * 1000,
                "recorder_cpu_s": round(self._cpu, 4),
            },
        }
