"""makejobs: Python work as a first-class citizen of the GNU Make jobserver.

Layers, lowest first (a module imports only from layers below it):

* :mod:`makejobs.protocol`: parse and format ``MAKEFLAGS`` (pure, no I/O).
* :mod:`makejobs.pool`: :class:`TokenPool`, join or create a token pool.
* :mod:`makejobs.jobserver` and :mod:`makejobs.future`: :class:`Jobserver`,
  one process per job on pool tokens, with :class:`Future` results.
* :mod:`makejobs.executor`: :class:`JobserverExecutor`, a
  :mod:`concurrent.futures` executor whose running tasks hold pool tokens.
* :mod:`makejobs.criteria`: admission criteria for ``sleep_fn``.
"""

from __future__ import annotations

from .errors import (
    Blocked,
    CallbackRaised,
    JobserverUnavailable,
    PoolBroken,
    RemoteTraceback,
    SubmissionDied,
    TokenCountWarning,
)
from .executor import JobserverExecutor
from .future import Future
from .jobserver import Jobserver, usable_cpus
from .pool import Token, TokenPool
from .protocol import FifoAuth, MakeFlags, PipeAuth, format_makeflags, parse_makeflags

__version__ = "0.1.0"

__all__ = [
    "Blocked",
    "CallbackRaised",
    "FifoAuth",
    "Future",
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
    "__version__",
    "format_makeflags",
    "parse_makeflags",
    "usable_cpus",
]
