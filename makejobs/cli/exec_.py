"""``makejobs exec [--min A] [--max B] [--wait SECONDS] [--env NAME] -- CMD ...``

For tools that do not speak the jobserver (``sphinx-build -j``, test
runners, ``OMP_NUM_THREADS``...): take between A (default 1) and B slots
of the inherited pool, the process's implicit slot counting as one, put
their number in ``MAKEJOBS_SLOTS`` (or each ``--env NAME``), run CMD, and
give every slot back when CMD has exited, however makejobs exits. A
literal ``$MAKEJOBS_SLOTS`` or ``${MAKEJOBS_SLOTS}`` in CMD's arguments
(single-quoted, so the shell left it alone) is replaced by the number:
``makejobs exec -- sphinx-build -j '$MAKEJOBS_SLOTS' . _build``.

* Getting A slots waits as long as it takes, or at most ``--wait``
  seconds (exit 124 when they did not come). More slots, up to B, are
  taken when free at once, or as they come until ``--wait`` has passed.
* B defaults to the pool's size (``-jN`` of ``MAKEFLAGS``) or else the
  usable CPUs. A above a known pool size is lowered to it (it could never
  be satisfied).
* Without a pool the number is B if given, else the usable CPUs (never
  below A). With a pool that is advertised but unusable (a recipe without
  ``+``...) a warning says why and the number is A, as make falls back to
  ``-j1``.
* CMD does not get the pool: its ``MAKEFLAGS``/``MFLAGS``/
  ``CARGO_MAKEFLAGS`` say ``-jK`` (K = the slots held) with no jobserver,
  so a make that CMD starts runs at most K jobs and nothing is counted
  twice. A jobserver-aware tool should be run directly, not under exec.
  A ``-j`` given to make or ninja in CMD overrides K: exec warns about it
  (``-j '$MAKEJOBS_SLOTS'`` is fine).
* More than one waiting ``exec --min A`` with A > 1 can deadlock, each
  holding part of what it needs: give them ``--wait``.

Signals are passed on to CMD as described in :mod:`makejobs.cli._supervise`.

(The module is ``exec_`` because ``exec`` is a builtin function: importing a
module of that name would shadow it in the importing namespace.)
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping, Sequence
from time import monotonic

from ..errors import Blocked, JobserverUnavailable, PoolBroken
from ..pool import ENVIRON_VARIABLES, Token, TokenPool, usable_cpus
from ..protocol import parse_makeflags, replace_auth
from ._args import UsageError, check_slots, fill, split_command
from ._console import EXIT_FAILED, EXIT_TIMEOUT, SLOTS_VARIABLE, say
from ._diagnose import exec_warnings
from ._supervise import SignalCatcher, Signalled, exit_status, run_foreground

__all__ = ["SLOTS_VARIABLE", "command", "configure"]


def _check_seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not number >= 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, not {value!r}")
    return number


def _check_variable(value: str) -> str:
    if not value or "=" in value or "\0" in value:
        raise argparse.ArgumentTypeError(f"not a usable environment variable name: {value!r}")
    return value


def _child_environ_without_pool(slots: int, names: Sequence[str]) -> dict[str, str]:
    """os.environ for an exec'd command: slot count set, the pool replaced by ``-jK``."""
    env = dict(os.environ)
    for variable in ENVIRON_VARIABLES:
        value = env.get(variable)
        if value and parse_makeflags(value).advertises_pool():
            # No auth words left and -jK instead: a make started by the
            # command runs K jobs of its own, which are exactly our slots.
            env[variable] = replace_auth(value, None, jobs=slots)
    for name in names:
        env[name] = str(slots)
    return env


def _substitute(command: Sequence[str], names: Sequence[str], slots: int) -> list[str]:
    """CMD with each literal ``$NAME``/``${NAME}`` replaced by the number of slots.

    A single-quoted argument reaches us unexpanded, so ``makejobs exec --
    sphinx-build -j '$MAKEJOBS_SLOTS'`` works without a ``sh -c`` around it.
    """
    out = []
    for word in command:
        for name in names:
            word = word.replace("${" + name + "}", str(slots))
            word = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", str(slots), word)
        out.append(word)
    return out


def _advertised(environ: Mapping[str, str]) -> bool:
    return any(
        parse_makeflags(environ.get(variable) or "").advertises_pool()
        for variable in ENVIRON_VARIABLES
    )


