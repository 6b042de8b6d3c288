"""Offer a token pool to a child in the form the child speaks.

A pool reaches a child in one of two forms, whatever kind of pool it is:

* **pipe**: two descriptors the child inherits, named in ``MAKEFLAGS`` as
  ``--jobserver-fds=R,W --jobserver-auth=R,W``. Every GNU make reads it (make
  <= 4.3 reads nothing else and *dies* on a ``fifo:`` auth), so do cargo and
  every version of the ``jobserver`` crate; upstream ninja 1.13 ignores it. It
  reaches only children that inherit the descriptors: Python's ``subprocess``
  closes them unless they are in ``pass_fds``.
* **fifo**: a path, ``--jobserver-auth=fifo:PATH``. make >= 4.4, ninja 1.13,
  cargo and makejobs open it; it reaches every descendant, inherited
  descriptors or not.

Converting
==========

*A pipe pool as a fifo.* On Linux an anonymous pipe can be opened by path:
``/proc/PID/fd/N``, where process PID holds an end of the pipe as fd N, is a
link whose ``stat`` says FIFO, and opening it (read-only, write-only, or both)
gives a *new* open file description of the same pipe, exactly as opening a
named fifo does. So a pipe pool is offered as ``fifo:/proc/PID/fd/N``, where
PID is **this** process (it holds the pool open while the child runs) and N is
the pool's own descriptor, never ``/proc/self/...``, which each opener would
read as itself. The path is valid while this process lives and keeps the pool
open; opening it needs the same user (procfs checks ptrace access). Measured
against the real consumers (see the README's table): make 4.4.1, ninja 1.13
and cargo join a pipe pool offered this way; make 4.3 dies on it as on any
``fifo:`` auth. Elsewhere (no ``/proc/PID/fd``) a pipe cannot be opened by
path, and :class:`CannotAdvertise` says so; :class:`makejobs.relay.Relay`
(what ``makejobs bridge`` uses there) relays the tokens through a private
fifo instead, at the price of one token kept waiting in it.

*A fifo pool as a pipe.* The fifo is opened again by path, once for reading and
once for writing, each a new description that only the child shares (set
blocking, as make's own pipes are: make 4.2 and older cannot read a
non-blocking end). ``MAKEFLAGS`` then says ``-j --jobserver-fds=R,W
--jobserver-auth=R,W`` with a bare ``-j``, as cargo writes it, because make
<= 4.1 (macOS ships 3.81) treats a ``-jN`` next to the descriptors as "-jN
forced in submake" and leaves the pool.

Either way the child joins the *same* tokens: nothing is created, nothing is
held for it here.

Choosing: ``auto``
==================

:func:`command_style` picks the form from the command's name
(``argv[0]``, looked up on ``PATH``):

* ``make``, ``gmake``, ``gnumake`` and ``*-make``: its ``--version`` is asked
  (once per executable); GNU Make 4.4 or later gets the fifo form (it reaches
  recipes not marked ``+`` too), anything older or unknown the pipe form.
* ``ninja``, ``ninja-build``, ``samu``: fifo (upstream ninja 1.13 ignores pipes).
* ``cargo``, ``rustc``: pipe (every ``jobserver`` crate version reads it; the
  one behind ``cc`` 1.0.73 cannot read a fifo and would make a pool of its own).
* anything else: no preference, the pool keeps its own form.

When the preferred form cannot be had here (a pipe pool on a system without
``/proc``), ``auto`` keeps the pool's own form instead of failing.
"""

from __future__ import annotations

import os
import stat
import sys

from . import _posix
from .protocol import FifoAuth, PipeAuth, parse_makeflags, replace_auth

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Literal, Optional

    from .pool import Style, TokenPool

    #: What a caller may ask for: a form, "auto" (pick from the command), or
    #: None (the pool's own form).
    StyleChoice = Optional[Literal["pipe", "fifo", "auto"]]

__all__ = [
    "STYLES",
    "Advertisement",
    "CannotAdvertise",
    "advertise",
    "command_style",
    "environ",
    "fifo_path",
    "for_any_child",
    "given_style",
    "program_kind",
]

#: The values ``style=`` takes (None too: the pool's own form).
STYLES = ("pipe", "fifo", "auto")

#: The variables through which children find the pool.
_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")

#: Where a process's descriptors can be opened by path (Linux procfs).
_PROC = "/proc"


class CannotAdvertise(ValueError):
    """The pool cannot be offered in the form asked for, here; ``str()`` says why."""


