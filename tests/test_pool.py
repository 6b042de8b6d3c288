"""TokenPool against real pipes, fifos, forks and subprocesses (no mocks)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import pickle
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forking import held_by_another_thread, run_in_child
from inherited import inherited_pipe
from makejobs import _posix
from makejobs.errors import (
    Blocked,
    JobserverUnavailable,
    PoolBroken,
    TokenCountWarning,
    Unavailable,
)
from makejobs.pool import Token, TokenPool
from makejobs.protocol import FifoAuth, PipeAuth, parse_makeflags


def drain_bytes(fd: int) -> bytes:
    """Everything currently in a pipe, without blocking and without changing its flags."""
    private = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
    try:
        out = b""
        while True:
            try:
                chunk = os.read(private, 4096)
            except BlockingIOError:
                return out
            if not chunk:
                return out
            out += chunk
    finally:
        os.close(private)


@pytest.fixture
def make_pipe() -> Iterator[tuple[int, int, str]]:
    """An inheritable pipe pool as make 4.3 hands it to a '+' recipe: 3 distinct tokens."""
    r, w = inherited_pipe()
    os.write(w, b"abc")
    yield r, w, f"s -j4 --jobserver-auth={r},{w}"
    _posix.close_quietly(r, w)


def fd_flags(fd: int) -> tuple[int, int]:
    return fcntl.fcntl(fd, fcntl.F_GETFL), fcntl.fcntl(fd, fcntl.F_GETFD)


# -- creating -----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_create_has_slots_minus_one_tokens_and_implicit_first(style: str) -> None:
    with TokenPool.create(3, style=style) as pool:  # type: ignore[arg-type]
        first = pool.try_acquire()
        assert first is not None and first.implicit
        tokens = [pool.try_acquire(), pool.try_acquire()]
        assert all(t is not None and t.byte == b"+" for t in tokens)
        assert pool.try_acquire() is None
        assert pool.held == 2
        for t in tokens:
            assert t is not None
            pool.release(t)
        pool.release(first)
        assert pool.implicit_free and pool.held == 0
        assert pool.available() == 2
    assert pool.closed


def test_create_slots_one_has_only_the_implicit_slot() -> None:
    with TokenPool.create(1) as pool:
        token = pool.acquire(timeout=0)
        assert token.implicit
        with pytest.raises(Blocked):
            pool.acquire(timeout=0)
        pool.release(token)
        assert pool.close() == 0


@pytest.mark.parametrize("bad", [0, -3])
def test_create_rejects_too_few_slots(bad: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TokenPool.create(bad)


@pytest.mark.parametrize("bad", [True, 2.0, "3"])
def test_create_rejects_non_int_slots(bad: object) -> None:
    with pytest.raises(TypeError):
        TokenPool.create(bad)  # type: ignore[arg-type]


def test_create_rejects_unknown_style() -> None:
    with pytest.raises(ValueError, match="style"):
        TokenPool.create(2, style="sem")  # type: ignore[arg-type]


def test_create_past_default_pipe_capacity_grows_the_pipe() -> None:
    with TokenPool.create(70_000) as pool:
        assert pool.available() == 69_999
        assert pool.close() == 69_999


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_create_beyond_any_pipe_capacity_is_a_clear_error_not_a_hang(style: str) -> None:
    before = set(os.listdir("/proc/self/fd"))
    start = time.monotonic()
    with pytest.raises(ValueError, match="use fewer slots"):
        TokenPool.create(_posix.PIPE_CAPACITY_MAX * 4, style=style)  # type: ignore[arg-type]
    assert time.monotonic() - start < 10
    assert set(os.listdir("/proc/self/fd")) == before


def test_created_fifo_is_private_and_removed_on_close(tmp_path: Path) -> None:
    pool = TokenPool.create(2, style="fifo", dir=str(tmp_path))
    assert isinstance(pool.auth, FifoAuth)
    path = Path(pool.auth.path)
    assert stat.S_ISFIFO(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert pool.pass_fds == ()
    pool.close()
    assert not path.exists() and not path.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_fifo_dir_avoids_blanks_that_cargo_and_ninja_cannot_parse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spaced = tmp_path / "with space"
    spaced.mkdir()
    monkeypatch.setenv("TMPDIR", str(spaced))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    with TokenPool.create(2, style="fifo") as pool:
        assert isinstance(pool.auth, FifoAuth)
        assert " " not in pool.auth.path


def test_close_counts_and_warns_about_missing_and_extra_tokens() -> None:
    pool = TokenPool.create(4)
    assert isinstance(pool.auth, PipeAuth)
    os.read(pool._core.reader, 1)  # a client that never gives its token back
    with pytest.warns(TokenCountWarning, match="1 missing"):
        assert pool.close() == 2
    assert pool.close() == 2  # idempotent, no second warning

    pool = TokenPool.create(2)
    os.write(pool._core.writer, b"+")  # a client that wrote back a token it never read
    with pytest.warns(TokenCountWarning, match="1 extra"):
        assert pool.close() == 2


def test_close_returns_tokens_still_held() -> None:
    pool = TokenPool.create(3)
    implicit = pool.acquire()
    first = pool.acquire()
    held = pool.acquire()
    assert implicit.implicit and not first.implicit and not held.implicit
    with pytest.warns(ResourceWarning, match="holding 2 token"), warnings.catch_warnings():
        warnings.simplefilter("error", TokenCountWarning)
        assert pool.close() == 2


def test_closed_pool_refuses_use() -> None:
    pool = TokenPool.create(2)
    token = pool.acquire()
    pool.release(token)
    pool.close()
    with pytest.raises(ValueError, match="closed"):
        pool.try_acquire()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(pool)


def test_release_checks_ownership_and_double_release() -> None:
    with TokenPool.create(2) as a, TokenPool.create(2) as b:
        token = a.acquire()
        with pytest.raises(ValueError, match="does not belong"):
            b.release(token)
        a.release(token)
        with pytest.raises(ValueError, match="already released"):
            a.release(token)


def test_tokens_cannot_be_pickled() -> None:
    with (
        TokenPool.create(2) as pool,
        pool.slot() as token,
        pytest.raises(TypeError, match="cannot be pickled"),
    ):
        pickle.dumps(token)


def test_own_fds_are_close_on_exec() -> None:
    for style in ("pipe", "fifo"):
        with TokenPool.create(2, style=style) as pool:  # type: ignore[arg-type]
            for fd in (pool._core.reader, pool._core.writer, *pool.pass_fds):
                assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


# -- joining ------------------------------------------------------------------------


def test_from_environ_none_without_a_pool() -> None:
    assert TokenPool.from_environ({}) is None
    assert TokenPool.from_environ({"MAKEFLAGS": "s -j4"}) is None
    assert TokenPool.from_environ({"MAKEFLAGS": " -j", "MFLAGS": "-s"}) is None


def test_from_environ_order_and_fall_through(make_pipe: tuple[int, int, str]) -> None:
    _r, _w, flags = make_pipe
    env = {"CARGO_MAKEFLAGS": "-j4", "MAKEFLAGS": flags, "MFLAGS": "-s --jobserver-auth=-2,-2"}
    pool = TokenPool.from_environ(env)
    assert pool is not None and pool.variable == "MAKEFLAGS"
    pool.close()
    # An unusable CARGO_MAKEFLAGS never hides a usable MAKEFLAGS (issue 11, item 13).
    env["CARGO_MAKEFLAGS"] = "-j --jobserver-auth=-2,-2"
    pool = TokenPool.from_environ(env)
    assert pool is not None and pool.variable == "MAKEFLAGS"
    pool.close()


def test_join_preserves_token_bytes_and_implicit_slot(make_pipe: tuple[int, int, str]) -> None:
    r, _w, flags = make_pipe
    pool = TokenPool.from_environ({"MAKEFLAGS": flags})
    assert pool is not None and not pool.owner and pool.slots == 4
    implicit = pool.acquire(timeout=0)
    assert implicit.implicit
    tokens = [pool.acquire(timeout=0) for _ in range(3)]
    assert sorted(t.byte or b"" for t in tokens) == [b"a", b"b", b"c"]
    with pytest.raises(Blocked):
        pool.acquire(timeout=0.05)
    assert drain_bytes(r) == b""
    for t in tokens:
        pool.release(t)
    pool.release(implicit)  # never written back
    assert pool.close() is None
    assert Counter(drain_bytes(r)) == Counter(b"abc")


@pytest.mark.parametrize("blocking", [True, False])
def test_join_never_changes_the_shared_descriptions_flags(
    make_pipe: tuple[int, int, str], blocking: bool
) -> None:
    r, w, flags = make_pipe
    os.set_blocking(r, blocking)
    before = fd_flags(r), fd_flags(w)
    pool = TokenPool.from_environ({"MAKEFLAGS": flags})
    assert pool is not None
    for _ in range(3):
        with pool.slot(timeout=1), pool.slot(timeout=1):
            pass
    held = [pool.acquire(timeout=1) for _ in range(4)]
    with pytest.raises(Blocked):
        pool.acquire(timeout=0.02)
    for token in held:
        pool.release(token)
    pool.close()
    assert (fd_flags(r), fd_flags(w)) == before
    assert os.get_blocking(r) is blocking


def test_join_fifo_and_stale_fifo_does_not_hang(tmp_path: Path) -> None:
    with TokenPool.create(3, style="fifo") as server:
        assert isinstance(server.auth, FifoAuth)
        pool = TokenPool.from_environ({"MAKEFLAGS": server.makeflags()})
        assert pool is not None and pool.style == "fifo"
        with pool.slot() as a, pool.slot() as b, pool.slot() as c:
            assert a.implicit and b.byte == c.byte == b"+"
        pool.close()
        assert server.close() == 2

    stale = tmp_path / "GMfifo1234"
    os.mkfifo(stale)
    start = time.monotonic()
    with pytest.raises(JobserverUnavailable, match="stale"):
        TokenPool.from_environ({"MAKEFLAGS": f" -j4 --jobserver-auth=fifo:{stale}"})
    assert time.monotonic() - start < 5


def test_join_fifo_path_with_blanks(tmp_path: Path) -> None:
    spaced = tmp_path / "a b\\c"
    spaced.mkdir()
    with TokenPool.create(2, style="fifo", dir=str(spaced)) as server:
        flags = server.makeflags()
        assert "a\\ b\\\\c" in flags
        pool = TokenPool.from_environ({"MAKEFLAGS": flags})
        assert pool is not None
        with pool.slot(), pool.slot() as token:
            assert token.byte == b"+"
        pool.close()


def _unusable(flags: str, match: str) -> None:
    with pytest.raises(JobserverUnavailable, match=match) as info:
        TokenPool.from_environ({"MAKEFLAGS": flags})
    assert info.value.variable == "MAKEFLAGS"


def test_unusable_closed_fds_mention_the_plus_prefix() -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    _unusable(f"s -j4 --jobserver-auth={r},{w}", r"not open.*lacks '\+'")


def test_unusable_disabled_by_make() -> None:
    _unusable("s -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2", r"disabled.*'\+'")


def test_unusable_windows_semaphore_and_garbage() -> None:
    _unusable("-j4 --jobserver-auth=gmake_semaphore_1234", "unsupported")
    _unusable("-j4 --jobserver-auth=banana", "unsupported")


def test_unusable_regular_file_is_never_read(tmp_path: Path) -> None:
    f = tmp_path / "passwd"
    f.write_bytes(b"root:x:0:0\n")
    fd = os.open(f, os.O_RDWR)
    try:
        _unusable(f"-j4 --jobserver-auth={fd},{fd}", "regular file, not a pipe")
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0  # nothing was read
    finally:
        os.close(fd)


def test_unusable_tty_socket_devnull() -> None:
    master, slave = os.openpty()
    a, b = socket.socketpair()
    null = os.open(os.devnull, os.O_RDWR)
    try:
        _unusable(f"-j2 --jobserver-auth={slave},{slave}", "character device")
        _unusable(f"-j2 --jobserver-auth={a.fileno()},{b.fileno()}", "socket")
        _unusable(f"-j2 --jobserver-auth={null},{null}", "character device")
    finally:
        os.close(master)
        os.close(slave)
        a.close()
        b.close()
        os.close(null)


def test_unusable_swapped_ends_and_two_different_pipes(make_pipe: tuple[int, int, str]) -> None:
    r, w, _ = make_pipe
    _unusable(f"-j4 --jobserver-auth={w},{r}", "swapped")
    r2, w2 = inherited_pipe()
    try:
        _unusable(f"-j4 --jobserver-auth={r},{w2}", "two different pipes")
    finally:
        os.close(r2)
        os.close(w2)


def test_unusable_missing_fifo_and_directory(tmp_path: Path) -> None:
    _unusable(f"-j4 --jobserver-auth=fifo:{tmp_path / 'gone'}", "does not exist")
    _unusable(f"-j4 --jobserver-auth=fifo:{tmp_path}", "directory, not a fifo")
    regular = tmp_path / "plain"
    regular.write_text("x")
    _unusable(f"-j4 --jobserver-auth=fifo:{regular}", "regular file, not a fifo")


def test_unreadable_fifo_is_reported(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes; use a fifo inside a directory we cannot search.
        pytest.skip("permission checks do not apply to root")
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o000)
    _unusable(f"-j4 --jobserver-auth=fifo:{path}", "Permission denied")


def test_eof_is_never_a_token() -> None:
    r, w = os.pipe()
    escrow_r, escrow_w = os.pipe()
    os.close(w)
    try:
        with pytest.raises(EOFError):
            _posix.move(r, escrow_w, 1)
        assert _posix.available_tokens(escrow_r) == 0
        assert "end-of-file" in str(_posix.end_of_file(r))
    finally:
        _posix.close_quietly(r, escrow_r, escrow_w)


def test_write_to_a_pool_without_reader_is_broken_not_fatal() -> None:
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(PoolBroken, match="no reader"):
            _posix.write_token(w, b"+")
    finally:
        os.close(w)


# -- waiting ------------------------------------------------------------------------


def test_acquire_waits_for_a_release_from_another_thread() -> None:
    with TokenPool.create(2) as pool:
        a, b = pool.acquire(), pool.acquire()
        got: list[float] = []
        released_at: list[float] = []

        def waiter() -> None:
            token = pool.acquire(timeout=10)
            got.append(time.monotonic())
            pool.release(token)

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.05)  # let the waiter block; correctness does not depend on it
        released_at.append(time.monotonic())
        pool.release(b)
        thread.join(10)
        assert got and got[0] >= released_at[0]
        pool.release(a)


def test_timeout_is_a_deadline_and_never_loses_tokens() -> None:
    with TokenPool.create(2) as pool:
        a, b = pool.acquire(), pool.acquire()
        start = time.monotonic()
        with pytest.raises(Blocked):
            pool.acquire(timeout=0.2)
        elapsed = time.monotonic() - start
        assert 0.2 <= elapsed < 2
        pool.release(a)
        pool.release(b)
        assert pool.close() == 1


def test_eintr_storm_during_acquire() -> None:
    """A signal every millisecond must neither raise nor end the wait early."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals need the main thread")
    hits = [0]

    def handler(signum: int, frame: object) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
    try:
        with TokenPool.create(2) as pool:
            a, b = pool.acquire(), pool.acquire()
            timer = threading.Timer(0.3, pool.release, (b,))
            timer.start()
            token = pool.acquire(timeout=10)
            assert token.byte == b"+"
            start = time.monotonic()
            with pytest.raises(Blocked):
                pool.acquire(timeout=0.2)
            assert time.monotonic() - start >= 0.2
            pool.release(token)
            pool.release(a)
            timer.join()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits[0] > 50


