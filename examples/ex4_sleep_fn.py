"""ex4_sleep_fn: admission criteria decide when a job may start (sleep_fn=).

A ``sleep_fn`` is a zero-argument callable that the Jobserver consults in the
*submitting* process before a job takes its slot. It returns None to admit the job now,
or a number of seconds after which to ask again. ``submit(timeout=...)`` bounds the whole
wait, admission included: past the deadline ``submit`` raises ``Blocked``.

Demonstrates:

* ``makejobs.criteria.memory_available``: start work only while enough RAM is free (a
  requirement this machine meets, then one no machine meets, which ends in ``Blocked``);
* a custom gate (a closure: it runs in this process, so it need not be picklable even
  under ``spawn``): a file whose presence admits work, and a gate that opens later;
* combining criteria with ``makejobs.criteria.all_of``;
* a Jobserver-wide default ``sleep_fn`` and a per-submit override.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from makejobs import Blocked, Jobserver
from makejobs.criteria import all_of, memory_available


def file_gate(path: Path, retry: float = 0.1) -> Callable[[], float | None]:
    """Admit while *path* exists; otherwise ask again after *retry* seconds."""

    def gate() -> float | None:
        return None if path.exists() else retry

    return gate


class OpensAfter:
    """A gate that refuses until *seconds* from now, then admits; counts its checks."""

    def __init__(self, seconds: float) -> None:
        self.opens_at = time.monotonic() + seconds
        self.checks = 0

    def __call__(self) -> float | None:
        self.checks += 1
        remaining = self.opens_at - time.monotonic()
        # Ask to be called again when the gate opens, but at least every 0.1 s.
        return None if remaining <= 0 else min(remaining, 0.1)


def main() -> None:
    free = psutil.virtual_memory().available
    print(f"available memory: {free / 2**20:.0f} MiB")

    # Default for every job of this Jobserver: at least 16 MiB must be available.
    with Jobserver("spawn", slots=2, sleep_fn=memory_available("16MiB")) as jobserver:
        result = jobserver.submit(sorted, ([3, 1, 2],)).result()
        print("memory_available('16MiB') admitted: sorted ->", result)
        assert result == [1, 2, 3]

        # No machine has an exabyte available: the job is never admitted.
        impossible = memory_available(10**18, retry=0.1)
        started = time.monotonic()
        try:
            jobserver.submit(sorted, ([3, 1, 2],), sleep_fn=impossible, timeout=0.5)
        except Blocked as e:
            took = time.monotonic() - started
            print(f"memory_available(1 EB) -> Blocked after {took:.2f}s: {e}")
            assert 0.4 <= took < 5
        else:
            raise AssertionError("an exabyte should not be available")

        with tempfile.TemporaryDirectory() as tmp:
            gate_file = Path(tmp) / "gate"
            gate = file_gate(gate_file)

            gate_file.touch()  # gate open
            print("file gate open   ->", jobserver.submit(len, ("open",), sleep_fn=gate).result())

            os.unlink(gate_file)  # gate closed: the submission waits, then gives up
            try:
                jobserver.submit(len, ("closed",), sleep_fn=gate, timeout=0.35)
            except Blocked:
                print("file gate closed -> Blocked after 0.35s (nothing was started)")
            else:
                raise AssertionError("the gate was closed")

            # all_of: admitted only when every criterion admits.
            gate_file.touch()
            both = all_of(memory_available("16MiB"), gate)
            print("all_of(memory, gate) ->", jobserver.submit(abs, (-7,), sleep_fn=both).result())

        # A gate that opens 0.4 s from now: the job waits for it, then runs.
        later = OpensAfter(0.4)
        started = time.monotonic()
        future = jobserver.submit(len, ("later",), sleep_fn=later, timeout=5)
        waited = time.monotonic() - started
        print(
            f"gate opening after 0.4s -> admitted after {waited:.2f}s"
            f" ({later.checks} checks), result {future.result()}"
        )
        assert waited >= 0.39 and future.result() == 5

        # Waiting for admission never costs a slot: both slots are still usable now.
        a = jobserver.submit(len, ("a",), timeout=0)
        b = jobserver.submit(len, ("bb",), timeout=0)
        assert (a.result(), b.result()) == (1, 2)
    print("ex4_sleep_fn: OK")


if __name__ == "__main__":
    main()
