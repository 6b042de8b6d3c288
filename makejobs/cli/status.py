"""``makejobs status [--json]``

Describe the pool this environment advertises: which variable and its
value, style, descriptors or fifo path, ``-j`` (a bare ``-j`` is
"unlimited": make then runs no jobserver), whether this process can use
it, why not (the fault in the value itself first: an empty fifo path, a
descriptor too large...) and what to do. ``--json`` prints the same as one
object.

For a usable pool, on Linux, it also lists the *holders*: every other
process that has the pool's pipe or fifo open (found in ``/proc/*/fd``),
with its pid, command line and role (make, ninja, cargo, ``makejobs
serve``, a makejobs guardian...), which of them owns the pool (the holder
that no other holder started), and the tokens: free now, held, and held by
each makejobs client where a token ledger says (pools of ``makejobs
serve``). See :mod:`makejobs.cli._holders`. JSON keys: ``holders`` (a list
of ``{pid, ppid, command, role, tokens, owner}``), ``owner``,
``holders_hidden`` (processes of other users that could not be
inspected), ``tokens`` (``{total, free, held, held_by_makejobs_clients}``,
when ``-jN`` says the total).

Exit status: 0 a usable pool is advertised, 1 none is, 2 one is advertised
but cannot be used.
"""

from __future__ import annotations

import argparse
import os

from ..errors import JobserverUnavailable
from ..ledger import LEDGER_VARIABLE
from ..pool import ENVIRON_VARIABLES, TokenPool, choose_advertised
from ..protocol import (
    FifoAuth,
    MakeFlags,
    PipeAuth,
    describe_unsupported_auth,
    parse_makeflags,
    unlimited_jobs,
)
from ._args import fill

# Not typing's TYPE_CHECKING, and no typing at run time (see makejobs/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = ["command", "configure"]


def _style_of(flags: MakeFlags) -> str:
    if isinstance(flags.auth, PipeAuth):
        return "pipe"
    if isinstance(flags.auth, FifoAuth):
        return "fifo"
    if flags.disabled:
        return "disabled"
    return "unsupported"


