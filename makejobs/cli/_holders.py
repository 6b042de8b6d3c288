"""Who has a pool open, what each of them is, and the tokens makejobs clients hold.

``makejobs status`` and ``makejobs doctor`` list a pool's *holders*: the
processes with a descriptor on its pipe or fifo (Linux ``/proc``, see
:mod:`makejobs._procfs`). Each gets a role read from its command line (make,
ninja, cargo, ``makejobs serve``, a makejobs guardian...). The *owner* is the
holder that no other holder started: the make, ninja, cargo or serve that
created the pool. How many tokens a process holds is known only for makejobs
clients of a pool with a token ledger (``makejobs serve`` pools): each keeps
its count in a ledger record, locked with ``flock``, and ``/proc/locks``
names the process holding each lock.
"""

from __future__ import annotations

import os

from .. import _procfs
from ..ledger import ledger_pool, record_counts
from ..protocol import FifoAuth, PipeAuth
from ._diagnose import program_kind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ..protocol import MakeFlags

__all__ = ["Holder", "Holders", "find_holders", "pool_file", "role_of", "short_command"]


def _makejobs_command(command: list[str]) -> str | None:
    """The makejobs subcommand *command* runs (``makejobs serve``...), if it runs makejobs."""
    interpreter = os.path.basename(command[0]).startswith(("python", "pypy"))
    for i, word in enumerate(command[:4]):
        # makejobs ..., python .../bin/makejobs ..., python [-X...] -m makejobs ...
        is_script = os.path.basename(word) == "makejobs" and (i == 0 or interpreter)
        is_module = word == "makejobs" and i > 0 and command[i - 1] == "-m"
        if is_script or is_module:
            rest = [w for w in command[i + 1 :] if not w.startswith("-")]
            return f"makejobs {rest[0]}" if rest else "makejobs"
    return None


def short_command(command: list[str], width: int = 72) -> str:
    """*command* for one line of a listing: a makejobs command from ``makejobs`` on,
    others from the program's base name, cut to *width* characters."""
    words = list(command)
    if _makejobs_command(words) is not None:
        while words and os.path.basename(words[0]) != "makejobs":
            words.pop(0)
        words[0] = "makejobs"
    elif words:
        words[0] = os.path.basename(words[0])
    text = " ".join(words) or "?"
    return text if len(text) <= width else text[: width - 3] + "..."


def role_of(command: list[str]) -> str:
    """What a process is, from its command line, in a word or two."""
    if not command:
        return "unknown (exited, or a zombie)"
    if any("_guardian" in word for word in command) and any("makejobs" in w for w in command):
        return "makejobs guardian"
    found = _makejobs_command(command)
    if found is not None:
        return found
    kind = program_kind(command[0])
    if kind is not None:
        return kind
    name = os.path.basename(command[0])
    if name.startswith("python") or name.startswith("pypy"):
        return "python"
    if name in ("sh", "bash", "dash", "zsh", "ksh", "busybox"):
        return "shell"
    return name or "unknown"


class Holder:
    """One process with the pool open.

    Attributes:
        pid, ppid: its process id and its parent's.
        command: its command line (empty if it could not be read).
        role: see :func:`role_of`.
        tokens: tokens it holds now, from its ledger record; None when unknown
            (a process that keeps no ledger record: make, ninja, cargo...).
        owner: True for the holder that created the pool (see the module doc).
    """

    def __init__(self, pid: int, ppid: int, command: list[str], role: str) -> None:
        self.pid = pid
        self.ppid = ppid
        self.command = command
        self.role = role
        self.tokens: int | None = None
        self.owner = False

    def as_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "ppid": self.ppid,
            "command": self.command,
            "role": self.role,
            "tokens": self.tokens,
            "owner": self.owner,
        }


class Holders:
    """The holders of one pool.

    Attributes:
        supported: False where processes' descriptors cannot be listed (no
            ``/proc``): then nothing else is filled in.
        holders: every holder found, owner first, then by pid.
        hidden: processes that could not be inspected (other users').
        ledger: True when the pool's token ledger was found and read.
    """

    def __init__(self, supported: bool) -> None:
        self.supported = supported
        self.holders: list[Holder] = []
        self.hidden = 0
        self.ledger = False

    @property
    def owner(self) -> Holder | None:
        return next((h for h in self.holders if h.owner), None)

    @property
    def ledger_tokens(self) -> int:
        """Tokens the makejobs clients found hold, together."""
        return sum(h.tokens or 0 for h in self.holders)


def _ancestors(pid: int, parents: dict[int, int]) -> list[int]:
    """*pid*'s ancestors, nearest first (parents are read from /proc as needed)."""
    chain: list[int] = []
    seen = {pid}
    while True:
        if pid not in parents:
            info = _procfs.process_stat(pid)
            parents[pid] = info.ppid if info is not None else 0
        pid = parents[pid]
        if pid <= 0 or pid in seen:
            return chain
        seen.add(pid)
        chain.append(pid)


def _start_time(pid: int) -> int:
    info = _procfs.process_stat(pid)
    return info.start if info is not None else 0


def pool_file(flags: MakeFlags) -> tuple[tuple[int, int], str | None] | None:
    """The pool's pipe or fifo as :func:`find_holders` takes it: (device, inode) and
    the fifo's path (None for a pipe); None if this process cannot reach it."""
    try:
        if isinstance(flags.auth, PipeAuth):
            st = os.fstat(flags.auth.read_fd)
            return (st.st_dev, st.st_ino), None
        if isinstance(flags.auth, FifoAuth):
            st = os.stat(flags.auth.path)
            return (st.st_dev, st.st_ino), flags.auth.path
    except OSError:
        pass
    return None


def find_holders(
    key: tuple[int, int],
    *,
    path: str | None = None,
    ledger: str | None = None,
    exclude: tuple[int, ...] = (),
) -> Holders:
    """The processes holding the pool whose pipe or fifo is *key* (device, inode).

    *path* is the fifo's path (None for a pipe). *ledger* is a token ledger
    directory (``MAKEJOBS_LEDGER``); it is used only if it is this pool's.
    Processes in *exclude* (say, the one asking) are left out.
    """
    result = Holders(_procfs.supported())
    if not result.supported:
        return result
    scan = _procfs.scan_holders(key, path=path)
    result.hidden = scan.hidden
    parents: dict[int, int] = {}
    for pid in sorted(scan.fds):
        if pid in exclude:
            continue
        info = _procfs.process_stat(pid)
        ppid = info.ppid if info is not None else 0
        parents[pid] = ppid
        command = _procfs.cmdline(pid)
        result.holders.append(Holder(pid, ppid, command, role_of(command)))
    pids = {h.pid for h in result.holders}
    roots = [h for h in result.holders if not pids.intersection(_ancestors(h.pid, parents))]
    if roots:
        min(roots, key=lambda h: (_start_time(h.pid), h.pid)).owner = True
    if ledger is not None:
        pool = ledger_pool(ledger)
        if pool is not None and (pool[1], pool[2]) == key:
            result.ledger = True
            lockers = _procfs.record_locks()
            held: dict[int, int] = {}
            for record, count in record_counts(ledger).items():
                locker = lockers.get(record)
                if locker is not None:
                    held[locker] = held.get(locker, 0) + count
            for holder in result.holders:
                if holder.pid in held:
                    holder.tokens = held[holder.pid]
    result.holders.sort(key=lambda h: (not h.owner, h.pid))
    return result
