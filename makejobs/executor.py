"""JobserverExecutor: a concurrent.futures executor on the shared token pool.

A drop-in for :class:`concurrent.futures.ProcessPoolExecutor` that never
runs more tasks at once than make's (or ninja's, or cargo's) pool allows.

Design, and why:

* **Reused workers.** Tasks run in long-lived worker processes, so a tiny
  task costs a pickle and two pipe round trips, not a fork. With
  ``max_tasks_per_child=1`` every task gets a fresh process instead.
* **Tokens follow tasks, not workers.** A task is handed to a worker only
  once a token is held for it (this process's implicit slot first), and the
  token goes back the moment its result arrives. An idle worker holds
  nothing, so under ``make -jN`` the executor and every other recipe never
  exceed N together.
* **One private pipe pair per worker.** Tasks go down the worker's own task
  pipe, results come back on its own result pipe. End-of-file on a result
  pipe means that worker died: only the task it was running fails (with
  :class:`~makejobs.errors.SubmissionDied`), and a new worker replaces it.
  There is no shared queue for a dead worker to corrupt, so there is no
  ``BrokenProcessPool`` for everybody.
* **One manager thread that sleeps in poll().** It wakes on a submission
  (a byte on a wake pipe), a result (worker pipes), a free token (the pool
  fd) or room to send a large task (POLLOUT); nothing waits on a timer.
  Results are read as they arrive, so a multi-megabyte result costs its
  copy and nothing more.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import select
import signal
import struct
import sys
import threading
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures import Future as StdFuture
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

from . import _child
from .errors import JobserverUnavailable, PoolBroken, SubmissionDied
from .future import describe_exit
from .jobserver import Jobserver, default_pool, usable_cpus
from .pool import Token, TokenPool

__all__ = ["JobserverExecutor"]

_HEADER = struct.Struct(">Q")
_OK, _RAISED, _INIT_FAILED = 0, 1, 2
#: The task's error, and the worker exits after it (SystemExit, KeyboardInterrupt).
_LAST = 3


# -- the worker process ---------------------------------------------------------------------


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, body: bytes) -> None:
    view = memoryview(_HEADER.pack(len(body)) + body)
    while view:
        view = view[os.write(fd, view) :]


def _result_frame(task_id: int, kind: int, payload: Any) -> bytes:
    try:
        return pickle.dumps((task_id, kind, payload), pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        what = "the result" if kind == _OK else "the exception"
        value = payload if kind == _OK else payload[0]
        text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
        if kind == _RAISED:
            text = payload[1] + "\n" + text  # the task's own traceback first
        error = RuntimeError(f"{what} of type {type(value).__qualname__} cannot be pickled: {e}")
        return pickle.dumps((task_id, _RAISED, (error, text)), pickle.HIGHEST_PROTOCOL)


def _worker_main(
    task_fd: Any,
    result_fd: Any,
    pool: TokenPool | None,
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    close_fds: tuple[int, ...] = (),
    main_path: str | None = None,
) -> None:
    """Serve tasks until the task pipe closes (or *max_tasks* are done)."""
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
            _send(results, _result_frame(-1, _INIT_FAILED, text))
            return
    done = 0
    while max_tasks is None or done < max_tasks:
        header = _read_exactly(tasks, _HEADER.size)
        if header is None:
            return  # the executor shut us down
        body = _read_exactly(tasks, _HEADER.unpack(header)[0])
        if body is None:
            return
        task_id = -1
        try:
            task_id, fn, args, kwargs = pickle.loads(body)
            frame = _result_frame(task_id, _OK, fn(*args, **kwargs))
        except Exception as e:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            frame = _result_frame(task_id, _RAISED, (e, text))
        except BaseException as e:  # SystemExit, KeyboardInterrupt: say so, then exit
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            detail = f": {e}" if str(e) else ""
            died = SubmissionDied(
                f"the task ended its worker (pid {os.getpid()}) with"
                f" {type(e).__name__}{detail} instead of returning"
            )
            _send(results, _result_frame(task_id, _LAST, (died, text)))
            return  # the task asked this process to end; a new worker replaces it
        _send(results, frame)
        done += 1


# -- bookkeeping in the parent -----------------------------------------------------------------


class _Task:
    __slots__ = ("body", "future", "id", "token", "worker")

    def __init__(self, task_id: int, future: StdFuture[Any], body: bytes) -> None:
        self.id = task_id
        self.future = future
        self.body = body
        self.token: Token | None = None
        self.worker: _Worker | None = None


class _Worker:
    """One worker process and our ends of its two pipes."""

    def __init__(self, process: Any, task_w: int, result_r: int) -> None:
        self.process = process
        self.pid: int = process.pid
        self.task_w = task_w
        self.result_r = result_r
        self.inbox = bytearray()
        self.outbox = bytearray()
        self.task: _Task | None = None  # written under the manager's lock
        self.tasks_done = 0  # a worker with max_tasks_per_child exits by itself
        # kill() signalled it: it gets no further task, whether or not it dies.
        self.doomed = False

    def close_pipes(self) -> None:
        fds = [fd for fd in (self.task_w, self.result_r) if fd >= 0]
        self.task_w = self.result_r = -1
        with _parent_fds_lock:
            _parent_fds.difference_update(fds)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


_live_managers: weakref.WeakSet[_Manager] = weakref.WeakSet()
# Executors whose fds no forked worker may keep: a worker holding another
# worker's task pipe would keep that worker from ever seeing end-of-file.
_parent_fds: set[int] = set()
_parent_fds_lock = threading.Lock()
# Held from a new worker's pipes to its start: a worker forked meanwhile by
# another thread would otherwise copy pipe ends missing from its closing list.
_spawn_lock = threading.Lock()


def _shutdown_at_exit() -> None:
    for manager in list(_live_managers):
        manager.shutdown(wait=True)


if hasattr(os, "register_at_fork"):
    # A forked worker must not shut down its parent's executors when it exits
    # (it would wait on locks another parent thread held at the fork).
    os.register_at_fork(after_in_child=_live_managers.clear)

if hasattr(threading, "_register_atexit"):
    # Runs before the interpreter joins threads, like ProcessPoolExecutor's hook.
    threading._register_atexit(_shutdown_at_exit)
else:  # pragma: no cover
    import atexit

    atexit.register(_shutdown_at_exit)


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


class _Manager:
    """The executor's state and its manager thread.

    Kept apart from :class:`JobserverExecutor` so that the thread holds no
    reference to the executor: an executor dropped without ``shutdown()`` is
    collected, and its finalizer shuts the manager down (as
    ProcessPoolExecutor does).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        jobserver: Jobserver | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        if jobserver is not None:
            self._pool = jobserver.pool
            self._owns_pool = False
        else:
            self._pool = default_pool(stacklevel=2)
            self._owns_pool = True
        if max_workers is None:
            max_workers = self._pool.slots or usable_cpus()
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        if max_tasks_per_child is not None and (
            isinstance(max_tasks_per_child, bool)
            or not isinstance(max_tasks_per_child, int)
            or max_tasks_per_child < 1
        ):
            raise ValueError(
                f"max_tasks_per_child must be a positive int or None, not {max_tasks_per_child!r}"
            )
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be callable")
        self._max_workers = max_workers
        self._context = mp_context if mp_context is not None else _default_context()
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child

        self._lock = threading.Lock()
        self._pending: deque[_Task] = deque()
        self._ids = itertools.count()
        self._shutdown = False
        self._broken: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_sent = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # Manager-thread state.
        self._workers: dict[int, _Worker] = {}  # result fd -> worker
        self._idle: list[_Worker] = []
        self._poller = select.poll()
        self._new_workers: list[_Worker] = []  # started by submit(), adopted by the manager
        self._starting = 0  # workers submit() is starting right now
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        self._main_path = os.path.abspath(main_file) if main_file else None
        with _parent_fds_lock:
            _parent_fds.update((self._wake_r, self._wake_w))
        _live_managers.add(self)

    # -- the Executor API -----------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StdFuture[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a standard Future.

        Raises:
            RuntimeError: after :meth:`shutdown`, or in a child of the process
                that created the executor.
            BrokenProcessPool: the worker initializer failed.
        """
        future: StdFuture[Any] = StdFuture()
        with self._lock:
            if self._broken is not None:
                raise BrokenProcessPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if os.getpid() != self._pid:
                raise RuntimeError("a JobserverExecutor cannot be used in a forked child")
            task_id = next(self._ids)
        try:
            body = pickle.dumps((task_id, fn, args, kwargs), pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            # As ProcessPoolExecutor does: the failure belongs to this future.
            future.set_exception(e)
            return future
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = _Task(task_id, future, body)
            self._pending.append(task)
            self._ensure_thread()
            start = (
                self._worker_count() < self._max_workers
                and len(self._pending) > len(self._idle) + len(self._new_workers) + self._starting
            )
            if start:
                self._starting += 1  # reserved, so concurrent submits never overshoot
            else:
                self._wake()
        if start:
            # Workers start here, in the submitting thread, while the program
            # runs: one started by the manager during interpreter exit would
            # find no __main__ to take the task's function from.
            try:
                worker = self._spawn_worker()
            except BaseException:
                with self._lock:
                    self._starting -= 1
                    try:
                        # Withdrawn, so a caller who retries never runs it twice.
                        self._pending.remove(task)
                    except ValueError:
                        return future  # a worker already took it: it runs once
                    self._wake()
                raise
            with self._lock:
                self._starting -= 1
                self._new_workers.append(worker)
                self._wake()
        return future

    def _worker_count(self) -> int:
        """Workers alive, adopted or not, and being started (caller holds the lock)."""
        return len(self._workers) + len(self._new_workers) + self._starting

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or with *cancel_futures*, cancel) pending tasks.

        With *wait* (the default) returns once every worker has exited and
        every token is back; otherwise returns at once and the manager thread
        finishes in the background (interpreter exit still waits for it).
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                while self._pending:
                    self._pending.popleft().future.cancel()
            thread = self._thread
            if thread is None:
                self._close_resources()
                return
            self._wake()
        if wait and thread is not threading.current_thread():
            thread.join()

    def kill(self, future: StdFuture[Any], signum: int = signal.SIGTERM) -> bool:
        """Cancel a *running* task by sending *signum* to its worker.

        The future then fails with :class:`~makejobs.errors.SubmissionDied`
        (unless the task finished first) and a new worker takes the dead one's
        place. A pending future is simply cancelled.

        Returns:
            True if a signal was sent or the future was cancelled.
        """
        if future.cancel():
            return True
        with self._lock:
            # Under the lock: the worker cannot be handed another task, nor be
            # reaped (freeing its pid for reuse), before the signal is sent.
            for worker in list(self._workers.values()):
                task = worker.task
                if task is not None and task.future is future:
                    worker.doomed = True
                    try:
                        os.kill(worker.pid, signum)
                    except ProcessLookupError:
                        return False
                    return True
        return False

    @property
    def pool(self) -> TokenPool:
        """The token pool running tasks hold tokens of."""
        return self._pool

    # -- manager thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._manage, name="makejobs-executor", daemon=True
            )
            self._thread.start()

    def _wake(self) -> None:
        # Caller holds self._lock. One byte until the manager drains it; none
        # once the manager has finished and closed the pipe.
        if not self._wake_sent and self._wake_w >= 0:
            self._wake_sent = True
            os.write(self._wake_w, b"!")

    def _manage(self) -> None:
        try:
            self._manage_loop()
        except BaseException as e:  # pragma: no cover - a bug; fail loudly, lose nothing
            self._break(f"the executor's manager thread failed: {e!r}")
            raise
        finally:
            self._stop_workers()
            with self._lock:
                self._close_resources()

    def _manage_loop(self) -> None:
        poller = self._poller
        poller.register(self._wake_r, select.POLLIN)
        pool_fd = self._pool.fileno()
        watching_pool = False
        while True:
            self._adopt_new_workers()
            want_pool = self._dispatch()
            with self._lock:
                finished = self._shutdown and not self._pending and not self._running()
            if finished:
                return
            if want_pool != watching_pool:
                if want_pool:
                    poller.register(pool_fd, select.POLLIN)
                else:
                    poller.unregister(pool_fd)
                watching_pool = want_pool
            for fd, _mask in poller.poll():
                if fd == self._wake_r:
                    with self._lock:
                        self._wake_sent = False
                        _drain(self._wake_r)
                elif fd == pool_fd:
                    continue  # _dispatch takes the token
                elif fd in self._workers:
                    self._on_result_ready(self._workers[fd], poller)
                else:
                    self._on_writable(fd, poller)

    def _running(self) -> int:
        return sum(1 for w in self._workers.values() if w.task is not None)

    def _dispatch(self) -> bool:
        """Hand pending tasks to workers while tokens last. True if waiting for a token."""
        while True:
            with self._lock:
                if not self._pending:
                    return False
            worker = self._idle[-1] if self._idle else None
            if worker is None:
                with self._lock:
                    if self._worker_count() >= self._max_workers:
                        return False  # every worker is busy; a result will wake us
                    self._starting += 1  # reserved before anything else can start one
            token = self._pool.try_acquire()
            if token is None:
                self._unreserve(worker)
                return True
            with self._lock:
                task = self._pending.popleft() if self._pending else None
            if task is None or not task.future.set_running_or_notify_cancel():
                self._unreserve(worker)
                self._release(token)
                continue
            if worker is None:
                try:
                    worker = self._spawn_worker()
                except BaseException as e:
                    self._unreserve(None)
                    self._release(token)
                    task.future.set_exception(e)
                    continue
                self._unreserve(None)
                self._adopt(worker)
            else:
                self._idle.pop()
            task.token = token
            task.worker = worker
            with self._lock:
                worker.task = task
            worker.outbox += _HEADER.pack(len(task.body)) + task.body
            task.body = b""
            self._flush(worker)

    def _unreserve(self, worker: _Worker | None) -> None:
        """Give back the start reserved in _dispatch (only when it had no idle worker)."""
        if worker is None:
            with self._lock:
                self._starting -= 1

    def _start_worker(self) -> _Worker:
        worker = self._spawn_worker()
        self._adopt(worker)
        return worker

    def _spawn_worker(self) -> _Worker:
        """Start a worker process; it is not watched until :meth:`_adopt`."""
        with _spawn_lock:
            task_r, task_w = os.pipe()
            result_r, result_w = os.pipe()
            with _parent_fds_lock:
                _parent_fds.update((task_w, result_r))
                inherited = tuple(_parent_fds)
            try:
                if self._context.get_start_method() == "fork":
                    fds: tuple[Any, ...] = (task_r, result_w)
                    closing = inherited  # fork copies every fd: drop the parent's ends
                else:
                    fds = (_child.ResultFd(task_r), _child.ResultFd(result_w))
                    closing = ()
                process = self._context.Process(  # type: ignore[attr-defined]
                    target=_worker_main,
                    args=(
                        *fds,
                        self._pool,
                        self._initializer,
                        self._initargs,
                        self._max_tasks,
                        closing,
                        self._main_path,
                    ),
                    name="makejobs-worker",
                    daemon=True,
                )
                process.start()
            except BaseException:
                with _parent_fds_lock:
                    _parent_fds.difference_update((task_w, result_r))
                for fd in (task_r, task_w, result_r, result_w):
                    os.close(fd)
                raise
            # The child's ends go before the next fork can copy them.
            os.close(task_r)
            os.close(result_w)
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        return _Worker(process, task_w, result_r)

    def _adopt(self, worker: _Worker) -> None:
        """Watch *worker* (manager thread only)."""
        with self._lock:
            self._workers[worker.result_r] = worker
        self._poller.register(worker.result_r, select.POLLIN)

    def _adopt_new_workers(self) -> None:
        with self._lock:
            new, self._new_workers = self._new_workers, []
        for worker in new:
            self._adopt(worker)
            self._idle.append(worker)

    def _flush(self, worker: _Worker) -> None:
        """Write as much of the worker's outbox as the pipe takes now."""
        if not worker.outbox or worker.task_w < 0:
            return
        try:
            written = os.write(worker.task_w, worker.outbox)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the worker died; its result pipe will report it
        del worker.outbox[:written]
        if worker.outbox:
            self._poller.register(worker.task_w, select.POLLOUT)

    def _on_writable(self, fd: int, poller: select.poll) -> None:
        for worker in self._workers.values():
            if worker.task_w == fd:
                poller.unregister(fd)
                self._flush(worker)  # registers again if some is left
                return
        poller.unregister(fd)

    def _on_result_ready(self, worker: _Worker, poller: select.poll) -> None:
        eof = False
        while True:
            try:
                chunk = os.read(worker.result_r, 1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            worker.inbox += chunk
        while len(worker.inbox) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(worker.inbox)
            end = _HEADER.size + length
            if len(worker.inbox) < end:
                break
            body = bytes(worker.inbox[_HEADER.size : end])
            del worker.inbox[:end]
            self._on_frame(worker, body)
        if eof:
            poller.unregister(worker.result_r)
            self._on_worker_exit(worker)

    def _on_frame(self, worker: _Worker, body: bytes) -> None:
        try:
            _task_id, kind, payload = pickle.loads(body)
        except Exception as e:
            _task_id, kind, payload = (
                -2,
                _RAISED,
                (
                    RuntimeError(f"a task's result could not be unpickled here: {e!r}"),
                    None,
                ),
            )
        if kind == _INIT_FAILED:
            reason = f"a worker's initializer raised:\n{payload}"
            self._break(reason)
            with self._lock:
                task, worker.task = worker.task, None
            if task is not None:
                self._finish(task)
                task.future.set_exception(BrokenProcessPool(reason))
            return
        # A worker runs one task at a time, so a frame is about its current
        # task, even one whose id it could not read (its arguments failed to
        # unpickle there).
        with self._lock:
            task, worker.task = worker.task, None
            doomed = worker.doomed
        if task is None:
            return
        self._finish(task)
        if kind == _OK:
            task.future.set_result(payload)
        else:
            exc, text = payload
            task.future.set_exception(_child.attach_traceback(exc, text))
        worker.tasks_done += 1
        if kind == _LAST or (self._max_tasks is not None and worker.tasks_done >= self._max_tasks):
            return  # it exits by itself; its end-of-file cleans up
        if doomed:
            self._retire(worker)  # a signal is on its way to it: no new task
            return
        if not self._shutdown or self._pending:
            self._idle.append(worker)
        else:
            self._retire(worker)

    def _on_worker_exit(self, worker: _Worker) -> None:
        """The worker's result pipe hit end-of-file: it exited or died."""
        with self._lock:  # see kill(): no reaping while a signal may be sent to it
            worker.process.join()
            self._workers.pop(worker.result_r, None)
        if worker in self._idle:
            self._idle.remove(worker)
        if worker.task_w >= 0:
            try:
                self._poller.unregister(worker.task_w)
            except KeyError:
                pass
        worker.close_pipes()
        task = worker.task
        if task is not None:
            worker.task = None
            self._finish(task)
            task.future.set_exception(
                SubmissionDied(
                    describe_exit(worker.pid, worker.process.exitcode),
                    pid=worker.pid,
                    exitcode=worker.process.exitcode,
                )
            )
        worker.process.close()

    def _finish(self, task: _Task) -> None:
        if task.token is not None:
            self._release(task.token)
            task.token = None

    def _release(self, token: Token) -> None:
        try:
            self._pool.release(token)
        except PoolBroken as e:
            import warnings

            warnings.warn(str(e), JobserverUnavailable, stacklevel=2)

    def _retire(self, worker: _Worker) -> None:
        """Ask an idle worker to exit by closing its task pipe."""
        if worker.task_w >= 0:
            os.close(worker.task_w)
            worker.task_w = -1

    def _break(self, reason: str) -> None:
        with self._lock:
            self._broken = reason
            self._shutdown = True
            pending = list(self._pending)
            self._pending.clear()
        for task in pending:
            if task.future.set_running_or_notify_cancel():
                task.future.set_exception(BrokenProcessPool(reason))

    def _stop_workers(self) -> None:
        self._adopt_new_workers()
        for worker in list(self._workers.values()):
            self._retire(worker)
        for worker in list(self._workers.values()):
            if worker.task is not None:
                worker.process.kill()
            worker.process.join()
            if worker.task is not None:
                self._finish(worker.task)
                task, worker.task = worker.task, None
                if not task.future.done():
                    task.future.set_exception(
                        SubmissionDied("the executor shut down while the task ran", pid=worker.pid)
                    )
            worker.close_pipes()
            worker.process.close()
        with self._lock:
            self._workers.clear()
        self._idle.clear()

    def _close_resources(self) -> None:
        # Caller holds self._lock.
        with _parent_fds_lock:
            _parent_fds.difference_update((self._wake_r, self._wake_w))
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._wake_r = self._wake_w = -1
        _live_managers.discard(self)
        if self._owns_pool and not self._pool.closed:
            self._pool.close()


class JobserverExecutor(Executor):
    """A :class:`concurrent.futures.Executor` whose running tasks each hold one pool token.

    Args:
        max_workers: the most worker processes at once; default: the pool's
            size when known, else the usable CPUs. The pool may allow fewer
            tasks at a time; idle workers hold no token.
        jobserver: share this :class:`~makejobs.Jobserver`'s pool (default:
            join the pool the environment advertises, else create one sized
            to the CPUs; an advertised but unusable pool gives a
            :class:`~makejobs.errors.JobserverUnavailable` warning and one task
            at a time).
        mp_context: the multiprocessing context that starts workers. Default:
            the default context, but ``forkserver`` instead of ``fork``, since
            forking a process with threads is unsafe.
        initializer, initargs: run in each worker before its first task; if
            it raises, pending and later tasks fail with
            :class:`~concurrent.futures.process.BrokenProcessPool`.
        max_tasks_per_child: replace a worker after this many tasks (1: a
            fresh process per task).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        jobserver: Jobserver | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
    ) -> None:
        self._manager = _Manager(
            max_workers,
            jobserver=jobserver,
            mp_context=mp_context,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_child=max_tasks_per_child,
        )
        # Dropped without shutdown(): finish the pending work, then clean up.
        weakref.finalize(self, self._manager.shutdown, False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StdFuture[Any]:
        """Schedule ``fn(*args, **kwargs)``; return a standard Future.

        A pickling failure is set on the future, as ProcessPoolExecutor does.

        Raises:
            RuntimeError: after :meth:`shutdown`, or in a child of the process
                that created the executor.
            BrokenProcessPool: the worker initializer failed.
        """
        return self._manager.submit(fn, *args, **kwargs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """Like :meth:`concurrent.futures.Executor.map`; *chunksize* calls go to a task."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        chunks = _chunks(zip(*iterables), chunksize)
        results = super().map(_call_chunk, itertools.repeat(fn), chunks, timeout=timeout)
        return itertools.chain.from_iterable(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; finish (or with *cancel_futures*, cancel) pending tasks.

        With *wait* (the default) returns once every worker has exited and
        every token is back; otherwise returns at once and the manager thread
        finishes in the background (interpreter exit still waits for it).
        """
        self._manager.shutdown(wait, cancel_futures=cancel_futures)

    def kill(self, future: StdFuture[Any], signum: int = signal.SIGTERM) -> bool:
        """Cancel a *running* task by sending *signum* to its worker.

        The future then fails with :class:`~makejobs.errors.SubmissionDied`
        (unless the task finished first) and a new worker takes the dead one's
        place. A pending future is simply cancelled.

        Returns:
            True if a signal was sent or the future was cancelled.
        """
        return self._manager.kill(future, signum)

    @property
    def pool(self) -> TokenPool:
        """The token pool running tasks hold tokens of."""
        return self._manager.pool


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _chunks(iterable: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(iterable, size))
        if not chunk:
            return
        yield chunk


def _call_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]
