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
  Results are read as they arrive, each straight into one buffer of its
  size and unpickled from there, and the worker gets its next task before
  that unpickling: a multi-megabyte result costs the kernel's copy and the
  unpickling, and nothing more.
* **Workers that need not import.** With the forkserver start method the
  server imports this module once (see :func:`_preload_in_forkserver`), so
  a worker, a fork of it, is ready without importing makejobs itself.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor
from concurrent.futures import Future as StdFuture
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

from . import _child, _frames, _worker
from .errors import JobserverUnavailable, PoolBroken, SubmissionDied
from .future import describe_exit
from .jobserver import Jobserver, default_pool, usable_cpus
from .pool import Token, TokenPool

__all__ = ["JobserverExecutor"]

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
        self.reader = _frames.FrameReader()
        self.outbox: list[memoryview] = []  # what is left to write of the task sent to it
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


def _preload_in_forkserver(context: BaseContext) -> None:
    """Have the fork server import this module before it forks its first worker.

    A forkserver worker is a fork of the server, so what the server imported
    once, every worker has for free; otherwise each worker imports this module
    (and through it makejobs, multiprocessing and concurrent.futures) itself
    before its first task, tens of milliseconds per worker. This module is
    added to whatever preload list is set (by default ``["__main__"]``), never
    replaces it, and only if the server is not running yet: one server serves
    the whole process and is not restarted for us.
    """
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    preload = getattr(server, "_preload_modules", None)
    if getattr(server, "_forkserver_pid", 0) is not None or not isinstance(preload, list):
        return  # running already (or a multiprocessing that we do not know)
    if __name__ not in preload and _server_would_import_this_file():
        context.set_forkserver_preload([*preload, __name__])


