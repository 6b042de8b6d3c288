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
def _signal_mask_is_left_as_it_was() -> Iterator[None]:
    """makejobs holds SIGINT/SIGTERM off only inside its own short sections: after a
    test the main thread's mask must be what it was (a process started later inherits
    it, and a blocked SIGTERM there hangs whatever waits for that process to die)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_SETMASK, before)
    assert after == before, f"the signal mask changed from {before} to {after}"
