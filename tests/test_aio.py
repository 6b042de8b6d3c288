"""makejobs.aio: waiting for slots on the event loop, cancellation-safe.

Tokens that wake a waiter are written by another client on descriptors of its own (as
another process would have them), so a waiter is proven to be woken by the pool's
descriptor, not by an in-process shortcut. Ordering between tasks
uses event-loop turns (``asyncio.sleep(0)``), never wall-clock sleeps.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import warnings
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest

from makejobs import aio
from makejobs.errors import Blocked, PoolBroken
from makejobs.pool import Style, Token, TokenPool
from makejobs.protocol import FifoAuth
from pools import close_clean

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


async def turns(n: int = 5) -> None:
    """Let the event loop run other ready callbacks and tasks *n* times."""
    for _ in range(n):
        await asyncio.sleep(0)


def watching(pool: TokenPool) -> bool:
    """Whether the running loop watches *pool* for free slots.

    aio's reader is on a private duplicate of ``pool.fileno()``, so that closing the
    pool never closes a descriptor under the loop. In these tests it is the only
    descriptor the loop watches besides its own wake-up socket, so False also proves
    that no registration was left behind.
    """
    loop: Any = asyncio.get_running_loop()
    others = set(loop._selector.get_map()) - {loop._ssock.fileno()}
    waiters = aio._existing(pool, loop)
    if waiters is None or waiters.fd is None:
        assert not others, f"the loop still watches {others}"
        return False
    assert others == {waiters.fd} and waiters.fd != pool.fileno()
    return True


class OtherClient:
    """Another client of *pool*'s pipe or fifo, on descriptors of its own.

    It reads and writes token bytes directly, as another process would, so the only
    way a waiter in this process can learn about its tokens is the pool's descriptor.
    (A second TokenPool would not do: joining a pool this process already has open
    returns the same handle.)
    """

    def __init__(self, pool: TokenPool) -> None:
        if isinstance(pool.auth, FifoAuth):
            self.reader = os.open(pool.auth.path, os.O_RDONLY | os.O_NONBLOCK)
            self.writer = os.open(pool.auth.path, os.O_WRONLY | os.O_NONBLOCK)
        else:
            read_fd, write_fd = pool.pass_fds
            self.reader = os.open(f"/proc/self/fd/{read_fd}", os.O_RDONLY | os.O_NONBLOCK)
            self.writer = os.open(f"/proc/self/fd/{write_fd}", os.O_WRONLY | os.O_NONBLOCK)

    def take(self) -> bytes:
        byte = os.read(self.reader, 1)
        assert byte
        return byte

    def give(self, byte: bytes) -> None:
        os.write(self.writer, byte)

    def close(self) -> None:
        os.close(self.reader)
        os.close(self.writer)


@pytest.fixture(params=["pipe", "fifo"])
def style(request: pytest.FixtureRequest) -> Style:
    return request.param  # type: ignore[no-any-return]


def test_implicit_slot_first_then_tokens(style: Style) -> None:
    pool = TokenPool.create(3, style=style)

    async def main() -> list[Token]:
        return [await pool.acquire_async() for _ in range(3)]

    tokens = run(main())
    assert [t.implicit for t in tokens] == [True, False, False]
    for token in tokens:
        aio.release(pool, token)
    assert close_clean(pool) == 2


def test_waiter_is_woken_by_a_token_from_another_client(style: Style) -> None:
    pool = TokenPool.create(2, style=style)
    other = OtherClient(pool)

    async def main() -> None:
        mine = await pool.acquire_async()  # our implicit slot
        theirs = other.take()  # the only token
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        assert not waiter.done()
        assert watching(pool)
        other.give(theirs)  # a byte goes into the pipe: only the fd can tell us
        token = await waiter
        assert not token.implicit
        assert not watching(pool)  # nobody waits: reader removed
        aio.release(pool, token)
        aio.release(pool, mine)

    run(main())
    other.close()
    assert close_clean(pool) == 1


@pytest.mark.parametrize("how", ["aio.release", "pool.release", "token context"])
def test_implicit_slot_coming_back_wakes_a_waiter(how: str) -> None:
    pool = TokenPool.create(1)  # the implicit slot is the only one

    async def main() -> None:
        first = await pool.acquire_async()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        assert not waiter.done()
        if how == "aio.release":
            aio.release(pool, first)
        elif how == "pool.release":
            # On Linux fileno() also reports the implicit slot coming back.
            pool.release(first)
        else:
            with first:
                pass
        second = await waiter
        assert second.implicit
        aio.release(pool, second)

    run(main())
    assert close_clean(pool) == 0


def test_release_from_another_thread_wakes_the_loop() -> None:
    pool = TokenPool.create(1)

    async def main() -> None:
        first = await pool.acquire_async()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        await asyncio.get_running_loop().run_in_executor(None, aio.release, pool, first)
        aio.release(pool, await waiter)

    run(main())
    assert close_clean(pool) == 0


def test_slot_async_releases_on_every_exit() -> None:
    pool = TokenPool.create(2)

    async def main() -> None:
        async with pool.slot_async() as token:
            assert token.implicit and not pool.implicit_free
        assert pool.implicit_free
        with pytest.raises(RuntimeError):
            async with pool.slot_async(), pool.slot_async() as inner:
                assert not inner.implicit and pool.held == 1
                raise RuntimeError("boom")
        assert pool.implicit_free and pool.held == 0

    run(main())
    assert close_clean(pool) == 1


def test_timeout_raises_blocked_and_leaves_nothing_behind() -> None:
    pool = TokenPool.create(1)

    async def main() -> None:
        held = await pool.acquire_async()
        with pytest.raises(Blocked):
            await pool.acquire_async(timeout=0)
        with pytest.raises(Blocked):
            await pool.acquire_async(timeout=0.05)
        with pytest.raises(Blocked):
            async with pool.slot_async(timeout=0.01):
                pass
        await turns()
        assert not watching(pool)
        aio.release(pool, held)
        with pytest.raises(TypeError):
            await pool.acquire_async(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await pool.acquire_async(timeout=-1)

    run(main())
    assert close_clean(pool) == 0


def test_cancelled_waiter_takes_no_token(style: Style) -> None:
    pool = TokenPool.create(2, style=style)

    async def main() -> None:
        a = await pool.acquire_async()
        b = await pool.acquire_async()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await turns()
        assert not watching(pool)
        aio.release(pool, b)  # nobody waits: the token must stay in the pool
        await turns()
        assert pool.available() == 1
        aio.release(pool, a)

    run(main())
    assert close_clean(pool) == 1


def test_token_handed_to_a_waiter_cancelled_before_it_resumes_is_given_back() -> None:
    pool = TokenPool.create(2)
    other = OtherClient(pool)

    async def main() -> None:
        mine = await pool.acquire_async()
        theirs = other.take()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        other.give(theirs)
        # Serve the queue now, then cancel in the same step: the waiter's future has
        # its token but the task has not resumed to take it.
        waiters = aio._existing(pool, asyncio.get_running_loop())
        assert waiters is not None
        waiters.dispatch()
        assert not waiters.queue
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert pool.available() == 1 and pool.held == 0  # given back, not lost
        aio.release(pool, mine)

    run(main())
    other.close()
    assert close_clean(pool) == 1


def test_many_waiters_never_exceed_the_pool_and_lose_nothing(style: Style) -> None:
    slots = 3
    pool = TokenPool.create(slots, style=style)
    running = 0
    peak = 0
    done = 0

    async def job() -> None:
        nonlocal running, peak, done
        async with pool.slot_async():
            running += 1
            peak = max(peak, running)
            await turns(3)
            running -= 1
            done += 1

    async def main() -> None:
        await asyncio.gather(*(job() for _ in range(30)))
        assert not watching(pool)

    run(main())
    assert done == 30
    assert peak == slots
    assert close_clean(pool) == slots - 1


def test_random_cancellations_lose_no_token() -> None:
    slots = 4
    pool = TokenPool.create(slots)
    rng = random.Random(1234)

    async def job() -> None:
        async with pool.slot_async():
            await turns(rng.randrange(3))

    async def main() -> None:
        tasks = [asyncio.ensure_future(job()) for _ in range(200)]
        for _ in range(60):
            await turns(rng.randrange(3))
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert not watching(pool)

    run(main())
    assert pool.implicit_free and pool.held == 0
    assert close_clean(pool) == slots - 1


def test_first_come_first_served() -> None:
    pool = TokenPool.create(1)
    order: list[int] = []

    async def job(n: int) -> None:
        async with pool.slot_async():
            order.append(n)
            await turns(2)

    async def main() -> None:
        first = await pool.acquire_async()
        tasks = []
        for n in range(5):
            tasks.append(asyncio.ensure_future(job(n)))
            await turns(1)  # each waiter queues before the next one
        aio.release(pool, first)
        await asyncio.gather(*tasks)

    run(main())
    assert order == [0, 1, 2, 3, 4]
    assert close_clean(pool) == 0


def test_broken_pool_fails_the_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = TokenPool.create(1)

    async def main() -> None:
        held = await pool.acquire_async()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()

        def broken() -> Token | None:
            raise PoolBroken("end-of-file")

        monkeypatch.setattr(pool, "try_acquire", broken)
        aio.release(pool, held)  # wakes the waiter, whose read now fails
        with pytest.raises(PoolBroken):
            await waiter
        await turns()
        assert not watching(pool)

    run(main())
    monkeypatch.undo()
    assert close_clean(pool) == 0


def test_closed_pool_raises_value_error() -> None:
    pool = TokenPool.create(1)
    pool.close()

    async def main() -> None:
        with pytest.raises(ValueError):
            await pool.acquire_async()

    run(main())


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def close_returning_held(pool: TokenPool) -> int | None:
    """Close *pool*, which holds exactly one token: it is written back with a ResourceWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = pool.close()
    messages = [str(w.message) for w in caught]
    assert [w.category for w in caught] == [ResourceWarning], messages
    assert "holding 1 token(s); returning them" in messages[0]
    return found