def test_sniped_tokens_between_poll_and_read_are_retried() -> None:
    """Many threads wake on one token; the losers' EAGAIN must mean "wait again"."""
    errors: list[BaseException] = []
    peak = [0]
    inside = [0]
    lock = threading.Lock()
    with TokenPool.create(3) as pool:
        implicit = pool.acquire()

        def worker() -> None:
            try:
                for _ in range(200):
                    with pool.slot(timeout=30):
                        with lock:
                            inside[0] += 1
                            peak[0] = max(peak[0], inside[0])
                        with lock:
                            inside[0] -= 1
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        pool.release(implicit)
        assert errors == []
        assert peak[0] <= 2
        assert pool.close() == 2


# -- children -----------------------------------------------------------------------


def test_environ_keeps_other_flags_and_overrides(make_pipe: tuple[int, int, str]) -> None:
    with TokenPool.create(3) as pool:
        assert isinstance(pool.auth, PipeAuth)
        env = pool.environ({"MAKEFLAGS": "ks -j8 --jobserver-auth=fifo:/x -- V=1", "PATH": "/bin"})
        assert env["PATH"] == "/bin"
        mf = parse_makeflags(env["MAKEFLAGS"])
        assert mf.auth == pool.auth and mf.jobs == 3 and mf.letters == "ks"
        assert env["MAKEFLAGS"].endswith("-- V=1")
        assert parse_makeflags(env["CARGO_MAKEFLAGS"]).auth == pool.auth
        fresh = pool.environ({})
        assert parse_makeflags(fresh["MAKEFLAGS"]).auth == pool.auth


