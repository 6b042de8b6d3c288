"""The executor and multiprocessing's fork server: have it preload the worker side.

With the ``forkserver`` start method every worker is a fork of one server
process that multiprocessing starts on first use and shares across the whole
process: what the server imported once, every worker has for free.
:func:`preload_in_forkserver` adds the executor's worker side to its list.
"""

from __future__ import annotations

import os
import sys
from multiprocessing.context import BaseContext

__all__ = ["preload_in_forkserver"]


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
