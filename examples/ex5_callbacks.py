"""ex5_callbacks: when_done callbacks, and draining their errors with CallbackRaised.

Demonstrates:

* ``Future.when_done(fn, *args, **kwargs)`` runs ``fn`` once the job is done, in
  registration order, exactly once each. There is no background thread: callbacks run
  inside whichever makejobs call notices the job finished (``result``, ``wait``,
  ``done``, ``submit``, ``reclaim_resources`` ...);
* the future is not passed to the callback: pass it yourself if you need it;
* a callback registered on a finished future runs before ``when_done`` returns;
* a callback that raises surfaces as :class:`~makejobs.CallbackRaised` (the original
  exception is its ``__cause__``), one per call; keep calling until none comes to run
  the remaining callbacks. The job's result is unaffected;
* the job's slot is back before its callbacks run, so a callback may submit follow-up
  work even with a single slot;
* callbacks may register further callbacks.
"""

from __future__ import annotations

import time
from typing import Any

from makejobs import CallbackRaised, Future, Jobserver


def fail_with(exc_type: type[Exception], message: str) -> None:
    raise exc_type(message)


def main() -> None:
    log: list[Any] = []
    with Jobserver("fork", slots=1) as jobserver:
        future1 = jobserver.submit(len, ("hello",))
        future1.when_done(log.append, "first")
        future1.when_done(log.append, "second")
        # Pass the future explicitly to see it from the callback.
        future1.when_done(lambda f: log.append(("result seen by callback", f.result())), future1)
        print("result:", future1.result(), "| callbacks ran:", log)
        assert log == ["first", "second", ("result seen by callback", 5)]

        # Registered after completion: runs right away, before when_done returns.
        future1.when_done(log.append, "after-completion")
        print("registered after completion ran at once:", log[-1])
        assert log[-1] == "after-completion"

        # Two raising callbacks between two good ones.
        future2 = jobserver.submit(len, ("world",))
        future2.when_done(log.append, "before the errors")
        future2.when_done(fail_with, ValueError, "first failure")
        future2.when_done(fail_with, TypeError, "second failure")
        future2.when_done(log.append, "survivor")

        # The draining loop: one CallbackRaised per call, the rest still run afterwards.
        causes = []
        while True:
            try:
                future2.wait()
            except CallbackRaised as e:
                print("caught CallbackRaised, cause:", repr(e.__cause__))
                causes.append(type(e.__cause__))
                continue
            print("no more callback errors")
            break
        assert causes == [ValueError, TypeError]
        assert log[-2:] == ["before the errors", "survivor"]
        print("result despite the failing callbacks:", future2.result())
        assert future2.result() == 5

        # slots=1: the callback submits the next job, which gets the slot just given back.
        follow_ups: list[Future[int]] = []
        started = time.monotonic()
        future3 = jobserver.submit(time.sleep, (0.2,))
        future3.when_done(lambda: follow_ups.append(jobserver.submit(abs, (-3,), timeout=0)))
        future3.wait()
        print(
            f"follow-up submitted from a callback with slots=1 ->"
            f" {follow_ups[0].result()} ({time.monotonic() - started:.2f}s)"
        )
        assert follow_ups[0].result() == 3

        # A callback that registers a callback (the inner one runs in the same drain).
        future1.when_done(future1.when_done, log.append, "registered by a callback")
        print("callback registered by a callback ran:", log[-1])
        assert log[-1] == "registered by a callback"
    print("ex5_callbacks: OK")


if __name__ == "__main__":
    main()