def _take_slots(
    pool: TokenPool, least: int, most: int, wait: float | None, tokens: list[Token]
) -> None:
    """Append between *least* and *most* slots of *pool* to *tokens*.

    Raises Blocked when *wait* passes before *least* are held (the tokens
    taken so far stay in *tokens* for the caller to give back).
    """
    deadline = None if wait is None else monotonic() + wait
    while len(tokens) < least:
        remaining = None if deadline is None else max(0.0, deadline - monotonic())
        tokens.append(pool.acquire(remaining))
    while len(tokens) < most:
        token = pool.try_acquire()
        if token is None:
            if deadline is None:
                return
            remaining = deadline - monotonic()
            if remaining <= 0:
                return
            try:
                token = pool.acquire(remaining)
            except Blocked:
                return
        tokens.append(token)


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs exec``; the exit status (see :mod:`makejobs.cli`)."""
    cmd = split_command(args.command)
    names: list[str] = args.env or [SLOTS_VARIABLE]
    least: int = args.min
    if args.max is not None and args.max < least:
        raise UsageError(f"--max {args.max} is below --min {least}")
    status = EXIT_FAILED
    rekill: int | None = None
    tokens: list[Token] = []
    pool: TokenPool | None = None
    with SignalCatcher() as catcher:
        catcher.raising = True
        try:
            try:
                pool = TokenPool.from_environ()
            except JobserverUnavailable as e:
                say("exec", f"{e}; using {least} slot(s)")
                count = least
            else:
                if pool is None:
                    count = max(least, args.max if args.max is not None else usable_cpus())
                else:
                    most = args.max if args.max is not None else (pool.slots or usable_cpus())
                    if pool.slots is not None and least > pool.slots:
                        say(
                            "exec",
                            f"--min {least} is more than the whole pool (-j{pool.slots});"
                            f" waiting for {pool.slots}",
                        )
                        least = pool.slots
                    most = max(most, least)
                    try:
                        _take_slots(pool, least, most, args.wait, tokens)
                    except Blocked:
                        say(
                            "exec",
                            f"only {len(tokens)} of the {least} slots --min asks for came"
                            f" within {args.wait:g} s; not running {cmd[0]}",
                        )
                        return EXIT_TIMEOUT
                    count = len(tokens)
                    for message in exec_warnings(cmd, names, count):
                        say("exec", f"warning: {message}")
            env = (
                _child_environ_without_pool(count, names)
                if _advertised(os.environ)
                else {**os.environ, **{name: str(count) for name in names}}
            )
            status, rekill = run_foreground("exec", catcher, _substitute(cmd, names, count), env)
        except Signalled as s:
            status, rekill = s.outcome()
        except PoolBroken as e:
            say("exec", str(e))
            status = EXIT_FAILED
        finally:
            # Only now is the command reaped: every slot goes back, even if
            # the pool misbehaves for one of them.
            if pool is not None:
                for token in tokens:
                    try:
                        pool.release(token)
                    except PoolBroken as e:
                        say("exec", str(e))
                pool.close()
    return exit_status(status, rekill)


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``exec`` parser its description, options and command."""
    parser.description = fill(
        "Take between --min and --max slots of the inherited pool (this"
        " process's implicit slot counts as one), put their number in the environment, run"
        " CMD, and give every slot back when it exits. For tools that do not speak the"
        " jobserver but take a job count. A literal $NAME or ${NAME} in CMD's arguments"
        " (single-quoted, so the shell left it alone) becomes the number too, e.g.\n\n"
        "  makejobs exec --max 8 -- sphinx-build -j '$MAKEJOBS_SLOTS' . _build"
    )
    parser.epilog = f"""\
without a pool: the number is --max if given, else the usable CPUs (never below --min).
with a pool that is advertised but unusable: a warning, and the number is --min (as make
falls back to -j1).

CMD does not join the pool: its MAKEFLAGS/MFLAGS/CARGO_MAKEFLAGS say -jK (K = the slots
held) without a jobserver, so a make it starts runs at most K jobs and nothing is counted
twice. Run jobserver-aware tools (make, ninja, cargo) directly instead. A -j for make
or ninja in CMD overrides K (exec warns); -j '$MAKEJOBS_SLOTS' is the number held.

Several waiting `exec --min A` with A > 1 can deadlock, each holding part of what it
needs; give them --wait.

exit status: CMD's (128+N if signal N killed it); 124 --wait passed before --min slots
were held; 126 CMD cannot be executed; 127 CMD not found. Default variable:
{SLOTS_VARIABLE}."""
    parser.add_argument(
        "--min",
        type=check_slots,
        default=1,
        metavar="A",
        help="slots required before CMD starts (default 1: the implicit slot, never waits)",
    )
    parser.add_argument(
        "--max",
        type=check_slots,
        metavar="B",
        help="most slots to take (default: the pool's -jN, else the usable CPUs)",
    )
    parser.add_argument(
        "--wait",
        type=_check_seconds,
        metavar="SECONDS",
        help="time allowed for collecting slots: --min must be reached by then, and more"
        " slots up to --max are waited for until then (default: wait for --min as long as"
        " needed, take more only if free at once)",
    )
    parser.add_argument(
        "--env",
        action="append",
        type=_check_variable,
        metavar="NAME",
        help=f"variable that gets the number of slots (repeatable; default {SLOTS_VARIABLE})",
    )
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to run"
    )
    parser.set_defaults(func=command)
