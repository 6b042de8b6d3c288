"""What a killed ``makejobs serve`` leaves in the temporary directory, and its removal.

A serve removes its token ledger (``makejobs-ledger-*``, pipe pools) or its
fifo's private directory (``makejobs-*`` holding ``fifo`` and the ledger) on
every exit it can catch. SIGKILL, the OOM killer or a power cut leave them
behind. Each ``serve`` removes, before it creates its own pool, those whose
pool no process has open any more: nothing can use them then (only the dead
creator would have read the ledger; a fifo nobody holds is empty for good).

This is Linux-only (it needs ``/proc`` to see who holds a pool); elsewhere
nothing is removed and the directories stay until the system's temporary
directory is cleaned.
"""

from __future__ import annotations

import os
import stat
import time

from .. import _procfs
from ..ledger import LEDGER_PREFIX, remove_stale_ledgers

__all__ = ["MIN_AGE", "remove_leftovers", "temporary_parents"]

#: Seconds a directory must have been left alone before it is judged: a pool
#: being created has its directory a moment before any process holds it.
MIN_AGE = 10.0
#: A fifo pool's private directory, as TokenPool.create(style="fifo") names it.
_FIFO_DIR_PREFIX = "makejobs-"
_FIFO_NAME = "fifo"


def temporary_parents() -> list[str]:
    """Where pools' directories are made: the temporary directory, and /tmp (the
    fallback for fifos when that directory's path has blanks)."""
    import tempfile

    parents = [tempfile.gettempdir()]
    if os.path.realpath("/tmp") != os.path.realpath(parents[0]):
        parents.append("/tmp")
    return parents


def _stale_fifo_dir(path: str, uid: int, now: float, min_age: float) -> bool:
    """True for a fifo pool's private directory whose fifo no process has open."""
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            return False
        names = os.listdir(path)
        fifo = os.lstat(os.path.join(path, _FIFO_NAME))
    except OSError:
        return False
    # Exactly the layout a fifo pool makes: the fifo and its ledger, nothing else.
    if not stat.S_ISFIFO(fifo.st_mode) or fifo.st_uid != uid:
        return False
    if any(name != _FIFO_NAME and not name.startswith(LEDGER_PREFIX) for name in names):
        return False
    if now - max(st.st_mtime, fifo.st_mtime) < min_age:
        return False
    key = _procfs.file_key(fifo)
    return not _procfs.scan_holders(key, path=os.path.join(path, _FIFO_NAME)).fds


def remove_leftovers(parents: list[str] | None = None, *, min_age: float = MIN_AGE) -> list[str]:
    """Remove killed pools' ledgers and fifo directories under *parents*; the paths removed.

    *parents* defaults to :func:`temporary_parents`. Never raises for a
    directory it cannot read or remove: such a directory is left as it is.
    """
    if not _procfs.supported():
        return []
    removed: list[str] = []
    uid = os.getuid()
    now = time.time()
    for parent in temporary_parents() if parents is None else parents:
        removed += remove_stale_ledgers(parent, min_age=min_age)
        try:
            candidates = [
                entry.path
                for entry in os.scandir(parent)
                if entry.name.startswith(_FIFO_DIR_PREFIX)
                and not entry.name.startswith(LEDGER_PREFIX)
            ]
        except OSError:
            continue
        for path in candidates:
            if _stale_fifo_dir(path, uid, now, min_age):
                import shutil

                shutil.rmtree(path, ignore_errors=True)
                if not os.path.exists(path):
                    removed.append(path)
    return removed
