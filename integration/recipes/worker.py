"""A make recipe that joins the jobserver and runs several timed jobs on it.

Usage (from a Makefile recipe line)::

    python worker.py --name r1 --jobs 3 --seconds 0.3 --log LOG --report r1.json [--mode M]

Modes:

``pool`` (default)
    Join with ``TokenPool.from_environ()``. A single dispatcher loop takes slots with
    ``try_acquire`` (the implicit slot first, then tokens), runs each job in a thread while
    holding its slot, and waits in ``poll`` for a job to finish or the pool to become
    readable. Slots are released by the dispatcher after the job's thread has logged its
    end. If the pool is unavailable (``JobserverUnavailable``) or absent, the jobs run one
    after another on the implicit slot, as make itself does with ``-j1``.
``threads``
    Join, then start one thread per job, each doing ``with pool.slot(): job()``: the
    simplest way a user would write it. The main thread waits at most ``--deadline``
    seconds for them; if some are still waiting for a slot, the recipe reports ``stuck``
    and exits 3.
``greedy``
    Ignore the pool and run every job at once (the oversubscription control).

Before joining, the recipe records the state of the inherited pipe descriptors named by
``MAKEFLAGS`` (kind, ``F_GETFL`` flags, file offset); it records them again after all its
jobs are done and after closing the pool. Everything is written to ``--report`` as JSON.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import select
import stat
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

# The recipes live in integration/recipes; the span helpers in tests/spans.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import spans
from makejobs.errors import JobserverUnavailable
from makejobs.pool import Token, TokenPool
from makejobs.protocol import PipeAuth, parse_makeflags

LOW_FDS = range(3, 7)


def fd_state(fd: int) -> dict[str, Any]:
    """What descriptor *fd* is right now, without reading from it."""
    try:
        st = os.fstat(fd)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    except OSError as e:
        return {"open": False, "errno": e.errno}
    if stat.S_ISFIFO(st.st_mode):
        kind = "fifo"
    elif stat.S_ISREG(st.st_mode):
        kind = "regular"
    else:
        kind = "other"
    try:
        offset: int | None = os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        offset = None  # pipes cannot seek
    return {"open": True, "kind": kind, "flags": flags, "offset": offset}


def pipe_fds_state(auth: PipeAuth | None) -> dict[str, Any] | None:
    if auth is None:
        return None
    return {"read": fd_state(auth.read_fd), "write": fd_state(auth.write_fd)}


class Dispatcher:
    """Runs jobs in threads, one per slot, taking slots only with try_acquire + poll."""

    def __init__(self, pool: TokenPool, log: str, seconds: float, deadline: float) -> None:
        self.pool = pool
        self.log = log
        self.seconds = seconds
        self.deadline = deadline
        self.finished: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.max_running = 0
        self.tokens_used = 0

    def _job(self, name: str) -> None:
        try:
            spans.run_job(self.log, name, self.seconds)
        finally:
            # The dispatcher releases the slot after this: the span's end is logged first.
            self.finished.put(name)
            os.write(self.wake_w, b".")

    def run(self, names: list[str]) -> None:
        pending = deque(names)
        running: dict[str, tuple[threading.Thread, Token]] = {}
        give_up = time.monotonic() + self.deadline
        try:
            while pending or running:
                while pending:
                    token = self.pool.try_acquire()
                    if token is None:
                        break
                    if not token.implicit:
                        self.tokens_used += 1
                    name = pending.popleft()
                    thread = threading.Thread(target=self._job, args=(name,))
                    running[name] = (thread, token)
                    thread.start()
                self.max_running = max(self.max_running, len(running))
                poller = select.poll()
                poller.register(self.wake_r, select.POLLIN)
                if pending:
                    # Readable means a token may be there; the implicit slot can only come
                    # back through a finished job, which also wakes us.
                    poller.register(self.pool.fileno(), select.POLLIN)
                remaining = give_up - time.monotonic()
                if remaining <= 0 or not poller.poll(int(remaining * 1000) + 1):
                    raise SystemExit(f"worker: no progress within {self.deadline} s")
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                while True:
                    try:
                        name = self.finished.get_nowait()
                    except queue.Empty:
                        break
                    thread, token = running.pop(name)
                    thread.join()
                    self.pool.release(token)
        finally:
            os.close(self.wake_r)
            os.close(self.wake_w)


def run_threads(
    pool: TokenPool, names: list[str], log: str, seconds: float, deadline: float
) -> bool:
    """One thread per job, each holding ``pool.slot()``; False if some never got a slot."""

    def job(name: str) -> None:
        with pool.slot():
            spans.run_job(log, name, seconds)

    threads = [threading.Thread(target=job, args=(name,), daemon=True) for name in names]
    for thread in threads:
        thread.start()
    give_up = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, give_up - time.monotonic()))
    return not any(thread.is_alive() for thread in threads)


def run_greedy(names: list[str], log: str, seconds: float) -> None:
    threads = [threading.Thread(target=spans.run_job, args=(log, n, seconds)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--jobs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--log", required=True)
    parser.add_argument("--report", required=True)
    parser.add_argument("--mode", choices=("pool", "threads", "greedy"), default="pool")
    parser.add_argument("--deadline", type=float, default=30.0)
    args = parser.parse_args()

    makeflags = os.environ.get("MAKEFLAGS", "")
    auth = parse_makeflags(makeflags).auth
    pipe_auth = auth if isinstance(auth, PipeAuth) else None
    report: dict[str, Any] = {
        "name": args.name,
        "mode": args.mode,
        "makeflags": makeflags,
        "pipe_auth": None if pipe_auth is None else [pipe_auth.read_fd, pipe_auth.write_fd],
        # Must be taken before from_environ touches anything.
        "fds_before": pipe_fds_state(pipe_auth),
        # fds 3-6: where a stale R,W may point after the shell reused the numbers.
        "low_fds_before": {fd: fd_state(fd) for fd in LOW_FDS},
        "joined": False,
        "style": None,
        "unavailable": None,
        "stuck": False,
    }
    names = [f"{args.name}.j{i}" for i in range(args.jobs)]

    pool: TokenPool | None = None
    if args.mode != "greedy":
        try:
            pool = TokenPool.from_environ()
        except JobserverUnavailable as e:
            report["unavailable"] = str(e)
        report["fds_after_join"] = pipe_fds_state(pipe_auth)
    if pool is not None:
        report["joined"] = True
        report["style"] = pool.style

    exit_code = 0
    if args.mode == "greedy":
        run_greedy(names, args.log, args.seconds)
    elif pool is None:
        for name in names:
            spans.run_job(args.log, name, args.seconds)
    elif args.mode == "pool":
        dispatcher = Dispatcher(pool, args.log, args.seconds, args.deadline)
        dispatcher.run(names)
        report["max_running"] = dispatcher.max_running
        report["tokens_used"] = dispatcher.tokens_used
    elif not run_threads(pool, names, args.log, args.seconds, args.deadline):
        report["stuck"] = True
        exit_code = 3

    report["fds_after_work"] = pipe_fds_state(pipe_auth)
    report["low_fds_after_work"] = {fd: fd_state(fd) for fd in LOW_FDS}
    if pool is not None and not report["stuck"]:
        pool.close()
    report["fds_after_close"] = pipe_fds_state(pipe_auth)

    tmp = args.report + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, args.report)
    if exit_code:
        sys.stdout.flush()
        # Threads are still blocked waiting for a slot (they hold none); do not wait for them.
        os._exit(exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