@pytest.mark.parametrize("where", ["loop thread", "another thread"])
def test_closing_the_pool_fails_its_waiters(style: Style, where: str) -> None:
    slots = 2
    fds_before = open_fds()
    pool = TokenPool.create(slots, style=style)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held = [await pool.acquire_async() for _ in range(slots)]  # the pool is exhausted
        assert pool.try_acquire() is None
        waiters = [asyncio.ensure_future(pool.acquire_async()) for _ in range(3)]
        await turns()
        assert not any(waiter.done() for waiter in waiters)
        assert watching(pool)
        if where == "loop thread":
            found = close_returning_held(pool)
        else:
            found = await loop.run_in_executor(None, close_returning_held, pool)
        # Every token came back: the one we held (returned by close) and none taken
        # by the waking waiters.
        assert found == slots - 1
        for waiter in waiters:
            # A hang fails here instead of blocking the suite.
            with pytest.raises(ValueError, match="the token pool is closed"):
                await asyncio.wait_for(waiter, 10)
        await turns()
        assert not watching(pool)
        assert held[0].implicit

    run(main())
    assert open_fds() == fds_before  # the reader's duplicate descriptor was closed too


def test_waiters_take_none_of_the_tokens_close_gives_back(monkeypatch: pytest.MonkeyPatch) -> None:
    # close() writes back the tokens this process holds before the pool counts as
    # closed. That write wakes the loop; a waiter must not take such a token, which
    # would be lost with the pool.
    pool = TokenPool.create(2)
    waiter_done = threading.Event()
    real_release = pool.release

    def release_then_let_the_loop_run(token: Token) -> None:
        real_release(token)
        # The token is in the pool again: the waiter finishes now, either by taking
        # it (the bug) or by failing.
        assert waiter_done.wait(10), "the waiter neither took the token nor failed"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        held = [await pool.acquire_async() for _ in range(2)]
        waiter = asyncio.ensure_future(pool.acquire_async())
        waiter.add_done_callback(lambda _: waiter_done.set())
        await turns()
        monkeypatch.setattr(pool, "release", release_then_let_the_loop_run)
        assert await loop.run_in_executor(None, close_returning_held, pool) == 1
        with pytest.raises(ValueError, match="the token pool is closed"):
            await asyncio.wait_for(waiter, 10)
        assert held[0].implicit

    run(main())


