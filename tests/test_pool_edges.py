"""Pools that are not what they seem (issue 11, items 11, 12 and 13).

* Item 11: only a fifo is a pool. A ``fifo:`` path naming a device, a regular file, a
  directory or a socket is refused before anything opens it, and a path swapped for
  something else between that check and the open is refused before anything reads or
  writes it.
* Item 12: a pipe advertised in the environment must have been inherited across exec, so
  its descriptors cannot be close-on-exec: this process's own pipe that happens to get
  the numbers make 4.3 left in ``MAKEFLAGS`` is never joined. Paths that re-join a pool
  this process already holds are unaffected.
* Item 13: which variable's pool is joined when ``MAKEFLAGS``, ``CARGO_MAKEFLAGS`` and
  ``MFLAGS`` disagree, and that an unusable one never hides a usable one.

The real make/cargo chains are in integration/test_pool_choice.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from makejobs import Jobserver, JobserverUnavailable, TokenPool, _posix

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

LINUX = sys.platform.startswith("linux")


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd" if LINUX else "/dev/fd")}


def pending(fd: int) -> int:
    """Bytes waiting in the pipe *fd*, without reading them."""
    size = _posix.available_tokens(fd)
    assert size is not None
    return size


@pytest.fixture
def opened_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every path ``os.open`` is asked to open during the test, in order."""
    seen: list[str] = []
    real = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        seen.append(os.fspath(path))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", spy)
    return seen


# -- item 11: only a fifo is a pool ------------------------------------------------------------

DEVICES = [
    d
    for d in ("/dev/random", "/dev/urandom", "/dev/zero", "/dev/null", "/dev/full", "/dev/kmsg")
    if os.path.exists(d)
]


@pytest.mark.parametrize("device", DEVICES)
def test_fifo_path_naming_a_device_is_refused_unopened(
    device: str, opened_paths: list[str]
) -> None:
    with pytest.raises(JobserverUnavailable, match=r"character device.*not a fifo") as info:
        TokenPool.from_makeflags(f" -j2 --jobserver-auth=fifo:{device}", variable="MAKEFLAGS")
    assert device in str(info.value) and info.value.variable == "MAKEFLAGS"
    assert device not in opened_paths  # not even opened: opening a device can do things


