"""ex3_death: a job whose process dies fails only its own future, with SubmissionDied.

Demonstrates:

* a job killed by a signal (here it sends itself SIGKILL) completes its future: ``wait()``
  returns True, and ``result()`` raises :class:`~makejobs.SubmissionDied` naming the
  signal, with ``pid`` and ``exitcode`` (negative: the signal number) attached;
* ``os._exit(3)`` and ``sys.exit(4)`` in a job are deaths too (no result was returned);
* ``Future.kill()`` sends a signal to a running job, which then dies the same way;
* a neighbouring job is unaffected, and every slot comes back: the Jobserver keeps working
  at full width afterwards (there is no "broken pool" state).
"""

from __future__ import annotations

import os
import signal
import sys
import time

from makejobs import Jobserver, SubmissionDied


def task_exit_hard(code: int) -> None:
    os._exit(code)  # skips every cleanup: no result is ever written


def task_sys_exit(code: int) -> None:
    sys.exit(code)


def main() -> None:
    with Jobserver("spawn", slots=2) as jobserver:
        # signal.raise_signal is a builtin, so spawn can pickle it by name.
        killed = jobserver.submit(signal.raise_signal, (signal.SIGKILL,))
        fine = jobserver.submit(len, ("hello",))

        assert killed.wait() is True  # "done" includes "died"
        print("killed job done:", killed.done(), "| exitcode:", killed.exitcode)
        try:
            killed.result()
        except SubmissionDied as e:
            print("caught SubmissionDied:", e)
            assert e.exitcode == -signal.SIGKILL
            assert e.pid == killed.pid
            assert "SIGKILL" in str(e)
        else:
            raise AssertionError("a SIGKILLed job cannot return a result")
        print("neighbouring job result:", fine.result())
        assert fine.result() == 5

        # Ending the process on purpose, without returning, is a death as well.
        for fn, code in ((task_exit_hard, 3), (task_sys_exit, 4)):
            future = jobserver.submit(fn, (code,))
            try:
                future.result()
            except SubmissionDied as e:
                print(f"{fn.__name__}({code}) -> SubmissionDied, exitcode={e.exitcode}")
                assert e.exitcode == code
            else:
                raise AssertionError(f"{fn.__name__} should have died")

        # Future.kill(): stop a job that would otherwise run for a minute.
        sleeper = jobserver.submit(time.sleep, (60,))
        time.sleep(0.3)  # let it start (killing it before it starts works as well)
        sleeper.kill(signal.SIGTERM)
        try:
            sleeper.result(timeout=10)
        except SubmissionDied as e:
            print("killed sleeper -> SubmissionDied:", e)
            assert e.exitcode == -signal.SIGTERM
        else:
            raise AssertionError("the sleeper was killed")

        # Every slot came back after all those deaths: the implicit slot is free and the
        # pool holds its one token again (slots=2 is the implicit slot + 1 token).
        jobserver.reclaim_resources()
        pool = jobserver.pool
        print(
            f"after the deaths: implicit slot free={pool.implicit_free}, tokens={pool.available()}"
        )
        assert pool.implicit_free and pool.available() == 1
        a = jobserver.submit(len, ("ab",), timeout=0)
        b = jobserver.submit(len, ("abc",), timeout=0)  # Blocked if a slot had leaked
        print("two jobs at once:", a.result(), b.result())
        assert (a.result(), b.result()) == (2, 3)
    print("ex3_death: OK")


if __name__ == "__main__":
    main()