CHILD = """
import os, sys
from makejobs.pool import TokenPool
pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=5) for _ in range(int(sys.argv[1]))]
print(sum(t.implicit for t in tokens), b"".join(t.byte or b"" for t in tokens).decode())
for t in tokens:
    pool.release(t)
pool.close()
"""


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_child_process_joins_with_environ_and_pass_fds(style: str) -> None:
    with TokenPool.create(4, style=style) as pool:  # type: ignore[arg-type]
        out = subprocess.run(
            [sys.executable, "-c", CHILD, "4"],
            env=pool.environ(),
            pass_fds=pool.pass_fds,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stdout.split() == ["1", "+++"]
        assert pool.close() == 3


def test_pipe_fds_reach_only_the_children_we_hand_them_to() -> None:
    with TokenPool.create(2) as pool:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, "1"],
            env=pool.environ(),
            close_fds=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode != 0
        assert "not open in this process" in out.stderr


def test_forked_child_has_its_own_implicit_slot() -> None:
    with TokenPool.create(3) as pool:
        parent_token = pool.acquire()  # the parent's implicit slot, lent to the child
        assert parent_token.implicit
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 1
            try:
                first = pool.acquire(timeout=0)
                second = pool.acquire(timeout=5)
                if first.implicit and second.byte == b"+" and not pool.owner:
                    pool.release(second)
                    pool.release(first)
                    pool.close()
                    code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not pool.implicit_free and pool.owner
        pool.release(parent_token)
        assert pool.close() == 2


