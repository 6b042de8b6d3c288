"""makejobs.relay: a private fifo topped up from a pipe pool, and every token back at the end.

The test reads the relay's fifo itself, as a fifo-only consumer would. Waiting for a
token is a bounded ``select`` on the fifo (a token arriving is the event waited for);
the end-to-end run under make 4.3 is in integration/test_bridge_peers.py.
"""

from __future__ import annotations

import os
import select
import stat

import pytest

from makejobs.pool import TokenPool
from makejobs.protocol import FifoAuth, parse_makeflags
from makejobs.relay import WAITING, Relay
from pools import close_clean

BOUND = 10  # seconds: only a broken relay waits this long


def take(fd: int) -> bytes:
    """One token from the relay's fifo, waiting (bounded) for the relay to put it there."""
    while True:
        ready, _, _ = select.select([fd], [], [], BOUND)
        assert ready, "the relay did not put a token in the fifo"
        try:
            return os.read(fd, 1)
        except BlockingIOError:
            continue


def test_tokens_flow_through_the_fifo_and_all_come_back() -> None:
    pool = TokenPool.create(3)
    with Relay(pool) as relay:
        assert stat.S_ISFIFO(os.stat(relay.path).st_mode)
        assert parse_makeflags(relay.environ({})["MAKEFLAGS"]).auth == FifoAuth(relay.path)
        assert relay.pass_fds == ()  # no pipe: the child opens the fifo by path
        assert not pool.implicit_free  # held for the command, which runs on it
        reader = os.open(relay.path, os.O_RDONLY | os.O_NONBLOCK)
        writer = os.open(relay.path, os.O_WRONLY)
        try:
            # Both tokens of the pool reach the fifo, one after the other.
            first, second = take(reader), take(reader)
            assert first == second == b"+"
            os.write(writer, first)  # one goes back through the fifo...
        finally:
            os.close(reader)
            os.close(writer)
        # ...the other is never written back, as by a consumer killed holding it.
    assert relay.lost == 1
    assert not os.path.exists(relay.path) and not os.path.exists(os.path.dirname(relay.path))
    assert pool.implicit_free
    assert close_clean(pool) == 2


def test_one_token_waits_in_the_fifo_while_nobody_reads() -> None:
    """The relay's price: WAITING tokens of the pool sit in the fifo, unused."""
    pool = TokenPool.create(4)
    with Relay(pool) as relay:
        reader = os.open(relay.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            select.select([reader], [], [], BOUND)
            held = 3 - (pool.available() or 0)
            assert held == WAITING == 1
        finally:
            os.close(reader)
    assert relay.lost == 0
    assert close_clean(pool) == 3


def test_a_closed_pool_cannot_be_relayed() -> None:
    pool = TokenPool.create(2)
    close_clean(pool)
    with pytest.raises(ValueError, match="closed"):
        Relay(pool)
