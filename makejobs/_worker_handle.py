"""The executor's handle on one worker process: its start, its pipes, its end.

The worker's own side is :mod:`makejobs._worker`; this is the parent's. A
handle owns the parent's ends of the worker's two pipes (tasks down, results
back) and, once the result pipe has ended, an fd that reports the process's
end without anybody waiting for it: a task that closed its descriptors may run
on for a long time after its result pipe ended, and the executor's manager
thread must not wait for it.

It also keeps the list of every fd the executors opened that a worker started
with the fork method must not keep (see :data:`_parent_fds`).
"""

from __future__ import annotations

import os
import threading
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Any

from . import _child, _forkserver, _frames, _worker, guardian

if TYPE_CHECKING:
    from .pool import Token, TokenPool

__all__ = ["Task", "WorkerHandle", "close_parent_fd", "open_parent_pipe"]

_HAVE_PIDFD = hasattr(os, "pidfd_open")

# -- descriptors a forked worker must not keep ------------------------------------------------
#
# A worker started with the fork method copies every fd of this process. It must
# close the executors' own ends (a worker holding another worker's task pipe would
# keep that worker from ever seeing end-of-file), and only those: a number still
# listed after its pipe was closed can be the number of the worker's own new pipe.
# So every parent end is listed from its creation (under _spawn_lock, which is held
# from a worker's pipes to its start, so no worker is forked between the two) and
# unlisted in the same breath as it is closed (under _parent_fds_lock).

_parent_fds: set[int] = set()
_parent_fds_lock = threading.Lock()
_spawn_lock = threading.Lock()


def open_parent_pipe() -> tuple[int, int]:
    """``os.pipe()`` for an executor's own use: no forked worker keeps a copy."""
    with _spawn_lock:
        r, w = os.pipe()
        with _parent_fds_lock:
            _parent_fds.update((r, w))
    return r, w


def close_parent_fd(fd: int) -> None:
    """Close an fd of :func:`open_parent_pipe` (or a worker's pipe end); never twice."""
    with _parent_fds_lock:
        _parent_fds.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


class Task:
    """One submitted call: its future, its pickled body until sent, its token while running."""

    __slots__ = ("body", "future", "locked_since", "token")

    def __init__(self, future: Any, body: bytes) -> None:
        self.future = future
        self.body = body
        self.token: Token | None = None
        self.locked_since: float | None = None  # when its future's lock was first found taken


class WorkerHandle:
    """One worker process and the parent's ends of its two pipes."""

    def __init__(self, process: Any, method: str, task_w: int, result_r: int) -> None:
        self.process = process
        self.method = method  # its start method
        self.pid: int = process.pid
        self.task_w = task_w
        self.result_r = result_r
        # Once the result pipe has ended: the fd that reports the process's end.
        self.exit_fd = -1
        self._pidfd = -1  # ours to close (exit_fd may be multiprocessing's sentinel)
        self.reader = _frames.FrameReader()
        self.outbox: list[memoryview] = []  # what is left to write of the task sent to it
        self.task: Task | None = None  # written under the manager's lock
        self.tasks_done = 0  # a worker with max_tasks_per_child exits by itself
        # kill() signalled it: it gets no further task, whether or not it dies.
        self.doomed = False

    @classmethod
    def start(
        cls,
        context: BaseContext,
        pool: TokenPool,
        initializer: Any,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        main_path: str | None,
    ) -> WorkerHandle:
        """Start a worker process (see :func:`makejobs._worker.worker_main`).

        Raises:
            ForkServerFailed: the fork server died, and a new one failed too.
            Exception: whatever else starting the process raised.
        """
        # A worker holds its executor's life pipe, as a job does (see
        # makejobs.guardian): if this process is killed, the guardian stops the
        # workers before it gives back the tokens of the tasks they were running.
        life = guardian.life_fd()
        with _spawn_lock:
            task_r, task_w = os.pipe()
            result_r, result_w = os.pipe()
            with _parent_fds_lock:
                _parent_fds.update((task_w, result_r))
                inherited = tuple(_parent_fds.difference((task_r, result_w)))
            fds: tuple[Any, ...]
            method = context.get_start_method()
            if method == "fork":
                fds = (task_r, result_w)
                closing = inherited  # fork copies every fd: drop the executors' own ends
                held = None  # inherited with the rest
            else:
                fds = (_child.ResultFd(task_r), _child.ResultFd(result_w))
                closing = ()
                held = None if life < 0 else _child.ResultFd(life)
            args = (*fds, pool, initializer, initargs, max_tasks, closing, main_path, held)

            def make() -> Any:
                return context.Process(  # type: ignore[attr-defined]
                    target=_worker.worker_main, args=args, name="makejobs-worker", daemon=True
                )

            try:
                process = _forkserver.start_process(make, context)
            except BaseException:
                close_parent_fd(task_w)
                close_parent_fd(result_r)
                raise
            finally:
                # The child's ends go before the next fork can copy them.
                os.close(task_r)
                os.close(result_w)
        os.set_blocking(task_w, False)
        os.set_blocking(result_r, False)
        return cls(process, method, task_w, result_r)

    def retire(self) -> None:
        """Close the task pipe: an idle worker exits when it reads its end."""
        if self.task_w >= 0:
            close_parent_fd(self.task_w)
            self.task_w = -1

    def close_pipes(self) -> None:
        self.retire()
        if self.result_r >= 0:
            close_parent_fd(self.result_r)
            self.result_r = -1

    def ended(self) -> int | None:
        """The exit code if the process has ended (then it is reaped), else None; never waits."""
        code: int | None = self.process.exitcode
        return code

    def watch_end(self) -> int:
        """An fd that polls readable once the process has ended; kept in :attr:`exit_fd`.

        Forkserver: the pipe on which the server reports the exit (the worker
        has no end of it). Fork and spawn: a pidfd where the system has them,
        else multiprocessing's sentinel, whose other end is the worker's: a
        task can close it early, so a readable sentinel is checked with
        :meth:`ended` before it is believed.
        """
        fd = -1
        if self.method == "forkserver":
            fd = self.process.sentinel
        elif _HAVE_PIDFD:
            try:
                fd = self._pidfd = os.pidfd_open(self.pid)
            except OSError:  # an old kernel, or it is gone already
                pass
        if fd < 0:
            fd = self.process.sentinel
        self.exit_fd = fd
        return fd

    def release(self) -> None:
        """Let go of an ended process: its pipes, its pidfd, the Process object."""
        self.close_pipes()
        self.exit_fd = -1
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        self.process.close()
