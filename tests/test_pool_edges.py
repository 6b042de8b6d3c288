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

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inherited import closed_fd_pair, inherited_pipe
from makejobs import Jobserver, JobserverUnavailable, TokenPool, _posix
from makejobs.pool import choose_advertised
from spans import peak_overlap

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
    # The pool's fds are close-on-exec here; joining what it exports finds the same pool.
    with TokenPool.create(3) as pool:
        assert not os.get_inheritable(pool.auth.read_fd)  # type: ignore[union-attr]
        joined = TokenPool.from_environ(pool.environ({}))
        assert joined is not None and joined._core is pool._core
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


# -- item 13: which pool ------------------------------------------------------------------


@pytest.fixture
def two_pools() -> Iterator[tuple[str, str, int, int]]:
    """Two inherited-looking pipe pools: MAKEFLAGS-style text for each, and their read ends.

    The first holds 'm' tokens (make's -j3), the second 'c' tokens (cargo's -j8).
    """
    mr, mw = inherited_pipe(b"mm")
    cr, cw = inherited_pipe(b"ccccccc")
    yield f" -j3 --jobserver-auth={mr},{mw}", f"-j --jobserver-auth={cr},{cw}", mr, cr
    _posix.close_quietly(mr, mw, cr, cw)


def _token_byte(env: dict[str, str]) -> tuple[str | None, bytes | None]:
    """Join *env*'s pool; the variable it came from and the byte of one real token."""
    pool = TokenPool.from_environ(env)
    assert pool is not None
    with pool, pool.acquire(0), pool.acquire(0) as token:
        return pool.variable, token.byte


def test_makeflags_is_preferred_over_cargo_makeflags(two_pools: tuple[str, str, int, int]) -> None:
    make, cargo, _mr, _cr = two_pools
    env = {"MAKEFLAGS": make, "CARGO_MAKEFLAGS": cargo, "MFLAGS": "-" + make.strip()}
    assert _token_byte(env) == ("MAKEFLAGS", b"m")
    choice = choose_advertised(env)
    assert choice.variable == "MAKEFLAGS" and choice.usable and choice.rejected == ()
    assert "make and ninja read it" in choice.reason
    # CARGO_MAKEFLAGS, then MFLAGS, when MAKEFLAGS advertises nothing.
    assert _token_byte({"MAKEFLAGS": "s -j", "CARGO_MAKEFLAGS": cargo}) == (
        "CARGO_MAKEFLAGS",
        b"c",
    )
    assert "MAKEFLAGS advertises no pool" in choose_advertised({"CARGO_MAKEFLAGS": cargo}).reason
    assert _token_byte({"MFLAGS": "-" + make.strip()}) == ("MFLAGS", b"m")


STALE = [
    pytest.param(lambda: "-j8 --jobserver-auth={},{}".format(*closed_fd_pair()), id="closed"),
    pytest.param(lambda: " -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2", id="disabled"),
    pytest.param(lambda: "-j4 --jobserver-auth=fifo:/nonexistent/GMfifo9", id="missing-fifo"),
    pytest.param(lambda: "-j4 --jobserver-auth=gmake_semaphore_1", id="unsupported"),
]


@pytest.mark.parametrize("stale", STALE)
def test_an_unusable_pool_never_hides_a_usable_one(
    two_pools: tuple[str, str, int, int], stale: Callable[[], str]
) -> None:
    make, cargo, _mr, _cr = two_pools
    bad = stale()
    # A stale CARGO_MAKEFLAGS is not even looked at when MAKEFLAGS is usable.
    assert _token_byte({"MAKEFLAGS": make, "CARGO_MAKEFLAGS": bad}) == ("MAKEFLAGS", b"m")
    # An unusable MAKEFLAGS (make 4.3 or 4.4 without '+') falls through to cargo's pool.
    env = {"MAKEFLAGS": bad, "CARGO_MAKEFLAGS": cargo}
    assert _token_byte(env) == ("CARGO_MAKEFLAGS", b"c")
    choice = choose_advertised(env)
    assert choice.variable == "CARGO_MAKEFLAGS" and choice.usable
    assert [name for name, _ in choice.rejected] == ["MAKEFLAGS"]
    assert "the pool in MAKEFLAGS cannot be used" in choice.reason
    assert "never hides a usable one" in choice.reason


