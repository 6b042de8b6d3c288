"""``makejobs doctor [--json] [-- CMD ...]``

Name, in words a person can act on, why this environment does or does not
get its build's jobserver pool, and how to fix each thing found. Run it where
the command that should join the pool runs (a recipe line, a CI step, a
sandbox); with ``-- CMD``, it also judges that command line (a ``-j`` that
leaves the pool, a make or ninja that cannot join this style of pool).

What it recognises (each finding has an id, for ``--json`` and scripts):

* ``no-pool``: nothing advertises a pool; ``bare-j``: the parent make was
  started with a bare ``-j``: no limit and no jobserver.
* ``recipe-not-recursive``: ``--jobserver-auth=-2,-2``, make 4.4 withheld
  the pool from a recipe line without ``+`` (pipe mode).
* ``recipe-without-plus``: the pipe's descriptors are closed here, and the
  nearest ancestor that has them open is a make: make 4.3 (or 4.4 in pipe
  mode) does not pass them to a recipe line without ``+``.
* ``python-close-fds``: the nearest ancestor with the descriptors open is a
  Python program: ``subprocess`` closes every descriptor not in
  ``pass_fds`` (``close_fds=True`` is its default).
* ``fds-closed``: the same with another program in between; ``stale-fds``:
  no ancestor has the pipe (a copied or left-over ``MAKEFLAGS``), or the
  numbers now name other files (a regular file, a terminal, another pipe).
* ``fifo-missing``, ``fifo-private-tmp``, ``fifo-stale``,
  ``fifo-permission``, ``fifo-protected``: a fifo pool that cannot be
  reached: its make has exited, this process sees another ``/tmp`` than
  the make that made it (systemd ``PrivateTmp=``, bwrap, a container), the
  fifo is left over with nobody holding it, it belongs to another user, or
  ``fs.protected_fifos`` forbids opening another user's fifo in a sticky
  directory with ``O_CREAT`` (shell redirections, ``open(path, "w")``).
* ``unsupported-auth``: an auth value that is no POSIX pool (its fault is
  named: an empty fifo path, a descriptor too large, a Windows semaphore).
* ``submake-forced``: the pool's owner is a make that was itself started
  inside another pool: it was given ``-jN`` on its command line ("-jN forced
  in submake"), so its jobs come on top of its parent's.
* ``make-too-old-for-fifo``: a fifo pool, and the make found (CMD's, else
  ``make`` on ``PATH``) is older than 4.4: it stops on ``fifo:`` auth.
* ``ninja-no-client``: ninja older than 1.13 has no jobserver client;
  ``ninja-pipe-pool``: upstream ninja 1.13 ignores pipe pools (the PyPI
  wheel's Kitware build accepts them).
* ``command-j``: CMD gives make or ninja a ``-j`` of its own.

Exit status: 0 a usable pool was found (there may still be warnings), 1 none
is advertised, 2 one is advertised but cannot be used here.
"""

from __future__ import annotations

import argparse
import os
import stat

from .. import _procfs
from ..errors import JobserverUnavailable
from ..pool import ENVIRON_VARIABLES, TokenPool
from ..protocol import (
    FifoAuth,
    MakeFlags,
    PipeAuth,
    describe_unsupported_auth,
    parse_makeflags,
    unlimited_jobs,
)
from ._args import fill
from ._diagnose import jobs_option, program_kind
from ._holders import role_of, short_command

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

__all__ = ["Diagnosis", "Finding", "command", "configure", "diagnose", "parse_version"]


class Finding:
    """One thing found: an id, ``"problem"``/``"warning"``/``"ok"``, what, and the fix."""

    def __init__(self, id: str, severity: str, message: str, fix: str = "") -> None:
        self.id = id
        self.severity = severity
        self.message = message
        self.fix = fix

    def as_json(self) -> dict[str, str]:
        return {"id": self.id, "severity": self.severity, "message": self.message, "fix": self.fix}


