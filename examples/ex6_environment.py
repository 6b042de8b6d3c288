"""ex6_environment: each job's environment, and how it advertises the pool to its children.

Demonstrates:

* ``env=`` on the Jobserver (every job) and on ``submit`` (this job, applied after the
  Jobserver's): a str value sets a variable, None unsets it; the parent's own
  environment is never touched;
* that every job's ``MAKEFLAGS`` (and ``CARGO_MAKEFLAGS``) advertises the Jobserver's
  pool, so ``make``, ``ninja``, ``cargo`` or another makejobs program started by a job
  joins the same pool instead of adding to it;
* how such a child is reached when a job starts it with plain :mod:`subprocess`: a *fifo*
  pool (make 4.4 style) reaches every child; a *pipe* pool (make 4.3 style, the default
  of ``TokenPool.create``) lives in two file descriptors, which ``subprocess`` closes
  unless they are listed in ``pass_fds`` (what make's ``+`` prefix does for recipes), so
  on Linux a job advertises it by the ``/proc`` path of its read end instead, unless the
  ``make`` on ``PATH`` is older than 4.4 (which would stop on that form).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Literal

from makejobs import (
    FifoAuth,
    Jobserver,
    JobserverUnavailable,
    PipeAuth,
    TokenPool,
    parse_makeflags,
)

# A grandchild that joins the pool advertised in its environment and reports which pipe or
# fifo it got (by inode), so the parent can check it is the very same pool.
GRANDCHILD = """
import os
from makejobs import TokenPool
pool = TokenPool.from_environ()
print(pool.style, os.fstat(pool.fileno()).st_ino)
"""


def task_getenv(name: str) -> str:
    return os.environ.get(name, "MISSING")


def inherited_pool_fds() -> tuple[int, ...]:
    """The fds named by this process's MAKEFLAGS: the ones a child must inherit."""
    auth = parse_makeflags(os.environ.get("MAKEFLAGS", "")).auth
    return (auth.read_fd, auth.write_fd) if isinstance(auth, PipeAuth) else ()


def task_start_grandchild(pass_fds: bool) -> str:
    """Start a Python child the way a build step starts make; return what it saw."""
    proc = subprocess.run(
        [sys.executable, "-c", GRANDCHILD],
        pass_fds=inherited_pool_fds() if pass_fds else (),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1]
        return last.split(":", 1)[0]  # the exception's name
    return proc.stdout.strip()


def main() -> None:
    os.environ["DEMO_KEY"] = "from the parent"
    with Jobserver("spawn", slots=2, env={"DEMO_LEVEL": "jobserver"}) as jobserver:
        cases = [
            ("DEMO_KEY", None, "from the parent"),  # inherited
            ("DEMO_KEY", {"DEMO_KEY": "hello"}, "hello"),  # set for this job
            ("DEMO_KEY", {"DEMO_KEY": None}, "MISSING"),  # unset for this job
            ("DEMO_LEVEL", None, "jobserver"),  # the Jobserver-wide env=
            ("DEMO_LEVEL", [("DEMO_LEVEL", "submit")], "submit"),  # submit wins (pairs work)
        ]
        for name, env, expected in cases:
            value = jobserver.submit(task_getenv, (name,), env=env).result()
            print(f"env={env!r:28} -> {name}={value!r}")
            assert value == expected
        assert os.environ["DEMO_KEY"] == "from the parent"  # the parent is unchanged
        assert "DEMO_LEVEL" not in os.environ

    styles: tuple[Literal["pipe", "fifo"], ...] = ("pipe", "fifo")
    for style in styles:
        pool = TokenPool.create(3, style=style)
        inode = os.fstat(pool.fileno()).st_ino
        with pool, Jobserver("fork", pool=pool) as jobserver:
            makeflags = jobserver.submit(task_getenv, ("MAKEFLAGS",)).result()
            flags = parse_makeflags(makeflags)
            print(f"{style} pool: job's MAKEFLAGS={makeflags!r}")
            # The job advertises the same pool: a fifo by its path; a pipe by the fd
            # numbers it inherits, or, where PATH's make is 4.4 or newer, by the /proc
            # path of its read end, which any child can open (makejobs.advertise).
            by_path = isinstance(flags.auth, FifoAuth) and isinstance(pool.auth, PipeAuth)
            assert (flags.auth == pool.auth or by_path) and flags.jobs == 3
            seen = jobserver.submit(task_start_grandchild, (True,)).result()
            print(f"{style} pool (inode {inode}): grandchild joined -> {seen!r}")
            assert seen.split()[1] == str(inode)
            # subprocess closes inherited fds unless told: a pipe pool reaches such a
            # child only by path.
            seen = jobserver.submit(task_start_grandchild, (False,)).result()
            print(f"{style} pool, child started without pass_fds: {seen}")
            if style == "fifo" or by_path:
                assert seen.split()[1] == str(inode)
            else:
                assert seen.endswith(JobserverUnavailable.__name__)
    print("ex6_environment: OK")


if __name__ == "__main__":
    main()
