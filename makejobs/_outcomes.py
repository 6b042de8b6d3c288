"""How a job or a task ended: one vocabulary for every place that reports it.

A Jobserver job's result frame (see :mod:`makejobs._child`) and a
JobserverExecutor worker's (see :mod:`makejobs._frames`) both say which of
these it is, as a small int.
"""

from __future__ import annotations

__all__ = ["DIED", "INIT_FAILED", "LOST", "OK", "RAISED"]

#: It returned; the payload is the value.
OK = 0
#: It raised an exception; the payload is the exception and its formatted traceback.
RAISED = 1
#: It ended its process on purpose (SystemExit, KeyboardInterrupt); the payload
#: says how. An executor's worker exits after sending it.
DIED = 2
#: No whole frame came: the process died before it could say anything.
LOST = 3
#: An executor worker's initializer raised; no task ran.
INIT_FAILED = 4