class Advertisement:
    """What a child needs to join a pool in one form.

    Attributes:
        style: the form chosen, ``"pipe"`` or ``"fifo"``.
        environ: the child's whole environment (``MAKEFLAGS``, ``MFLAGS`` if
            set, ``CARGO_MAKEFLAGS`` advertise the pool in that form).
        pass_fds: the descriptors the child must inherit (the pipe's, in pipe
            form, and a token ledger's records).

    Descriptors opened for this advertisement alone (a fifo pool offered as
    a pipe) are closed by :meth:`close`: call it (or leave the ``with``
    block) once the child has been started. The pool's own are never closed
    here.
    """

    __slots__ = ("_own_fds", "environ", "pass_fds", "style")

    def __init__(
        self,
        style: Style,
        environ: dict[str, str],
        pass_fds: tuple[int, ...],
        own_fds: tuple[int, ...] = (),
    ) -> None:
        self.style = style
        self.environ = environ
        self.pass_fds = pass_fds
        self._own_fds = own_fds

    def close(self) -> None:
        """Close the descriptors opened for this advertisement (idempotent)."""
        fds, self._own_fds = self._own_fds, ()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Advertisement:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Advertisement {self.style} pass_fds={self.pass_fds}>"


# -- the two conversions ------------------------------------------------------------


def fifo_path(pool: TokenPool) -> str:
    """The path through which any process of this user can open *pool* as a fifo.

    A fifo pool's own path; for a pipe pool, ``/proc/PID/fd/N`` naming this
    process's descriptor N of the pool's pipe, valid while this process keeps
    the pool open.

    Raises:
        CannotAdvertise: a pipe pool on a system without ``/proc/PID/fd``.
        ValueError: the pool is closed.
    """
    if pool.closed:
        raise ValueError("the token pool is closed")
    auth = pool.auth
    if isinstance(auth, FifoAuth):
        return auth.path
    path = f"{_PROC}/{os.getpid()}/fd/{auth.read_fd}"
    try:
        is_fifo = stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        is_fifo = False
    if not is_fifo:
        raise CannotAdvertise(
            f"a pipe pool can be offered by path only where /proc/PID/fd opens pipes"
            f" (Linux); {path} does not, on {sys.platform}: create the pool as a fifo"
            " instead (TokenPool.create(style='fifo'), makejobs serve --style fifo), or"
            " relay its tokens through one (makejobs.relay.Relay, as makejobs bridge does)"
        )
    return path


def _open_pipe_view(path: str) -> tuple[int, int]:
    """New read and write descriptions of the fifo at *path*, blocking, close-on-exec.

    The child gets them through ``pass_fds``. Blocking, as make's own pipes
    are: make <= 4.2 reads after ``select`` with a blocking read and fails on
    ``EAGAIN``; make 4.3 and later set ``O_NONBLOCK`` themselves, on this
    description only. Opened ``O_NONBLOCK`` first so that a fifo nobody holds
    cannot hang us (this process holds the pool, so it never is).
    """
    reader, writer = _posix.open_new_fifo_ends(path)
    os.set_blocking(reader, True)
    os.set_blocking(writer, True)
    return reader, writer


def _rewrite(env: dict[str, str], auth: PipeAuth | FifoAuth, jobs: int | None) -> None:
    """Make every variable of *env* that advertises a pool name *auth* instead."""
    for variable in _VARIABLES:
        value = env.get(variable)
        if value and parse_makeflags(value).advertises_pool():
            if isinstance(auth, PipeAuth):
                env[variable] = _with_bare_j(value, auth)
            else:
                env[variable] = replace_auth(value, auth, jobs=jobs)


def _with_bare_j(value: str, auth: PipeAuth) -> str:
    """*value* advertising pipe *auth* after a bare ``-j``, every other ``-j`` dropped."""
    # replace_auth drops every -j word when given jobs, then writes ours, in
    # one run of words, just before the auth words: swap "-j1" for "-j".
    pair = f"{auth.read_fd},{auth.write_fd}"
    ours = f"-j1 --jobserver-fds={pair}"
    text = replace_auth(value, auth, jobs=1)
    if ours not in text:  # pragma: no cover - replace_auth's layout changed
        raise AssertionError(f"unexpected MAKEFLAGS layout: {text!r}")
    return text.replace(ours, f"-j --jobserver-fds={pair}", 1)


def _records(pool: TokenPool) -> tuple[int, ...]:
    """The pool's ``pass_fds`` other than its pipe (a token ledger's records)."""
    auth = pool.auth
    pipe = (auth.read_fd, auth.write_fd) if isinstance(auth, PipeAuth) else ()
    return tuple(fd for fd in pool.pass_fds if fd not in pipe)


# -- choosing -----------------------------------------------------------------------

#: ``--version`` answers, by executable: (path, inode, mtime, size) -> (major, minor).
_make_versions: dict[tuple[str, int, int, int], tuple[int, int] | None] = {}


