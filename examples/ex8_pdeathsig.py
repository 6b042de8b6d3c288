"""ex8_pdeathsig: preexec_fn makes a job die with the process that submitted it (Linux).

``preexec_fn`` runs in the job's process before the job itself. Here it calls
``prctl(PR_SET_PDEATHSIG, SIGTERM)`` through :mod:`ctypes`, so the kernel sends the job
SIGTERM as soon as its parent (the process that submitted it) dies, however it dies, even
by SIGKILL, when no cleanup code of the parent can run.

Demonstrates:

* ``submit(..., preexec_fn=...)`` (a ``Jobserver(preexec_fn=...)`` default works too);
* that the setting took effect: the job reads it back with ``PR_GET_PDEATHSIG``;
* its purpose: a job (``middle``) submits a sub-job that would sleep for a minute, then
  ``middle`` is SIGKILLed; the orphaned sub-job is terminated by the kernel at once
  instead of living on (and occupying a slot of the shared pool) for the rest of the
  minute.

``prctl`` is Linux-only; elsewhere this example prints why it skips and exits 0.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from makejobs import Jobserver, SubmissionDied

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
PR_GET_PDEATHSIG = 2


def _prctl(option: int, arg: Any) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, arg, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}): {os.strerror(errno)}")


def preexec_set_pdeathsig(signum: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Ask for *signum* when our parent dies.

    If *parent* (the submitter's pid) is given, also close the race where the parent died
    between fork and prctl: then the signal would never come, so act on it now.
    """
    _prctl(PR_SET_PDEATHSIG, int(signum))
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)


def task_read_pdeathsig() -> int:
    value = ctypes.c_int(0)
    _prctl(PR_GET_PDEATHSIG, ctypes.pointer(value))
    return value.value


def task_middle(jobserver: Jobserver, pid_file: str) -> None:
    """A job that starts a long sub-job, says its pid, and waits (until it is killed)."""
    guard = functools.partial(preexec_set_pdeathsig, signal.SIGTERM, os.getpid())
    sub_job = jobserver.submit(time.sleep, (60,), preexec_fn=guard)
    Path(pid_file).write_text(str(sub_job.pid))
    sub_job.result()


def gone(pid: int) -> bool:
    """True once *pid* has exited (a zombie nobody has reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def main() -> None:
    if not sys.platform.startswith("linux"):
        print(f"ex8_pdeathsig: skipped: prctl(PR_SET_PDEATHSIG) is Linux-only ({sys.platform})")
        return

    with Jobserver("spawn", slots=2) as jobserver:
        with_it = jobserver.submit(task_read_pdeathsig, preexec_fn=preexec_set_pdeathsig)
        without = jobserver.submit(task_read_pdeathsig)
        print(
            "PR_GET_PDEATHSIG with preexec_fn:", with_it.result(), "| without:", without.result()
        )
        assert with_it.result() == signal.SIGTERM
        assert without.result() == 0

    with tempfile.TemporaryDirectory() as tmp, Jobserver("fork", slots=2) as jobserver:
        pid_file = os.path.join(tmp, "sub_job.pid")
        middle = jobserver.submit(task_middle, (jobserver, pid_file))
        assert wait_for(lambda: os.path.exists(pid_file) and Path(pid_file).read_text(), 10)
        sub_pid = int(Path(pid_file).read_text())
        print(f"middle job {middle.pid} started sub-job {sub_pid} (time.sleep(60))")

        started = time.monotonic()
        middle.kill(signal.SIGKILL)
        try:
            middle.result(timeout=10)
        except SubmissionDied as e:
            print("middle job:", e)
        else:
            raise AssertionError("middle was SIGKILLed")
        assert wait_for(lambda: gone(sub_pid), 10), f"sub-job {sub_pid} outlived its parent"
        print(f"sub-job {sub_pid} was terminated {time.monotonic() - started:.2f}s after")
    print("ex8_pdeathsig: OK")


if __name__ == "__main__":
    main()
