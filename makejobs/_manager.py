"""The executor's manager: its state, and the one thread that hands out tasks.

Everything :class:`~makejobs.JobserverExecutor` does happens here; the public
class only checks its arguments and forwards. Why this module is long: it is
one state machine, the manager thread's, whose every transition shares the
same few structures; the parts that stand alone (the worker's side, frames,
settling futures, the fork server, a worker's handle) are modules of their own.
The design, and why:

* **Tokens follow tasks, not workers.** A task is handed to a worker only once
  a token is held for it (this process's implicit slot first), and the token
  goes back the moment its result arrives, or once the worker's process has
  ended if it dies. An idle worker holds nothing.
* **One manager thread that sleeps in poll().** It wakes on a submission (a
  byte on a wake pipe), a result (worker pipes), a free token (the pool fd),
  room to send a large task (POLLOUT) or a worker's end (its pidfd or
  sentinel). Results are read as they arrive, each straight into one buffer
  of its size and unpickled from there, and the worker gets its next task
  before that unpickling.
* **The manager never waits for anybody.** Not for a worker: a worker whose
  result pipe ended is watched until its process ends, never joined (a task
  can close its descriptors and run on). Not for a future's lock: a user
  thread interrupted by SIGINT at the wrong instant can keep it forever (see
  :mod:`makejobs._settle`), so an outcome that cannot be delivered yet is
  retried a little later while every other result, submission and token goes
  on. Only such retries ever make the thread wake on a timer.
* **One lock, held briefly.** ``self._lock`` guards what submitters,
  ``kill()``, ``shutdown()`` and ``repr()`` share with the manager thread; it
  is only ever held for a few instructions, and nothing that can block
  (joining a process, a future's lock, a callback) happens under it.
"""

from __future__ import annotations

import itertools
import os
import pickle
import select
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future as StdFuture
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

from . import _child, _frames, _settle
from ._worker_handle import Task, WorkerHandle, close_parent_fd, open_parent_pipe
from .errors import SubmissionDied, describe_exit
from .pool import Token, TokenPool

__all__ = ["LOCKED_FUTURE_GRACE", "Manager"]

#: A pending task whose future another thread keeps locked this long while the
#: executor shuts down is given up: it never runs, and is cancelled once the
#: lock is free. (A lock held for a moment is retried; only a lost one is this old.)
LOCKED_FUTURE_GRACE = 1.0
# Retries of what waits for a future's lock, or for a worker's end that no fd
# reports: the first soon, then ever more rarely, up to this.
_RETRY_FIRST = 0.001
_RETRY_MAX = 0.25
_RETRY_MAX_AFTER_SHUTDOWN = 1.0

_live_managers: weakref.WeakSet[Manager] = weakref.WeakSet()


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