def _program_name(command: Any) -> str | None:
    """``argv[0]`` of a Popen-style *command* (a sequence, or a string/path)."""
    if isinstance(command, (str, bytes, os.PathLike)):
        text = os.fsdecode(command).strip()
        first = text.split(None, 1)[0] if text else ""
        return first or None
    try:
        first = command[0]
    except (TypeError, IndexError, KeyError):
        return None
    if isinstance(first, (str, bytes, os.PathLike)):
        return os.fsdecode(first) or None
    return None


def program_kind(command: Any) -> str | None:
    """The kind of program *command* (Popen-style) runs, by name: make, ninja, cargo or None."""
    name = _program_name(command)
    if name is None:
        return None
    base = os.path.basename(name).lower()
    if base.endswith(".exe"):
        base = base[:-4]
    # Version suffixes: make-4.3, gmake4, ninja-1.13.
    stem = base.rstrip("0123456789.").rstrip("-")
    if stem in ("make", "gmake", "gnumake") or stem.endswith("-make"):
        return "make"
    if stem in ("ninja", "ninja-build", "samu"):
        return "ninja"
    if stem in ("cargo", "rustc"):
        return "cargo"
    return None


def _which(name: str, env: Mapping[str, str] | None) -> str | None:
    """Where *name* would be found by exec, using *env*'s PATH (not importing shutil)."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    path = (env if env is not None else os.environ).get("PATH", os.defpath)
    for directory in path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def _make_version(path: str) -> tuple[int, int] | None:
    """GNU make's (major, minor) from ``PATH --version``; None if it is not GNU make."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (os.path.abspath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if key in _make_versions:
        return _make_versions[key]
    import re
    import subprocess

    # No pool in its environment: make 4.3 would die on a fifo auth before
    # printing its version.
    env = {k: v for k, v in os.environ.items() if k not in (*_VARIABLES, "GNUMAKEFLAGS")}
    version = None
    try:
        out = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            timeout=5,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        out = b""
    match = re.match(rb"GNU Make (\d+)\.(\d+)", out)
    if match:
        version = (int(match.group(1)), int(match.group(2)))
    _make_versions[key] = version
    return version


def command_style(command: Any, env: Mapping[str, str] | None = None) -> Style | None:
    """The form *command* is best given a pool in, or None for no preference.

    *command* is what :class:`subprocess.Popen` takes (a sequence, or a
    string whose first word is looked at); *env* supplies the ``PATH`` it is
    looked up on (default ``os.environ``). The rule is in the module docstring.
    """
    name = _program_name(command)
    kind = program_kind(command)
    if kind is None or name is None:
        return None
    if kind == "ninja":
        return "fifo"
    if kind == "cargo":
        return "pipe"
    path = _which(name, env)
    version = None if path is None else _make_version(path)
    return "fifo" if version is not None and version >= (4, 4) else "pipe"


# -- advertising --------------------------------------------------------------------


def _resolve(
    pool: TokenPool, style: StyleChoice, command: Any, env: Mapping[str, str] | None
) -> tuple[Style, bool]:
    """The form to offer, and whether falling back to the pool's own is allowed."""
    if style is None:
        return pool.style, False
    if style == "auto":
        if command is None:
            raise ValueError("style='auto' picks the form from the command: give command=")
        return command_style(command, env) or pool.style, True
    if style in ("pipe", "fifo"):
        return style, False
    raise ValueError(f"style must be 'pipe', 'fifo', 'auto' or None, not {style!r}")


def advertise(
    pool: TokenPool,
    style: StyleChoice = "auto",
    *,
    command: Any = None,
    base: Mapping[str, str] | None = None,
) -> Advertisement:
    """How a child joins *pool* in the form *style* asks for.

    Args:
        pool: an open pool (joined or created).
        style: ``"pipe"``, ``"fifo"``, ``"auto"`` (pick from *command* with
            :func:`command_style`; the pool's own form when there is no
            preference or the preferred one cannot be had here) or None (the
            pool's own form).
        command: the child's command line, for ``"auto"``.
        base: the environment to start from (default ``os.environ``).

    Returns:
        An :class:`Advertisement`; start the child with its ``environ`` and
        ``pass_fds``, then :meth:`~Advertisement.close` it.

    Raises:
        CannotAdvertise: an explicit ``"fifo"`` for a pipe pool where pipes
            cannot be opened by path.
        ValueError: a bad *style*, ``"auto"`` without *command*, a closed pool.
        OSError: the fifo of a fifo pool could not be opened again.
    """
    if pool.closed:
        raise ValueError("the token pool is closed")
    form, may_fall_back = _resolve(pool, style, command, base)
    env = pool.environ(base)
    if form == pool.style:
        return Advertisement(form, env, pool.pass_fds)
    if form == "fifo":
        try:
            path = fifo_path(pool)
        except CannotAdvertise:
            if may_fall_back:
                return Advertisement(pool.style, env, pool.pass_fds)
            raise
        _rewrite(env, FifoAuth(path), pool.slots)
        return Advertisement("fifo", env, _records(pool))
    assert isinstance(pool.auth, FifoAuth)
    reader, writer = _open_pipe_view(pool.auth.path)
    _rewrite(env, PipeAuth(reader, writer), None)
    return Advertisement("pipe", env, (reader, writer, *pool.pass_fds), (reader, writer))


