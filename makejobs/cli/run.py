"""``makejobs run [-j N] [-l LOAD] [-f FILE] [-k] [-n] [--keep-order] [--line-buffer] ...``

Run shell command lines (``/bin/sh -c``) from FILE (``-`` or no ``-f``:
standard input) in parallel, each on one slot of the inherited pool, or
of a new pool of N (default: the usable CPUs) when there is none. Under
an inherited pool ``-j N`` caps how many commands run at once (the pool
still bounds everything, as for ``cargo -j``). An advertised but unusable
pool runs one command at a time with a warning (as make does), unless
``-j N`` asks for a new pool of N. ``-l LOAD`` holds commands back while
the machine is busy, as ``make -l`` does (see :mod:`._load`).

Input: one command per line; a line ending in an odd number of
backslashes goes on on the next line, and the command keeps the
backslash-newline for the shell to read, as make does with a recipe.
Blank lines and lines starting with ``#`` are skipped; all lines are read
before the first command starts. Words after the options are an error
with a hint: commands come from standard input or ``-f``.

``-n``/``--dry-run``, or a ``make -n`` above us (an ``n`` among the flags
in ``MAKEFLAGS``): print the commands, run nothing. make runs ``+`` lines
even under ``-n``, so this is what keeps ``make -n`` from building.

Every command gets the pool exported (its slot is its implicit slot), its
standard input from ``/dev/null``, and its own process group (signals sent
to ``run`` are passed on to each command's whole group). Its output is
printed as :mod:`._run_output` describes (grouped like ``make -O``,
``--line-buffer``, ``--keep-order``, ``--joblog``, spooled to a temporary
file when large, a progress line on a terminal). Without ``--keep-going``
no command is started after the first failure (those running finish); at
the end a summary lists the failed commands. How a run stops and cleans up
on signals, errors and a closed output is in :mod:`._runner`.

Exit status: 0 every command succeeded; 1 some failed or were not started;
2 usage error; 125 the pool broke or could not be made (makejobs' own
failure, as for env(1) and timeout(1)); death by SIGINT/SIGTERM/SIGHUP
after passing it on, by any other fatal signal after stopping the
commands, and by SIGPIPE when standard output was closed (as coreutils).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from ..errors import JobserverUnavailable
from ..pool import TokenPool, join_or_create
from ..protocol import parse_makeflags
from ._args import UsageError, check_slots, fill
from ._console import EXIT_FAILED, say
from ._runner import Fatal, Runner
from ._supervise import REKILL, die_of, signal_name
from ._token_count import close_counting

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from typing import TextIO

    from ._load import LoadLimit
    from ._run_output import JobLog, Printer

__all__ = ["command", "configure", "make_dry_run", "read_commands"]

_SHELL = "/bin/sh"


def read_commands(text: str) -> list[str]:
    """The commands in *text*: continuation lines joined, blank and ``#`` lines dropped.

    A line ending in an odd number of backslashes continues on the next one;
    the backslash-newline stays in the command for the shell (like a make
    recipe), so quoting works as it would in a script. A ``#`` line that
    ends in a backslash continues too (make's comments do the same).
    """
    commands: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        current.append(line)
        if (len(line) - len(line.rstrip("\\"))) % 2:
            continue
        command = "\n".join(current)
        current = []
        stripped = command.strip()
        if stripped and not stripped.startswith("#"):
            commands.append(command)
    if current:  # the text ended inside a continuation: the backslash stays
        command = "\n".join(current)
        if command.strip() and not command.lstrip().startswith("#"):
            commands.append(command)
    return commands


def _read_input(path: str | None) -> str:
    if path is None or path == "-":
        return sys.stdin.read()
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def make_dry_run(environ: Mapping[str, str]) -> bool:
    """True under ``make -n``: its ``n`` flag is among the letters of ``MAKEFLAGS``.

    make writes its one-letter flags as the first word without a dash
    (``n -j2 --jobserver-auth=...``); a hand-written ``-n`` counts as well,
    as it does for make itself.
    """
    value = environ.get("MAKEFLAGS")
    return value is not None and parse_makeflags(value).dry_run


def _same_file(a: TextIO, b: TextIO) -> bool:
    try:
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


def _pool_for_run(jobs: int | None) -> tuple[TokenPool, bool, int | None]:
    """The pool ``run`` uses: (pool, created here, cap on running commands)."""

    def report(e: JobserverUnavailable, count: int) -> None:
        if jobs is not None:
            say("run", f"{e}; using a new pool of {jobs} slot(s) (-j {jobs})")
        else:
            say("run", f"{e}; running one command at a time")

    pool, created = join_or_create(jobs, unusable=jobs or 1, report=report)
    return pool, created, None if created else jobs


def _reject_words(words: list[str]) -> None:
    if not words:
        return
    hint = "command lines come from standard input or -f FILE, one per line"
    if len(words) == 1 and os.path.isfile(words[0]):
        hint += f" (to read {words[0]!r}, use -f {words[0]})"
    else:
        example = " ".join(words)
        hint += f", e.g. echo {_quote(example)} | makejobs run"
    raise UsageError(f"unexpected argument {words[0]!r}: {hint}")


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def _dry_run(lines: list[str]) -> int:
    for line in lines:
        sys.stdout.write(line + "\n")
    return 0


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs run``; the exit status (see the module docstring)."""
    _reject_words(args.words)
    try:
        lines = read_commands(_read_input(args.file))
    except OSError as e:
        raise UsageError(f"cannot read commands: {e}") from None
    if args.dry_run or make_dry_run(os.environ):
        return _dry_run(lines)
    if not lines:
        return 0
    joblog: JobLog | None = None
    if args.joblog is not None:
        from ._run_output import JobLog

        try:
            joblog = JobLog(args.joblog)
        except OSError as e:
            raise UsageError(f"cannot write the job log: {e}") from None
    try:
        pool, created, limit = _pool_for_run(args.jobs)
    except (OSError, ValueError) as e:
        if joblog is not None:
            joblog.close()
        say("run", f"cannot create a pool: {e}")
        return EXIT_FAILED
    load: LoadLimit | None = None
    if args.load is not None:
        from ._load import LoadLimit

        load = LoadLimit(args.load)
    merge = _same_file(sys.stdout, sys.stderr)
    printer = _printer(args, joblog, merge, len(lines))
    runner = Runner(
        pool,
        lines,
        printer,
        shell=_SHELL,
        limit=limit,
        load=load,
        keep_going=args.keep_going,
        merge=merge,
    )
    fatal: int | None = None
    try:
        runner.run()
    except Fatal as e:
        fatal = e.signum
    finally:
        printer.close()
        if load is not None:
            load.close()
        if created:
            expected = (pool.slots or 1) - 1
            found = close_counting(pool)
            if found is not None and found != expected:
                say("run", f"{found} of {expected} jobserver token(s) came back at the end")
        else:
            pool.close()
    if fatal is not None:
        _summary(runner, stopped_by=fatal)
        die_of(fatal)
        return 128 + fatal
    status = _summary(runner)
    if runner.interrupted is not None and runner.interrupted in REKILL:
        die_of(runner.interrupted)
        return 128 + runner.interrupted
    return status


def _printer(args: argparse.Namespace, joblog: JobLog | None, merge: bool, total: int) -> Printer:
    from ._run_output import Printer, Progress

    progress = None
    if _isatty(sys.stderr) and hasattr(sys.stderr, "buffer"):
        progress = Progress(sys.stderr.buffer, total)
    return Printer(
        merge=merge,
        line_buffer=args.line_buffer,
        keep_order=args.keep_order,
        joblog=joblog,
        progress=progress,
    )


def _summary(runner: Runner, *, stopped_by: int | None = None) -> int:
    """Print the failures and what was not started; the exit status."""
    failed = [job for job in runner.finished if job.failed]
    not_started = len(runner.pending)
    if runner.interrupted is not None:
        say("run", f"interrupted by {signal_name(runner.interrupted)}")
    if stopped_by is not None:
        say("run", f"stopped by {signal_name(stopped_by)}; the running commands were stopped too")
    if runner.broken is not None:
        say("run", f"the jobserver pool broke: {runner.broken}")
    if failed:
        lines = [f"{len(failed)} of {runner.total} command(s) failed:"]
        lines += [f"  [{job.number}] {job.why()}: {job.line}" for job in failed]
        say("run", "\n".join(lines))
    if not_started:
        hint = (
            " (--keep-going runs them anyway)"
            if failed and not runner.keep_going and runner.interrupted is None
            else ""
        )
        say("run", f"{not_started} command(s) not started{hint}")
    if runner.broken is not None:
        return EXIT_FAILED
    return 1 if failed or not_started else 0


def _load(value: str) -> float:
    try:
        load = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not load >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return load


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``run`` parser its description, options and command."""
    parser.description = fill(
        "Run shell command lines (one per line, via /bin/sh -c) in parallel, each"
        " on one slot of the inherited pool, or of a new pool of N when there is none. Each"
        " command gets the pool exported, stdin from /dev/null and its own process group;"
        " its output is printed in one piece when it ends (like make -O)."
    )
    parser.epilog = """\
input: one command per line, from standard input or -f FILE (not from arguments). A line
ending in '\\' goes on on the next line (the shell gets the backslash-newline, as from
make). Blank lines and lines starting with '#' are skipped; all lines are read before the
first command starts.

slots: under an inherited pool, -j N only caps how many commands run at once. An
advertised but unusable pool runs one command at a time (with a warning) unless -j N asks
for a new pool. -l LOAD works like make's: while a command runs, no other starts when
the load is above LOAD (Linux: the runnable processes in /proc/loadavg; elsewhere the
1-minute load average); one command always runs.

output: each command's output is printed in one piece when it ends (--line-buffer: line
by line as it comes; --keep-order: in input order); output past 8 MiB in all waits in
temporary files ($TMPDIR), not in memory. A progress line (done, running,
failed, ETA) is shown on stderr when it is a terminal. --joblog writes GNU parallel's
tab-separated columns: Seq Host Starttime JobRuntime Send Receive Exitval Signal Command.

