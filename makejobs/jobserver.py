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
import signal
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from multiprocessing.context import BaseContext
from time import monotonic
from typing import Any, TypeVar, Union

from . import _child, _job, guardian
from ._checks import check_buffersize, check_count, check_timeout
from ._engine import Engine
from ._job import AUTO, JobProcess, Output, threads
from .errors import Blocked, CallbackRaised, JobserverUnavailable
from .future import Future
from .pool import Token, TokenPool, join_or_create, usable_cpus

__all__ = ["AUTO", "EnvLike", "Jobserver", "SleepFn", "default_pool", "threads", "usable_cpus"]

T = TypeVar("T")

#: ``env=``: a mapping or pairs; a str value sets the variable, None unsets it.
EnvLike = Union[Mapping[str, Union[str, None]], Iterable[tuple[str, Union[str, None]]]]
#: ``sleep_fn=``: None admits now; a number asks again after that many seconds.
SleepFn = Callable[[], Union[float, int, None]]


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
        resolved = _job.resolve_context(context)
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
        return _job.start_method(self._context)[1]

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
        started. :mod:`makejobs._job` holds SIGINT and SIGTERM off from before
        the process exists until it is registered (see :func:`_job.fork`).
        """
        # The guardian first: a forked job inherits the write end of its life
        # pipe, which is how the guardian knows the job outlived us (if ever).
        life = guardian.life_fd()
        method, context = _job.start_method(self._context)
        registration = _Registration(self, tokens)
        exports, encoded = self._exports()
        if method == "fork":
            inherit = self._pool.pass_fds
            return _job.fork(registration, fn, args, kwargs, env, preexec_fn, encoded, inherit)
        job = _job.Spawned(fn, args, kwargs, env, preexec_fn, self._pool, exports)
        return _job.start(registration, context, life, job, auto=self._method == AUTO)

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
        inflight: deque[Future[_child.ChunkResult]] = deque()
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
                        _child.run_chunk,
                        (fn, pending),
                        timeout=0 if inflight else remaining,
                        **options,
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
                raise _child.attach_traceback(*error)

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


class _Registration:
    """One job's way into its Jobserver's registry (see :class:`_job.Registration`)."""

    __slots__ = ("_jobserver", "_tokens", "spawn_lock")

    def __init__(self, jobserver: Jobserver, tokens: list[Token]) -> None:
        self._jobserver = jobserver
        self._tokens = tokens
        self.spawn_lock = jobserver._engine.spawn_lock

    def check_open(self) -> None:
        if self._jobserver._closed:
            raise RuntimeError("the Jobserver is closed")

    def register(self, process: JobProcess, output: Output) -> Future[Any]:
        engine = self._jobserver._engine
        future: Future[Any] = Future(engine, process, output, self._tokens)
        engine.add(future)  # from here on the tokens are the job's
        return future

    def registered(self) -> bool:
        return self._jobserver._engine.owns(self._tokens)


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
