"""Shared fixtures of the unit tests."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from makejobs import guardian


@pytest.fixture(autouse=True, scope="session")
def _guardian_started_first() -> None:
    """Start this process's guardian before any test looks at its fds or children.

    The guardian (see makejobs.guardian) is started once per process, the
    first time it holds a pool token, and stays until the process exits: one
    child process, a socket and a pipe end. Starting it up front keeps it out
    of the before/after comparisons of the tests that check for leaks.
    """
    guardian.current()


@pytest.fixture(autouse=True)
def _signal_mask_restored() -> Iterator[None]:
    """Give every test the signal mask the one before it started with.

    A process's mask is inherited by every child it starts. The tests that raise an
    exception at every line of makejobs' critical sections also raise it on the line that
    unblocks SIGINT and SIGTERM; left as it is, the mask would block them in every later
    test's jobs and commands, whose SIGTERM would then do nothing.
    """
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    yield
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
