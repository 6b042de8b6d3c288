"""Opening a pool: joining the one a variable names, or creating one.

Every function returns a :class:`~makejobs._core.Core` for the pool (the
caller, :mod:`makejobs.pool`, hands out handles on it) or raises
:class:`~makejobs.errors.JobserverUnavailable` naming the case and what to
do about it. Nothing here hands out a token.
"""

from __future__ import annotations

import os
import stat

from . import _posix
from ._core import Core, remove_tree
from .errors import JobserverUnavailable, Unavailable
from .protocol import FifoAuth, MakeFlags, PipeAuth

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from typing import Any

__all__ = ["TOKEN_BYTE", "create_fifo", "create_pipe", "identity_of", "join", "rebuild"]

#: The byte a pool we create is filled with; make writes '+' too.
TOKEN_BYTE = b"+"

NO_PLUS_HINT = (
    "the parent make rule probably lacks '+' (or does not mention $(MAKE)), so make"
    " closed the jobserver fds for this command; add '+' to the recipe line"
)
_CLOSED_FDS_HINT = (
    NO_PLUS_HINT + ". If the parent is a Python program, it must hand the fds on:"
    " subprocess closes them unless they are in pass_fds (use TokenPool.run()/popen(),"
    " or pass_fds=pool.pass_fds)"
)
_OWN_FDS_HINT = (
    NO_PLUS_HINT + ". To join a pipe this process made itself on purpose, mark both"
    " ends inheritable first (os.set_inheritable(fd, True))"
)


def join(
    auth: PipeAuth | FifoAuth, flags: MakeFlags, variable: str | None, ledger: str | None
) -> Core:
    """Open our own ends of the pool *auth* names (validated as make's clients must)."""
    if isinstance(auth, PipeAuth):
        try:
            _posix.check_inherited(auth.read_fd, auth.write_fd)
            reader, writer, private = _posix.open_pipe_ends(auth.read_fd, auth.write_fd)
        except _posix.Unusable as e:
            hint = {
                Unavailable.NOT_INHERITED: _OWN_FDS_HINT,
                Unavailable.NOT_OPEN: _CLOSED_FDS_HINT,
            }.get(e.kind, NO_PLUS_HINT)
            raise JobserverUnavailable(
                f"cannot use the jobserver pipe {auth.read_fd},{auth.write_fd}: {e}; {hint}",
                variable=variable,
                kind=e.kind,
            ) from None
        # Copies of the inherited numbers, close-on-exec, that we hand to
        # children: they stay valid even if other code closes the originals.
        export = (_posix.dup_cloexec(auth.read_fd), _posix.dup_cloexec(auth.write_fd))
        return Core(
            style="pipe",
            reader=reader,
            writer=writer,
            auth=PipeAuth(*export),
            export_fds=export,
            slots=flags.jobs,
            owner=False,
            flags=flags,
            variable=variable,
            source_auth=auth,
            ledger_path=ledger,
            shared=not private,
        )
    try:
        reader, writer = _posix.open_fifo_ends(auth.path)
    except _posix.Unusable as e:
        raise JobserverUnavailable(
            f"cannot use the jobserver: {e}", variable=variable, kind=e.kind
        ) from None
    return Core(
        style="fifo",
        reader=reader,
        writer=writer,
        auth=auth,
        export_fds=(),
        slots=flags.jobs,
        owner=False,
        flags=flags,
        variable=variable,
        ledger_path=ledger,
    )


def create_pipe(slots: int) -> Core:
    """A new pipe pool of *slots* (its ``slots - 1`` tokens written in)."""
    r, w = os.pipe()  # non-inheritable (PEP 446): children get them via pass_fds
    try:
        reader, writer, _private = _posix.open_pipe_ends(r, w)
    except BaseException:
        _posix.close_quietly(r, w)
        raise
    try:
        # Our writer is a private description on Linux; elsewhere it is the
        # shared one, and no child exists yet, so non-blocking is harmless.
        os.set_blocking(writer, False)
        os.set_blocking(reader, False)
        _posix.fill(writer, slots - 1, TOKEN_BYTE)
    except BaseException:
        _posix.close_quietly(r, w, reader, writer)
        raise
    return Core(
        style="pipe",
        reader=reader,
        writer=writer,
        auth=PipeAuth(r, w),
        export_fds=(r, w),
        slots=slots,
        owner=True,
    )


def create_fifo(slots: int, dir: str | None) -> Core:
    """A new fifo pool of *slots*, mode 0600 in a private directory under *dir*."""
    import tempfile  # here: only fifo pools need it

    fifo_dir = tempfile.mkdtemp(prefix="makejobs-", dir=dir or _fifo_parent())
    path = os.path.join(fifo_dir, "fifo")
    try:
        os.mkfifo(path, 0o600)
        reader, writer = _posix.open_new_fifo_ends(path)
    except BaseException:
        remove_tree(fifo_dir)
        raise
    try:
        _posix.fill(writer, slots - 1, TOKEN_BYTE)
    except BaseException:
        _posix.close_quietly(reader, writer)
        remove_tree(fifo_dir)
        raise
    return Core(
        style="fifo",
        reader=reader,
        writer=writer,
        auth=FifoAuth(path),
        export_fds=(),
        slots=slots,
        owner=True,
        fifo_dir=fifo_dir,
    )


def rebuild(auth: PipeAuth | FifoAuth, state: dict[str, Any]) -> Core:
    """The pool a pickled handle named, in the process that unpickles it.

    A pipe's descriptors came with the pickle (close-on-exec here, opened by
    multiprocessing for us), a fifo is opened by path; the ancestors' ledger
    records came along too, and are kept open.
    """
    records = tuple(int(dup.detach()) for dup in state["records"])
    for fd in records:
        os.set_inheritable(fd, False)
    fields: dict[str, Any] = {
        "slots": state["slots"],
        "owner": False,
        "flags": state["flags"],
        "variable": state["variable"],
        "ledger_path": state["ledger"],
        "inherited_records": records,
    }
    if isinstance(auth, PipeAuth):
        r, w = auth.read_fd, auth.write_fd
        try:
            reader, writer, private = _posix.open_pipe_ends(r, w)
        except _posix.Unusable as e:
            _posix.close_quietly(r, w, *records)
            raise JobserverUnavailable(
                f"cannot use the pickled jobserver pipe: {e}", kind=e.kind
            ) from None
        return Core(
            style="pipe",
            reader=reader,
            writer=writer,
            auth=auth,
            export_fds=(r, w),
            shared=not private,
            **fields,
        )
    try:
        reader, writer = _posix.open_fifo_ends(auth.path)
    except _posix.Unusable as e:
        _posix.close_quietly(*records)
        raise JobserverUnavailable(f"cannot use the jobserver: {e}", kind=e.kind) from None
    return Core(style="fifo", reader=reader, writer=writer, auth=auth, export_fds=(), **fields)


def identity_of(file: str | int) -> tuple[int, int] | None:
    """(device, inode) of the fifo or pipe at a path or fd; None if it is not one."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISFIFO(st.st_mode) else None


def _fifo_parent() -> str:
    """The directory for a new fifo: the temporary directory, unless its path
    has blanks or backslashes, which cargo and ninja cannot parse (they split
    MAKEFLAGS on spaces without honouring make's escapes)."""
    import tempfile

    tmp = tempfile.gettempdir()
    if any(c in tmp for c in " \t\\") and os.access("/tmp", os.W_OK):
        return "/tmp"
    return tmp
