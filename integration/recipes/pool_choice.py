"""Python steps for ``test_pool_choice.py``: which pool a program joins, run under real peers.

``jobs``       ``Jobserver()`` (joins the advertised pool, whichever it is), ``--jobs`` jobs
               of ``--seconds`` each, every one a span in ``--log``. The JSON ``--report``
               says which variable the pool came from, its size, the warnings ``Jobserver()``
               gave and what ``choose_advertised()`` said.
``own-pipe``   what a program does first under make 4.3 without ``+``: ``os.pipe()`` (it
               gets the numbers make left in ``MAKEFLAGS``), a few bytes into it, then
               ``TokenPool.from_environ()``. The report says whether the pool was refused
               and how many bytes are left in the pipe.

Usage::

    python pool_choice.py jobs --log LOG --jobs K --seconds S --report R
    python pool_choice.py own-pipe --report R
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # spans.py

import spans
from makejobs import Jobserver, JobserverUnavailable, TokenPool, _posix
from makejobs.pool import choose_advertised


def write_report(path: str, report: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, path)


def cmd_jobs(args: argparse.Namespace) -> int:
    choice = choose_advertised()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        js = Jobserver("fork")
    with js:
        futures = [
            js.submit(spans.run_job, (args.log, f"step.j{i}", args.seconds))
            for i in range(args.jobs)
        ]
        for future in futures:
            future.result()
    write_report(
        args.report,
        {
            "variable": js.pool.variable,
            "slots": js.pool.slots,
            "warnings": [str(w.message) for w in caught],
            "chosen": choice.variable,
            "reason": choice.reason,
            "advertised": {
                name: os.environ.get(name) for name in ("MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS")
            },
        },
    )
    return 0


def cmd_own_pipe(args: argparse.Namespace) -> int:
    r, w = os.pipe()
    os.write(w, b"12345")
    try:
        pool = TokenPool.from_environ()
    except JobserverUnavailable as e:
        refused = str(e)
        left = _posix.available_tokens(r)
    else:
        refused = None
        assert pool is not None
        with pool, pool.slot(0), pool.slot(0):  # two jobs' worth, as a program would take
            left = _posix.available_tokens(r)
    write_report(
        args.report,
        {"fds": [r, w], "refused": refused, "left": left, "MAKEFLAGS": os.environ["MAKEFLAGS"]},
    )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pool_choice.py")
    sub = parser.add_subparsers(dest="command", required=True)
    jobs = sub.add_parser("jobs")
    jobs.add_argument("--log", required=True)
    jobs.add_argument("--jobs", type=int, required=True)
    jobs.add_argument("--seconds", type=float, required=True)
    jobs.add_argument("--report", required=True)
    jobs.set_defaults(func=cmd_jobs)
    own = sub.add_parser("own-pipe")
    own.add_argument("--report", required=True)
    own.set_defaults(func=cmd_own_pipe)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
