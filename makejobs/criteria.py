"""Ready-made admission criteria for ``sleep_fn=``, backed by psutil.

An admission criterion is any zero-argument callable. Before a job takes
its slot, the Jobserver calls it in the submitting process:

* it returns **None** to admit the job now;
* it returns a **number of seconds** to be asked again after that long
  (the Jobserver keeps reaping finished jobs meanwhile, and never waits past
  the submission's deadline: when the deadline passes, ``submit`` raises
  :class:`~makejobs.errors.Blocked`);
* an exception it raises propagates out of ``submit``.

Example::

    from makejobs import Jobserver
    from makejobs.criteria import all_of, load_below, memory_available

    gate = all_of(memory_available("2GiB"), load_below(8))
    with Jobserver(sleep_fn=gate) as js:
        ...
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import psutil

from ._checks import check_positive_number
from ._engine import running_jobs

__all__ = ["Criterion", "all_of", "load_below", "memory_available", "parse_size"]

#: The protocol: None admits now, a number asks again after that many seconds.
Criterion = Callable[[], "float | None"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(size: int | float | str) -> int:
    """Bytes from a number or a string such as ``"512MiB"``, ``"2GiB"``, ``"1.5 GB"``.

    Raises:
        ValueError: a negative number, or a string that is not a size.
    """
    if isinstance(size, bool):
        raise TypeError("a size must be a number of bytes or a string like '2GiB'")
    if isinstance(size, (int, float)):
        if size < 0 or size != size:
            raise ValueError(f"a size must be non-negative, not {size}")
        return int(size)
    if not isinstance(size, str):
        raise TypeError(f"a size must be a number of bytes or a string like '2GiB', not {size!r}")
    match = _SIZE.match(size)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"not a size: {size!r} (try '512MiB' or '2GB')")
    return int(float(match.group(1)) * _UNITS[unit])


def memory_available(at_least: int | float | str, *, retry: float = 0.5) -> Criterion:
    """Admit while the system has at least *at_least* bytes of available memory.

    "Available" is psutil's ``virtual_memory().available``: memory that can
    be given to new processes without swapping. Otherwise ask again after
    *retry* seconds.
    """
    need = parse_size(at_least)
    check_positive_number(retry, "retry")

    def criterion() -> float | None:
        return None if psutil.virtual_memory().available >= need else retry

    criterion.__qualname__ = f"memory_available({at_least!r})"
    return criterion


def load_below(limit: float, *, retry: float = 1.0) -> Criterion:
    """Admit while the 1-minute load average is below *limit*, like ``make -l``.

    Otherwise ask again after *retry* seconds (make waits one second too),
    except when no job of this process is running: then admit anyway, as
    ``make -l`` always lets one job run. The load may be somebody else's, and
    waiting for it to fall with nothing of ours running could wait forever
    without lowering it. "This process" counts the jobs of every Jobserver
    in it; a job that runs a Jobserver of its own counts only its own jobs.
    """
    check_positive_number(limit, "limit")
    check_positive_number(retry, "retry")

    def criterion() -> float | None:
        if _load_average() < limit or running_jobs() == 0:
            return None
        return retry

    criterion.__qualname__ = f"load_below({limit!r})"
    return criterion


def all_of(*criteria: Criterion) -> Criterion:
    """Admit only when every criterion admits; otherwise wait the longest delay asked."""
    for c in criteria:
        if not callable(c):
            raise TypeError(f"{c!r} is not callable")

    def criterion() -> float | None:
        delays = [d for d in (c() for c in criteria) if d is not None]
        return max(delays) if delays else None

    return criterion


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float(psutil.getloadavg()[0])
