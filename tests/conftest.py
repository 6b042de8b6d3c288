"""Shared fixtures of the unit tests."""

from __future__ import annotations

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