def _spawned_child(pool: TokenPool, queue: multiprocessing.Queue[object]) -> None:
    tokens = [pool.acquire(timeout=5) for _ in range(3)]
    queue.put([t.byte for t in tokens])
    for t in tokens:
        pool.release(t)
    pool.close()


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_pickled_into_spawn_and_forkserver_children(method: str, style: str) -> None:
    ctx = multiprocessing.get_context(method)
    with TokenPool.create(3, style=style) as pool:  # type: ignore[arg-type]
        queue: multiprocessing.Queue[object] = ctx.Queue()
        proc = ctx.Process(target=_spawned_child, args=(pool, queue))
        proc.start()
        assert queue.get(timeout=60) == [None, b"+", b"+"]
        proc.join(60)
        assert proc.exitcode == 0
        assert pool.close() == 2


def test_token_is_a_context_manager_that_releases() -> None:
    with TokenPool.create(2) as pool:
        with pool.acquire() as implicit, pool.acquire(timeout=0) as token:
            assert implicit.implicit and token.byte == b"+"
            assert pool.try_acquire() is None
        assert pool.implicit_free and pool.held == 0
        with pytest.raises(RuntimeError), pool.slot() as token:
            raise RuntimeError("released anyway")
        assert pool.implicit_free
        assert pool.close() == 1


