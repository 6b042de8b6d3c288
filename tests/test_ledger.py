"""The token ledger: killed makejobs clients' tokens come back, never too early."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from forking import wait_for_exit
from makejobs import Token, TokenPool
from makejobs.errors import TokenCountWarning
from makejobs.ledger import LEDGER_VARIABLE

HOLDER = """
import os, sys, time
from makejobs import TokenPool
pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=10) for _ in range(int(sys.argv[1]))]
if sys.argv[2] == "spawn":  # jobs started by multiprocessing, outliving the holder
    from makejobs import Jobserver
    for t in tokens:
        pool.release(t)
    js = Jobserver("spawn", pool=pool)
    jobs = [js.submit(time.sleep, (600,)) for _ in range(len(tokens))]
    os.write(1, b"child %s\\n" % " ".join(str(job.pid) for job in jobs).encode())
if sys.argv[2] == "fork":
    pid = os.fork()
    if pid == 0:  # a job running on the holder's tokens, outliving it
        os.write(1, b"child %d\\n" % os.getpid())  # one write: lines never interleave
        time.sleep(600)
        os._exit(0)
os.write(1, b"ready\\n")
if sys.argv[2] == "release":
    for t in tokens:
        pool.release(t)
    pool.close()
    os.write(1, b"released\\n")
time.sleep(600)
"""


def start_holder(pool: TokenPool, count: int, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(count), mode],
        env=pool.environ(),
        pass_fds=pool.pass_fds,
        stdout=subprocess.PIPE,
        text=True,
    )


def kill(proc: subprocess.Popen[str]) -> None:
    """SIGKILL *proc* and its guardian, as ``kill -9`` of a whole process group does.

    With the guardian alive the killed client's tokens come back through it
    (see test_a_killed_holder_with_its_guardian_gives_back_through_it); the
    ledger is for when nothing of the client survives.
    """
    guardians = guardians_of(proc.pid)
    for guardian in guardians:
        guardian.kill()
    proc.kill()
    proc.wait(30)
    for guardian in guardians:
        assert wait_for_exit(guardian.pid, 30)


def guardians_of(pid: int) -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process(pid).children()
        if any("_guardian_main" in word for word in child.cmdline())
    ]


def forget(pool: TokenPool, token: Token) -> None:
    """Drop *token* as if its holder had died: its byte vanishes with the escrow."""
    escrow = token._escrow
    assert escrow is not None
    os.read(escrow.r, 1)
    token._escrow = None
    pool._core.holders.pop(escrow, None)


@pytest.fixture(params=["pipe", "fifo"])
def pool(request: pytest.FixtureRequest) -> Iterator[TokenPool]:
    with TokenPool.create(4, style=request.param, ledger=True) as created:
        yield created


def test_environ_exports_the_ledger_and_others_do_not(pool: TokenPool) -> None:
    env = pool.environ({LEDGER_VARIABLE: "/somewhere/else"})
    assert env[LEDGER_VARIABLE] == pool._core.books.path
    with TokenPool.create(2) as plain:
        assert LEDGER_VARIABLE not in plain.environ({LEDGER_VARIABLE: "/somewhere/else"})


def test_killed_holder_tokens_are_recovered(pool: TokenPool) -> None:
    holder = start_holder(pool, 3, "hold")  # the implicit slot + 2 tokens
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        assert pool.available() == 1
        assert pool.recover() == 0  # alive: its tokens are in use
    finally:
        kill(holder)
    assert pool.recover() == 2
    assert pool.recover() == 0  # once
    assert pool.close() == 3


def test_a_killed_holder_with_its_guardian_gives_back_through_it(pool: TokenPool) -> None:
    holder = start_holder(pool, 3, "hold")  # the implicit slot + 2 tokens
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        assert pool.available() == 1
        (guardian,) = guardians_of(holder.pid)
    finally:
        holder.kill()  # only the holder: its guardian gives its tokens back
        holder.wait(30)
    assert wait_for_exit(guardian.pid, 30)
    assert pool.available() == 3
    assert pool.recover() == 0  # the guardian lowered the record first: never twice
    assert pool.close() == 3


def test_released_tokens_are_not_recovered_twice(pool: TokenPool) -> None:
    holder = start_holder(pool, 3, "release")
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "ready\n"
        assert holder.stdout.readline() == "released\n"
    finally:
        kill(holder)
    assert pool.recover() == 0
    assert pool.close() == 3


def test_a_forked_descendant_keeps_the_holders_tokens_alive(pool: TokenPool) -> None:
    holder = start_holder(pool, 2, "fork")
    assert holder.stdout is not None
    lines = sorted(holder.stdout.readline().split() for _ in range(2))  # either order
    assert len(lines[0]) == 2 and lines[0][0] == "child" and lines[1] == ["ready"], lines
    child = int(lines[0][1])
    kill(holder)
    try:
        # The holder is dead but its job still runs on its token: not yet.
        assert pool.recover() == 0
    finally:
        os.kill(child, signal.SIGKILL)
    # The orphan is reparented and reaped by init; its lock goes when its fds close,
    # which this test cannot observe directly: poll recover() until a deadline.
    deadline = time.monotonic() + 30
    while pool.recover() == 0:
        assert time.monotonic() < deadline, "the token never came back after the job died"
        time.sleep(0.01)
    assert pool.close() == 3


def test_a_spawned_job_holds_the_record_too(pool: TokenPool) -> None:
    holder = start_holder(pool, 2, "spawn")  # the implicit slot + 1 token, lent to spawned jobs
    assert holder.stdout is not None
    lines = sorted(holder.stdout.readline().split() for _ in range(2))  # either order
    assert lines[0][0] == "child" and len(lines[0]) == 3 and lines[1] == ["ready"], lines
    jobs = [int(pid) for pid in lines[0][1:]]
    kill(holder)
    try:
        assert pool.recover() == 0  # the spawned jobs inherited the record: not yet
    finally:
        for job in jobs:
            os.kill(job, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while pool.recover() == 0:
        assert time.monotonic() < deadline, "the token never came back after the job died"
        time.sleep(0.01)
    assert pool.close() == 3


def test_a_ledger_for_another_pool_is_ignored(pool: TokenPool) -> None:
    with TokenPool.create(3) as other:
        env = other.environ()
        env[LEDGER_VARIABLE] = str(pool._core.books.path)
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, "2", "hold"],
            env=env,
            pass_fds=other.pass_fds,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        finally:
            kill(proc)
        assert pool.recover() == 0  # no record of the other pool's tokens here
        # The killed client's token is simply lost there, and closing says so.
        with pytest.warns(TokenCountWarning, match="1 missing"):
            assert other.close() == 1


def test_only_the_creator_recovers() -> None:
    with TokenPool.create(2) as plain, pytest.raises(ValueError, match="creator"):
        plain.recover()
