"""ex7_timeouts: non-blocking polls, finite deadlines, and Blocked.

Every call that can wait takes a timeout: None waits forever, 0 never blocks, a number
is a deadline in seconds. When the deadline passes, the call raises
:class:`~makejobs.Blocked` (a :class:`TimeoutError`) and nothing is lost: no slot leaks,
the job keeps running, and a later call can pick it up.

Demonstrates, with ``slots=1`` and one 0.5 s job occupying the only slot:

* ``done()`` polls without blocking (its default timeout is 0);
* ``result(timeout=0.1)`` and ``wait(timeout=0.1)`` give up after 0.1 s;
* ``submit(..., timeout=0)`` and ``submit(..., timeout=0.1)`` raise Blocked: no slot;
* ``map(..., timeout=...)`` raises Blocked from the iterator once its deadline passes;
* ``wait()`` then returns True, ``done()`` is True and ``result()`` returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from makejobs import Blocked, Jobserver


def task_slow(seconds: float) -> str:
    time.sleep(seconds)
    return f"done after {seconds:.2f}s"


def expect_blocked(what: str, call: Callable[..., object], *args: Any, **kwargs: Any) -> None:
    """Call, expecting Blocked; print how long it took to give up."""
    started = time.monotonic()
    try:
        call(*args, **kwargs)
    except Blocked as e:
        assert isinstance(e, TimeoutError)
        print(f"{what:34} -> Blocked after {time.monotonic() - started:.2f}s ({e})")
    else:
        raise AssertionError(f"{what} should have raised Blocked")


def main() -> None:
    with Jobserver("fork", slots=1) as jobserver:
        started = time.monotonic()
        slow = jobserver.submit(task_slow, (0.5,))

        print(f"{'done()':34} -> {slow.done()}")
        assert slow.done() is False
        waited = slow.wait(timeout=0.1)
        print(f"{'wait(timeout=0.1)':34} -> {waited}")
        assert waited is False
        expect_blocked("result(timeout=0.1)", slow.result, timeout=0.1)
        expect_blocked("submit(len, ..., timeout=0)", jobserver.submit, len, ("x",), timeout=0)
        expect_blocked("submit(len, ..., timeout=0.1)", jobserver.submit, len, ("x",), timeout=0.1)
        expect_blocked(
            "list(map(..., timeout=0.1))",
            lambda: list(jobserver.map(len, argses=[("a",), ("b",)], timeout=0.1)),
        )

        print(f"{'wait()':34} -> {slow.wait()}")
        print(f"{'done()':34} -> {slow.done()}")
        print(f"{'result(timeout=0)':34} -> {slow.result(timeout=0)!r}")
        assert slow.done() is True
        assert slow.result(timeout=0) == "done after 0.50s"
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 5, elapsed

        # The slot is free again: a submission with timeout=0 now succeeds.
        again = jobserver.submit(len, ("xyz",), timeout=0)
        print(f"{'submit(len, ..., timeout=0)':34} -> {again.result()}")
        assert again.result() == 3
    print("ex7_timeouts: OK")


if __name__ == "__main__":
    main()
