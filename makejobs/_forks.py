"""Fork generations: per-process state is rebuilt where it is first used after a fork.

A forked child must not use its parent's per-process state: the implicit slot
(the child runs on the token its parent acquired for it, which is its own
implicit slot), the held tokens, locks another parent thread may have held at
the fork, ownership, the parent's running jobs. That state is not rebuilt at
the fork: the only at-fork work is counting the fork, and each pool (and each
Jobserver engine) compares the count it was set up under with the current one
when it is next used, rebuilding its state then. A forked job that never
touches what it inherited, the common case, thus pays nothing for it: at-fork
hooks run in every fork of the process, and eager ones cost every job a few
hundred microseconds of copy-on-write page faults per live pool.

Read the names here through the module (``_forks.generation``): they change.
"""

from __future__ import annotations

import os
import threading

__all__ = ["generation", "lock", "note_touched", "touched_here"]

#: Forks between the process that started this interpreter and this one.
generation = 0
#: The generation in which this process last set up (or rebuilt) a pool's
#: state: if it is not the current one, this process holds no tokens at all.
touched = 0
#: Serializes rebuilding after a fork (threads the child started may race to
#: it); made anew in each child, since a parent thread may hold it at the fork.
lock = threading.Lock()


def _after_fork_in_child() -> None:
    global generation, lock
    generation += 1
    lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def note_touched() -> None:
    """A pool's state was set up in this process: it may come to hold tokens."""
    global touched
    touched = generation


def touched_here() -> bool:
    """True when a pool was used since this process began (or was forked)."""
    return touched == generation