def environ(
    pool: TokenPool,
    style: StyleChoice,
    *,
    command: Any = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of :func:`advertise`, for forms that need no new descriptors.

    This is :meth:`TokenPool.environ(style=...) <makejobs.pool.TokenPool.environ>`.
    The descriptors a child must inherit are then the pool's own
    (``pool.pass_fds``).

    Raises:
        CannotAdvertise: as :func:`advertise`; also for a fifo pool offered as
            a pipe, whose new descriptors an environment cannot carry (use
            :func:`advertise`, or ``pool.popen``/``pool.run`` with ``style=``).
    """
    form, _ = _resolve(pool, style, command, base)
    if form == "pipe" and pool.style == "fifo":
        raise CannotAdvertise(
            "a fifo pool offered as pipe descriptors needs descriptors opened for the"
            " child, which an environment alone cannot carry: use pool.popen() or"
            " pool.run() with style='pipe', or makejobs.advertise.advertise(pool, 'pipe'),"
            " which returns them"
        )
    with advertise(pool, style, command=command, base=base) as adv:
        return adv.environ


def given_style(pool: TokenPool, base: Mapping[str, str] | None = None) -> Style | None:
    """The form *base* (default ``os.environ``) advertises *pool* in, if it names this pool.

    The first of ``CARGO_MAKEFLAGS``, ``MAKEFLAGS``, ``MFLAGS`` that advertises a
    pool is read; it names *pool* when it opens the same pipe or fifo (an fd
    of this process, or a path). None when it names no pool, or another one.
    """
    env = os.environ if base is None else base
    flags = None
    for variable in ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"):
        value = env.get(variable)
        if value:
            flags = parse_makeflags(value)
            if flags.advertises_pool():
                break
    if flags is None or flags.auth is None or pool.closed:
        return None
    ours = _identity(pool.auth.read_fd if isinstance(pool.auth, PipeAuth) else pool.auth.path)
    theirs = _identity(flags.auth.read_fd if isinstance(flags.auth, PipeAuth) else flags.auth.path)
    if ours is None or ours != theirs:
        return None
    return "pipe" if isinstance(flags.auth, PipeAuth) else "fifo"


def _identity(file: str | int) -> tuple[int, int] | None:
    """(device, inode) of the pipe or fifo at a path or fd; None if it is not one."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISFIFO(st.st_mode) else None


def for_any_child(pool: TokenPool, base: Mapping[str, str] | None = None) -> Advertisement:
    """The form for children whose command is not known (what a job would export).

    Such a child may be started by a plain ``subprocess.run``, which closes
    inherited descriptors, so the fifo form (by ``/proc`` path for a pipe pool
    on Linux) reaches the most consumers: make >= 4.4, ninja, cargo, makejobs.
    But make <= 4.3 *stops* on it ("invalid --jobserver-auth string"), where
    a pipe it cannot inherit only costs it its parallelism. Hence:

    1. A pool *base* (default ``os.environ``) already advertises keeps that
       form: a pool joined from make 4.3's pipe stays a pipe (the makes our
       children run are likely as old), one joined by a fifo path stays so.
    2. Any other pool (created here) gets the fifo form, unless the ``make``
       found on *base*'s ``PATH`` is a GNU make older than 4.4, which a plain
       ``subprocess.run(["make"])`` would run and kill.
    3. The pool's own form where the fifo form cannot be had (no ``/proc``).

    A child whose command is known is better served by :func:`advertise` with
    ``"auto"`` (``pool.run()``), which gives make 4.3 the pipe form.
    """
    given = given_style(pool, base)
    if given is not None:
        wanted: Style = given
    elif command_style(["make"], base) == "pipe" and _which("make", base) is not None:
        wanted = pool.style  # rule 2's exception: that make would die on a fifo
    else:
        wanted = "fifo"
    try:
        return advertise(pool, wanted, base=base)
    except CannotAdvertise:
        return advertise(pool, None, base=base)
