"""SlotLender/SlotBorrower: a process lends its pool's slots over a Unix socket.

This is what the pytest plugin's xdist controller does for its workers; these tests drive
the lender directly, with borrowers in threads and in real processes that get SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from makejobs._lending import SlotBorrower, SlotLender
from makejobs.errors import PoolBroken
from makejobs.pool import TokenPool

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pool() -> Iterator[TokenPool]:
    with TokenPool.create(2) as created:
        yield created


def acquire_in_thread(borrower: SlotBorrower) -> tuple[threading.Thread, threading.Event]:
    got = threading.Event()

    def run() -> None:
        borrower.acquire()
        got.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_lends_the_implicit_slot_first_then_tokens_and_no_more(pool: TokenPool) -> None:
    with SlotLender(pool) as lender:
        first, second, third = (SlotBorrower(lender.address) for _ in range(3))
        first.acquire()
        assert not pool.implicit_free and pool.available() == 1
        second.acquire()
        assert pool.available() == 0 and lender.lent == 2
        thread, got = acquire_in_thread(third)
        # The pool has 2 slots and both are lent: the third request must wait.
        assert not got.wait(0.2)
        first.release()
        assert got.wait(10), "the slot given back was not lent to the waiting borrower"
        thread.join()
        second.release()
        third.release()
        for borrower in (first, second, third):
            borrower.close()
    assert pool.implicit_free and pool.available() == 1


def test_a_sigkilled_borrower_gives_its_slot_back_at_once(tmp_path: Path) -> None:
    with TokenPool.create(1) as pool, SlotLender(pool) as lender:
        code = (
            "import sys, time\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from makejobs._lending import SlotBorrower\n"
            "b = SlotBorrower(sys.argv[1]); b.acquire()\n"
            "print('holding', flush=True); time.sleep(60)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code, lender.address], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "holding\n"
            waiter = SlotBorrower(lender.address)
            thread, got = acquire_in_thread(waiter)
            assert not got.wait(0.2)  # the pool's only slot is lent to the child
            child.send_signal(signal.SIGKILL)
            # No one gives the slot back but the lender, when the connection closes.
            assert got.wait(10), "the killed borrower's slot never came back"
            thread.join()
            waiter.release()
            waiter.close()
        finally:
            child.kill()
            child.wait()
    assert pool.closed


def test_close_gives_back_every_lent_slot(pool: TokenPool) -> None:
    lender = SlotLender(pool)
    directory = Path(lender.address).parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    holders = [SlotBorrower(lender.address) for _ in range(2)]
    for borrower in holders:
        borrower.acquire()
    assert pool.available() == 0 and not pool.implicit_free
    lender.close()
    lender.close()  # idempotent
    assert pool.available() == 1 and pool.implicit_free
    assert not directory.exists()
    # Borrowers still connected learn it at their next request instead of hanging.
    with pytest.raises(ConnectionError, match="lost the slot lender"):
        holders[0].acquire()
    for borrower in holders:
        borrower.close()


def test_a_borrower_that_breaks_the_protocol_is_dropped_and_its_slots_return(
    pool: TokenPool,
) -> None:
    with SlotLender(pool) as lender:
        rogue = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        rogue.connect(lender.address)
        rogue.sendall(b"A")
        assert rogue.recv(1) == b"G"
        assert lender.lent == 1
        rogue.sendall(b"RR")  # gives back one slot more than it holds
        assert rogue.recv(1) == b"", "the lender kept talking to a rogue borrower"
        rogue.close()
        honest = SlotBorrower(lender.address)
        honest.acquire()
        honest.acquire()  # both slots are free again
        assert lender.lent == 2
        honest.close()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_pool_closed_under_the_lender_refuses_instead_of_hanging() -> None:
    pool = TokenPool.create(1)
    with SlotLender(pool) as lender:
        holder = SlotBorrower(lender.address)
        holder.acquire()
        waiter = SlotBorrower(lender.address)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                waiter.acquire()
            except BaseException as e:
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        pool.close()  # while the lender's implicit slot is lent
        holder.release()  # the lender tries to use the closed pool and stops lending
        thread.join(10)
        assert not thread.is_alive(), "a borrower hung on a pool that is gone"
        assert len(errors) == 1 and isinstance(errors[0], PoolBroken), errors
        assert lender.broken is not None and "closed" in lender.broken
        holder.close()
        waiter.close()


def test_a_lender_that_is_gone_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConnectionError, match="cannot reach the slot lender"):
        SlotBorrower(os.fspath(tmp_path / "no-such-socket"))