@pytest.mark.parametrize("then", ["resumes", "is cancelled"])
def test_token_handed_to_a_waiter_before_the_pool_closes_is_not_lost(then: str) -> None:
    pool = TokenPool.create(2)
    other = OtherClient(pool)

    async def main() -> None:
        implicit = await pool.acquire_async()
        assert implicit.implicit
        theirs = other.take()
        waiter = asyncio.ensure_future(pool.acquire_async())
        await turns()
        other.give(theirs)
        # Serve the queue now, then close in the same step: the waiter's future has
        # the token but the task has not resumed to take it.
        waiters = aio._existing(pool, asyncio.get_running_loop())
        assert waiters is not None
        waiters.dispatch()
        assert not waiter.done() and not waiters.queue
        assert close_returning_held(pool) == 1  # the handed-over token went back
        if then == "resumes":
            with pytest.raises(ValueError, match="the token pool is closed"):
                await asyncio.wait_for(waiter, 10)
        else:
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        await turns()
        assert not watching(pool)

    run(main())
    other.close()


def test_closing_a_pool_from_another_thread_does_not_disturb_the_loop() -> None:
    # The loop must never watch a descriptor the pool closes: its number is free at
    # once, and a new pool (or socket) registered under that number before the loop
    # learns of the closing would never be woken.
    pool_a = TokenPool.create(1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        implicit_a = await pool_a.acquire_async()
        waiter_a = asyncio.ensure_future(pool_a.acquire_async())
        await turns()
        number = pool_a.fileno()
        closer = threading.Thread(target=pool_a.close)
        closer.start()
        closer.join()  # blocks the loop: pool_a's waiters are woken only after this step
        assert implicit_a.implicit
        pool_b = TokenPool.create(2)
        other = OtherClient(pool_b)
        implicit_b = pool_b.try_acquire()
        assert implicit_b is not None and implicit_b.implicit
        theirs = other.take()  # pool_b is exhausted
        # pool_b's fileno() (made on first use) gets the number pool_a's had: every
        # free number below it is taken for the moment.
        fillers = []
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            if fd >= number:
                os.close(fd)
                break
            fillers.append(fd)
        assert pool_b.fileno() == number, "expected the lowest free descriptor to be reused"
        for fd in fillers:
            os.close(fd)
        loop.call_soon(other.give, theirs)  # runs after pool_a's waiters fail
        # Awaited directly (not in a task of its own, as wait_for would make it on
        # 3.11): the wait is registered in this step, before the loop handles pool_a's
        # closing. A hang fails through run()'s bound.
        token = await pool_b.acquire_async()
        assert not token.implicit
        with pytest.raises(ValueError, match="the token pool is closed"):
            await asyncio.wait_for(waiter_a, 10)
        pool_b.release(token)
        other.close()
        assert close_clean(pool_b) == 1

    run(main())


def test_two_event_loops_in_two_threads_share_one_pool() -> None:
    pool = TokenPool.create(2)
    results: list[int] = []

    def worker() -> None:
        async def main() -> None:
            for _ in range(20):
                async with pool.slot_async():
                    await turns(1)
            results.append(1)

        asyncio.run(main())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == [1, 1, 1]
    assert close_clean(pool) == 1
