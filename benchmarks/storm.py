"""A signal storm: the books stay exact while SIGINTs land anywhere.

A worker process submits jobs to a Jobserver and collects their results in a
loop, catching every KeyboardInterrupt; this process sends it SIGINT at random
intervals of 0.5 to 20 ms for the given number of seconds. The worker's SIGINT
handler raises KeyboardInterrupt whenever a makejobs call is running (at any
bytecode of it), and lets the worker's own loop lines be (no Python loop can
survive an exception at every one of its own lines, and they are not what is
tried). Then the worker
stops, lets every job finish and checks its books:

* every token is back exactly once: the pool it created counts ``slots - 1``
  tokens at close (no TokenCountWarning), and its implicit slot is free;
* never more than ``slots`` jobs ran at once (peak of the jobs' own spans);
* every job whose future the worker got returned its own argument (none
  reported as SubmissionDied, none with another job's result);
* no other exception escaped a makejobs call ("already released" and the like).

::

    python benchmarks/storm.py --seconds 20            # each start method, 20 s of SIGINTs
    python benchmarks/storm.py --seconds 3 --method fork --json out.json

The integration suite runs it for a few seconds per start method
(integration/test_storm.py); a long run is 20 s per method.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
sys.path.insert(0, str(_ROOT / "tests"))  # spans.py

from benchmarks._common import environment, write_json  # noqa: E402
from spans import peak_overlap  # noqa: E402

METHODS = ("fork", "forkserver", "spawn")


# -- the worker -----------------------------------------------------------------------------


def job(i: int) -> tuple[int, float, float]:
    """A short job that says which it was and when it ran (CLOCK_MONOTONIC, shared)."""
    start = time.clock_gettime(time.CLOCK_MONOTONIC)
    time.sleep(0.002)
    return i, start, time.clock_gettime(time.CLOCK_MONOTONIC)


def worker(method: str, slots: int) -> dict[str, Any]:
    from makejobs import Jobserver, SubmissionDied, TokenPool
    from makejobs.errors import TokenCountWarning

    stop = []

    def stop_storm(signum: int, frame: object) -> None:
        # SIGINTs still on their way must not end the worker after its loop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        stop.append(signum)

    signal.signal(signal.SIGUSR1, stop_storm)
    pool = TokenPool.create(slots)
    js = Jobserver(method, pool=pool)
    pending: dict[int, Any] = {}
    spans: list[tuple[float, float]] = []
    interrupts = submitted = collected = 0
    wrong: list[str] = []
    errors: list[str] = []

    def take(i: int, future: Any) -> None:
        nonlocal collected
        try:
            value = call(future.result, 0)
        except SubmissionDied as e:
            wrong.append(f"job {i}: {e}")
        else:
            if value[0] != i:
                wrong.append(f"job {i} returned job {value[0]}'s result")
            spans.append((value[1], value[2]))
        collected += 1

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # SIGINT raises KeyboardInterrupt only while a makejobs call runs: anywhere in
    # it, at any bytecode, which is what is tried; never in this loop's own lines,
    # which could not survive it (no Python code can), and are not what is tried.
    armed = [False]

    def interrupt(signum: int, frame: object) -> None:
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    def call(fn: Any, *args: Any) -> Any:
        armed[0] = True
        try:
            return fn(*args)
        finally:
            armed[0] = False

    def submit_one(i: int) -> Any:
        return js.submit(job, (i,), timeout=5)

    signal.signal(signal.SIGINT, interrupt)
    i = 0
    while not stop:
        try:
            i += 1
            pending[i] = call(submit_one, i)
            submitted += 1
            for n, future in list(pending.items()):
                if call(future.done):
                    del pending[n]
                    take(n, future)
        except KeyboardInterrupt:
            interrupts += 1
        except Exception as e:
            errors.append(repr(e))
    try:
        for n, future in list(pending.items()):
            future.wait()
            take(n, future)
        js.close()
        implicit_free = pool.implicit_free
        available = pool.available()
        held = pool.held
        with warnings.catch_warnings():
            warnings.simplefilter("error", TokenCountWarning)
            counted = pool.close()
    except Exception as e:
        errors.append(repr(e))
        implicit_free, available, counted, held = False, None, None, None
    return {
        "method": method,
        "slots": slots,
        "interrupts": interrupts,
        "submitted": submitted,
        "collected": collected,
        "wrong": wrong[:10],
        "wrong_count": len(wrong),
        "errors": errors[:10],
        "error_count": len(errors),
        "peak": peak_overlap(spans),
        "implicit_free": implicit_free,
        "available_at_end": available,
        "held_at_end": held,
        "counted_at_close": counted,
        "books_exact": (
            implicit_free and held == 0 and available == slots - 1 and counted == slots - 1
        ),
    }


# -- the driver ------------------------------------------------------------------------------


def storm(method: str, seconds: float, slots: int = 3, seed: int | None = None) -> dict[str, Any]:
    """Run one worker under a storm of SIGINTs; its report, plus how many were sent."""
    rng = random.Random(seed)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", method, "--slots", str(slots)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline() != "ready\n":
        proc.kill()
        raise RuntimeError(f"the {method} worker did not start")
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.0005, 0.02))
        try:
            os.kill(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            break
        sent += 1
    proc.send_signal(signal.SIGUSR1)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    report = json.loads(out.splitlines()[-1])
    report["sent"] = sent
    report["seconds"] = seconds
    report["exit"] = proc.returncode
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--method", choices=METHODS, action="append")
    parser.add_argument("--slots", type=int, default=3)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        sys.stdout.write(json.dumps(worker(args.worker, args.slots)) + "\n")
        return 0
    started = time.monotonic()
    rows = [storm(method, args.seconds, args.slots) for method in args.method or METHODS]
    print(f"{'method':<11} {'SIGINTs':>8} {'caught':>7} {'jobs':>6} {'peak':>5} books")
    for row in rows:
        print(
            f"{row['method']:<11} {row['sent']:>8} {row['interrupts']:>7}"
            f" {row['collected']:>6} {row['peak']:>4}/{row['slots']}"
            f" {'exact' if row['books_exact'] else 'WRONG'}"
            f"{'' if not row['wrong_count'] else ', wrong results: ' + str(row['wrong_count'])}"
            f"{'' if not row['error_count'] else ', errors: ' + str(row['errors'])}"
        )
    if args.json:
        write_json(
            args.json,
            "storm",
            quick=args.seconds < 20,
            seconds=time.monotonic() - started,
            rows=rows,
            environment=environment(),
        )
    ok = all(
        row["books_exact"]
        and not row["wrong_count"]
        and not row["error_count"]
        and row["peak"] <= row["slots"]
        for row in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
