"""Running a check in a forked child of the test process (shared by the unit tests)."""

from __future__ import annotations

import os
import signal
import warnings
from collections.abc import Callable


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