def test_a_waiter_sees_the_implicit_slot_come_back() -> None:
    """The implicit slot never passes through the pipe; waiters must still wake for it."""
    with TokenPool.create(1) as pool:
        first = pool.acquire()
        got: list[object] = []
        waiter = threading.Thread(target=lambda: got.append(pool.acquire(timeout=30)))
        waiter.start()
        pool.release(first)  # whether the waiter is already polling or not, it must get it
        waiter.join(30)
        assert not waiter.is_alive()
        assert len(got) == 1 and getattr(got[0], "implicit", False)


def test_fileno_is_readable_when_the_implicit_slot_is_free() -> None:
    import select

    with TokenPool.create(1) as pool:
        token = pool.acquire()
        assert select.select([pool.fileno()], [], [], 0)[0] == []
        pool.release(token)
        assert select.select([pool.fileno()], [], [], 0)[0] == [pool.fileno()]
        again = pool.try_acquire()
        assert again is not None and again.implicit
        assert select.select([pool.fileno()], [], [], 0)[0] == []  # no stale wake-up
        pool.release(again)


def test_fileno_first_asked_for_while_the_implicit_slot_is_free_is_readable() -> None:
    """The wake-up pipe is made on first use, already readable if the slot is free then."""
    import select

    with TokenPool.create(1) as pool:
        assert select.select([pool.fileno()], [], [], 0)[0] == [pool.fileno()]
        token = pool.try_acquire()
        assert token is not None and token.implicit
        assert select.select([pool.fileno()], [], [], 0)[0] == []
        pool.release(token)
        assert select.select([pool.fileno()], [], [], 0)[0] == [pool.fileno()]


