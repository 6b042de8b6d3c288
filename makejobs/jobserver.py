"""Jobserver: run Python callables in their own processes on a shared token pool.

Each job is one process holding one slot of the pool; the slot goes back
only after the process is reaped. The pool is the same one make, ninja and
cargo use, so a Python program under ``make -j8`` and everything it starts
never run more than 8 jobs between them.

Nesting rule (how recursion never deadlocks, at any depth, even with one
slot): like every process make starts, every process has an *implicit* slot,
the one it runs on. A job's first concurrent sub-job runs on that implicit
slot, lent by the job while it waits for its sub-jobs, exactly as a
recursive make lends its slot to its first child. Further concurrent
sub-jobs each need a token from the pool. So a chain of jobs that each wait
on one sub-job always makes progress, and ``N`` bounds the work running at
any time, counting every cooperating process.

There are no background threads: futures complete, tokens return and
callbacks run inside whichever makejobs call is in progress (``submit``,
``map``, ``done``, ``wait``, ``result``, ``when_done``,
``reclaim_resources``). Every call first reclaims whatever has finished.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from multiprocessing.context import BaseContext
from time import monotonic
from typing import Any, TypeVar, Union

from . import _child, _forkserver, _posix, guardian
from ._checks import check_buffersize, check_count, check_timeout
from ._engine import Engine
from .errors import Blocked, CallbackRaised, JobserverUnavailable, JobStartFailed
from .future import Future, _MultiprocessingProcess, _Process
from .pool import Token, TokenPool, join_or_create, usable_cpus

__all__ = ["AUTO", "EnvLike", "Jobserver", "SleepFn", "default_pool", "threads", "usable_cpus"]

T = TypeVar("T")

#: ``env=``: a mapping or pairs; a str value sets the variable, None unsets it.
EnvLike = Union[Mapping[str, Union[str, None]], Iterable[tuple[str, Union[str, None]]]]
#: ``sleep_fn=``: None admits now; a number asks again after that many seconds.
SleepFn = Callable[[], Union[float, int, None]]

_BLOCKED_SIGNALS = _posix.INTERRUPTS
_SIG_BLOCK = _posix.SIG_BLOCK
_SIG_SETMASK = _posix.SIG_SETMASK
_sigmask = _posix.sigmask
# Errors multiprocessing lets out when it cannot start a process, its fork
# server being dead or dying: named for what they mean (see _start).
_START_ERRORS = (ChildProcessError, EOFError, ConnectionError, FileNotFoundError)


def _normalize_env(env: EnvLike | None) -> _child.Env:
    if env is None:
        return ()
    items = env.items() if isinstance(env, Mapping) else env
    result: list[tuple[str, str | None]] = []
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise TypeError(f"env entries must be (name, value) pairs, not {item!r}") from None
        if not isinstance(name, str):
            raise TypeError(f"environment variable names must be str, not {name!r}")
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"invalid environment variable name {name!r}")
        if value is not None and not isinstance(value, str):
            raise TypeError(f"env value for {name!r} must be str or None, not {value!r}")
        if value is not None and "\0" in value:
            raise ValueError(f"env value for {name!r} contains a NUL character")
        result.append((name, value))
    return tuple(result)


#: The start method that forks while the process has one thread, else uses the fork server.
AUTO = "auto"


def _resolve_context(context: BaseContext | str | None) -> BaseContext | None:
    """The context *context* names, or None for :data:`AUTO`."""
    if context is None:
        return None if _auto_by_default() else multiprocessing.get_context()
    if context == AUTO:
        if not _auto_possible():
            raise ValueError("the 'auto' start method needs both fork and forkserver")
        return None
    if isinstance(context, str):
        return multiprocessing.get_context(context)
    if isinstance(context, BaseContext):
        return context
    raise TypeError(f"context must be None, a start method name or a context, not {context!r}")


def _auto_possible() -> bool:
    methods = multiprocessing.get_all_start_methods()
    return "fork" in methods and "forkserver" in methods


def _auto_by_default() -> bool:
    """Whether a Jobserver without a context uses :data:`AUTO`.

    Where the platform's default start method is fork or forkserver (Linux
    and the BSDs, not macOS, where forking is unsafe even with one thread),
    unless :func:`multiprocessing.set_start_method` chose another method
    (one equal to the platform's default cannot be told from it).
    """
    default = multiprocessing.get_all_start_methods()[0]  # the first is the default
    chosen = multiprocessing.get_start_method(allow_none=True)
    return default in ("fork", "forkserver") and chosen in (None, default) and _auto_possible()


def threads() -> int:
    """How many threads this process has, counted as CPython counts them when it
    decides whether to warn that fork() may deadlock: the kernel's count on
    Linux (C threads included), else the threading module's."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _check_sleep_result(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"sleep_fn must return None or a number of seconds, not {value!r}")
    if value != value or value < 0:
        raise ValueError(f"sleep_fn must return None or a non-negative number, not {value!r}")
    return float(value)


def _finish_jobs_at_exit() -> None:
    """Wait for the jobs of Jobservers never closed, so their tokens come back
    (as ProcessPoolExecutor waits for its work at exit)."""
    from ._engine import live_engines

    for engine in live_engines():
        with contextlib.suppress(Exception):
            engine.wait_all()


atexit.register(_finish_jobs_at_exit)


def default_pool(slots: int | None = None, *, stacklevel: int = 2) -> TokenPool:
    """The pool a Jobserver or executor uses when none is given.

    *slots* creates a private pool of that size. None joins the pool the
    environment advertises; when none is advertised it creates a private pool
    sized to the usable CPUs; when one is advertised but unusable it warns
    (:class:`~makejobs.errors.JobserverUnavailable`) and creates a pool of one
    slot, so work runs one job at a time, as make does.
    """
    if slots is not None:
        return TokenPool.create(slots)

    def warn(e: JobserverUnavailable, count: int) -> None:
        warnings.warn(
            f"{e}; running one job at a time", JobserverUnavailable, stacklevel=stacklevel + 3
        )

    return join_or_create(report=warn)[0]


class Jobserver:
    """Run callables in fresh processes, at most as many at once as the pool allows.

    Args:
        context: a :mod:`multiprocessing` start method name (``"fork"``,
            ``"forkserver"``, ``"spawn"``), a context, ``"auto"``, or None for
            the default. The default, where the platform's is fork or
            forkserver (Linux, the BSDs; not macOS) and
            :func:`multiprocessing.set_start_method` did not choose another,
            is ``"auto"``: each job is forked while this process has a single
            thread (about 2 ms a job), and started by the fork server
            otherwise (about 10-20 ms, and the job and its arguments must
            pickle), because forking a process with threads may deadlock the
            child (Python 3.12+ warns about it; makejobs never makes it warn).
            Elsewhere, multiprocessing's default.
        slots: None to join the pool advertised by the environment (``make``,
            ``ninja``, ``cargo``, ``makejobs serve``), or, when there is none,
            to create a private pool sized to the usable CPUs. When a pool is
            advertised but unusable a :class:`~makejobs.errors.JobserverUnavailable`
            warning is emitted and jobs run one at a time, as make does. An int
            creates a private pool of that many slots.
        pool: use this :class:`~makejobs.TokenPool` (neither joined nor closed here).
        env: environment changes applied in every job's process (str sets,
            None unsets); per-submit ``env`` is applied after it.
        preexec_fn: called in the job's process before the job; if it returns
            a context manager, the job runs inside it.
        sleep_fn: admission criterion consulted before each job starts: None
            admits now, a number asks again after that many seconds (see
            :mod:`makejobs.criteria`).

    A Jobserver is a context manager; leaving the ``with`` block waits for
    every job (or, when leaving on an exception, terminates them) and closes a
    pool it created. It can be pickled, so jobs may submit jobs of their own
    (nesting) under every start method.
    """

    def __init__(
        self,
        context: BaseContext | str | None = None,
        slots: int | None = None,
        *,
        pool: TokenPool | None = None,
        env: EnvLike = (),
        preexec_fn: Callable[[], Any] | None = None,
        sleep_fn: SleepFn | None = None,
    ) -> None:
        resolved = _resolve_context(context)
        # With AUTO, _context is None: each job picks its own (see _start_method).
        self._context = resolved
        self._method = AUTO if resolved is None else resolved.get_start_method()
        if pool is not None and slots is not None:
            raise ValueError("give slots or pool, not both")
        if preexec_fn is not None and not callable(preexec_fn):
            raise TypeError("preexec_fn must be callable")
        if sleep_fn is not None and not callable(sleep_fn):
            raise TypeError("sleep_fn must be callable")
        self._env = _normalize_env(env)
        self._preexec_fn = preexec_fn
        self._sleep_fn = sleep_fn
        self._owns_pool = pool is None
        if pool is None:
            pool = default_pool(slots, stacklevel=2)
        elif not isinstance(pool, TokenPool):
            raise TypeError(f"pool must be a TokenPool, not {type(pool).__name__}")
        self._pool = pool
        self._engine = Engine(pool)
        self._closed = False
        # (values of _child.EXPORTED here, the exports they give), see _exports().
        self._exports_cache: (
            tuple[tuple[object, ...], _child.Exports, _child.EncodedExports] | None
        ) = None

    # -- properties ---------------------------------------------------------------------

    @property
    def pool(self) -> TokenPool:
        """The token pool jobs run on."""
        return self._pool

    @property
    def context(self) -> BaseContext:
        """The multiprocessing context (start method) the next job starts with.

        With the ``"auto"`` start method: the fork context while this process
        has one thread, else the forkserver context.
        """
        return self._start_method()[1]

    def _start_method(self) -> tuple[str, BaseContext]:
        """The start method and context of the job about to start."""
        context = self._context
        if context is not None:
            return self._method, context
        # One thread (this one) means no other can start one before the fork.
        method = "fork" if threads() == 1 else "forkserver"
        return method, multiprocessing.get_context(method)

    # -- submitting -------------------------------------------------------------------------

    def submit(
        self,
        fn: Callable[..., T],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        consume: int = 1,
        env: EnvLike | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        sleep_fn: SleepFn | None = None,
        timeout: float | None = None,
        callbacks: bool = True,
    ) -> Future[T]:
        """Run ``fn(*args, **kwargs)`` in a new process once a slot is free.

        Args:
            consume: slots the job holds (0 runs it without one; more than 1
                reserves extra parallelism for a job that uses several cores).
            env, preexec_fn, sleep_fn: override (env: extend) the Jobserver's.
            timeout: None waits for a slot forever, 0 never blocks, a number is
                a deadline covering admission and every retry.
            callbacks: False runs no ``when_done`` callbacks in this call (so
                it cannot raise CallbackRaised); they run in the next call
                that does. Finished jobs are reaped and their slots come back
                either way.

        Raises:
            Blocked: no slot (or no admission) before the deadline.
            CallbackRaised: a callback of a finished job raised; nothing was
                submitted, call again.
            TypeError: *fn* or its arguments cannot be sent to the child
                (spawn/forkserver pickle them).
            RuntimeError: the Jobserver is closed.
        """
        # Every call made per job costs the process that makes it page faults
        # after each fork (see _child.run), so the usual case (no env, no
        # sleep_fn, one slot, a free slot) takes the short way through.
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable")
        args = _check_args(args)
        if kwargs is None:
            kwargs = {}
        elif isinstance(kwargs, Mapping):
            kwargs = dict(kwargs)
        else:
            raise TypeError(f"kwargs must be a mapping, not {type(kwargs).__name__}")
        check_count(consume, "consume", 0)
        slots = self._pool.slots
        if slots is not None and consume > slots:
            raise ValueError(
                f"consume={consume} asks for more slots than the pool has ({slots}):"
                " the job could never start"
            )
        if timeout is not None:
            check_timeout(timeout)
        if callbacks is not True and callbacks is not False:
            raise TypeError(f"callbacks must be True or False, not {callbacks!r}")
        if self._closed:
            raise RuntimeError("the Jobserver is closed")
        job_env = self._env if env is None else self._env + _normalize_env(env)
        preexec = preexec_fn if preexec_fn is not None else self._preexec_fn
        admit = sleep_fn if sleep_fn is not None else self._sleep_fn
        tokens: list[Token] = []
        try:
            if consume == 0 or (consume == 1 and admit is None):
                # Settle first, as every call does. This also makes the engine
                # this process's: in a forked job it is the parent's until then,
                # its locks included (consume=0 never gets to _admit).
                if callbacks:
                    self._engine.settle()
                else:
                    self._engine.reclaim()
                if consume:
                    token = self._pool.try_acquire()
                    if token is not None:
                        tokens.append(token)
            if len(tokens) < consume:
                deadline = None if timeout is None else monotonic() + timeout
                self._admit(tokens, consume, admit, deadline, timeout, callbacks)
            return self._launch(fn, args, kwargs, job_env, preexec, tokens)
        except BaseException:
            # Until a registered job holds them, the tokens are ours to give back;
            # after, they are its (an interruption may land just after that).
            if not self._engine.owns(tokens):
                for token in tokens:
                    if not token.released:
                        self._engine.release(token)
            raise

    def __call__(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Shorthand: ``jobserver(fn, *args, **kwargs)`` is ``submit(fn, args, kwargs)``."""
        return self.submit(fn, args, kwargs)

    def _admit(
        self,
        tokens: list[Token],
        consume: int,
        sleep_fn: SleepFn | None,
        deadline: float | None,
        timeout: float | None,
        callbacks: bool = True,
    ) -> None:
        """Fill *tokens* with *consume* slots, all at once, waiting as allowed.

        A slot is never held while waiting for more: when not all are free,
        those taken go back before the wait, so two jobs that each need
        several slots cannot deadlock, each holding part of what the other
        needs. The caller gives back what *tokens* holds if this raises.
        """
        engine = self._engine
        pool = self._pool
        while True:
            engine.reclaim()
            if callbacks:
                engine.run_callbacks()
            if self._closed:
                raise RuntimeError("the Jobserver is closed")
            delay = None
            if sleep_fn is not None:
                delay = _check_sleep_result(sleep_fn())
            remaining = None if deadline is None else deadline - monotonic()
            if delay is None:
                if remaining is not None and remaining < 0 and sleep_fn is not None and timeout:
                    # The criterion answered after the deadline: too late to admit.
                    raise Blocked(f"sleep_fn did not admit the job within {timeout} s")
                while len(tokens) < consume:
                    token = pool.try_acquire()
                    if token is None:
                        break
                    tokens.append(token)
                if len(tokens) == consume:
                    return
                while tokens:
                    engine.release(tokens.pop())
                if remaining is not None and remaining <= 0:
                    raise Blocked(f"no free slot within {timeout} s")
                pool._want()
                try:
                    engine.progress(remaining, pool=True)
                finally:
                    pool._unwant()
            else:
                if remaining is not None and remaining <= delay:
                    # Asked to ask again only after the deadline: it cannot be admitted.
                    engine.progress(max(0.0, remaining))
                    raise Blocked(f"sleep_fn did not admit the job within {timeout} s")
                engine.progress(delay)

    def _exports(self) -> tuple[_child.Exports, _child.EncodedExports]:
        """What a job exports to advertise the pool (as str, and as bytes for
        os.environ), recomputed only when this process's MAKEFLAGS/MFLAGS/
        CARGO_MAKEFLAGS change."""
        key = _child.exported_here()
        cached = self._exports_cache
        if cached is None or cached[0] != key:
            exports = _child.pool_exports(self._pool)
            cached = self._exports_cache = (key, exports, _child.encode_exports(exports))
        return cached[1], cached[2]

    def _launch(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        env: _child.Env,
        preexec_fn: Callable[[], Any] | None,
        tokens: list[Token],
    ) -> Future[Any]:
        """Start the job's process and register it, which hands it *tokens*.

        Registration happens under ``spawn_lock``, which :meth:`close` takes
        too: once close() has it, every job is registered or was never
        started. SIGINT and SIGTERM are held off in this thread from before
        the process exists until it is registered, so a KeyboardInterrupt
        cannot leave a started job unknown (its tokens would go back while it
        runs); one that arrives meanwhile is raised afterwards, with the job
        registered and running.
        """
        # The guardian first: a forked job inherits the write end of its life
        # pipe, which is how the guardian knows the job outlived us (if ever).
        life = guardian.life_fd()
        method, context = self._start_method()
        if method == "fork":
            return self._fork(fn, args, kwargs, env, preexec_fn, tokens)
        engine = self._engine
        exports, _encoded = self._exports()
        if method == "forkserver":
            # Started here, outside the section below: a process inherits the
            # signal mask, and the fork server passes it on to every job.
            _ensure_forkserver(context)
        old = _sigmask(_SIG_BLOCK, ())
        r = w = m = -1
        process: _MultiprocessingProcess | None = None
        try:
            _sigmask(_SIG_BLOCK, _BLOCKED_SIGNALS)
            if _memfd_results():
                # As for forked jobs: the frame is read with pread once the
                # process is gone, so an interrupted read never costs it.
                m = os.memfd_create("makejobs-result", _MFD_CLOEXEC)
            r, w = os.pipe()
            with engine.spawn_lock:
                if self._closed:
                    raise RuntimeError("the Jobserver is closed")
                process = self._start(
                    context, w, m, life, old, fn, args, kwargs, env, preexec_fn, exports
                )
                # Close our copy of the write end before any other job starts,
                # so end-of-file means exactly "this job's process is done".
                os.close(w)
                w = -1
                os.set_blocking(r, False)
                future: Future[Any] = Future(engine, process, r, tokens, m if m >= 0 else None)
                engine.add(future)
            return future
        except BaseException:
            if not engine.owns(tokens):
                # Never registered: it must not run on tokens about to go back.
                if process is not None:
                    process.kill(signal.SIGKILL)
                    process.poll(block=True)
                elif r >= 0:
                    _stop_unknown_job(r, w)  # closes w
                    w = -1
                _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
            raise
        finally:
            _sigmask(_SIG_SETMASK, old)

    def _fork(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        env: _child.Env,
        preexec_fn: Callable[[], Any] | None,
        tokens: list[Token],
    ) -> Future[Any]:
        """Fork the job's process and register it (see :meth:`_launch`).

        Where the kernel allows (Linux: memfd and pidfd), the child writes its
        frame into a private memfd and the parent waits for its exit, on a
        pidfd: one wake-up per job, like a bare fork and waitpid, and the child
        never waits for the parent to drain anything. The pipe is still made:
        nothing is written to it, but its write end, held by the job and by
        whatever it forks, keeps the job running (and its slot taken) until
        the last of those has exited; once the process is reaped, one read
        tells. Elsewhere the frame comes through the pipe itself (see
        :meth:`Future._advance`).
        """
        engine = self._engine
        _exports, encoded = self._exports()
        inherit = self._pool.pass_fds
        in_memory = _memfd_results()
        r = w = m = -1
        # The pid lands here from C: os.fork() is called by a C iterator and its
        # result stored by deque.extend, with no bytecode in between at which a
        # signal handler could raise and lose the pid of a running child.
        box: deque[int] = deque(maxlen=1)
        process: _Process | None = None
        _flush_std_streams()
        old = _sigmask(_SIG_BLOCK, ())
        try:
            _sigmask(_SIG_BLOCK, _BLOCKED_SIGNALS)
            if in_memory:
                m = os.memfd_create("makejobs-result", _MFD_CLOEXEC)
            r, w = os.pipe()
            with engine.spawn_lock:
                if self._closed:
                    raise RuntimeError("the Jobserver is closed")
                box.extend(itertools.islice(iter(os.fork, None), 1))
                if box[0] == 0:  # pragma: no cover - runs in the child
                    # As little as possible happens here (see _child.run). The
                    # pipe is left for the exit to close, after the flush.
                    code = 1
                    try:
                        _sigmask(_SIG_SETMASK, old)
                        os.close(r)
                        out = m if m >= 0 else w
                        code = _child.run(out, fn, args, kwargs, env, preexec_fn, encoded, inherit)
                    finally:
                        _flush_std_streams()
                        os._exit(code)
                # Close our copy of the write end before any other job starts, so
                # end-of-file means exactly "this job and what it forked are done".
                os.close(w)
                w = -1
                process = _Process(box[0])
                if in_memory and process.exit_fd() is None and not process._reaped:
                    raise OSError("cannot open a pidfd to watch the job's process")
                os.set_blocking(r, False)
                future: Future[Any] = Future(engine, process, r, tokens, m if in_memory else None)
                engine.add(future)
            return future
        except BaseException:
            if box and box[0] and not engine.owns(tokens):
                # Never registered: it must not run on tokens about to go back.
                with contextlib.suppress(OSError):
                    os.kill(box[0], signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(box[0], 0)
                if process is not None:
                    process.forget_pidfd(close=True)
                _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
            elif not box:
                _posix.close_quietly(*(fd for fd in (r, w, m) if fd >= 0))
            raise
        finally:
            _sigmask(_SIG_SETMASK, old)

    def _start(
        self,
        context: BaseContext,
        w: int,
        memfd: int,
        life: int,
        mask: set[int],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        env: _child.Env,
        preexec_fn: Callable[[], Any] | None,
        exports: _child.Exports,
    ) -> _MultiprocessingProcess:
        """Start the job through multiprocessing; a dead fork server is restarted once."""
        method = context.get_start_method()
        for attempt in (1, 2):
            process = context.Process(  # type: ignore[attr-defined]
                target=_child.spawned_main,
                args=(
                    _child.ResultFd(w),
                    fn,
                    args,
                    kwargs,
                    env,
                    preexec_fn,
                    self._pool,
                    exports,
                    None if life < 0 else _child.ResultFd(life),
                    tuple(mask),
                    None if memfd < 0 else _child.ResultFd(memfd),
                ),
                name="makejobs-job",
            )
            try:
                process.start()
                return _MultiprocessingProcess(process)
            except BaseException as e:
                if process.pid is not None:
                    # Started but not handed back (an interruption, say): the
                    # caller cannot stop it, so it is stopped here.
                    with contextlib.suppress(Exception):
                        process.kill()
                        process.join()
                if isinstance(
                    e,
                    (pickle.PicklingError, AttributeError, TypeError, ValueError, RecursionError),
                ):
                    why = ""
                    if self._method == AUTO:
                        why = (
                            f" (the default start method forks only while the process has"
                            f" one thread; it has {threads()}: pass context='fork' to fork"
                            " anyway)"
                        )
                    raise TypeError(
                        f"the job or its arguments cannot be pickled for start method"
                        f" {method!r}: {e}{why}"
                    ) from e
                if not isinstance(e, _START_ERRORS):
                    raise
                if attempt == 1 and method == "forkserver":
                    _forget_dead_forkserver()
                    continue
                raise JobStartFailed(
                    f"could not start the job's process with start method {method!r}"
                    f" ({type(e).__name__}: {e}); if the fork server died (a process or file"
                    " limit, or it was killed), the next submit starts a new one"
                ) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def map(
        self,
        fn: Callable[..., T],
        argses: Iterable[Iterable[Any]] | None = None,
        kwargses: Iterable[Mapping[str, Any]] | None = None,
        *,
        chunksize: int = 1,
        timeout: float | None = None,
        buffersize: int | None = None,
        consume: int = 1,
        env: EnvLike | None = None,
        preexec_fn: Callable[[], Any] | None = None,
        sleep_fn: SleepFn | None = None,
    ) -> Iterator[T]:
        """Yield ``fn(*args, **kwargs)`` per call in *argses* / *kwargses*, in order.

        Calls are grouped *chunksize* to a job. Inputs are consumed lazily,
        from the first ``next()`` on; as many chunks run at once as the pool
        allows, or, with *buffersize* (Python 3.14's ``Executor.map``
        semantics), at most *buffersize* chunks beyond the one whose results
        are awaited: no more results are computed ahead of the consumer, and
        the inputs are read no further, so they may be endless. *timeout* is
        a deadline measured from this call: past it the iterator raises
        Blocked. The first exception raised by a call is re-raised at its
        position, after the results before it.

        Raises:
            ValueError: *chunksize* or *buffersize* below 1, or *argses* and
                *kwargses* of different lengths (at once when both have a
                length, else when the shorter runs out).
            TypeError: *buffersize* not an int; a mapping given where an
                iterable of calls belongs.
        """
        check_count(chunksize, "chunksize", 1)
        check_buffersize(buffersize)
        if isinstance(argses, Mapping) or isinstance(kwargses, Mapping):
            raise TypeError("argses and kwargses must be iterables of calls, not a mapping")
        lengths = (_length(argses), _length(kwargses))
        if None not in lengths and lengths[0] != lengths[1]:
            raise ValueError(
                f"argses and kwargses have different lengths ({lengths[0]} and {lengths[1]})"
            )
        check_timeout(timeout)
        deadline = None if timeout is None else monotonic() + timeout
        calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]] = iter(())
        if argses is not None or kwargses is not None:
            calls = _zip_calls(argses, kwargses)
        # else no inputs at all: no calls, as with Executor.map(fn) and PyPI jobserver's map(fn).
        options = dict(consume=consume, env=env, preexec_fn=preexec_fn, sleep_fn=sleep_fn)
        return self._map(fn, calls, chunksize, deadline, timeout, buffersize, options)

    def _map(
        self,
        fn: Callable[..., T],
        calls: Iterator[tuple[tuple[Any, ...], dict[str, Any]]],
        chunksize: int,
        deadline: float | None,
        timeout: float | None,
        buffersize: int | None,
        options: dict[str, Any],
    ) -> Iterator[T]:
        inflight: deque[Future[_ChunkResult]] = deque()
        pending: list[tuple[tuple[Any, ...], dict[str, Any]]] | None = None
        exhausted = False
        # With a buffersize, the chunk awaited next plus that many more.
        most = None if buffersize is None else buffersize + 1
        while True:
            while not exhausted and (most is None or len(inflight) < most):
                if pending is None:
                    pending = [call for _, call in zip(range(chunksize), calls)]
                    if not pending:
                        exhausted = True
                        break
                remaining = None if deadline is None else max(0.0, deadline - monotonic())
                try:
                    future = self.submit(
                        _run_chunk, (fn, pending), timeout=0 if inflight else remaining, **options
                    )
                except Blocked:
                    if inflight:
                        break
                    raise Blocked(f"map did not finish within {timeout} s") from None
                inflight.append(future)
                pending = None
            if not inflight:
                return
            remaining = None if deadline is None else max(0.0, deadline - monotonic())
            try:
                values, error = inflight[0].result(remaining)
            except Blocked:
                raise Blocked(f"map did not finish within {timeout} s") from None
            inflight.popleft()
            yield from values
            if error is not None:
                raise error

    # -- lifetime ---------------------------------------------------------------------------

    def reclaim_resources(self) -> None:
        """Complete finished jobs (reap, return tokens, run callbacks) without blocking.

        Raises:
            CallbackRaised: one callback raised; call again to run the rest.
        """
        self._engine.reclaim()
        self._engine.run_callbacks()

    def close(self, *, terminate: bool = False) -> None:
        """Wait for every job (or first send SIGTERM with *terminate*), run pending
        callbacks, and close the pool if this Jobserver created it. Idempotent.

        Safe to call while other threads submit: from the moment close()
        begins no new job starts (such submits raise RuntimeError, their
        slots given back), and when it returns no job of this Jobserver runs.
        Callback failures found here are turned into :class:`RuntimeWarning`.
        """
        engine = self._engine
        engine.own()
        with engine.spawn_lock:
            already = self._closed
            self._closed = True
        if already:
            engine.wait_all()  # another thread's close() may still be waiting
            return
        engine._wake_others()  # submitters waiting for a slot see the close
        if terminate:
            for future in list(engine.running):
                future.kill(signal.SIGTERM)
        engine.wait_all()
        while True:
            try:
                engine.run_callbacks()
                break
            except CallbackRaised as e:
                warnings.warn(f"{e} (while closing the Jobserver)", RuntimeWarning, stacklevel=2)
        engine.close()
        if self._owns_pool:
            self._pool.close()

    def __enter__(self) -> Jobserver:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(terminate=exc_type is not None)

    def __repr__(self) -> str:
        self._engine.own()
        state = "closed" if self._closed else "open"
        running = len(self._engine.running)
        return f"<Jobserver {self._method!r} {state} running={running} pool={self._pool!r}>"

    def __reduce__(self) -> Any:
        if self._closed:
            raise RuntimeError("cannot pickle a closed Jobserver")
        return (
            _rebuild_jobserver,
            (self._method, self._pool, self._env, self._preexec_fn, self._sleep_fn),
        )


def _rebuild_jobserver(
    method: str,
    pool: TokenPool,
    env: _child.Env,
    preexec_fn: Callable[[], Any] | None,
    sleep_fn: SleepFn | None,
) -> Jobserver:
    js = Jobserver(method, pool=pool, env=env, preexec_fn=preexec_fn, sleep_fn=sleep_fn)
    # The pool handle came with the copy (a handle of its own on the same pool,
    # with the same implicit slot): closing the copy closes that handle only.
    js._owns_pool = True
    return js


_ChunkResult = tuple[list[Any], Union[BaseException, None]]


def _run_chunk(
    fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]
) -> _ChunkResult:
    values: list[Any] = []
    for args, kwargs in calls:
        try:
            values.append(fn(*args, **kwargs))
        except Exception as e:
            import traceback

            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            return values, _child.attach_traceback(e, text)
    return values, None


def _length(inputs: object) -> int | None:
    return len(inputs) if isinstance(inputs, Sized) else None


def _check_args(args: Iterable[Any]) -> tuple[Any, ...]:
    """*args* as a tuple, refusing what is surely a mistake (a str is not a list of arguments)."""
    if isinstance(args, tuple):
        return args
    if isinstance(args, (str, bytes, bytearray)) or not isinstance(args, Iterable):
        raise TypeError(
            f"args must be a tuple (or another iterable) of arguments, not"
            f" {type(args).__name__} {args!r}: write ({args!r},) for a single argument"
        )
    return tuple(args)


def _stop_unknown_job(r: int, w: int) -> None:
    """Stop a job whose start was interrupted before multiprocessing handed it back.

    It holds the write end of its result pipe: if, our own copy closed, the
    pipe does not hang up, some process has it, and (but for the fork server
    passing it on) that can only be the job. Found in ``/proc`` (Linux),
    killed, and waited for; elsewhere it is left to end by itself.
    """
    import select

    from ._guardian_main import holders_of

    if w >= 0:
        os.close(w)
    poller = select.poll()
    poller.register(r, select.POLLIN)
    if any(mask & select.POLLHUP for _fd, mask in poller.poll(0)):
        return  # nobody else has it: no job was started
    from multiprocessing import forkserver

    server = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    for pid in holders_of(os.fstat(r).st_ino) - {os.getpid(), server}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    poller.poll(5000)  # until the pipe hangs up: the job is gone


def _ensure_forkserver(context: BaseContext) -> None:
    """Start multiprocessing's fork server now if it is not running (a dead one is replaced).

    A server started here imports this module first, so that each job, a
    fork of it, needs not import makejobs again: tens of milliseconds a job.
    """
    from multiprocessing import forkserver

    _forkserver.preload_in_forkserver(context, __name__)
    try:
        forkserver.ensure_running()
    except _START_ERRORS:
        _forget_dead_forkserver()
        forkserver.ensure_running()


def _forget_dead_forkserver() -> None:
    """Make multiprocessing start a new fork server on next use (the old one died).

    multiprocessing restarts a fork server it can see died (its pid reaped),
    but not one whose socket is gone or that someone else reaped: then every
    start fails. Stopping it (which also waits for it) clears that state.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    stop = getattr(server, "_stop", None)
    if server is None or stop is None:
        return
    try:
        stop()
    except (ChildProcessError, OSError):
        # Already reaped elsewhere: clear what _stop() would have.
        for name in ("_forkserver_pid", "_forkserver_address", "_forkserver_alive_fd"):
            if hasattr(server, name):
                setattr(server, name, None)


def _zip_calls(
    argses: Iterable[Iterable[Any]] | None, kwargses: Iterable[Mapping[str, Any]] | None
) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    sentinel = object()
    args_it: Iterator[Any] = iter(argses) if argses is not None else iter(())
    kwargs_it: Iterator[Any] = iter(kwargses) if kwargses is not None else iter(())
    while True:
        a = next(args_it, sentinel) if argses is not None else None
        k = next(kwargs_it, sentinel) if kwargses is not None else None
        if a is sentinel or k is sentinel:
            if (argses is not None and a is not sentinel) or (
                kwargses is not None and k is not sentinel
            ):
                raise ValueError("argses and kwargses have different lengths")
            return
        if a is not None and (isinstance(a, (str, bytes)) or not isinstance(a, Iterable)):
            raise TypeError(f"each element of argses must be a tuple of arguments, not {a!r}")
        if k is not None and not isinstance(k, Mapping):
            raise TypeError(f"each element of kwargses must be a mapping, not {k!r}")
        yield (tuple(a) if a is not None else (), dict(k) if k is not None else {})


# None until probed: whether forked jobs hand their frame over in a memfd, their
# exit watched through a pidfd (Linux 5.3 and later), rather than in a pipe.
_memfd_ok: bool | None = None
_MFD_CLOEXEC = getattr(os, "MFD_CLOEXEC", 1)


def _memfd_results() -> bool:
    global _memfd_ok
    ok = _memfd_ok
    if ok is None:
        ok = False
        if hasattr(os, "memfd_create") and hasattr(os, "pidfd_open"):
            try:
                os.close(os.pidfd_open(os.getpid()))
                os.close(os.memfd_create("makejobs-probe", _MFD_CLOEXEC))
                ok = True
            except OSError:
                pass  # an old kernel, or a sandbox that forbids them
        _memfd_ok = ok
    return ok


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