def _not_a_fifo(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A path of *kind* that is not a fifo, and the words the refusal must use."""
    path = tmp_path / ("GMfifo-" + kind.replace(" ", "-"))
    if kind == "regular file":
        path.write_bytes(b"root:x:0:0\n")
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.close()  # the socket file stays
    elif kind == "link to a device":
        path.symlink_to("/dev/zero")
        return path, "character device"
    return path, kind


@pytest.mark.parametrize("kind", ["regular file", "directory", "socket", "link to a device"])
def test_fifo_path_naming_anything_else_is_refused_unopened(
    kind: str, tmp_path: Path, opened_paths: list[str]
) -> None:
    path, words = _not_a_fifo(kind, tmp_path)
    with pytest.raises(JobserverUnavailable, match=f"{words}.*, not a fifo"):
        TokenPool.from_makeflags(f" -j2 --jobserver-auth=fifo:{path}")
    assert str(path) not in opened_paths
    if kind == "regular file":
        assert path.read_bytes() == b"root:x:0:0\n"


def _decoy(kind: str, tmp_path: Path) -> tuple[Path, Callable[[], None]]:
    """Something to swap in for the fifo, and a check that nothing was written to it."""
    decoy = tmp_path / ("decoy-" + kind.replace(" ", "-"))
    if kind == "regular file":
        decoy.write_bytes(b"secret")
        return decoy, lambda: None
    if kind == "device":
        decoy.symlink_to("/dev/zero")
        return decoy, lambda: None
    os.mkfifo(decoy, 0o600)  # another live fifo: tokens would be read from one, written to another
    holder = os.open(decoy, os.O_RDWR | os.O_NONBLOCK)

    def untouched() -> None:
        try:
            assert pending(holder) == 0
        finally:
            os.close(holder)

    return decoy, untouched


@pytest.mark.parametrize("kind", ["regular file", "device", "fifo"])
@pytest.mark.parametrize("swap_at", [1, 2], ids=["writer", "reader"])
def test_fifo_swapped_between_the_check_and_the_open_is_refused(
    kind: str, swap_at: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "GMfifo1"
    os.mkfifo(path, 0o600)
    holder = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # make's end: the fifo is live
    os.write(holder, b"++")
    decoy, check_decoy = _decoy(kind, tmp_path)
    real = os.open
    calls = 0

    def swapping_open(p: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        nonlocal calls
        if os.fspath(p) == str(path):
            calls += 1
            if calls == swap_at:
                os.replace(decoy, path)  # after the type check, before this open
        return real(p, flags, mode, dir_fd=dir_fd)

    before = open_fds()
    monkeypatch.setattr(os, "open", swapping_open)
    try:
        with pytest.raises(JobserverUnavailable, match="changed while it was being opened"):
            TokenPool.from_makeflags(f" -j2 --jobserver-auth=fifo:{path}")
    finally:
        monkeypatch.undo()
    try:
        assert calls == swap_at  # refused at the open that met the decoy
        assert open_fds() == before  # nothing left open
        assert pending(holder) == 2  # the real pool lost no token
        check_decoy()
        if kind == "regular file":
            assert path.read_bytes() == b"secret"
    finally:
        os.close(holder)


def test_a_live_fifo_still_joins_and_keeps_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "GMfifo2"
    os.mkfifo(path, 0o600)
    holder = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(holder, b"xy")
        pool = TokenPool.from_makeflags(f" -j3 --jobserver-auth=fifo:{path}")
        with pool, pool.acquire(0), pool.acquire(0) as token:
            assert token.byte in (b"x", b"y")
        assert pending(holder) == 2
    finally:
        os.close(holder)


# -- item 12: a pipe advertised in the environment was inherited ---------------------------


def test_own_pipe_under_advertised_numbers_is_never_joined() -> None:
    r, w = os.pipe()  # close-on-exec, as every descriptor Python opens (PEP 446)
    try:
        os.write(w, b"data")
        with pytest.raises(JobserverUnavailable, match="close-on-exec") as info:
            TokenPool.from_makeflags(f" -j4 --jobserver-auth={r},{w}", variable="MAKEFLAGS")
        message = str(info.value)
        assert f"the read fd {r} is close-on-exec" in message
        assert "lacks '+'" in message and "os.set_inheritable(fd, True)" in message
        assert pending(r) == 4  # nothing was taken as a token
        assert os.get_inheritable(r) is False and os.get_inheritable(w) is False
        # Marked inheritable on purpose, the same pipe is a pool.
        os.set_inheritable(r, True)
        os.set_inheritable(w, True)
        pool = TokenPool.from_makeflags(f" -j4 --jobserver-auth={r},{w}")
        with pool, pool.acquire(0), pool.acquire(0) as token:
            assert token.byte == b"d"
    finally:
        os.close(r)
        os.close(w)


# What make 4.3 does to a recipe without '+': the numbers stay in MAKEFLAGS, the fds are
# closed, so the program's first pipe gets them.
FIRST_PIPE = """
import os, sys
from makejobs import JobserverUnavailable, TokenPool
r, w = os.pipe()
assert (r, w) == (3, 4), (r, w)
os.write(w, b"12345")
try:
    TokenPool.from_environ()
except JobserverUnavailable as e:
    print("refused:", e)
else:
    print("joined its own pipe")
print("left:", len(os.read(r, 100)))
"""


def test_first_pipe_of_a_program_under_stale_makeflags_is_not_a_pool() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("CARGO_MAKEFLAGS", "MFLAGS")}
    env["MAKEFLAGS"] = " -j4 --jobserver-auth=3,4"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [PY, "-c", FIRST_PIPE],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "refused: MAKEFLAGS: cannot use the jobserver pipe 3,4" in proc.stdout, proc.stdout
    assert "close-on-exec" in proc.stdout and "left: 5" in proc.stdout, proc.stdout


def test_a_pool_this_process_holds_is_rejoined_through_its_own_fds() -> None:
    # The pool's fds are close-on-exec here; joining what it exports finds the same handle.
    with TokenPool.create(3) as pool:
        assert not os.get_inheritable(pool.auth.read_fd)  # type: ignore[union-attr]
        joined = TokenPool.from_environ(pool.environ({}))
        assert joined is pool
        joined.close()
        assert not pool.closed


def report_join() -> tuple[str | None, int | None]:
    """In a job: join the pool the job's environment advertises."""
    pool = TokenPool.from_environ()
    assert pool is not None
    try:
        return pool.variable, pool.slots
    finally:
        pool.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_jobs_join_the_pool_they_run_on(method: str) -> None:
    # spawn: the pool is rebuilt from a pickle on fds the child set close-on-exec itself.
    with Jobserver(method, slots=3) as js:
        variable, slots = js.submit(report_join).result(60)
    assert slots == 3 and variable is None  # the job's own handle (a fresh join would say)
