"""What a test watches the code under test with: a condition polled with a bound, an
iterator that counts what was taken from it.

:func:`wait_until` returns as soon as its condition holds and fails the test once the
bound has passed: it waits for something that must happen, never for a fixed time in
place of it. :class:`Counted` tells how far a lazy consumer (``map`` with
``buffersize``) has read ahead of the caller.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PATIENCE", "Counted", "wait_until"]

#: Upper bound for anything that should happen "soon"; only reached when something hangs.
PATIENCE = 20.0


def wait_until(predicate: Callable[[], bool], timeout: float = PATIENCE) -> None:
    """Poll *predicate* until it is true; fail (AssertionError) after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


class Counted:
    """An iterator over *items* that counts how many were taken from it (:attr:`taken`)."""

    def __init__(self, items: Iterator[Any]) -> None:
        self.items = items
        self.taken = 0

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> Any:
        item = next(self.items)
        self.taken += 1
        return item
