"""``makejobs serve [-j N] [--style auto|pipe|fifo] [--strict] [--trace FILE] -- CMD ...``

Create a pool of N slots (default: the usable CPUs), export it to CMD
(``MAKEFLAGS``, ``MFLAGS`` if set, ``CARGO_MAKEFLAGS``, and the pipe's
descriptors), run CMD and exit with its status. CMD runs on the pool's
implicit slot, as a make started by make would. At the end every token
must be back: missing or extra ones are reported on stderr (and make the
exit status 125 with ``--strict`` when CMD itself succeeded). The pool is
always a new one, even where another is inherited (as for ``make -jN``
given to a sub-make).

Style: ``auto`` (the default) picks the form CMD speaks, by the rule of
:func:`makejobs.advertise.command_style`: a fifo for GNU make >= 4.4 (it
also reaches recipes not marked ``+``) and for ninja (upstream ninja 1.13
ignores pipe pools), a pipe for make <= 4.3 (it dies on a fifo pool), cargo
and anything else. ``pipe`` and ``fifo`` force one form (the measured table
behind this is in the README).

Files: serve keeps a token ledger (below) in a private directory under
``$TMPDIR``: ``makejobs-ledger-*`` for a pipe pool; for a fifo pool, the
fifo and its ledger share a ``makejobs-*`` directory. They are removed on
every exit that can be caught (normal exit, errors, SIGINT, SIGTERM,
SIGHUP, SIGQUIT). A SIGKILL leaves them behind; the next serve removes
those whose pool no process has open any more (Linux, where ``/proc`` can
tell; see :mod:`makejobs.cli._leftovers`). Elsewhere they stay until the
temporary directory is cleaned.

Do not give CMD its own ``-j``: ``make -jN`` and even a bare ``make -j``
print "-jN forced in submake: resetting jobserver mode" and ignore the
pool (observed with make 4.3 and 4.4.1); ``ninja -jN`` ignores it too.
``cargo -jN`` stays inside the pool. serve warns when it sees such a
``-j``, and when the pool it makes would come on top of one this
environment already advertises (or one the parent withheld with
``-2,-2``, or a parent's unlimited bare ``-j``), saying how to fix it
(see :mod:`makejobs.cli._diagnose`).

Signals are passed on to CMD as described in :mod:`makejobs.cli._supervise`.

Killed clients: the pool has a token ledger (:mod:`makejobs.ledger`), and
serve makes itself the subreaper of everything CMD starts (Linux). About
once a second, and at the end, when no orphaned process is left running,
serve gives back the tokens of makejobs clients that died holding them
(SIGKILL, the OOM killer) and says so on stderr. With orphans still running
nothing is recovered: one of them might be working on such a token. At the
end, orphans first get a moment to exit (:data:`SETTLE` seconds, or
:data:`SETTLE_AFTER_SIGNAL` after serve passed a signal on, less when they
are gone sooner), so processes that are merely dying are not reported as
running and their tokens are not reported missing. Tokens
lost by make, ninja or cargo themselves cannot be seen, so they cannot be
recovered.
"""

from __future__ import annotations

import argparse
import os

from ..pool import TokenPool, usable_cpus
from ._args import check_slots, fill, split_command
from ._console import EXIT_FAILED, say
from ._diagnose import serve_warnings
from ._supervise import (
    SignalCatcher,
    Signalled,
    become_subreaper,
    exit_status,
    other_children,
    reap_others,
    run_foreground,
    settle_orphans,
)
from ._token_count import close_counting

# Not typing's TYPE_CHECKING (see makejobs/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any

    from ._trace import TraceRecorder

__all__ = ["SETTLE", "SETTLE_AFTER_SIGNAL", "command", "configure"]

#: Seconds serve gives orphans to exit after CMD has, before it judges them
#: (a makejobs helper ends when its parent does, a daemon's child a moment
#: after it); they are reaped as they go and serve goes on when none is left.
SETTLE = 1.0
#: The same after serve passed a signal on: every descendant was told to stop
#: and most are busy dying (a worker's teardown, a make removing targets).
SETTLE_AFTER_SIGNAL = 5.0


def _report_tokens(found: int | None, expected: int) -> bool:
    """Print a line when a created pool did not get exactly its tokens back; True if so."""
    if found is None or found == expected:
        return False
    if found < expected:
        missing = expected - found
        say(
            "serve",
            f"{missing} jobserver token(s) missing at the end ({found} of {expected} came"
            " back): a process died holding them or never gave them back",
        )
    else:
        say(
            "serve",
            f"{found - expected} extra jobserver token(s) at the end ({found}, expected"
            f" {expected}): a process wrote back tokens it never took",
        )
    return True


class _Recovery:
    """Give back tokens of killed makejobs clients, only while no orphan runs."""

    def __init__(self, pool: TokenPool, enabled: bool) -> None:
        self.pool = pool
        self.enabled = enabled
        self.main = -1  # CMD's pid, once it runs
        self.total = 0

    def started(self, child: subprocess.Popen[Any]) -> None:
        self.main = child.pid

    def __call__(self) -> None:
        if not self.enabled or other_children(self.main):
            return
        recovered = self.pool.recover()
        if recovered:
            self.total += recovered
            say(
                "serve",
                f"recovered {recovered} jobserver token(s) of a makejobs client that died"
                " holding them",
            )

    def finish(self, signalled: bool) -> None:
        """Judge the orphans once they had a moment to exit; recover if none is left.

        Nothing to judge if CMD never ran (it could not be started).
        """
        if self.main == -1:
            return
        if not self.enabled:
            reap_others(self.main)
            return
        grace = SETTLE_AFTER_SIGNAL if signalled else SETTLE
        orphans = settle_orphans(self.main, grace)
        if orphans:
            say(
                "serve",
                f"{len(orphans)} orphaned process(es) still running (e.g. pid {orphans[0]});"
                " tokens of clients that died are not recovered while they might be in use",
            )
        self()