def _fd_identities() -> dict[int, tuple[int, int]]:
    """(device, inode) of every fd of this process, to tell whether any were made anew."""
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.fstat(int(name))
        except OSError:
            continue  # the listing's own fd, closed by now
        out[int(name)] = (st.st_dev, st.st_ino)
    return out


def test_a_fork_makes_no_descriptors_for_the_pools_it_inherits() -> None:
    """Live pools cost a fork nothing: no wake-up pipe or epoll set is made until used."""
    pools = [TokenPool.create(2) for _ in range(3)]
    try:
        for pool in pools:
            pool.fileno()  # the parent's wake-up pipes and epoll sets exist
            token = pool.acquire(timeout=0)
            pool.release(token)
        before = _fd_identities()

        def child() -> bool:
            # Nothing here touches a pool before looking: the descriptors are the
            # parent's, the same files (an eager reset would have replaced them).
            return _fd_identities() == before

        assert run_in_child(child) == 0
    finally:
        for pool in pools:
            pool.close()


def test_a_pool_first_used_in_a_forked_child() -> None:
    with TokenPool.create(3) as pool:
        implicit = pool.acquire()
        token = pool.acquire(timeout=0)
        parent_fileno = pool.fileno()

        def child() -> bool:
            import select

            # Untouched so far: the parent's state must not show through.
            if pool.owner or pool.held != 0 or not pool.implicit_free:
                return False
            mine = pool.try_acquire()
            other = pool.acquire(timeout=5)  # the one token the parent left
            if mine is None or not mine.implicit or other.byte != b"+":
                return False
            if pool.try_acquire() is not None:
                return False
            # Its own wake-up pipe and epoll set, which see its own slot come back.
            pool.release(mine)
            if select.select([pool.fileno()], [], [], 0)[0] != [pool.fileno()]:
                return False
            pool.release(other)
            return pool.close() is None  # not the owner: no draining, no count

        assert run_in_child(child) == 0
        # The parent's state is as it was.
        assert pool.owner and pool.held == 1 and not pool.implicit_free
        assert pool.fileno() == parent_fileno
        pool.release(token)
        pool.release(implicit)
        assert pool.available() == 2
    assert pool.closed


