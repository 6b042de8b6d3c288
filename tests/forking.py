"""Running a check in a forked child of the test process, with locks held or not (shared
by the unit tests)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import warnings
from collections.abc import Callable, Iterator


def run_in_child(body: Callable[[], bool]) -> int:
    """Fork; the child runs *body* under a watchdog and exits 0 if it returned True.

    Returns the child's exit code (negative: killed by that signal, e.g. the
    watchdog's SIGALRM when it deadlocked).
    """
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process that has threads: on purpose here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            signal.alarm(60)  # a deadlock fails the test instead of hanging it
            code = 0 if body() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def held_by_another_thread(*locks: contextlib.AbstractContextManager[object]) -> Iterator[None]:
    """Hold *locks* in another thread for the duration of the block.

    A fork in the block copies them locked, as a fork does when some other
    thread of the process is inside a critical section at that moment.
    """
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(60)
        yield
    finally:
        release.set()
        holder.join(60)


def wait_for_exit(pid: int, timeout: float) -> bool:
    """True once process *pid* (not necessarily our child) has exited, within *timeout*.

    A zombie counts as exited: a process whose parent died is reparented to an
    init that may reap it late, or never, in a container.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)