def _remove_leftovers() -> None:
    """Remove what killed serves left in the temporary directory (see cli._leftovers)."""
    from ._leftovers import remove_leftovers

    try:
        remove_leftovers()
    except Exception:  # never a reason not to run the command
        pass


def _write_trace(trace: TraceRecorder, path: str) -> None:
    try:
        trace.stop()
    except OSError as e:
        say("serve", f"cannot write the trace to {path}: {e.strerror or e}")


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs serve``; the exit status (see :mod:`makejobs.cli`)."""
    cmd = split_command(args.command)
    slots: int = args.jobs if args.jobs is not None else usable_cpus()
    for message in serve_warnings(cmd, os.environ, slots):
        say("serve", f"warning: {message}")
    status = EXIT_FAILED
    rekill: int | None = None
    with SignalCatcher() as catcher:
        # Until the command runs, a signal stops everything (the pool is
        # still cleaned up by the finally below).
        catcher.raising = True
        pool: TokenPool | None = None
        trace: TraceRecorder | None = None
        try:
            _remove_leftovers()
            try:
                style = args.style
                if style == "auto":
                    from ..advertise import command_style

                    style = command_style(cmd) or "pipe"
                pool = TokenPool.create(slots, style=style, ledger=True)
            except (OSError, ValueError) as e:
                say("serve", f"cannot create a pool of {slots} slots: {e}")
                return EXIT_FAILED
            # Orphans come to us, so "no orphan left" means no process can
            # still be running on a dead client's token (see makejobs.ledger).
            recovery = _Recovery(pool, become_subreaper())
            env = pool.environ()
            if args.trace is not None:
                from ._trace import TraceRecorder

                try:
                    trace = TraceRecorder(args.trace, pool, slots, cmd)
                except OSError as e:
                    say("serve", f"cannot write the trace to {args.trace}: {e.strerror or e}")
                    return EXIT_FAILED
                trace.start()
            status, rekill = run_foreground(
                "serve",
                catcher,
                cmd,
                env,
                pool.pass_fds,
                started=recovery.started,
                every_second=recovery,
            )
            recovery.finish(signalled=bool(catcher.received))
        except Signalled as s:
            status, rekill = s.outcome()
        finally:
            if trace is not None:
                _write_trace(trace, args.trace)
            if pool is not None:
                found = close_counting(pool)
                if _report_tokens(found, slots - 1) and args.strict and status == 0:
                    status = EXIT_FAILED
    return exit_status(status, rekill)


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``serve`` parser its description, options and command."""
    parser.description = fill(
        "Create a jobserver pool of N slots, export it to CMD (MAKEFLAGS,"
        " CARGO_MAKEFLAGS and, for a pipe, its fds), run CMD on the pool's implicit slot and"
        " exit with CMD's status (128+N if a signal killed it). At the end every token must"
        " be back; missing or extra tokens are reported on stderr."
    )
    parser.epilog = """\
styles:
  auto (default)  the form CMD speaks: fifo for GNU make >= 4.4 and ninja, pipe for
                  make <= 4.3, cargo and anything else
  pipe            works with every GNU make (4.3 dies on fifo pools), cargo, and ninja
                  builds that accept pipes (the PyPI ninja wheel)
  fifo            needed by upstream ninja 1.13 (it ignores pipe pools) and reaches make
                  >= 4.4 recipes not marked '+'

files: a token ledger for either style (makejobs-ledger-* in $TMPDIR; a fifo pool keeps
it with the fifo in a makejobs-* directory), removed on every exit serve can catch. After
a SIGKILL they stay; the next serve removes those that no process uses any more (Linux).

Give CMD no -j of its own: `make -jN` and even `make -j` ignore the pool ("forced in
submake"), so does `ninja -jN`; `cargo -jN` stays within it. The pool is always a new
one, even under an inherited pool. serve warns on stderr when it sees either: a -j for
make or ninja in CMD, or a pool it would stack on (also one withheld with -2,-2, make
4.4's mark for a recipe line without '+', and a parent's bare -j).

Signals: a SIGINT/SIGTERM/SIGHUP/SIGQUIT sent to makejobs is passed on to CMD and its
process-group descendants (a terminal's ^C already reached them and is not sent twice);
makejobs then waits for CMD, cleans up, and dies of the same signal if CMD did.

exit status: CMD's; 125 no pool could be made or the --trace file cannot be written (or
--strict found a token mismatch after CMD succeeded); 126 CMD cannot be executed; 127 CMD
not found.

example: makejobs serve -j 8 -- make"""
    parser.add_argument(
        "-j",
        "--jobs",
        type=check_slots,
        metavar="N",
        help="total parallelism: N-1 tokens plus CMD's implicit slot (default: usable CPUs)",
    )
    parser.add_argument(
        "--style",
        choices=("auto", "pipe", "fifo"),
        default="auto",
        help="how the pool is shared (default: auto, by CMD; see below)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 125 when tokens are missing or extra at the end although CMD succeeded",
    )
    parser.add_argument(
        "--trace",
        metavar="FILE",
        help="record busy slots and every process CMD starts in FILE (Chrome Trace Event"
        " JSON, for Perfetto or chrome://tracing; draw it with `makejobs plot FILE`)",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run"
    )
    parser.set_defaults(func=command)
