"""wait() and as_completed() for the futures of Jobservers.

:func:`concurrent.futures.wait` and :func:`concurrent.futures.as_completed`
block on a condition that a background thread notifies when a future
completes. A :class:`~makejobs.Jobserver` has no background thread: its
futures complete inside whichever makejobs call is in progress. So these two
functions, with the same contracts as the standard ones, are themselves
that call: the waiting thread polls the jobs of every Jobserver involved (one
poll() for all of them), completes what finishes, returns tokens and runs
callbacks, exactly as ``Future.wait()`` does for one future.

Given only :class:`concurrent.futures.Future` objects (a
:class:`~makejobs.JobserverExecutor`'s, say), both hand over to the standard
functions, so one spelling serves both kinds of futures makejobs returns.

Interruptions (``KeyboardInterrupt``, a :class:`~makejobs.errors.CallbackRaised`)
lose nothing: :func:`wait` only reads the futures' states, and the iterator
:func:`as_completed` returns is an object whose state changes in single
assignments, so calling ``next()`` again after an interruption carries on
where it stopped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from time import monotonic
from typing import Any, NamedTuple

from ._checks import check_timeout
from ._engine import Engine, progress
from .errors import Blocked
from .future import Future

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "DoneAndNotDoneFutures",
    "as_completed",
    "wait",
]

# The same strings as concurrent.futures' constants, so either module's work with either.
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"
_RETURN_WHEN = (FIRST_COMPLETED, FIRST_EXCEPTION, ALL_COMPLETED)


class DoneAndNotDoneFutures(NamedTuple):
    """What :func:`wait` returns: the futures that are done, and the others."""

    done: set[Future[Any]]
    not_done: set[Future[Any]]


def wait(
    fs: Iterable[Future[Any]],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures:
    """Wait for the futures *fs* (of any Jobservers) as :func:`concurrent.futures.wait` does.

    Args:
        fs: the futures; duplicates count once.
        timeout: the most seconds to wait (None: no limit; 0: only look).
        return_when: ``FIRST_COMPLETED`` (any future is done),
            ``FIRST_EXCEPTION`` (any future is done with an exception, a
            :class:`~makejobs.errors.SubmissionDied` included; else all are
            done) or ``ALL_COMPLETED``; the constants of this module or of
            :mod:`concurrent.futures`.

    Returns:
        ``(done, not_done)``, two sets. A timeout is not an error: what is
        not done by then is in ``not_done``.

    Raises:
        CallbackRaised: a ``when_done`` callback raised (the futures and
            their tokens are unharmed: call again).
        RuntimeError: a future of this process's parent (after a fork).
        TypeError: *fs* mixes Jobserver futures and other objects.
        ValueError: *return_when* is none of the three.
    """
    if return_when not in _RETURN_WHEN:
        raise ValueError(
            f"return_when must be FIRST_COMPLETED, FIRST_EXCEPTION or ALL_COMPLETED,"
            f" not {return_when!r}"
        )
    check_timeout(timeout)
    futures = set(fs)
    standard = _standard_module(futures)
    if standard is not None:
        return DoneAndNotDoneFutures(*standard.wait(futures, timeout, return_when))
    engines = _engines_of(futures)
    deadline = None if timeout is None else monotonic() + timeout
    while True:
        pending = [f for f in futures if not f._finished()]
        if _enough(futures, pending, return_when):
            break
        remaining = None if deadline is None else deadline - monotonic()
        if remaining is not None and remaining <= 0:
            progress(engines, 0)  # the last look: what finished meanwhile counts
            break
        progress(engines, remaining, waiting_for=pending)
    _run_callbacks(engines)
    done = {f for f in futures if f._finished()}
    return DoneAndNotDoneFutures(done, futures - done)


def as_completed(fs: Iterable[Future[Any]], timeout: float | None = None) -> Iterator[Future[Any]]:
    """Yield the futures *fs* (of any Jobservers) as they finish, as
    :func:`concurrent.futures.as_completed` does.

    Futures already done come first; duplicates are yielded once. *timeout*
    counts from this call: once it has passed, ``next()`` raises
    :class:`~makejobs.errors.Blocked` (a :class:`TimeoutError`) saying how
    many futures are unfinished.

    ``next()`` may also raise :class:`~makejobs.errors.CallbackRaised` (a
    ``when_done`` callback raised) or be interrupted (``KeyboardInterrupt``):
    unlike a generator, the iterator survives both, and calling ``next()``
    again carries on.
    """
    check_timeout(timeout)
    futures = list(dict.fromkeys(fs))  # duplicates once, in the order given
    standard = _standard_module(futures)
    if standard is not None:
        theirs: Iterator[Future[Any]] = standard.as_completed(futures, timeout)
        return theirs
    deadline = None if timeout is None else monotonic() + timeout
    return _AsCompleted(futures, _engines_of(futures), deadline)


class _AsCompleted(Iterator[Future[Any]]):
    """The iterator of :func:`as_completed`.

    Its state is one tuple, replaced whole, never changed in place: the
    futures seen done and not yet handed out, how many of those were handed
    out, and the futures not yet seen done. An interruption anywhere leaves
    either the old state or the new one.
    """

    def __init__(
        self, futures: list[Future[Any]], engines: tuple[Engine, ...], deadline: float | None
    ) -> None:
        self._engines = engines
        self._deadline = deadline
        self._total = len(futures)
        self._state: tuple[tuple[Future[Any], ...], int, tuple[Future[Any], ...]] = ((), 0, ())
        self._sort(futures)

    def _sort(self, unseen: Iterable[Future[Any]]) -> None:
        """Move the futures of *unseen* that are done after the ready ones."""
        ready, handed, _ = self._state
        done = tuple(f for f in unseen if f._finished())
        running = tuple(f for f in unseen if not f._finished())
        self._state = (ready[handed:] + done, 0, running)

    def __iter__(self) -> _AsCompleted:
        return self

    def __next__(self) -> Future[Any]:
        while True:
            # Callbacks before a future is handed out: one that raises leaves
            # the future here for the next call.
            _run_callbacks(self._engines)
            ready, handed, running = self._state
            if handed < len(ready):
                self._state = (ready, handed + 1, running)
                return ready[handed]
            if not running:
                raise StopIteration
            deadline = self._deadline
            remaining = None if deadline is None else deadline - monotonic()
            if remaining is not None and remaining <= 0:
                progress(self._engines, 0)  # the last look
                self._sort(running)
                if self._state[0]:
                    continue
                raise Blocked(f"{len(running)} (of {self._total}) futures unfinished")
            progress(self._engines, remaining, waiting_for=running)
            self._sort(running)


def _standard_module(futures: Iterable[object]) -> Any:
    """concurrent.futures, if every one of *futures* is one of its futures (and
    there is at least one); None if every one is a Jobserver future (or there
    are none); TypeError otherwise."""
    ours = others = 0
    for future in futures:
        if isinstance(future, Future):
            ours += 1
        else:
            others += 1
    if not others:
        return None
    # Not imported: if it never was, none of these is one of its futures.
    standard = sys.modules.get("concurrent.futures")
    if not ours and standard is not None and all(isinstance(f, standard.Future) for f in futures):
        return standard
    raise TypeError(
        "makejobs.wait() and makejobs.as_completed() take the futures of Jobservers"
        " (or only concurrent.futures futures, which they hand over to"
        " concurrent.futures), not a mix of them or other objects"
    )


def _engines_of(futures: Iterable[Future[Any]]) -> tuple[Engine, ...]:
    """The engines of *futures*, each once, made this process's; refuses a parent's future."""
    engines: dict[Engine, None] = {}
    for future in futures:
        engine = future._owner()
        if engine not in engines:
            engine.own()  # in a forked child the parent's futures are abandoned first
            engines[engine] = None
        future._check_owned()
    return tuple(engines)


def _enough(futures: set[Future[Any]], pending: list[Future[Any]], return_when: str) -> bool:
    """Whether *return_when* is met, *pending* being the futures of *futures* not done."""
    if not pending:
        return True
    if return_when == ALL_COMPLETED:
        return False
    if return_when == FIRST_COMPLETED:
        return len(pending) < len(futures)
    # FIRST_EXCEPTION: a future done with anything but a value.
    return any(f._failed() for f in futures)


def _run_callbacks(engines: tuple[Engine, ...]) -> None:
    for engine in engines:
        engine.run_callbacks()
