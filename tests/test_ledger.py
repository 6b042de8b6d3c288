"""The token ledger: killed makejobs clients' tokens come back, never too early."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from makejobs import TokenPool
from makejobs.ledger import LEDGER_VARIABLE

HOLDER = """
import os, sys, time
from makejobs import TokenPool
pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=10) for _ in range(int(sys.argv[1]))]
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
    proc.kill()
    proc.wait(30)


@pytest.fixture(params=["pipe", "fifo"])
def pool(request: pytest.FixtureRequest) -> Iterator[TokenPool]:
    with TokenPool.create(4, style=request.param, ledger=True) as created:
        yield created


def test_environ_exports_the_ledger_and_others_do_not(pool: TokenPool) -> None:
    env = pool.environ({LEDGER_VARIABLE: "/somewhere/else"})
    assert env[LEDGER_VARIABLE] == pool._ledger_path
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


def _spawned_job(pool: TokenPool, started: multiprocessing.synchronize.Event) -> None:
    started.set()
    signal.pause()


def test_a_spawned_child_holds_the_record_too() -> None:
    with TokenPool.create(3, ledger=True) as pool:
        implicit = pool.acquire()
        token = pool.acquire()
        ctx = multiprocessing.get_context("spawn")
        started = ctx.Event()
        proc = ctx.Process(target=_spawned_job, args=(pool, started))
        proc.start()
        try:
            assert started.wait(60)
            # Simulate our own death without dying: drop our record's lock.
            record = pool._record
            assert record is not None and record.count == 1
            os.close(record.fd)
            record.fd = os.open(os.devnull, os.O_RDONLY)
            assert pool.recover() == 0  # the spawned child still holds it
        finally:
            proc.kill()
            proc.join(30)
        assert pool.recover() == 1
        pool._held.discard(token)  # recovered for us: do not return it twice
        pool._record = None
        pool.release(implicit)
        assert pool.close() == 2


def test_a_ledger_for_another_pool_is_ignored(pool: TokenPool) -> None:
    with TokenPool.create(3) as other:
        env = other.environ()
        env[LEDGER_VARIABLE] = str(pool._ledger_path)
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
        assert other.close() == 1  # the killed client's token is simply lost there


def test_only_the_creator_recovers() -> None:
    with TokenPool.create(2) as plain, pytest.raises(ValueError, match="creator"):
        plain.recover()