def test_when_no_pool_can_be_used_the_preferred_ones_error_is_raised() -> None:
    r, w = closed_fd_pair()
    env = {
        "MAKEFLAGS": f" -j2 --jobserver-auth={r},{w}",
        "CARGO_MAKEFLAGS": "-j --jobserver-auth=-2,-2",
    }
    with pytest.raises(JobserverUnavailable) as info:
        TokenPool.from_environ(env)
    assert info.value.variable == "MAKEFLAGS"
    assert info.value.reason.startswith(f"cannot use the jobserver pipe {r},{w}: the read fd")
    assert "CARGO_MAKEFLAGS: make disabled the jobserver" in info.value.reason
    choice = choose_advertised(env)
    assert choice.variable == "MAKEFLAGS" and not choice.usable and choice.error is not None
    assert [name for name, _ in choice.rejected] == ["CARGO_MAKEFLAGS"]
    nothing = choose_advertised({"MAKEFLAGS": "s -j1", "PATH": "/bin"})
    assert nothing.variable is None and not nothing.usable and nothing.error is None
    assert TokenPool.from_environ({"MAKEFLAGS": "s -j1"}) is None


def test_choosing_takes_no_token_and_keeps_a_held_handle(
    two_pools: tuple[str, str, int, int],
) -> None:
    make, cargo, mr, cr = two_pools
    held = TokenPool.from_environ({"MAKEFLAGS": make})
    assert held is not None
    try:
        choice = choose_advertised({"MAKEFLAGS": make, "CARGO_MAKEFLAGS": cargo})
        assert choice.variable == "MAKEFLAGS" and not held.closed
        assert pending(mr) == 2 and pending(cr) == 7
    finally:
        held.close()
    assert held.closed


def stamp() -> tuple[int, int]:
    """A job: its span on the machine-wide clock."""
    start = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    time.sleep(0.3)
    return start, time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def test_jobserver_under_a_stale_cargo_makeflags_runs_on_the_makeflags_pool(
    two_pools: tuple[str, str, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    make, _cargo, mr, _cr = two_pools
    monkeypatch.setenv("MAKEFLAGS", make)
    monkeypatch.setenv("CARGO_MAKEFLAGS", "-j8 --jobserver-auth={},{}".format(*closed_fd_pair()))
    monkeypatch.delenv("MFLAGS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", JobserverUnavailable)  # no fall back to one at a time
        with Jobserver("fork") as js:
            assert js.pool.variable == "MAKEFLAGS" and js.pool.slots == 3
            spans = [f.result(30) for f in [js.submit(stamp) for _ in range(3)]]
    assert peak_overlap(spans) == 3  # the implicit slot and make's two tokens, at once
    assert pending(mr) == 2


def test_status_says_which_variable_was_chosen_and_why(
    two_pools: tuple[str, str, int, int],
) -> None:
    make, _cargo, mr, _cr = two_pools
    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["MAKEFLAGS"] = make
    env["CARGO_MAKEFLAGS"] = "-j8 --jobserver-auth={},{}".format(*closed_fd_pair())
    mw = int(make.rsplit(",", 1)[1])

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "makejobs", "status", *args],
            env=env,
            pass_fds=(mr, mw),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    text = status()
    assert text.returncode == 0, text.stdout + text.stderr
    assert "jobserver: usable" in text.stdout and "variable:   MAKEFLAGS=" in text.stdout
    assert "chosen:     MAKEFLAGS: it comes first" in text.stdout, text.stdout
    assert "'+'" not in text.stdout, text.stdout  # nobody blames a '+' that is there
    report = json.loads(status("--json").stdout)
    assert report["usable"] and report["variable"] == "MAKEFLAGS"
    assert report["choice"]["reason"].startswith("MAKEFLAGS: it comes first")
    assert report["choice"]["rejected"] == []
    # Unusable MAKEFLAGS, usable CARGO_MAKEFLAGS: the reason names what was passed over.
    env["CARGO_MAKEFLAGS"], env["MAKEFLAGS"] = make, "s -j2 --jobserver-auth=-2,-2"
    report = json.loads(status("--json").stdout)
    assert report["usable"] and report["variable"] == "CARGO_MAKEFLAGS"
    assert report["choice"]["rejected"][0][0] == "MAKEFLAGS"
    assert "the pool in MAKEFLAGS cannot be used" in report["choice"]["reason"]
