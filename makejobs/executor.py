"""JobserverExecutor: a concurrent.futures executor on the shared token pool.

A drop-in for :class:`concurrent.futures.ProcessPoolExecutor` that never
runs more tasks at once than make's (or ninja's, or cargo's) pool allows.

What it is made of, and why:

* **Reused workers** (:mod:`makejobs._worker`, :mod:`makejobs._worker_handle`).
  Tasks run in long-lived worker processes, so a tiny task costs a pickle and
  two pipe round trips, not a fork. With ``max_tasks_per_child=1`` every task
  gets a fresh process instead.
* **Tokens follow tasks, not workers.** A task is handed to a worker only
  once a token is held for it, and the token goes back as soon as the task is
  over. An idle worker holds nothing, so under ``make -jN`` the executor and
  every other recipe never exceed N together.
* **One private pipe pair per worker** (:mod:`makejobs._frames`). Tasks go
  down the worker's own task pipe, results come back on its own result pipe.
  When a worker dies only the task it was running fails (with
  :class:`~makejobs.errors.SubmissionDied`), and a new worker replaces it:
  there is no shared queue for a dead worker to corrupt, so there is no
  ``BrokenProcessPool`` for everybody.
* **One manager thread that never waits for anybody** (:mod:`makejobs._manager`):
  not for a worker, and not for a future's lock that a user thread may hold
  forever after a SIGINT (:mod:`makejobs._settle`).
* **Workers that need not import** (:mod:`makejobs._forkserver`). With the
  forkserver start method the server imports this module once, so a worker, a
  fork of it, is ready without importing makejobs itself; and a fork server
  that died is replaced.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures import Future as StdFuture
from multiprocessing.context import BaseContext
from typing import Any

from . import _forkserver, _worker
from ._checks import check_buffersize
from ._forkserver import ForkServerFailed
from ._manager import Manager
from .jobserver import Jobserver, default_pool, usable_cpus
from .pool import TokenPool

__all__ = ["ForkServerFailed", "JobserverExecutor"]


def _default_context() -> BaseContext:
    """The start method for workers: the default one, except that a threaded
    process (ours has a manager thread) should not fork: use forkserver then,
    as Python 3.14 does by default."""
    context = multiprocessing.get_context()
    if (
        context.get_start_method() == "fork"
        and "forkserver" in multiprocessing.get_all_start_methods()
    ):
        return multiprocessing.get_context("forkserver")
    return context


def _check_arguments(
    max_workers: object,
    jobserver: object,
    initializer: object,
    max_tasks_per_child: object,
) -> None:
    """The constructor's checks, before anything is opened: ProcessPoolExecutor's errors."""
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int):
            kind = type(max_workers).__name__
            raise TypeError(f"max_workers must be an int, a Jobserver or None, not {kind}")
        if max_workers < 1:
            raise ValueError("max_workers must be greater than 0")
    if jobserver is not None and not isinstance(jobserver, Jobserver):
        raise TypeError(f"jobserver must be a Jobserver or None, not {type(jobserver).__name__}")
    if initializer is not None and not callable(initializer):
        raise TypeError("initializer must be callable")
    if max_tasks_per_child is not None:
        if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
            raise TypeError("max_tasks_per_child must be an integer")
        if max_tasks_per_child < 1:
            raise ValueError("max_tasks_per_child must be >= 1")


class JobserverExecutor(Executor):
    """A :class:`concurrent.futures.Executor` whose running tasks each hold one pool token.

    Args:
        max_workers: the most worker processes at once; default: the pool's
            size when known, else the usable CPUs. The pool may allow fewer
            tasks at a time; idle workers hold no token. A
            :class:`~makejobs.Jobserver` here is taken as *jobserver* (the
            spelling of PyPI ``jobserver``: ``JobserverExecutor(js)``).
        jobserver: share this :class:`~makejobs.Jobserver`'s pool (default:
            join the pool the environment advertises, else create one sized
            to the CPUs; an advertised but unusable pool gives a
            :class:`~makejobs.errors.JobserverUnavailable` warning and one task
            at a time). Only its pool is shared: workers start with
            *mp_context*, not with the Jobserver's context, env or preexec_fn.
        mp_context: the multiprocessing context that starts workers. Default:
            the default context, but ``forkserver`` instead of ``fork``, since
            forking a process with threads is unsafe.
        initializer, initargs: run in each worker before its first task; if
            it raises, pending and later tasks fail with
            :class:`~concurrent.futures.process.BrokenProcessPool`.
        max_tasks_per_child: replace a worker after this many tasks (1: a
            fresh process per task).

    Raises:
        TypeError: an argument of the wrong type (a Jobserver given twice too).
        ValueError: *max_workers* or *max_tasks_per_child* below 1.
    """

    def __init__(
        self,
        max_workers: int | Jobserver | None = None,
        *,
        jobserver: Jobserver | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        if isinstance(max_workers, Jobserver):
            if jobserver is not None:
                raise TypeError("give the Jobserver once: as the first argument or as jobserver=")
            max_workers, jobserver = None, max_workers
        _check_arguments(max_workers, jobserver, initializer, max_tasks_per_child)
        if jobserver is not None:
            pool, owns_pool = jobserver.pool, False
        else:
            pool, owns_pool = default_pool(stacklevel=2), True
        context = mp_context if mp_context is not None else _default_context()
        _forkserver.preload_in_forkserver(context, __name__)
        self._manager = Manager(
            pool,
            owns_pool,
            max_workers or pool.slots or usable_cpus(),
            context,
            initializer,
            initargs,
            max_tasks_per_child,
        )
        # Dropped without shutdown(): finish the pending work, then clean up.
        weakref.finalize(self, self._manager.shutdown, False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StdFuture[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a standard Future.

        A pickling failure is set on the future, as ProcessPoolExecutor does.

        Raises:
            RuntimeError: after :meth:`shutdown`, in a child of the process
                that created the executor, or when the manager thread cannot
                start (then nothing was scheduled: a later submit may succeed).
            BrokenProcessPool: the worker initializer failed.
            ForkServerFailed: no worker could be started: the fork server
                died, and a new one failed too.
        """
        return self._manager.submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map` of Python 3.14, on every Python.

        *chunksize* calls go to one task. With *buffersize*, at most that many
        tasks (chunks) are submitted ahead of the results consumed so far, and
        the iterables are read only as far as that: an endless one is fine.
        Without it every call is submitted at once, as before 3.14.

        Raises:
            ValueError: *chunksize* below 1, or *buffersize* below 1.
            TypeError: *buffersize* is not an int (or None).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        check_buffersize(buffersize)
        if chunksize == 1:
            return _map(self, fn, zip(*iterables), timeout, buffersize)
        chunks = ((fn, chunk) for chunk in _chunks(zip(*iterables), chunksize))
        return _flatten(_map(self, _worker.call_chunk, chunks, timeout, buffersize))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or with *cancel_futures*, cancel) pending tasks.

        With *wait* (the default) returns once every worker has exited and
        every token is back; otherwise returns at once and the manager thread
        finishes in the background (interpreter exit still waits for it).
        Cancelled futures are done at once, for :func:`concurrent.futures.wait`
        too. May be called more than once.
        """
        self._manager.shutdown(wait, cancel_futures=cancel_futures)

    def kill(self, future: StdFuture[Any], signum: int = signal.SIGTERM) -> bool:
        """Cancel a *running* task by sending *signum* to its worker.

        The future then fails with :class:`~makejobs.errors.SubmissionDied`
        (unless the task finished first) and a new worker takes the dead one's
        place. A pending future is cancelled, and done at once, for
        :func:`concurrent.futures.wait` too.

        Returns:
            True if a signal was sent or the future was cancelled.
        """
        return self._manager.kill(future, signum)

    @property
    def pool(self) -> TokenPool:
        """The token pool running tasks hold tokens of."""
        return self._manager.pool

    def __repr__(self) -> str:
        return f"<JobserverExecutor {self._manager.describe()}>"


def _map(
    executor: Executor,
    fn: Callable[..., Any],
    calls: Iterator[tuple[Any, ...]],
    timeout: float | None,
    buffersize: int | None,
) -> Iterator[Any]:
    """Submit *calls* (all, or the first *buffersize*) now; the results in order, lazily."""
    deadline = None if timeout is None else time.monotonic() + timeout
    futures = deque(executor.submit(fn, *args) for args in itertools.islice(calls, buffersize))
    more = None if buffersize is None else calls
    # Weak: a dropped executor is not kept alive by an unfinished iteration.
    return _results(futures, weakref.ref(executor), fn, more, deadline)


def _results(
    futures: deque[StdFuture[Any]],
    executor_ref: weakref.ref[Executor],
    fn: Callable[..., Any],
    more: Iterator[tuple[Any, ...]] | None,
    deadline: float | None,
) -> Iterator[Any]:
    try:
        while futures:
            if more is not None:
                # One result is taken, one more call is submitted: *buffersize* ahead.
                executor = executor_ref()
                args = next(more, None) if executor is not None else None
                if args is not None and executor is not None:
                    futures.append(executor.submit(fn, *args))
                del executor
            future = futures.popleft()
            try:
                result = future.result(None if deadline is None else deadline - time.monotonic())
            finally:
                future.cancel()  # timed out: it will not be waited for
                del future  # no reference to the future (and its exception) while suspended
            yield result
            del result
    finally:
        for future in futures:
            future.cancel()


def _flatten(chunks: Iterator[list[Any]]) -> Iterator[Any]:
    try:
        for chunk in chunks:
            yield from chunk
    finally:
        chunks.close()  # type: ignore[attr-defined]


def _chunks(iterable: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(iterable, size))
        if not chunk:
            return
        yield chunk
