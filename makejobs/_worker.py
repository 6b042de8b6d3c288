"""The executor's worker process: run tasks from its task pipe, send results back.

A worker serves one executor. It reads a task frame (see :mod:`makejobs._frames`),
runs it and writes one result frame, until its task pipe closes or it has run
``max_tasks_per_child`` tasks. It holds no token: the executor takes one for each
task before sending it and gives it back when the result arrives.
"""

from __future__ import annotations

import itertools
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _child, _frames
from .errors import SubmissionDied

if TYPE_CHECKING:
    from .pool import TokenPool

__all__ = ["call_chunk", "result_frame", "worker_main"]


def result_frame(task_id: int, kind: int, payload: Any) -> tuple[int, bytes]:
    """The kind and body of a result frame; a payload that cannot be pickled is an error.

    That error is the pickling error itself, as ProcessPoolExecutor reports it
    (``TypeError: cannot pickle '_thread.lock' object``, ``PicklingError``, or
    whatever an object's ``__reduce__`` raised), with its traceback, preceded by
    the task's own when the payload was the task's exception.
    """
    try:
        return kind, pickle.dumps((task_id, payload), pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        what = "result" if kind == _frames.OK else "exception"
        value = payload if kind == _frames.OK else payload[0]
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        text = f"{text}(while pickling the task's {what}, of type {type(value).__qualname__})\n"
        if kind != _frames.OK:
            text = payload[1] + "\nDuring pickling of the above exception:\n\n" + text
        outcome = (_frames.RAISED if kind == _frames.OK else kind), (e, text)
        try:
            return outcome[0], pickle.dumps((task_id, outcome[1]), pickle.HIGHEST_PROTOCOL)
        except Exception:
            # The pickling error does not pickle either (it holds the object):
            # its type name and message, at least.
            error = RuntimeError(f"{type(e).__qualname__}: {e}")
            return outcome[0], pickle.dumps((task_id, (error, text)), pickle.HIGHEST_PROTOCOL)


def worker_main(
    task_fd: Any,
    result_fd: Any,
    pool: TokenPool | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    close_fds: tuple[int, ...] = (),
    main_path: str | None = None,
    life: Any = None,
) -> None:
    """Serve tasks until the task pipe closes (or *max_tasks* are done).

    *life* is the executor's process's life pipe end (see makejobs.guardian),
    held untouched while the worker lives; a forked worker inherited it.
    """
    if life is not None:
        _child.keep_life(life.detach())
    if main_path is not None and getattr(sys.modules["__main__"], "__file__", None) is None:
        # Started while the parent's interpreter was exiting, multiprocessing
        # no longer told us its main script: load it as spawn would, so tasks
        # defined there can be unpickled.
        from multiprocessing import spawn

        spawn._fixup_main_from_path(main_path)  # type: ignore[attr-defined]
    for fd in close_fds:  # a forked worker's copies of the executors' own ends
        try:
            os.close(fd)
        except OSError:
            pass
    tasks = task_fd.detach() if hasattr(task_fd, "detach") else task_fd
    results = result_fd.detach() if hasattr(result_fd, "detach") else result_fd
    for fd in (tasks, results):
        os.set_inheritable(fd, False)  # exec'd grandchildren must not pin them
    # A task that runs make, ninja or cargo joins the pool on the task's token.
    _child.apply_environment((), pool)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as e:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            _frames.send(results, *result_frame(-1, _frames.INIT_FAILED, text))
            return
    done = 0
    while max_tasks is None or done < max_tasks:
        body = _frames.receive(tasks)
        if body is None:
            return  # the executor shut us down
        task_id = -1
        try:
            task_id, fn, args, kwargs = pickle.loads(body)
            frame = result_frame(task_id, _frames.OK, fn(*args, **kwargs))
        except Exception as e:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            frame = result_frame(task_id, _frames.RAISED, (e, text))
        except BaseException as e:  # SystemExit, KeyboardInterrupt: say so, then exit
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            detail = f": {e}" if str(e) else ""
            died = SubmissionDied(
                f"the task ended its worker (pid {os.getpid()}) with"
                f" {type(e).__name__}{detail} instead of returning"
            )
            _frames.send(results, *result_frame(task_id, _frames.DIED, (died, text)))
            return  # the task asked this process to end; a new worker replaces it
        _frames.send(results, *frame)
        done += 1


def call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    """The values of ``fn(*args)`` for the chunk, or what the first call to raise raised.

    As ``ProcessPoolExecutor`` does, a call that raises fails its whole chunk:
    ``Executor.map`` re-raises at the chunk's first position.
    """
    values, error = _child.run_chunk(fn, zip(chunk, itertools.repeat({})))
    if error is not None:
        raise error[0]
    return values