def _status_report(environ: Mapping[str, str]) -> dict[str, Any]:
    """Everything ``status`` says, as a JSON-ready dict (see :func:`command`)."""
    variables = {name: environ.get(name) for name in ENVIRON_VARIABLES}
    report: dict[str, Any] = {
        "advertised": False,
        "usable": False,
        "variable": None,
        "value": None,
        "style": None,
        "read_fd": None,
        "write_fd": None,
        "path": None,
        "jobs": None,
        "unlimited": False,
        "dry_run": False,
        "available": None,
        "reason": None,
        "problems": [],
        "hints": [],
        "variables": variables,
        "holders": None,
        "holders_hidden": None,
        "owner": None,
        "tokens": None,
    }
    hints: list[str] = report["hints"]
    # The pool from_environ() joins: MAKEFLAGS first, and no unusable one hides a usable one.
    choice = choose_advertised(environ)
    report["choice"] = {"reason": choice.reason, "rejected": [list(r) for r in choice.rejected]}
    chosen: tuple[str, str, MakeFlags] | None = None
    if choice.variable is not None and choice.flags is not None:
        chosen = (choice.variable, variables[choice.variable] or "", choice.flags)
    if chosen is None:
        makeflags = parse_makeflags(variables["MAKEFLAGS"] or "")
        report["jobs"] = makeflags.jobs
        report["unlimited"] = unlimited_jobs(variables["MAKEFLAGS"] or "")
        report["dry_run"] = makeflags.dry_run
        report["problems"] = list(makeflags.problems)
        report["reason"] = (
            "no --jobserver-auth in " + ", ".join(ENVIRON_VARIABLES) + ": no pool to share"
        )
        if report["unlimited"]:
            hints.append(
                "a bare -j means no limit at all: make runs every job it can at once and"
                " makes no jobserver; give it a number (make -jN) to share N slots"
            )
        elif variables["MAKEFLAGS"] is not None:
            hints.append(
                "MAKEFLAGS is set but names no pool: make creates one only for -jN with"
                " N > 1 (make -j1 and a bare make -j run without a jobserver)"
            )
        hints.append(
            "to share one limit: run this under `make -jN` (a recipe line starting with '+'"
            " when make uses a pipe), or under `makejobs serve -j N -- COMMAND`"
        )
        return report
    name, value, flags = chosen
    report.update(
        advertised=True,
        variable=name,
        value=value,
        style=_style_of(flags),
        jobs=flags.jobs,
        unlimited=unlimited_jobs(value),
        dry_run=flags.dry_run,
        problems=list(flags.problems),
    )
    if isinstance(flags.auth, PipeAuth):
        report["read_fd"] = flags.auth.read_fd
        report["write_fd"] = flags.auth.write_fd
    elif isinstance(flags.auth, FifoAuth):
        report["path"] = flags.auth.path
    elif flags.unsupported is not None:
        report["path"] = None
    try:
        pool = TokenPool.from_makeflags(flags, variable=name)
    except JobserverUnavailable as e:
        report["reason"] = e.reason
        if flags.disabled or isinstance(flags.auth, PipeAuth):
            hints.append(
                "in a Makefile, start the recipe line with '+' (or use $(MAKE) in it) so make"
                " passes the pool on; from Python, pass the pool's fds with pass_fds="
                " (subprocess closes every other fd)"
            )
            hints.append(
                "make >= 4.4 shares a fifo pool with every recipe, '+' or not; make 4.3 and"
                " `make --jobserver-style=pipe` do not"
            )
        elif isinstance(flags.auth, FifoAuth):
            hints.append(
                "the fifo must be reachable from here: not inside a sandbox or container with"
                " its own /tmp, and the make that made it must still be running"
            )
        else:
            _unsupported(report, flags.unsupported or "")
        return report
    try:
        report["usable"] = True
        report["available"] = pool.available()
        _add_holders(report, flags, environ)
    finally:
        pool.close()
    size = f"{flags.jobs} slots" if flags.jobs else "its slots"
    hints.append(
        f"programs started from here that speak the jobserver (make and ninja without -j,"
        f" cargo, makejobs) share {size} with everything else in this build"
    )
    hints.append(
        "do not give make or ninja a -j of their own here: they would ignore the pool"
        " and start their own"
    )
    if isinstance(flags.auth, FifoAuth):
        hints.append(
            "this is a fifo pool: make 4.3 and older cannot join it (they stop with"
            " 'invalid --jobserver-auth string'); run them under a pipe pool, e.g."
            " `makejobs serve --style pipe -- make`"
        )
    if flags.dry_run:
        hints.append("make runs with -n (dry run): commands are printed, not run")
    return report


def _unsupported(report: dict[str, Any], text: str) -> None:
    """Fill in why an auth text is no pool here: its own fault first, then what to do."""
    reason, semaphore = describe_unsupported_auth(text)
    report["reason"] = reason
    hints: list[str] = report["hints"]
    if semaphore:
        hints.append(
            "this looks like another platform's jobserver (a Windows semaphore name);"
            " makejobs on POSIX joins pipe ('R,W') and fifo ('fifo:PATH') pools only"
        )
    else:
        hints.append(
            "the program that set the variable wrote a malformed --jobserver-auth; a pool is"
            " named 'R,W' (two pipe descriptors) or 'fifo:PATH'"
        )


