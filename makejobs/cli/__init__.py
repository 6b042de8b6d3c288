"""The ``makejobs`` command line (also ``python -m makejobs``).

Subcommands, each documented in its module
==========================================

* ``makejobs serve [-j N] [--style pipe|fifo] [--strict] [--trace FILE] -- CMD ...``
  (:mod:`~makejobs.cli.serve`): create a pool of N slots and run CMD under it.
* ``makejobs bridge [--style pipe|fifo|auto] [--relay] [-v] -- CMD ...``
  (:mod:`~makejobs.cli.bridge`): run CMD on the inherited pool, offered in the
  form CMD speaks; exit statuses as ``serve``'s.
* ``makejobs exec [--min A] [--max B] [--wait SECONDS] [--env NAME] -- CMD ...``
  (:mod:`~makejobs.cli.exec_`): hold slots of the inherited pool for a tool
  that takes a job count, and give them back when it exits.
* ``makejobs run [-j N] [-l LOAD] [-f FILE] [-k] [-n] ...`` (:mod:`~makejobs.cli.run`):
  run shell command lines in parallel, each on one slot.
* ``makejobs status [--json]`` (:mod:`~makejobs.cli.status`): describe the
  pool this environment advertises, and who holds it.
* ``makejobs doctor [--json] [-- CMD ...]`` (:mod:`~makejobs.cli.doctor`):
  name what keeps this environment from its build's pool, with the fixes.
* ``makejobs plot FILE [-o OUT]`` (:mod:`~makejobs.cli.plot`): draw a trace
  written by ``serve --trace``.

How ``serve`` and ``exec`` pass signals on to CMD is described in
:mod:`~makejobs.cli._supervise`.

Exit statuses
=============

* ``serve``/``exec``: the command's exit status; 128+N when it was killed by
  signal N. When makejobs itself got SIGINT/SIGTERM/SIGHUP and the command
  died of that same signal, makejobs cleans up and then dies of it too, so
  the calling shell or make sees an interrupted command (as shells do).
  126: the command cannot be executed; 127: command not found; 125: makejobs
  itself failed (no pool could be created; ``serve --trace`` cannot write
  its file; ``--strict`` token check);
  124: ``exec --wait`` ran out before ``--min`` slots came.
* ``run``: 0 when every command succeeded, 1 when any failed or was not
  started, 125 when the pool broke; dies of SIGINT/SIGTERM/SIGHUP it received
  after passing it on and waiting for the commands, and of any other fatal
  signal after stopping and reaping them.
* ``status``: 0 a usable pool is advertised, 1 none is, 2 one is advertised
  but cannot be used.
* ``doctor``: as ``status``: 0 a usable pool was found, 1 none is
  advertised, 2 one is advertised but cannot be used here.
* ``plot``: 0 the picture was written, 1 it could not be (unreadable trace,
  no matplotlib, unwritable output).
* 2 for usage errors, like every argparse program.
* Every command: when its standard output (or error) is a pipe whose reader
  went away (``makejobs status | head -1``), it stops quietly, with no
  traceback and no message (``run`` first stops and reaps its commands), and
  dies of SIGPIPE, as coreutils such as ``cat`` and ``seq`` do: a shell sees
  141 (with ``set -o pipefail``), Popen -13.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from ._args import Formatter, UsageError, fill
from ._console import (
    EXIT_CANNOT_EXECUTE,
    EXIT_FAILED,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    SLOTS_VARIABLE,
    silence_closed_output,
)
from ._supervise import die_of, in_main_thread

__all__ = [
    "EXIT_CANNOT_EXECUTE",
    "EXIT_FAILED",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "SLOTS_VARIABLE",
    "main",
]


#: Each command's module and its line in ``makejobs --help``, in that list's order.
#: Only the module of the command being run is imported: ``makejobs run`` under
#: ``make -j`` starts once per recipe, and start-up is most of what a short
#: command line costs.
_COMMANDS = {
    "serve": ("serve", "create a pool of N slots and run a command under it"),
    "bridge": ("bridge", "run a command on the inherited pool, in the form it speaks"),
    "exec": ("exec_", "hold slots of the inherited pool for a tool that takes a job count"),
    "run": ("run", "run shell command lines in parallel on the pool"),
    "status": ("status", "describe the pool this environment advertises"),
    "doctor": ("doctor", "say why a build does or does not get its pool, and how to fix it"),
    "plot": ("plot", "draw a trace written by serve --trace"),
}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The command named in *argv*: its first word that is not an option."""
    # The top-level options (--help, --version) take no value, so the first
    # other word is the command, or a usage error argparse will report.
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def _build_parser(prog: str | None, argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "makejobs",
        formatter_class=Formatter,
        description=fill(
            "Share the GNU make jobserver (the token pool of make -jN, ninja and"
            " cargo) with any command."
        ),
        epilog="Run `makejobs COMMAND --help` for each command. Exit status 2 means a usage"
        " error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    chosen = _chosen_command(argv)
    for name, (module_name, summary) in _COMMANDS.items():
        command = subparsers.add_parser(name, help=summary, formatter_class=Formatter)
        if name == chosen:
            # The others need no more than their line in --help and a place in
            # argparse's choices.
            importlib.import_module(f"{__name__}.{module_name}").configure(command)
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the ``makejobs`` command line with *argv* (default ``sys.argv[1:]``).

    Returns the exit status (see the module docstring). ``--help`` and usage
    errors raise :class:`SystemExit` as argparse does (status 0 and 2). A
    command that ends because makejobs received SIGINT/SIGTERM/SIGHUP
    re-raises that signal on this process after cleaning up; one whose
    output was closed dies of SIGPIPE.
    """
    try:
        try:
            return _main(argv, prog)
        finally:
            # A reader that went away shows when the last output is flushed:
            # here, not at interpreter exit, where Python would print
            # "Exception ignored ... BrokenPipeError" and exit 120.
            if sys.stdout is not None:
                sys.stdout.flush()
    except BrokenPipeError:
        # Nothing else in the command line writes to a pipe: the library turns
        # a pool's EPIPE into PoolBroken. Quiet, as coreutils are.
        silence_closed_output()
        if in_main_thread():
            die_of(signal.SIGPIPE)
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None, prog: str | None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = _build_parser(prog, argv)
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return func(args)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"{parser.prog} {args.subcommand}: error: {e}\n")
    except KeyboardInterrupt:
        # ^C outside the supervised parts (say, while `run` reads its commands):
        # no traceback, and the caller still learns that we were interrupted.
        if in_main_thread():
            die_of(signal.SIGINT)
        return 128 + signal.SIGINT
