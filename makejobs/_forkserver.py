"""The executor and multiprocessing's fork server: preload it, and outlive its death.

With the ``forkserver`` start method every worker is a fork of one server
process that multiprocessing starts on first use and shares across the whole
process. Two things about it matter to the executor:

* **Preloading.** What the server imported once, every worker has for free;
  :func:`preload_in_forkserver` adds the executor's worker side to the list.
* **Its death.** The server can die (out of descriptors or processes when it
  forks, killed by an administrator or an OOM killer). multiprocessing starts
  a new one only when the old one is its own unreaped child; if the server
  died in the middle of a request, or something else reaped it (a SIGCHLD
  handler that waits for every child), each later start fails with
  ``EOFError``, ``ConnectionRefusedError`` or ``ChildProcessError``.
  :func:`start_process` recognises those failures, forgets the dead server and
  starts the process once more, on a new server.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["ForkServerFailed", "preload_in_forkserver", "start_process"]


class ForkServerFailed(RuntimeError):
    """A worker could not be started: the fork server stopped answering, and so did a new one."""


def preload_in_forkserver(context: BaseContext, module: str) -> None:
    """Have the fork server import *module* before it forks its first worker.

    A forkserver worker is a fork of the server, so what the server imported
    once, every worker has for free; otherwise each worker imports the module
    (and through it makejobs, multiprocessing and concurrent.futures) itself
    before its first task, tens of milliseconds per worker. The module is
    added to whatever preload list is set (by default ``["__main__"]``), never
    replaces it, and only if the server is not running yet: one server serves
    the whole process and is not restarted for us.
    """
    if context.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    preload = getattr(server, "_preload_modules", None)
    if getattr(server, "_forkserver_pid", 0) is not None or not isinstance(preload, list):
        return  # running already (or a multiprocessing that we do not know)
    if module not in preload and _server_would_import_this_package():
        context.set_forkserver_preload([*preload, module])


def _server_would_import_this_package() -> bool:
    """Whether a fork server started now would find this package where we did.

    Before Python 3.12.8 and 3.13.1 the server ignores the sys.path it is
    handed (CPython issue 117378): it imports its preload list on a fresh
    interpreter's path, that is the current directory, PYTHONPATH, then the
    site directories. Another copy of the package found there first (a
    checkout in the current directory, say, while a script put its own copy
    on sys.path) would give the workers other code than the parent runs, so
    the first copy on that path must be this one. Not found there at all:
    no preload (the workers import the package as before).
    """
    import site

    package = __name__.partition(".")[0]
    here = os.path.abspath(__file__)
    for _ in range(__name__.count(".") + 1):
        here = os.path.dirname(here)  # the directory the package was imported from
    flags = sys.flags
    path: list[str] = []
    if not (flags.isolated or getattr(flags, "safe_path", False)):
        path.append(os.getcwd())
    if not flags.ignore_environment:
        path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    try:
        if site.ENABLE_USER_SITE and not flags.no_user_site:
            path.append(site.getusersitepackages())
        path += site.getsitepackages()
    except AttributeError:  # pragma: no cover - a site module without them (python -S)
        pass
    for entry in path:
        candidate = os.path.join(entry, package)
        if os.path.isdir(candidate) or os.path.isfile(candidate + ".py"):
            try:
                return os.path.samefile(entry, here)
            except OSError:
                return False
    return False


# How a start fails when the server is gone: it closed the connection before
# answering (EOFError), refused or dropped it (ConnectionError), its socket file
# is gone (FileNotFoundError), or multiprocessing's liveness check found that
# someone else reaped it (ChildProcessError).
_SERVER_GONE = (EOFError, ConnectionError, FileNotFoundError, ChildProcessError)


def start_process(make: Callable[[], Any], context: BaseContext) -> Any:
    """``make()`` a :class:`multiprocessing.Process` and start it; return it.

    With the forkserver start method, a start that fails because the server
    is gone forgets that server and tries once more with a new process (and
    so a new server).

    Raises:
        ForkServerFailed: the new server failed too; the cause is chained.
        Exception: whatever else starting the process raised.
    """
    process = make()
    if context.get_start_method() != "forkserver":
        process.start()
        return process
    try:
        process.start()
    except _SERVER_GONE as first:
        if not _forget_dead_server():
            raise ForkServerFailed(
                f"cannot start a worker: the multiprocessing fork server did not answer"
                f" ({first!r}) and could not be replaced"
            ) from first
        process = make()
        try:
            process.start()
        except Exception as second:
            raise ForkServerFailed(
                f"cannot start a worker: the multiprocessing fork server did not answer"
                f" ({first!r}), and a new one failed too ({second!r})"
            ) from second
    return process


def _forget_dead_server() -> bool:
    """Make multiprocessing start a new fork server on its next use.

    A server that is still there but does not answer (dying, or wedged) is
    killed first: it is this process's own child, and it will serve nobody.
    Returns False if this multiprocessing keeps its server some other way.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fields = ("_forkserver_pid", "_forkserver_alive_fd", "_forkserver_address", "_lock")
    if server is None or not all(hasattr(server, name) for name in fields):
        return False
    with server._lock:
        pid = server._forkserver_pid
        if pid is None:
            return True  # already forgotten: the next start launches one
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        except ChildProcessError:
            pass  # reaped by someone else: it is gone
        # What multiprocessing itself does when it finds its server dead.
        try:
            os.close(server._forkserver_alive_fd)
        except OSError:
            pass
        for name in ("_forkserver_pid", "_forkserver_alive_fd", "_forkserver_address"):
            setattr(server, name, None)
        if hasattr(server, "_forkserver_authkey"):  # Python 3.14
            server._forkserver_authkey = None
    return True
