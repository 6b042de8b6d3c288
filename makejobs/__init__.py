"""makejobs: Python work as a first-class citizen of the GNU Make jobserver.

Layers, lowest first (a module imports only from layers below it):

* :mod:`makejobs.protocol`: parse and format ``MAKEFLAGS`` (pure, no I/O).
* :mod:`makejobs.pool`: :class:`TokenPool`, join or create a token pool.
* :mod:`makejobs.jobserver` and :mod:`makejobs.future`: :class:`Jobserver`,
  one process per job on pool tokens, with :class:`Future` results;
  :mod:`makejobs.waiting`: :func:`wait` and :func:`as_completed` for them.
* :mod:`makejobs.executor`: :class:`JobserverExecutor`, a
  :mod:`concurrent.futures` executor whose running tasks hold pool tokens.
* :mod:`makejobs.criteria`: admission criteria for ``sleep_fn``.
"""

from __future__ import annotations

import importlib

# Not typing.TYPE_CHECKING: importing typing would cost every ``makejobs``
# command a few milliseconds of start-up (type checkers know this spelling).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .errors import (
        Blocked,
        CallbackRaised,
        JobserverUnavailable,
        JobStartFailed,
        PoolBroken,
        RemoteTraceback,
        SubmissionDied,
        TokenCountWarning,
        Unavailable,
    )
    from .executor import JobserverExecutor
    from .future import Future
    from .jobserver import Jobserver
    from .pool import Token, TokenPool, usable_cpus
    from .protocol import FifoAuth, MakeFlags, PipeAuth, format_makeflags, parse_makeflags
    from .waiting import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        as_completed,
        wait,
    )

# Names are imported on first use (PEP 562): a spawned job that needs only the
# pool and the child side must not pay for importing the executor and
# concurrent.futures on every start.
_WHERE = {
    "Blocked": "errors",
    "CallbackRaised": "errors",
    "JobserverUnavailable": "errors",
    "JobStartFailed": "errors",
    "PoolBroken": "errors",
    "RemoteTraceback": "errors",
    "SubmissionDied": "errors",
    "TokenCountWarning": "errors",
    "Unavailable": "errors",
    "JobserverExecutor": "executor",
    "Future": "future",
    "Jobserver": "jobserver",
    "usable_cpus": "pool",
    "Token": "pool",
    "TokenPool": "pool",
    "FifoAuth": "protocol",
    "MakeFlags": "protocol",
    "PipeAuth": "protocol",
    "format_makeflags": "protocol",
    "parse_makeflags": "protocol",
    "ALL_COMPLETED": "waiting",
    "FIRST_COMPLETED": "waiting",
    "FIRST_EXCEPTION": "waiting",
    "as_completed": "waiting",
    "wait": "waiting",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'makejobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.2.0"

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Blocked",
    "CallbackRaised",
    "FifoAuth",
    "Future",
    "JobStartFailed",
    "Jobserver",
    "JobserverExecutor",
    "JobserverUnavailable",
    "MakeFlags",
    "PipeAuth",
    "PoolBroken",
    "RemoteTraceback",
    "SubmissionDied",
    "Token",
    "TokenCountWarning",
    "TokenPool",
    "Unavailable",
    "__version__",
    "as_completed",
    "format_makeflags",
    "parse_makeflags",
    "usable_cpus",
    "wait",
]