class Manager:
    """The state of one executor, and its manager thread.

    Kept apart from the executor object so that the thread holds no reference
    to it: an executor dropped without ``shutdown()`` is collected, and its
    finalizer shuts the manager down (as ProcessPoolExecutor does).
    """

    def __init__(
        self,
        pool: TokenPool,
        owns_pool: bool,
        max_workers: int,
        context: BaseContext,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks_per_child: int | None,
    ) -> None:
        self._pool = pool
        self._owns_pool = owns_pool
        self._max_workers = max_workers
        self._context = context
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        self._main_path = os.path.abspath(main_file) if main_file else None

        self._lock = threading.Lock()
        self._pending: deque[Task] = deque()
        # Pending tasks whose future another thread had locked when they were due.
        self._held_back: list[Task] = []
        # Outcomes for futures another thread had locked: (future, how, value).
        self._unsettled: list[tuple[StdFuture[Any], int, Any]] = []
        self._ids = itertools.count()
        self._shutdown = False
        self._cancelling = False  # shutdown(cancel_futures=True): what is pending never runs
        self._broken: str | None = None
        self._wake_r, self._wake_w = open_parent_pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_sent = False
        self._thread: threading.Thread | None = None
        # Set when every worker is gone and every token back; the thread may
        # linger after that to deliver outcomes to futures that were locked.
        self._finished = threading.Event()
        self._lingering = False
        self._pid = os.getpid()
        self._workers: set[WorkerHandle] = set()  # every worker process not yet reaped
        self._new_workers: list[WorkerHandle] = []  # started by submit(), not yet adopted
        self._starting = 0  # workers being started right now
        # Manager-thread state.
        self._idle: list[WorkerHandle] = []
        self._poller = select.poll()
        self._handlers: dict[int, tuple[Callable[[WorkerHandle], bool], WorkerHandle]] = {}
        self._unwatched: list[WorkerHandle] = []  # pipes ended; no fd reports their end
        self._retry_at: float | None = None
        self._retry_delay = _RETRY_FIRST
        _live_managers.add(self)

    # -- the Executor API (any thread) -------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> StdFuture[Any]:
        future: StdFuture[Any] = StdFuture()
        with self._lock:
            self._check_open()
            task_id = next(self._ids)
        try:
            body = pickle.dumps((task_id, fn, args, kwargs), pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            # As ProcessPoolExecutor does: the failure belongs to this future.
            future.set_exception(e)
            return future
        with self._lock:
            if self._shutdown:  # meanwhile
                self._check_open()  # raises, saying why
            # First: a thread that cannot start (a process or container limit)
            # raises here, before anything has changed.
            self._ensure_thread()
            task = Task(future, body)
            self._pending.append(task)
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
                worker = self._start_worker()
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
                self._workers.add(worker)
                self._new_workers.append(worker)
                self._wake()
        return future

    def _check_open(self) -> None:
        # Caller holds self._lock.
        if self._broken is not None:
            raise BrokenProcessPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if os.getpid() != self._pid:
            raise RuntimeError("a JobserverExecutor cannot be used in a forked child")

    def _worker_count(self) -> int:
        """Worker processes, ended or not, and being started (caller holds the lock)."""
        return len(self._workers) + self._starting

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            completed: list[StdFuture[Any]] = []
            if cancel_futures:
                self._cancelling = True
                tasks = [*self._pending, *self._held_back]
                self._pending.clear()
                self._held_back.clear()
                completed = self._settle_locked([(t.future, _settle.CANCEL, None) for t in tasks])
            thread = self._thread
            if thread is None:
                self._close_resources()
            else:
                self._wake()
        for future in completed:
            _settle.run_callbacks(future)
        if thread is None:
            self._finished.set()
        elif wait and thread is not threading.current_thread():
            self._finished.wait()
            with self._lock:
                lingering = self._lingering
            if not lingering:
                thread.join()

    def kill(self, future: StdFuture[Any], signum: int) -> bool:
        with self._lock:
            task = _withdraw(self._pending, future) or _withdraw(self._held_back, future)
            completed = self._settle_locked([(future, _settle.CANCEL, None)]) if task else []
        for done in completed:
            _settle.run_callbacks(done)
        if task is not None:
            return True
        if future.cancel():
            return True  # being handed to a worker right now: the manager tells its waiters
        with self._lock:
            # Under the lock: the worker cannot be handed another task, nor be
            # reaped (freeing its pid for reuse), before the signal is sent.
            for worker in self._workers:
                running = worker.task
                if running is not None and running.future is future:
                    worker.doomed = True
                    try:
                        os.kill(worker.pid, signum)
                    except ProcessLookupError:
                        return False
                    return True
        return False

    @property
    def pool(self) -> TokenPool:
        return self._pool

    def describe(self) -> str:
        """State, counts, start method and pool, for repr()."""
        with self._lock:
            if self._broken is not None:
                state = "broken"
            elif self._shutdown:
                state = "shutdown"
            else:
                state = "running"
            workers = self._worker_count()
            running = sum(1 for w in self._workers if w.task is not None)
            pending = len(self._pending) + len(self._held_back)
        return (
            f"{state} workers={workers}/{self._max_workers} running={running}"
            f" pending={pending} {self._context.get_start_method()} pool={self._pool!r}"
        )

    # -- delivering outcomes without waiting for a future's lock -----------------------------

    def _settle_locked(
        self, outcomes: list[tuple[StdFuture[Any], int, Any]]
    ) -> list[StdFuture[Any]]:
        """Deliver *outcomes* now where the future's lock is free, later where not.

        The caller holds self._lock, so the manager cannot finish between the
        attempt and the note of what is left. Returns the futures completed
        now, whose callbacks the caller runs once it has released the lock.
        """
        completed = []
        deferred = False
        for future, how, value in outcomes:
            done = _settle.try_complete(future, how, value)
            if done is None:
                self._unsettled.append((future, how, value))
                deferred = True
            elif done:
                completed.append(future)
        if deferred:
            self._wake()  # the manager retries the rest
        return completed

    def _complete(self, future: StdFuture[Any], how: int, value: Any) -> None:
        """Deliver an outcome from the manager thread (no lock held), or retry it later."""
        done = _settle.try_complete(future, how, value)
        if done:
            _settle.run_callbacks(future)
        elif done is None:
            with self._lock:
                self._unsettled.append((future, how, value))
            self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry_at is None:
            self._retry_at = time.monotonic() + self._retry_delay

    def _retry(self) -> None:
        """Try again what waited for a future's lock or for a worker's end."""
        self._retry_at = None
        self._retry_delay = min(2 * self._retry_delay, _RETRY_MAX)
        with self._lock:
            unsettled, self._unsettled = self._unsettled, []
            held, self._held_back = self._held_back, []
            self._pending.extendleft(reversed(held))  # in front, where they were
        for future, how, value in unsettled:
            self._complete(future, how, value)
        for worker in list(self._unwatched):
            self._try_reap(worker)

    # -- manager thread ---------------------------------------------------------------------

    def _ensure_thread(self) -> None:
        # Caller holds self._lock.
        if self._thread is None:
            thread = threading.Thread(target=self._manage, name="makejobs-executor", daemon=True)
            thread.start()  # may raise RuntimeError("can't start new thread")
            self._thread = thread

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
            try:
                self._stop_workers()
            finally:
                # Whatever happened: the fds go, and shutdown(wait=True) returns.
                with self._lock:
                    self._close_resources()
                    self._lingering = bool(self._unsettled)
                self._finished.set()
            self._deliver_late()

    def _deliver_late(self) -> None:
        """After shutdown: deliver what waits for a future's lock, whenever it comes free."""
        delay = _RETRY_FIRST
        while True:
            with self._lock:
                unsettled, self._unsettled = self._unsettled, []
                if not unsettled:
                    self._lingering = False
                    return
                completed = self._settle_locked(unsettled)
            for future in completed:
                _settle.run_callbacks(future)
            time.sleep(delay)  # a retry interval: nothing reports a lock coming free
            delay = min(2 * delay, _RETRY_MAX_AFTER_SHUTDOWN)

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
                if self._shutdown and self._work_is_over():  # once True, always True
                    return
                if want_pool != watching_pool:
                    if want_pool:
                        poller.register(pool_fd, select.POLLIN)
                    else:
                        poller.unregister(pool_fd)
                    watching_pool = want_pool
            timeout = None
            if self._retry_at is None:
                # Unlocked reads of list lengths: whoever adds to them wakes us after.
                if self._unsettled or self._held_back or self._unwatched:
                    self._schedule_retry()
                else:
                    self._retry_delay = _RETRY_FIRST
            if self._retry_at is not None:
                timeout = max(0.0, (self._retry_at - time.monotonic()) * 1000)
            # Only a wake byte (submit, shutdown), a token, a whole frame, a worker's end or
            # a retry can change what to dispatch. A large result arrives in pipe-sized
            # pieces, and a piece that does not finish its frame goes straight back to poll().
            changed = False
            for fd, _mask in poller.poll(timeout):
                if fd == self._wake_r:
                    with self._lock:
                        self._wake_sent = False
                        _drain(self._wake_r)
                    changed = True
                elif fd == pool_fd:
                    changed = True  # _dispatch takes the token
                else:
                    # None: unwatched by an earlier event of this same poll().
                    watched = self._handlers.get(fd)
                    if watched is not None:
                        changed |= watched[0](watched[1])
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._retry()
                changed = True

    def _work_is_over(self) -> bool:
        """Shut down, nothing pending, nothing running: time to stop the workers."""
        with self._lock:
            if not self._shutdown or self._pending:
                return False
            if any(w.task is not None for w in self._workers):
                return False
            if not self._held_back:
                return True
            now = time.monotonic()
            if any(now - (t.locked_since or now) < LOCKED_FUTURE_GRACE for t in self._held_back):
                return False
            # Their futures stayed locked by another thread: they never run,
            # and are cancelled once the lock is free (by _deliver_late).
            given_up, self._held_back = self._held_back, []
            self._unsettled += [(t.future, _settle.CANCEL, None) for t in given_up]
        import warnings

        warnings.warn(
            f"{len(given_up)} task(s) never started: another thread held their future's"
            f" lock for over {LOCKED_FUTURE_GRACE} s while the executor shut down;"
            " they are cancelled once the lock is free",
            RuntimeWarning,
            stacklevel=1,
        )
        return True

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
            task = self._next_task()
            if task is None:
                self._unreserve(worker)
                self._release(token)
                return False
            if worker is None:
                try:
                    worker = self._start_worker()
                except BaseException as e:
                    self._unreserve(None)
                    self._release(token)
                    self._complete(task.future, _settle.EXCEPTION, e)
                    continue
                with self._lock:
                    self._starting -= 1
                    self._workers.add(worker)
                self._adopt(worker)
            else:
                self._idle.pop()
            task.token = token
            with self._lock:
                worker.task = task
            worker.outbox += _frames.frame_parts(_frames.TASK, task.body)
            task.body = b""
            self._flush(worker)

    def _next_task(self) -> Task | None:
        """The next pending task, now marked running; None when none is left.

        Cancelled ones are dropped (and their waiters told); one whose future
        another thread holds locked is held back and tried again later.
        """
        while True:
            with self._lock:
                if not self._pending:
                    return None
                task = self._pending.popleft()
            started = _settle.try_start(task.future)
            if started:
                return task
            if started is None:
                if task.locked_since is None:
                    task.locked_since = time.monotonic()
                with self._lock:
                    if self._cancelling:
                        self._unsettled.append((task.future, _settle.CANCEL, None))
                    else:
                        self._held_back.append(task)
                self._schedule_retry()

    def _unreserve(self, worker: WorkerHandle | None) -> None:
        """Give back the start reserved in _dispatch (only when it had no idle worker)."""
        if worker is None:
            with self._lock:
                self._starting -= 1

    def _start_worker(self) -> WorkerHandle:
        """Start a worker process; it is not watched until :meth:`_adopt`."""
        return WorkerHandle.start(
            self._context,
            self._pool,
            self._initializer,
            self._initargs,
            self._max_tasks,
            self._main_path,
        )

    def _adopt(self, worker: WorkerHandle) -> None:
        """Watch *worker*'s result pipe (manager thread only)."""
        self._watch(worker.result_r, select.POLLIN, self._on_result_ready, worker)

    def _adopt_new_workers(self) -> None:
        with self._lock:
            new, self._new_workers = self._new_workers, []
        for worker in new:
            self._adopt(worker)
        # Tasks go to the top of the idle stack (the last one in). A worker just
        # started may still be starting up, so new ones go underneath the warm
        # ones, the first started on top of the others.
        self._idle[:0] = reversed(new)

    def _watch(
        self,
        fd: int,
        events: int,
        handler: Callable[[WorkerHandle], bool],
        worker: WorkerHandle,
    ) -> None:
        self._handlers[fd] = (handler, worker)
        self._poller.register(fd, events)

    def _unwatch(self, fd: int) -> None:
        if fd >= 0 and self._handlers.pop(fd, None) is not None:
            self._poller.unregister(fd)

    def _flush(self, worker: WorkerHandle) -> None:
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
            self._watch(worker.task_w, select.POLLOUT, self._on_writable, worker)

    def _on_writable(self, worker: WorkerHandle) -> bool:
        self._unwatch(worker.task_w)
        self._flush(worker)  # watches again if some is left
        return False

    def _on_result_ready(self, worker: WorkerHandle) -> bool:
        """Read what the worker sent; True if a frame was whole or the pipe ended."""
        try:
            frame = worker.reader.read(worker.result_r)
        except EOFError:
            # It exited, died, or closed its end; a frame it had only begun to send is lost.
            self._on_result_eof(worker)
            return True
        if frame is None:
            return False
        self._on_frame(worker, *frame)
        return True

    def _on_frame(self, worker: WorkerHandle, kind: int, body: memoryview) -> None:
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
                self._complete(task.future, _settle.EXCEPTION, BrokenProcessPool(reason))
            return
        if task is None:
            return
        self._finish(task)
        worker.tasks_done += 1
        if kind == _frames.DIED or (
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
            self._complete(task.future, _settle.RESULT, payload)
        else:
            exc, text = payload
            self._complete(task.future, _settle.EXCEPTION, _child.attach_traceback(exc, text))

    def _on_result_eof(self, worker: WorkerHandle) -> None:
        """The worker's result pipe ended: it exited, died, or closed its descriptors.

        Its process is not joined here: a task that closed its fds may run on
        for a long time. Its end is watched instead, and until then it keeps
        its place among the workers and its task keeps its token.
        """
        self._unwatch(worker.result_r)
        self._unwatch(worker.task_w)
        if worker in self._idle:
            self._idle.remove(worker)
        worker.close_pipes()
        if self._try_reap(worker):
            return
        fd = worker.watch_end()
        if not self._try_reap(worker):  # not ended meanwhile (or reaped by multiprocessing)
            self._watch(fd, select.POLLIN, self._on_exit, worker)

    def _on_exit(self, worker: WorkerHandle) -> bool:
        """The fd reporting a worker's end is readable."""
        if not self._try_reap(worker):
            # A sentinel whose other end the task closed: check on a timer from now on.
            self._unwatch(worker.exit_fd)
            self._unwatched.append(worker)
        return True

    def _try_reap(self, worker: WorkerHandle) -> bool:
        """If the worker's process has ended: forget it, and fail the task it ran."""
        with self._lock:  # see kill(): no reaping while a signal may be sent to it
            exitcode = worker.ended()
            if exitcode is None:
                return False
            self._workers.discard(worker)
            task, worker.task = worker.task, None
        self._forget(worker)
        if task is not None:
            self._finish(task)
            died = SubmissionDied(
                describe_exit(worker.pid, exitcode), pid=worker.pid, exitcode=exitcode
            )
            self._complete(task.future, _settle.EXCEPTION, died)
        return True

    def _forget(self, worker: WorkerHandle) -> None:
        """Stop watching a worker whose process has ended, and release it."""
        for fd in (worker.result_r, worker.task_w, worker.exit_fd):
            self._unwatch(fd)
        if worker in self._unwatched:
            self._unwatched.remove(worker)
        worker.release()

    def _finish(self, task: Task) -> None:
        if task.token is not None:
            self._release(task.token)
            task.token = None

    def _release(self, token: Token) -> None:
        self._pool.release(token, warn_if_broken=True)

    def _retire(self, worker: WorkerHandle) -> None:
        """Ask an idle worker to exit by closing its task pipe."""
        self._unwatch(worker.task_w)
        worker.retire()

    def _break(self, reason: str) -> None:
        with self._lock:
            self._broken = reason
            self._shutdown = True
            tasks = [*self._pending, *self._held_back]
            self._pending.clear()
            self._held_back.clear()
            outcomes = [(t.future, _settle.EXCEPTION, BrokenProcessPool(reason)) for t in tasks]
            completed = self._settle_locked(outcomes)
        for future in completed:
            _settle.run_callbacks(future)

    def _stop_workers(self) -> None:
        self._adopt_new_workers()
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            self._retire(worker)
        for worker in workers:
            with self._lock:  # gone from kill()'s view before it is reaped
                self._workers.discard(worker)
                task, worker.task = worker.task, None
            if task is not None:
                worker.process.kill()
            worker.process.join()  # no lock held: nobody waits for this but shutdown()
            if task is not None:
                self._finish(task)
                died = SubmissionDied("the executor shut down while the task ran", pid=worker.pid)
                self._complete(task.future, _settle.EXCEPTION, died)
            self._forget(worker)
        self._idle.clear()

    def _close_resources(self) -> None:
        # Caller holds self._lock. Idempotent.
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                close_parent_fd(fd)
        self._wake_r = self._wake_w = -1
        _live_managers.discard(self)
        if self._owns_pool and not self._pool.closed:
            self._pool.close()


def _withdraw(tasks: deque[Task] | list[Task], future: StdFuture[Any]) -> Task | None:
    """Remove and return the task of *future* from *tasks*, if it is there."""
    for task in tasks:
        if task.future is future:
            tasks.remove(task)
            return task
    return None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _load(kind: int, body: memoryview) -> tuple[int, Any]:
    """A result frame's kind and payload; one that cannot be unpickled here is an error.

    That error is the future's exception, of its own type (ProcessPoolExecutor
    breaks the whole pool on it instead).
    """
    try:
        # Straight from the reader's buffer, no copy first; the payload is copied out of
        # it, so the buffer may take the next frame.
        _task_id, payload = pickle.loads(body)
    except Exception as e:
        return (_frames.RAISED if kind == _frames.OK else kind), (e, None)
    return kind, payload