make -n: when MAKEFLAGS carries make's n flag (make -n runs '+' lines), run behaves as
with --dry-run: it prints the commands and runs none.

Without --keep-going nothing new starts after the first failure.

exit status: 0 every command succeeded; 1 some failed or were not started; 2 usage error;
125 makejobs itself failed (the pool broke or could not be made), as for env and timeout.
SIGINT/SIGTERM/SIGHUP are passed on to every running command's process group; makejobs
waits for them and then dies of the same signal (what is left of a group 2 s after its
command ended gets SIGTERM, then SIGKILL). Other signals that end a process
(SIGUSR1, SIGALRM...) and errors stop the commands (SIGTERM to each process group, SIGKILL
2 s later) and reap them first. A closed standard output (run | head -1) stops them the
same way and ends makejobs quietly by SIGPIPE, as coreutils do (status 141 in a shell).

example: printf '%s\\n' 'gzip -k a.log' 'gzip -k b.log' | makejobs run -j 4"""
    parser.add_argument(
        "-j",
        "--jobs",
        type=check_slots,
        metavar="N",
        help="size of the new pool when none is inherited (default: usable CPUs); under an"
        " inherited pool, the most commands running at once",
    )
    parser.add_argument(
        "-l",
        "--load-average",
        dest="load",
        type=_load,
        metavar="LOAD",
        help="start no command while others run and the load is above LOAD (as make -l)",
    )
    parser.add_argument(
        "-f",
        "--file",
        metavar="FILE",
        help="read command lines from FILE (default, or '-': standard input)",
    )
    parser.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="start the remaining commands even after one failed",
    )
    parser.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="print the commands, run none (also under make -n)",
    )
    parser.add_argument(
        "--keep-order",
        action="store_true",
        help="print the commands' output in input order (a command that ends early waits)",
    )
    parser.add_argument(
        "--line-buffer",
        action="store_true",
        help="print output line by line as it comes instead of in one piece per command",
    )
    parser.add_argument(
        "--joblog",
        metavar="FILE",
        help="log each command to FILE in GNU parallel's --joblog format (+FILE: append)",
    )
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    parser.set_defaults(func=command)