def _add_holders(report: dict[str, Any], flags: MakeFlags, environ: Mapping[str, str]) -> None:
    """Fill in who has the usable pool open, who owns it, and the tokens (Linux)."""
    from ._holders import find_holders, pool_file

    found = pool_file(flags)
    if found is None:
        return
    key, path = found
    holders = find_holders(
        key, path=path, ledger=environ.get(LEDGER_VARIABLE) or None, exclude=(os.getpid(),)
    )
    if not holders.supported:
        return
    report["holders"] = [h.as_json() for h in holders.holders]
    report["holders_hidden"] = holders.hidden
    owner = holders.owner
    report["owner"] = None if owner is None else owner.as_json()
    free = report["available"]
    if flags.jobs and free is not None:
        total = flags.jobs - 1
        report["tokens"] = {
            "total": total,
            "free": free,
            "held": max(0, total - free),
            "held_by_makejobs_clients": holders.ledger_tokens if holders.ledger else None,
        }


def _format_status(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if report["usable"]:
        lines.append("jobserver: usable")
    elif report["advertised"]:
        lines.append("jobserver: advertised but NOT usable")
    else:
        lines.append("jobserver: none advertised")
    if report["variable"] is not None:
        lines.append(f"  variable:   {report['variable']}={report['value']!r}")
        lines.append(f"  chosen:     {report['choice']['reason']}")
    style = report["style"]
    if style == "pipe":
        lines.append(f"  style:      pipe (fds {report['read_fd']},{report['write_fd']})")
    elif style == "fifo":
        lines.append(f"  style:      fifo ({report['path']})")
    elif style is not None:
        lines.append(f"  style:      {style}")
    jobs = report["jobs"]
    if jobs is not None:
        lines.append(f"  -j:         {jobs}")
    elif report["unlimited"]:
        lines.append("  -j:         unlimited (a bare -j: no limit, no jobserver)")
    else:
        lines.append("  -j:         not given")
    if report["available"] is not None:
        lines.append(f"  free now:   {report['available']} token(s) (changes as jobs run)")
    lines.extend(_format_holders(report))
    if report["reason"] is not None and not report["usable"]:
        lines.append(f"  why not:    {report['reason']}")
    for problem in report["problems"]:
        lines.append(f"  note:       {problem}")
    for hint in report["hints"]:
        lines.append(f"  hint:       {hint}")
    return "\n".join(lines)


def _format_holders(report: dict[str, Any]) -> list[str]:
    holders = report["holders"]
    if holders is None:
        return []
    from ._holders import short_command

    tokens = report["tokens"]
    lines = []
    if tokens is not None:
        known = tokens["held_by_makejobs_clients"]
        by = "" if known is None else f", {known} of them by makejobs clients"
        lines.append(
            f"  tokens:     {tokens['total']} in the pool (-j{report['jobs']} less the first"
            f" slot): {tokens['free']} free, {tokens['held']} held{by}"
        )
    hidden = report["holders_hidden"]
    unseen = f"; {hidden} other processes could not be inspected" if hidden else ""
    lines.append(f"  holders:    {len(holders)} other process(es) have the pool open{unseen}")
    for holder in holders:
        what = holder["role"]
        if holder["owner"]:
            what += ", owns the pool"
        if holder["tokens"] is not None:
            what += f", holds {holder['tokens']} token(s)"
        lines.append(f"    {holder['pid']:>7}  {what}: {short_command(holder['command'])}")
    return lines


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs status``; the exit status (see :mod:`makejobs.cli`)."""
    report = _status_report(os.environ)
    if args.json:
        import json

        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(_format_status(report))
    if report["usable"]:
        return 0
    return 2 if report["advertised"] else 1


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``status`` parser its description, options and command."""
    parser.description = fill(
        "Describe the jobserver pool this environment advertises (CARGO_MAKEFLAGS,"
        " MAKEFLAGS, MFLAGS): the variable, style, fds or fifo path, -j, whether it can be"
        " used from here and, if not, why and what to do. For a usable pool (Linux): the"
        " processes that have it open, which one owns it, the free tokens and the tokens"
        " each makejobs client holds (pools of makejobs serve)."
    )
    parser.epilog = (
        "exit status: 0 a usable pool is advertised; 1 none is; 2 one is advertised"
        " but cannot be used (or a usage error)."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=command)
