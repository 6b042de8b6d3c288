"""A Python build step that runs several jobs in parallel: one recipe of the demo Makefile.

    python3 pystep.py --mode shared|naive --log LOG --name NAME --jobs K --mib M

Each job holds M MiB and keeps a CPU busy with them (see ``spanlog.py``).

``--mode shared`` (the makejobs way): ``Jobserver()`` with no ``slots`` joins the pool
that make advertises in ``MAKEFLAGS``. This process already holds one of make's slots
(the one make started it on); it lends that slot to its first job and takes a token from
make's pool for every further job running at the same time. So the K jobs, the other
recipes and any other Python step never run more than ``-jN`` jobs in total.

``--mode naive`` (for contrast, without makejobs): a ``ProcessPoolExecutor`` with N
workers, where N is make's ``-jN``. Each such step adds up to N jobs on top of whatever
make is already running: with two of them and some shell recipes, ``make -j4`` runs far
more than 4 jobs at once, on the same CPUs, so each job takes longer.

The recipe line must start with ``+``: make 4.3 (pipe style) passes the pool's file
descriptors only to recipes it considers recursive, and ``+`` says this one is. Because
``+`` lines run even under ``make -n``, the script honours dry-run mode itself.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

from spanlog import work

try:
    from makejobs import Jobserver, parse_makeflags
except ImportError:  # the demo's most likely first stumble: say what to do
    sys.exit(f"{sys.executable} cannot import makejobs: run 'pip install -e .' in the checkout")


def say(line: str) -> None:
    # One write per line: recipes running in parallel share make's stdout, and print()
    # may write the text and the newline separately (PYTHONUNBUFFERED), interleaving them.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_shared(log: str, name: str, jobs: int, mib: int) -> None:
    with Jobserver() as jobserver:  # slots=None: join the pool in MAKEFLAGS
        pool = jobserver.pool
        if pool.owner:
            # No usable pool was advertised, so the Jobserver made a private one: that
            # is exactly the oversubscription this demo is about. Refuse to pretend.
            sys.exit(
                f"{name}: make's jobserver is not available here; run this under"
                " 'make -jN' and keep the '+' in front of the recipe line"
            )
        futures = [jobserver.submit(work, (log, f"{name}.{i}", mib)) for i in range(jobs)]
        for future in futures:
            future.result()
    say(f"{name}: {jobs} Python jobs ran on make's pool ({pool.style}, -j{pool.slots})")


def run_naive(log: str, name: str, jobs: int, mib: int, workers: int) -> None:
    with ProcessPoolExecutor(max_workers=workers) as executor:
        futures = [executor.submit(work, log, f"{name}.{i}", mib) for i in range(jobs)]
        for future in futures:
            future.result()
    say(f"{name}: {jobs} Python jobs ran on a private ProcessPoolExecutor({workers})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("shared", "naive"), required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--mib", type=int, default=32, help="MiB each job works on")
    args = parser.parse_args()

    flags = parse_makeflags(os.environ.get("MAKEFLAGS", ""))
    if flags.dry_run:  # make -n still runs '+' lines: do nothing, say what we would do
        say(f"{args.name}: would run {args.jobs} Python jobs ({args.mode})")
        return
    if args.mode == "shared":
        run_shared(args.log, args.name, args.jobs, args.mib)
    else:
        workers = flags.jobs or os.cpu_count() or 1
        run_naive(args.log, args.name, args.jobs, args.mib, workers)


if __name__ == "__main__":
    main()