def test_threads_of_a_forked_child_racing_to_first_use_share_one_implicit_slot() -> None:
    with TokenPool.create(8) as pool:
        held = pool.acquire()  # the parent's implicit slot, lent to the child

        def child() -> bool:
            barrier = threading.Barrier(6)
            got: list[object] = []

            def take() -> None:
                barrier.wait(30)
                got.append(pool.try_acquire())

            threads = [threading.Thread(target=take) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            tokens = [t for t in got if isinstance(t, Token)]
            implicit = [t for t in tokens if t.implicit]
            ok = len(tokens) == 6 and len(implicit) == 1 and pool.held == 5
            for token in tokens:
                pool.release(token)
            return ok

        assert run_in_child(child) == 0
        pool.release(held)
        assert pool.available() == 7


def test_a_forked_child_is_not_blocked_by_locks_another_thread_held_at_the_fork() -> None:
    with TokenPool.create(2) as pool:
        pool.fileno()
        with held_by_another_thread(pool._core.lock):

            def child() -> bool:
                token = pool.acquire(timeout=5)  # the implicit slot, though held above
                if not token.implicit:
                    return False
                pool.fileno()
                pool.release(token)
                return pool.close() is None

            assert run_in_child(child) == 0
        assert pool.implicit_free and pool.held == 0


def test_joining_a_pool_this_process_holds_shares_its_implicit_slot(
    make_pipe: tuple[int, int, str],
) -> None:
    """One process, one implicit slot, however many times it joins; each join
    is a handle of its own, and closing it (even twice) closes only that handle."""
    _r, _w, flags = make_pipe
    first = TokenPool.from_environ({"MAKEFLAGS": flags})
    second = TokenPool.from_environ({"MAKEFLAGS": flags})
    assert first is not None and second is not None and first is not second
    # Also through what it exports: a child forked from here sees these numbers.
    third = TokenPool.from_environ(first.environ({}))
    assert third is not None
    implicit = first.acquire(timeout=0)
    token = second.acquire(timeout=0)
    assert implicit.implicit and not token.implicit and token.byte is not None
    assert not third.implicit_free  # the one implicit slot is out, whichever handle looks
    first.release(implicit)
    assert third.implicit_free
    assert first.close() is None and first.closed and not second.closed
    assert first.close() is None and not second.closed  # idempotent per handle
    with pytest.raises(ValueError, match="closed"):
        first.try_acquire()
    with pytest.warns(ResourceWarning, match="holding 1 token"):
        second.close()  # returns what was taken through it, and only that
    assert not third.closed and third.available() == 3
    third.close()
    fresh = TokenPool.from_environ({"MAKEFLAGS": flags})
    assert fresh is not None and not fresh.closed
    fresh.close()


def _kind_of(flags: str) -> Unavailable:
    with pytest.raises(JobserverUnavailable) as info:
        TokenPool.from_makeflags(flags, variable="MAKEFLAGS")
    return info.value.kind


def test_every_unusable_pool_says_which_kind_it_is(tmp_path: Path) -> None:
    """Callers branch on ``kind``, never on the message (issue 16, item 4)."""
    closed_r, closed_w = os.pipe()
    os.close(closed_r)
    os.close(closed_w)
    assert _kind_of("-j4") is Unavailable.NOT_ADVERTISED
    assert _kind_of("-j4 --jobserver-auth=-2,-2") is Unavailable.DISABLED
    assert _kind_of("-j4 --jobserver-auth=gmake_semaphore_1") is Unavailable.UNSUPPORTED
    assert _kind_of(f"-j4 --jobserver-auth={closed_r},{closed_w}") is Unavailable.NOT_OPEN
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    regular = tmp_path / "file"
    regular.write_bytes(b"")
    assert _kind_of(f"-j4 --jobserver-auth=fifo:{tmp_path}/gone") is Unavailable.FIFO_MISSING
    assert _kind_of(f"-j4 --jobserver-auth=fifo:{regular}") is Unavailable.NOT_A_FIFO
    assert _kind_of(f"-j4 --jobserver-auth=fifo:{fifo}") is Unavailable.FIFO_STALE
    own_r, own_w = os.pipe()  # close-on-exec: this process's own, never inherited
    r1, w1 = inherited_pipe()
    r2, w2 = inherited_pipe()
    fd = os.open(regular, os.O_RDWR)
    try:
        assert _kind_of(f"-j4 --jobserver-auth={own_r},{own_w}") is Unavailable.NOT_INHERITED
        os.set_inheritable(fd, True)
        assert _kind_of(f"-j4 --jobserver-auth={fd},{fd}") is Unavailable.NOT_A_PIPE
        assert _kind_of(f"-j4 --jobserver-auth={w1},{r1}") is Unavailable.WRONG_ACCESS
        assert _kind_of(f"-j4 --jobserver-auth={r1},{w2}") is Unavailable.TWO_PIPES
    finally:
        for end in (own_r, own_w, r1, w1, r2, w2, fd):
            os.close(end)
    # The values are the stable strings of --json output.
    assert Unavailable.NOT_OPEN.value == "not-open" and Unavailable("fifo-stale").name == (
        "FIFO_STALE"
    )


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(float("nan"), ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)],
)
def test_bad_timeouts_of_the_pool_are_named_errors(timeout: object, error: type) -> None:
    with TokenPool.create(2) as pool:
        for call in (pool.acquire, pool.slot):
            with pytest.raises(error, match=r"timeout must be"):
                call(timeout)  # type: ignore[operator]
        assert pool.available() == 1 and pool.held == 0