def _server_would_import_this_file() -> bool:
    """Whether a fork server started now would find this package where we did.

    Before Python 3.12.8 and 3.13.1 the server ignores the sys.path it is
    handed (CPython issue 117378): it imports its preload list on a fresh
    interpreter's path, that is the current directory, PYTHONPATH, then the
    site directories. Another copy of the package found there first (a
    checkout in the current directory, say, while a script put its own copy
    on sys.path) would give the workers other code than the parent runs, so
    the first copy on that path must be this one. Not found there at all:
    no preload (the workers import this module as before).
    """
    import site

    package = __name__.partition(".")[0]
    here = os.path.abspath(__file__)
    for _ in range(__name__.count(".") + 1):
        here = os.path.dirname(here)  # the directory the package was imported from
    flags = sys.flags
    path: list[str] = []
    if not (flags.isolated or getattr(flags, "safe_path", False)):
        path.append(os.getcwd())
    if not flags.ignore_environment:
        path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    try:
        if site.ENABLE_USER_SITE and not flags.no_user_site:
            path.append(site.getusersitepackages())
        path += site.getsitepackages()
    except AttributeError:  # pragma: no cover - a site module without them (python -S)
        pass
    for entry in path:
        candidate = os.path.join(entry, package)
        if os.path.isdir(candidate) or os.path.isfile(candidate + ".py"):
            try:
                return os.path.samefile(entry, here)
            except OSError:
                return False
    return False


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
        _preload_in_forkserver(self._context)
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
        changed = True  # something happened that dispatching or finishing depends on
        while True:
            if changed:
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
            # Only a wake byte (submit, shutdown), a token, a whole frame or a worker's exit
            # can change what to dispatch. A large result arrives in pipe-sized pieces, and
            # a piece that does not finish its frame goes straight back to poll().
            changed = False
            for fd, _mask in poller.poll():
                if fd == self._wake_r:
                    with self._lock:
                        self._wake_sent = False
                        _drain(self._wake_r)
                    changed = True
                elif fd == pool_fd:
                    changed = True  # _dispatch takes the token
                elif fd in self._workers:
                    changed |= self._on_result_ready(self._workers[fd], poller)
                else:
                    self._on_writable(fd, poller)

    def _running(self) -> int:
        return sum(1 for w in self._workers.values() if w.task is not None)

    def _dispatch(self, start_workers: bool = True) -> bool:
        """Hand pending tasks to workers while tokens last. True if waiting for a token.

        Without *start_workers*, only idle workers get tasks.
        """
        while True:
            with self._lock:
                if not self._pending:
                    return False
            worker = self._idle[-1] if self._idle else None
            if worker is None:
                if not start_workers:
                    return False
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
            worker.outbox += _frames.frame_parts(_frames.TASK, task.body)
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
                    target=_worker.worker_main,
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
        # Tasks go to the top of the idle stack (the last one in). A worker just
        # started may still be starting up, so new ones go underneath the warm
        # ones, the first started on top of the others.
        self._idle[:0] = reversed(new)

    def _flush(self, worker: _Worker) -> None:
        """Write as much of the worker's outbox as the pipe takes now."""
        if not worker.outbox or worker.task_w < 0:
            return
        try:
            written = os.writev(worker.task_w, worker.outbox)
        except BlockingIOError:
            written = 0
        except OSError:
            return  # the worker died; its result pipe will report it
        worker.outbox = _frames.advance(worker.outbox, written)
        if worker.outbox:
            self._poller.register(worker.task_w, select.POLLOUT)

    def _on_writable(self, fd: int, poller: select.poll) -> None:
        for worker in self._workers.values():
            if worker.task_w == fd:
                poller.unregister(fd)
                self._flush(worker)  # registers again if some is left
                return
        poller.unregister(fd)

    def _on_result_ready(self, worker: _Worker, poller: select.poll) -> bool:
        """Read what the worker sent; True if a frame was whole or the worker is gone."""
        try:
            frame = worker.reader.read(worker.result_r)
        except EOFError:
            # It exited or died; a frame it had only begun to send dies with it.
            poller.unregister(worker.result_r)
            self._on_worker_exit(worker)
            return True
        if frame is None:
            return False
        self._on_frame(worker, *frame)
        return True

    def _on_frame(self, worker: _Worker, kind: int, body: memoryview) -> None:
        """A whole result frame: settle the worker, then the task's future.

        The worker gets its next task before the result is unpickled, so that
        it works while this thread copies a large result out of the buffer.
        """
        # A worker runs one task at a time, so a frame is about its current
        # task, even one whose id it could not read (its arguments failed to
        # unpickle there).
        with self._lock:
            task, worker.task = worker.task, None
            doomed = worker.doomed
        if kind == _frames.INIT_FAILED:
            reason = f"a worker's initializer raised:\n{_load(kind, body)[1]}"
            self._break(reason)
            if task is not None:
                self._finish(task)
                task.future.set_exception(BrokenProcessPool(reason))
            return
        if task is None:
            return
        self._finish(task)
        worker.tasks_done += 1
        if kind == _frames.LAST or (
            self._max_tasks is not None and worker.tasks_done >= self._max_tasks
        ):
            pass  # it exits by itself; its end-of-file cleans up
        elif doomed:
            self._retire(worker)  # a signal is on its way to it: no new task
        elif not self._shutdown or self._pending:
            self._idle.append(worker)
            self._dispatch(start_workers=False)
        else:
            self._retire(worker)
        kind, payload = _load(kind, body)
        if kind == _frames.OK:
            task.future.set_result(payload)
        else:
            exc, text = payload
            task.future.set_exception(_child.attach_traceback(exc, text))

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
        results = super().map(_worker.call_chunk, itertools.repeat(fn), chunks, timeout=timeout)
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


def _load(kind: int, body: memoryview) -> tuple[int, Any]:
    """A result frame's kind and payload; one that cannot be unpickled here is an error."""
    try:
        # Straight from the reader's buffer, no copy first; the payload is copied out of
        # it, so the buffer may take the next frame.
        _task_id, payload = pickle.loads(body)
    except Exception as e:
        error = RuntimeError(f"a task's result could not be unpickled here: {e!r}")
        return (_frames.RAISED if kind == _frames.OK else kind), (error, None)
    return kind, payload


def _chunks(iterable: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(iterable, size))
        if not chunk:
            return
        yield chunk
