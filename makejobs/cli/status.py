"""``makejobs status [--json]``

Describe the pool this environment advertises: which variable and its
value, style, descriptors or fifo path, ``-j``, whether this process can
use it, why not and what to do. ``--json`` prints the same as one object.

Exit status: 0 a usable pool is advertised, 1 none is, 2 one is advertised
but cannot be used.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any

from ..errors import JobserverUnavailable
from ..pool import ENVIRON_VARIABLES, TokenPool, choose_advertised
from ..protocol import FifoAuth, MakeFlags, PipeAuth, parse_makeflags
from ._args import fill

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
        "dry_run": False,
        "available": None,
        "reason": None,
        "problems": [],
        "hints": [],
        "variables": variables,
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
        report["dry_run"] = makeflags.dry_run
        report["problems"] = list(makeflags.problems)
        report["reason"] = (
            "no --jobserver-auth in " + ", ".join(ENVIRON_VARIABLES) + ": no pool to share"
        )
        if variables["MAKEFLAGS"] is not None:
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
            hints.append(
                "this looks like another platform's jobserver (a Windows semaphore name);"
                " makejobs on POSIX joins pipe ('R,W') and fifo ('fifo:PATH') pools only"
            )
        return report
    try:
        report["usable"] = True
        report["available"] = pool.available()
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
    if flags.dry_run:
        hints.append("make runs with -n (dry run): commands are printed, not run")
    return report


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
    lines.append(f"  -j:         {jobs if jobs is not None else 'not given'}")
    if report["available"] is not None:
        lines.append(f"  free now:   {report['available']} token(s) (changes as jobs run)")
    if report["reason"] is not None and not report["usable"]:
        lines.append(f"  why not:    {report['reason']}")
    for problem in report["problems"]:
        lines.append(f"  note:       {problem}")
    for hint in report["hints"]:
        lines.append(f"  hint:       {hint}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs status``; the exit status (see :mod:`makejobs.cli`)."""
    report = _status_report(os.environ)
    if args.json:
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
        " used from here and, if not, why and what to do."
    )
    parser.epilog = (
        "exit status: 0 a usable pool is advertised; 1 none is; 2 one is advertised"
        " but cannot be used (or a usage error)."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.set_defaults(func=command)