def test_repr_says_role_style_where_slots_and_what_is_free() -> None:
    with TokenPool.create(3) as pool:
        r, w = pool.auth.read_fd, pool.auth.write_fd  # type: ignore[union-attr]
        assert (
            repr(pool) == f"<TokenPool created pipe {r},{w} slots=3 free=2 implicit=free held=0>"
        )
        with pool.slot(), pool.slot():
            assert repr(pool) == (
                f"<TokenPool created pipe {r},{w} slots=3 free=1 implicit=out held=1>"
            )
    assert repr(pool) == f"<TokenPool created pipe {r},{w} slots=3 closed>"
    with TokenPool.create(2, style="fifo") as pool:
        path = pool.auth.path  # type: ignore[union-attr]
        assert repr(pool) == f"<TokenPool created fifo {path} slots=2 free=1 implicit=free held=0>"


def test_fileno_while_another_thread_closes_the_pool_is_a_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # fileno() found the handle open, then another thread closed the pool before the
    # poll fd was looked up: it must say closed, not make an epoll of closed (or by
    # then reused) descriptor numbers (a raw EBADF, seen in a SlotLender's thread).
    pool = TokenPool.create(2)
    real = TokenPool._settled_core

    def settled_then_closed(self: TokenPool) -> Any:
        core = real(self)
        closer = threading.Thread(target=pool.close)
        closer.start()
        closer.join(10)
        assert not closer.is_alive()
        return core

    monkeypatch.setattr(TokenPool, "_settled_core", settled_then_closed)
    with pytest.raises(ValueError, match="the token pool is closed"):
        pool.fileno()
    assert pool.closed
