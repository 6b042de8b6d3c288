"""Python programs for the interop matrix (``test_interop_matrix.py``), one per sub-command.

Every job logs one span in the shared log (``tests/spans.py``); every program writes a JSON
report of the pool it found (``--report``) and prints any warning it got to stderr, so the
output of the parent (make, serve, ...) shows it.

``jobserver``  ``Jobserver()`` (joins the advertised pool), ``--jobs`` jobs of
               ``--seconds`` each.
``executor``   the same on ``JobserverExecutor()``.
``wide``       a tool that does not speak the jobserver, for ``makejobs exec``: as many
               threads as ``$MAKEJOBS_SLOTS``, each one span; the count goes to ``--count``.
``nest``       a nesting step: ``Jobserver()``, one job runs ``CMD`` (a make, cargo ...)
               and ``--jobs`` more jobs log spans. ``--how`` says how the job starts CMD:
               ``pass_fds`` (``subprocess.run(..., pass_fds=pool.pass_fds)`` with the job's
               own handle from ``TokenPool.from_environ()``) or ``pool-run``
               (``pool.run(...)``).

Usage::

    python interop.py jobserver --log LOG --name NAME --jobs K --seconds S --report R
    python interop.py nest --log LOG --name NAME --jobs K --seconds S --report R
        --how pass_fds -- CMD ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # spans.py

import spans
from makejobs import Jobserver, JobserverExecutor
from makejobs.pool import TokenPool

#: Bound on a command a nesting step runs; the test's own timeout is the real limit.
COMMAND_TIMEOUT = 90


def describe_pool(pool: TokenPool) -> dict[str, Any]:
    return {"owner": pool.owner, "style": pool.style, "slots": pool.slots}


def joined(make: Any) -> tuple[Any, list[str]]:
    """Call *make* (which joins the pool), returning it and the warnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = make()
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    for message in messages:
        print(f"interop: {message}", file=sys.stderr, flush=True)
    return value, messages


def write_report(path: str, report: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, path)


def cmd_jobserver(args: argparse.Namespace) -> int:
    js, messages = joined(Jobserver)
    report = {**describe_pool(js.pool), "warnings": messages}
    with js:
        futures = [
            js.submit(spans.run_job, (args.log, f"{args.name}.j{i}", args.seconds))
            for i in range(args.jobs)
        ]
        for future in futures:
            future.result()
    write_report(args.report, report)
    return 0


def cmd_executor(args: argparse.Namespace) -> int:
    executor, messages = joined(JobserverExecutor)
    report = {**describe_pool(executor.pool), "warnings": messages}
    with executor:
        futures = [
            executor.submit(spans.run_job, args.log, f"{args.name}.j{i}", args.seconds)
            for i in range(args.jobs)
        ]
        for future in futures:
            future.result()
    write_report(args.report, report)
    return 0


def cmd_wide(args: argparse.Namespace) -> int:
    count = int(os.environ["MAKEJOBS_SLOTS"])
    Path(args.count).write_text(str(count))
    threads = [
        threading.Thread(target=spans.run_job, args=(args.log, f"{args.name}.t{i}", args.seconds))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


def run_command(argv: list[str], how: str) -> tuple[int, str, str]:
    """In a job: start *argv* on this job's slot, the way *how* names."""
    pool = TokenPool.from_environ()  # this job's own handle on the pool it runs on
    if pool is None:
        raise RuntimeError("a job's environment must advertise its pool")
    try:
        if how == "pass_fds":
            proc = subprocess.run(
                argv,
                pass_fds=pool.pass_fds,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        elif how == "pool-run":
            proc = pool.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
            )
        else:
            raise ValueError(f"unknown --how {how!r}")
    finally:
        pool.close()
    return proc.returncode, proc.stdout, proc.stderr


def cmd_nest(args: argparse.Namespace) -> int:
    js, messages = joined(Jobserver)
    report = {**describe_pool(js.pool), "warnings": messages}
    with js:
        command = js.submit(run_command, (args.command, args.how))
        futures = [
            js.submit(spans.run_job, (args.log, f"{args.name}.j{i}", args.seconds))
            for i in range(args.jobs)
        ]
        for future in futures:
            future.result()
        code, out, err = command.result()
    sys.stdout.write(out)
    sys.stderr.write(err)
    report["command_exit"] = code
    write_report(args.report, report)
    return 0 if code == 0 else 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("jobserver", "executor", "nest"):
        p = sub.add_parser(name)
        p.add_argument("--log", required=True)
        p.add_argument("--name", required=True)
        p.add_argument("--jobs", type=int, required=True)
        p.add_argument("--seconds", type=float, required=True)
        p.add_argument("--report", required=True)
        if name == "nest":
            p.add_argument("--how", choices=("pass_fds", "pool-run"), required=True)
            p.add_argument("command", nargs="+")
    p = sub.add_parser("wide")
    p.add_argument("--log", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--count", required=True)
    args = parser.parse_args(argv)
    commands = {
        "jobserver": cmd_jobserver,
        "executor": cmd_executor,
        "wide": cmd_wide,
        "nest": cmd_nest,
    }
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