class Diagnosis:
    """Everything doctor found: whether a pool is advertised and usable, and the findings."""

    def __init__(self) -> None:
        self.advertised = False
        self.usable = False
        self.variable: str | None = None
        self.pool = ""  # the pool in words
        self.findings: list[Finding] = []

    def add(self, id: str, severity: str, message: str, fix: str = "") -> None:
        self.findings.append(Finding(id, severity, message, fix))

    @property
    def status(self) -> int:
        if self.usable:
            return 0
        return 2 if self.advertised else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "advertised": self.advertised,
            "usable": self.usable,
            "variable": self.variable,
            "pool": self.pool,
            "findings": [f.as_json() for f in self.findings],
        }


# -- processes -------------------------------------------------------------------------


def _ancestors() -> list[int]:
    """This process's ancestors, parent first (empty without /proc)."""
    chain: list[int] = []
    pid = os.getppid()
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        info = _procfs.process_stat(pid)
        if info is None:
            break
        pid = info.ppid
    return chain


def _describe(pid: int) -> str:
    command = _procfs.cmdline(pid)
    return f"{role_of(command)} (pid {pid}: {short_command(command, 60)})"


def _link(pid: int | str, fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None


# -- a pipe pool -----------------------------------------------------------------------


def _fd_kind(fd: int) -> tuple[str, str]:
    """("closed" | "pipe" | "other", what it is in words) for descriptor *fd* here."""
    try:
        st = os.fstat(fd)
    except OSError:
        return "closed", "closed"
    target = _link("self", fd)
    if stat.S_ISFIFO(st.st_mode):
        return "pipe", target or "a pipe"
    if stat.S_ISREG(st.st_mode):
        what = "a regular file"
    elif stat.S_ISCHR(st.st_mode):
        what = "a character device"
    elif stat.S_ISSOCK(st.st_mode):
        what = "a socket"
    elif stat.S_ISDIR(st.st_mode):
        what = "a directory"
    else:
        what = "not a pipe"
    return "other", f"{what} ({target})" if target else what


def _pipe_holder(auth: PipeAuth) -> tuple[int, int] | None:
    """The nearest ancestor with descriptors R and W open on one pipe, and its child on
    the way to us (that child, or this process, was started without them)."""
    below = os.getpid()
    for pid in _ancestors():
        read, write = _link(pid, auth.read_fd), _link(pid, auth.write_fd)
        if read is not None and read == write and read.startswith("pipe:["):
            return pid, below
        below = pid
    return None


def _diagnose_closed_pipe(d: Diagnosis, auth: PipeAuth, flags: MakeFlags) -> None:
    fds = f"{auth.read_fd},{auth.write_fd}"
    found = _pipe_holder(auth) if _procfs.supported() else None
    if found is None:
        d.add(
            "stale-fds",
            "problem",
            f"{d.variable} names the pipe descriptors {fds}, but they are closed here and no"
            " ancestor of this process has them open: the variable is stale (left over from"
            " a make that has exited, or copied into a script, a container or a CI step)",
            f"unset {d.variable} here, or run this under the make (or makejobs serve) again",
        )
        return
    holder, child = found
    role = role_of(_procfs.cmdline(holder))
    started = "this process" if child == os.getpid() else _describe(child)
    if role == "make":
        d.add(
            "recipe-without-plus",
            "problem",
            f"{_describe(holder)} has the pool's pipe ({fds}) open but did not pass it to"
            f" {started}: make passes the pipe only to recipe lines marked recursive",
            "start the recipe line with '+' (or mention $(MAKE) in it); with make >= 4.4 a"
            " fifo pool (its default) reaches every recipe",
        )
    elif role == "python" or role.startswith("makejobs"):
        d.add(
            "python-close-fds",
            "problem",
            f"{_describe(holder)} has the pool's pipe ({fds}) open but started {started}"
            " without it: Python's subprocess closes every descriptor not in pass_fds"
            " (close_fds=True is its default)",
            f"start the child with pass_fds=({auth.read_fd}, {auth.write_fd}) (with makejobs:"
            " pool.run()/pool.popen(), or pass_fds=pool.pass_fds), or use a fifo pool,"
            " which needs no descriptors",
        )
    else:
        d.add(
            "fds-closed",
            "problem",
            f"{_describe(holder)} has the pool's pipe ({fds}) open but started {started}"
            " without it",
            "make that program pass descriptors"
            f" {auth.read_fd} and {auth.write_fd} on, or use a fifo pool, which needs none",
        )


def _diagnose_pipe(d: Diagnosis, auth: PipeAuth, flags: MakeFlags) -> bool:
    """Judge the pipe's descriptors; True when they look like the pool."""
    read_kind, read_what = _fd_kind(auth.read_fd)
    write_kind, write_what = _fd_kind(auth.write_fd)
    if read_kind == "closed" and write_kind == "closed":
        _diagnose_closed_pipe(d, auth, flags)
        return False
    if read_kind != "pipe" or write_kind != "pipe" or read_what != write_what:
        d.add(
            "stale-fds",
            "problem",
            f"{d.variable} names descriptors {auth.read_fd},{auth.write_fd}, but here"
            f" {auth.read_fd} is {read_what} and {auth.write_fd} is {write_what}: the pool's"
            " descriptors were closed and the numbers reused (a recipe without '+' under"
            " make 4.3, or a stale variable); reading them as a jobserver would be wrong",
            "start the recipe line with '+' so make passes the real pipe, or unset the stale"
            f" {d.variable}",
        )
        return False
    return True


# -- a fifo pool -----------------------------------------------------------------------


def _make_pid_of(path: str) -> int | None:
    """The pid in make 4.4's fifo name (``GMfifo1234``), if it is one."""
    name = os.path.basename(path)
    digits = name[len("GMfifo") :]
    return int(digits) if name.startswith("GMfifo") and digits.isdigit() else None


def _protected_fifos() -> int:
    try:
        with open("/proc/sys/fs/protected_fifos", encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def protected_fifo_applies(fifo: os.stat_result, directory: os.stat_result, uid: int) -> bool:
    """True when Linux's ``fs.protected_fifos`` refuses *uid* an ``O_CREAT`` open of *fifo*.

    It does (level 1 and 2) for a fifo in a sticky, world-writable directory
    that belongs neither to the opener nor to the directory's owner (level 2
    also for group-writable directories).
    """
    sticky = bool(directory.st_mode & stat.S_ISVTX)
    world = bool(directory.st_mode & stat.S_IWOTH)
    return sticky and world and fifo.st_uid not in (uid, directory.st_uid)


def _diagnose_fifo(d: Diagnosis, auth: FifoAuth) -> bool:
    """Judge the fifo; True when it can be opened."""
    path = auth.path
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _diagnose_missing_fifo(d, path)
        return False
    except OSError as e:
        d.add(
            "fifo-permission",
            "problem",
            f"the fifo {path} cannot be looked at: {e.strerror}",
            "run as the user that runs the make, or put the pool where both can reach it",
        )
        return False
    if not stat.S_ISFIFO(st.st_mode):
        d.add("stale-fds", "problem", f"{path} is not a fifo", f"unset {d.variable}")
        return False
    level = _protected_fifos()
    try:
        directory = os.stat(os.path.dirname(path) or ".")
    except OSError:
        directory = None
    if level and directory is not None and protected_fifo_applies(st, directory, os.getuid()):
        d.add(
            "fifo-protected",
            "warning",
            f"fs.protected_fifos={level}: the fifo {path} belongs to uid {st.st_uid} and lies"
            " in a sticky world-writable directory, so opening it with O_CREAT (a shell"
            " redirection, Python's open(path, 'w')) fails with 'Permission denied'",
            "open it without O_CREAT (makejobs and make do), or have the make create its"
            " fifo elsewhere (MAKE_TMPDIR or TMPDIR set to a private directory)",
        )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == 6:  # ENXIO: no reader
            d.add(
                "fifo-stale",
                "problem",
                f"the fifo {path} exists but no process has it open: the make or serve that"
                " made it has exited and left it behind",
                f"unset {d.variable} here, or run this under the make again",
            )
        else:
            d.add(
                "fifo-permission",
                "problem",
                f"the fifo {path} cannot be opened: {e.strerror} (it belongs to uid"
                f" {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
                "run as the user that runs the make",
            )
        return False
    os.close(fd)
    return True


def _diagnose_missing_fifo(d: Diagnosis, path: str) -> None:
    maker = _make_pid_of(path)
    alive = maker is not None and os.path.exists(f"/proc/{maker}")
    ours = _procfs.mount_namespace("self")
    if alive and maker is not None:
        theirs = _procfs.mount_namespace(maker)
        elsewhere = theirs != ours  # unreadable from inside a user namespace: a sandbox
        who = _describe(maker)
    else:
        namespaces = [_procfs.mount_namespace(pid) for pid in _ancestors()]
        elsewhere = any(ns not in (ours, None) for ns in namespaces)
        who = "the make that made it"
    if elsewhere:
        d.add(
            "fifo-private-tmp",
            "problem",
            f"the fifo {path} does not exist here although {who} still runs: this process"
            " sees another /tmp than that make (systemd PrivateTmp=, bwrap or flatpak, a"
            " container, `unshare -m`)",
            "let the sandbox see the make's temporary directory (bind-mount it, or set"
            " MAKE_TMPDIR/TMPDIR to a directory both see), or use a pipe pool, which needs"
            " no path: make --jobserver-style=pipe, or `makejobs serve --style pipe`",
        )
    elif alive:
        d.add(
            "fifo-missing",
            "problem",
            f"the fifo {path} is gone although {who} still runs: something deleted it (a"
            " temporary-file cleaner, an `rm` in /tmp)",
            "keep cleaners away from the build's fifo (or set MAKE_TMPDIR to a private"
            " directory), and run the build again",
        )
    else:
        d.add(
            "fifo-missing",
            "problem",
            f"the fifo {path} does not exist: the make that made it has exited (this process"
            " outlived it) or a temporary-file cleaner removed it",
            f"run this while the make runs, or unset the stale {d.variable}",
        )


# -- the environment -------------------------------------------------------------------


def _chosen(environ: Mapping[str, str]) -> tuple[str, MakeFlags] | None:
    for variable in ENVIRON_VARIABLES:
        value = environ.get(variable)
        if value:
            flags = parse_makeflags(value)
            if flags.advertises_pool():
                return variable, flags
    return None


def _pool_words(flags: MakeFlags) -> str:
    size = f"-j{flags.jobs}" if flags.jobs else "-j not given"
    if isinstance(flags.auth, PipeAuth):
        return f"pipe (fds {flags.auth.read_fd},{flags.auth.write_fd}), {size}"
    if isinstance(flags.auth, FifoAuth):
        return f"fifo ({flags.auth.path}), {size}"
    return "disabled (-2,-2)" if flags.disabled else f"unsupported ({flags.unsupported!r})"


def _diagnose_environment(d: Diagnosis, environ: Mapping[str, str]) -> FifoAuth | PipeAuth | None:
    chosen = _chosen(environ)
    makeflags = environ.get("MAKEFLAGS") or ""
    if chosen is None:
        if unlimited_jobs(makeflags):
            d.add(
                "bare-j",
                "problem",
                "the parent make was started with a bare -j: it runs every job it can at once"
                " and makes no jobserver, so there is no pool to share (and no limit)",
                "give it a number: make -jN",
            )
        else:
            d.add(
                "no-pool",
                "problem",
                "no jobserver pool is advertised (no --jobserver-auth in "
                + ", ".join(ENVIRON_VARIABLES)
                + "): this is not run by a parallel make, ninja or cargo"
                + (" (make -j1 makes no pool)" if makeflags else ""),
                "run it from a recipe of `make -jN` (a line starting with '+' when make uses"
                " a pipe), or under `makejobs serve -j N -- COMMAND`",
            )
        return None
    variable, flags = chosen
    d.advertised = True
    d.variable = variable
    d.pool = _pool_words(flags)
    if flags.disabled:
        d.add(
            "recipe-not-recursive",
            "problem",
            f"{variable} says --jobserver-auth=-2,-2: make >= 4.4 in pipe mode withheld the"
            " pool from this recipe line because it is not marked recursive",
            "start the recipe line with '+' (or mention $(MAKE) in it), or let make use a"
            " fifo pool (make 4.4's default, which reaches every recipe)",
        )
        return None
    if flags.unsupported is not None:
        reason, semaphore = describe_unsupported_auth(flags.unsupported)
        d.add(
            "unsupported-auth",
            "problem",
            f"{variable} names no pool usable here: {reason}"
            + (" (a Windows jobserver's semaphore name)" if semaphore else ""),
            "makejobs, make and ninja on POSIX join pipe ('R,W') and fifo ('fifo:PATH') pools"
            " only; fix what writes the variable",
        )
        return None
    auth = flags.auth
    assert auth is not None
    good = (
        _diagnose_pipe(d, auth, flags) if isinstance(auth, PipeAuth) else _diagnose_fifo(d, auth)
    )
    if not good:
        return None
    try:
        pool = TokenPool.from_makeflags(flags, variable=variable)
    except JobserverUnavailable as e:
        d.add("unusable", "problem", e.reason)
        return None
    pool.close()
    d.usable = True
    _diagnose_owner(d, flags)
    return auth


def _diagnose_owner(d: Diagnosis, flags: MakeFlags) -> None:
    """Find a sub-make that left its parent's pool for one of its own (-jN forced)."""
    from ._holders import find_holders, pool_file

    key = pool_file(flags)
    if key is None or not _procfs.supported():
        return
    owner = find_holders(key[0], path=key[1], exclude=(os.getpid(),)).owner
    if owner is None:
        return
    d.pool += f"; owner: {_describe(owner.pid)}"
    if owner.role != "make":
        return
    environ = _procfs.environ(owner.pid) or {}
    inherited = _chosen(environ)
    if inherited is None or inherited[1] == flags:
        return
    option = jobs_option(owner.command)
    given = f"{option[1]!r} on its command line" if option else "-jN"
    d.add(
        "submake-forced",
        "warning",
        f"the pool's owner, {_describe(owner.pid)}, was started inside another pool"
        f" ({inherited[0]} named {_pool_words(inherited[1])}) but runs a pool of its own:"
        f" it was given {given} ('-jN forced in submake: resetting jobserver mode'), so its"
        " jobs come on top of its parent's",
        "remove -jN from the sub-make's command line (write $(MAKE) alone) so it joins the"
        " parent's pool",
    )


# -- programs --------------------------------------------------------------------------


def parse_version(text: str) -> tuple[int, ...] | None:
    """The first dotted number in a ``--version`` line (``GNU Make 4.3``, ``1.13.2.git``)."""
    for word in text.replace("-", " ").split():
        parts = []
        for piece in word.split("."):
            if not piece.isdigit():
                break
            parts.append(int(piece))
        if len(parts) >= 2:
            return tuple(parts)
    return None


def _version(path: str) -> tuple[tuple[int, ...] | None, str]:
    import subprocess

    try:
        done = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None, ""
    first = (done.stdout.strip().splitlines() or [""])[0]
    return parse_version(first), first


def judge_ninja(version: tuple[int, ...] | None, text: str, style: str) -> tuple[str, str] | None:
    """A finding id and message for a ninja of *version* in a pool of *style*, if any."""
    if version is None:
        return None
    if version[:2] < (1, 13):
        return (
            "ninja-no-client",
            f"ninja {'.'.join(map(str, version))} has no jobserver client (1.13 is the"
            " first): it runs its own -j beside the pool",
        )
    if style == "pipe" and "jobserver-pipe" not in text:
        return (
            "ninja-pipe-pool",
            f"ninja {'.'.join(map(str, version))} joins only fifo pools on POSIX and ignores"
            " this pipe pool (with a warning)",
        )
    return None


def _diagnose_programs(d: Diagnosis, auth: FifoAuth | PipeAuth | None, command: list[str]) -> None:
    import shutil

    style = "fifo" if isinstance(auth, FifoAuth) else "pipe" if auth is not None else None
    if command:
        found = jobs_option(command)
        if found is not None:
            kind, option = found
            d.add(
                "command-j",
                "problem",
                f"{command[0]} is given {option!r}: "
                + (
                    "a make given -j on its command line leaves the pool it inherits"
                    " ('-jN forced in submake') and runs its own number of jobs"
                    if kind == "make"
                    else "ninja with -j does not use the pool"
                ),
                f"drop {option!r}: inside a pool, make and ninja take the pool's limit",
            )
    programs: dict[str, str] = {}
    program = program_kind(command[0]) if command else None
    if program in ("make", "ninja"):
        path = shutil.which(command[0])
        if path is not None:
            programs[program] = path
    for name in ("make", "ninja"):
        if name not in programs and style is not None:
            path = shutil.which(name)
            if path is not None:
                programs[name] = path
    make = programs.get("make")
    if make is not None and style == "fifo":
        version, text = _version(make)
        if version is not None and version < (4, 4):
            d.add(
                "make-too-old-for-fifo",
                "problem",
                f"{make} is {text or 'make ' + '.'.join(map(str, version))}, older than 4.4:"
                " it cannot join this fifo pool and stops with 'internal error: invalid"
                " --jobserver-auth string'",
                "give it a pipe pool (make --jobserver-style=pipe at the top, or"
                " `makejobs serve --style pipe -- make`), or use make >= 4.4",
            )
    ninja = programs.get("ninja")
    if ninja is not None and style is not None:
        version, text = _version(ninja)
        judged = judge_ninja(version, text, style)
        if judged is not None:
            d.add(
                judged[0],
                "warning",
                f"{ninja}: {judged[1]}",
                "give ninja a fifo pool (make 4.4's default, `makejobs serve --style fifo`),"
                " or install ninja >= 1.13 (the PyPI wheel also accepts pipe pools)",
            )


def diagnose(environ: Mapping[str, str], command: Sequence[str] = ()) -> Diagnosis:
    """Everything ``doctor`` says about *environ* (and *command*, if given)."""
    d = Diagnosis()
    auth = _diagnose_environment(d, environ)
    _diagnose_programs(d, auth, list(command))
    if d.usable and not d.findings:
        d.add("ok", "ok", "nothing found that keeps commands started from here out of the pool")
    return d


def _format(d: Diagnosis) -> str:
    if d.usable:
        head = f"jobserver: usable ({d.variable}: {d.pool})"
    elif d.advertised:
        head = f"jobserver: advertised ({d.variable}: {d.pool}) but NOT usable here"
    else:
        head = "jobserver: none"
    lines = [head]
    for finding in d.findings:
        lines.append(f"{finding.severity} [{finding.id}]: {finding.message}")
        if finding.fix:
            lines.append(f"  fix: {finding.fix}")
    return "\n".join(lines)


def command(args: argparse.Namespace) -> int:
    """Run ``makejobs doctor``; the exit status (see the module docstring)."""
    words = list(args.command)
    if words[:1] == ["--"]:
        words = words[1:]
    d = diagnose(os.environ, words)
    if args.json:
        import json

        print(json.dumps(d.as_json(), indent=2, sort_keys=True))
    else:
        print(_format(d))
    return d.status


def configure(parser: argparse.ArgumentParser) -> None:
    """Give the ``doctor`` parser its description, options and command."""
    parser.description = fill(
        "Say why this environment does or does not get the build's jobserver pool, and how"
        " to fix each thing found: a recipe without '+', -2,-2, closed or stale descriptors,"
        " a Python parent that closed them, -jN forced in a sub-make, a bare -j, a fifo that"
        " is missing or out of reach (private /tmp, a sandbox, fs.protected_fifos), make"
        " < 4.4 under a fifo pool, ninja < 1.13. Run it where the command that should join"
        " the pool runs; with -- CMD, CMD's command line is judged too."
    )
    parser.epilog = (
        "exit status: 0 a usable pool was found (warnings may remain); 1 none is advertised;"
        " 2 one is advertised but cannot be used here.\n\n"
        "example (in a Makefile):  check: ; +makejobs doctor -- $(MAKE)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        metavar="-- CMD ...",
        help="a command line to judge as well (not run; only its --version is asked)",
    )
    parser.set_defaults(func=command)
