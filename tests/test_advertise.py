"""makejobs.advertise: a pool offered in the other form, the auto rule, and pool.run(style=).

Children are real processes: a Python child that joins whatever it is given and counts
the slots it gets, and small shell scripts named ``make``/``ninja`` that answer
``--version`` like a given GNU make and report the ``MAKEFLAGS`` and pipe descriptors
they received (what decides a real make's fate: real makes, ninja and cargo are run in
integration/test_bridge_peers.py). Nothing waits on a sleep.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from forking import run_in_child
from makejobs import advertise
from makejobs.advertise import CannotAdvertise, command_style, fifo_path, for_any_child
from makejobs.pool import TokenPool
from makejobs.protocol import FifoAuth, PipeAuth, parse_makeflags
from pools import GREEDY, close_clean
from processes import clean_env, write_program

TIMEOUT = 30

# A stand-in named make (or ninja): answers --version, else reports what it was given.
FAKE = """#!/bin/sh
if [ "$1" = --version ]; then
    printf '%s\\n' "$MAKEFLAGS" >> "$0.probed"
    echo "VERSION"
    exit 0
fi
printf 'MAKEFLAGS=%s\\n' "$MAKEFLAGS"
for fd in $(ls /proc/$$/fd); do
    if [ "$fd" -gt 2 ] && [ -p /proc/$$/fd/$fd ]; then echo "pipe-fd $fd"; fi
done
"""


def fake(directory: Path, name: str, version: str) -> Path:
    return write_program(directory, name, FAKE.replace("VERSION", version))


def report_of(output: str) -> tuple[str, list[int]]:
    """(MAKEFLAGS, pipe fds) a fake reported."""
    lines = output.splitlines()
    flags = next(line.split("=", 1)[1] for line in lines if line.startswith("MAKEFLAGS="))
    return flags, [int(line.split()[1]) for line in lines if line.startswith("pipe-fd ")]


def join_in_child(env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", GREEDY],
        env=env,
        pass_fds=pass_fds,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    report: dict[str, object] = json.loads(proc.stdout)
    return report


# -- a pipe pool by path ------------------------------------------------------------


def test_a_pipe_pool_is_named_by_this_process_and_opens_as_a_new_description() -> None:
    pool = TokenPool.create(3)
    assert isinstance(pool.auth, PipeAuth)
    path = fifo_path(pool)
    assert path == f"/proc/{os.getpid()}/fd/{pool.auth.read_fd}"  # never /proc/self
    assert stat.S_ISFIFO(os.stat(path).st_mode)
    # Opened read-only and write-only like a fifo; its own file status flags.
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(path, os.O_WRONLY)
    try:
        assert not fcntl.fcntl(pool.auth.read_fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert os.read(reader, 1) == b"+"
        os.write(writer, b"+")
    finally:
        os.close(reader)
        os.close(writer)
    assert close_clean(pool) == 2


def test_a_child_reaches_a_pipe_pool_by_path_without_inheriting_anything() -> None:
    pool = TokenPool.create(3)
    env = pool.environ(clean_env(), style="fifo")
    flags = parse_makeflags(env["MAKEFLAGS"])
    assert flags.auth == FifoAuth(fifo_path(pool)) and flags.jobs == 3
    assert parse_makeflags(env["CARGO_MAKEFLAGS"]).auth == flags.auth
    # A plain subprocess.run: close_fds, no pass_fds.
    report = join_in_child(env)
    assert report["style"] == "fifo" and report["slots"] == 3
    assert close_clean(pool) == 2


def test_joining_the_by_path_form_of_a_held_pool_shares_it() -> None:
    """No second implicit slot: a job's from_environ() finds the pool it inherited."""
    pool = TokenPool.create(3)
    by_path = {"MAKEFLAGS": f" -j3 --jobserver-auth=fifo:{fifo_path(pool)}"}
    again = TokenPool.from_environ(by_path)
    assert again is not None and again._core is pool._core
    again.close()  # closes that one handle only
    assert not pool.closed

    def child() -> bool:
        # In a fork, still the inherited pool, whose implicit slot is the child's.
        joined = TokenPool.from_environ(by_path)
        return (
            joined is not None and joined._core is pool._core and joined.try_acquire() is not None
        )

    assert run_in_child(child) == 0
    assert close_clean(pool) == 2


# -- a fifo pool as pipe descriptors --------------------------------------------------


def test_a_fifo_pool_is_offered_as_new_blocking_descriptors_after_a_bare_j() -> None:
    pool = TokenPool.create(3, style="fifo")
    with advertise.advertise(pool, "pipe", base=clean_env()) as adv:
        assert adv.style == "pipe"
        r, w = adv.pass_fds[:2]
        assert (
            f" -j --jobserver-fds={r},{w} --jobserver-auth={r},{w}"
            in " " + adv.environ["MAKEFLAGS"]
        )
        assert "-j3" not in adv.environ["MAKEFLAGS"]  # make <= 4.1 would leave the pool
        assert parse_makeflags(adv.environ["CARGO_MAKEFLAGS"]).auth == PipeAuth(r, w)
        assert os.get_blocking(r) and os.get_blocking(w)
        assert fcntl.fcntl(r, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        report = join_in_child(adv.environ, adv.pass_fds)
        assert report["style"] == "pipe" and report["slots"] == 3
    with pytest.raises(OSError) as info:
        os.fstat(r)  # closed with the advertisement; the pool's are not
    assert info.value.errno == errno.EBADF
    assert close_clean(pool) == 2


def test_the_pools_own_form_is_what_environ_always_gave() -> None:
    for style in ("pipe", "fifo"):
        pool = TokenPool.create(2, style=style)  # type: ignore[arg-type]
        base = clean_env()
        with advertise.advertise(pool, None, base=base) as adv:
            assert adv.environ == pool.environ(base) == pool.environ(base, style=style)  # type: ignore[arg-type]
            assert adv.pass_fds == pool.pass_fds
        close_clean(pool)


def test_bad_requests_are_clear_errors() -> None:
    fifo = TokenPool.create(2, style="fifo")
    with pytest.raises(CannotAdvertise, match=r"pool\.run\(\)"):
        fifo.environ(style="pipe")  # the new descriptors need a child to go to
    with pytest.raises(ValueError, match="command="):
        fifo.environ(style="auto")
    with pytest.raises(ValueError, match="'pipe', 'fifo', 'auto' or None"):
        fifo.environ(style="pipes")  # type: ignore[arg-type]
    close_clean(fifo)
    with pytest.raises(ValueError, match="closed"):
        advertise.advertise(fifo, "fifo")


def test_without_proc_fifo_is_refused_and_auto_keeps_the_pipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What a system without /proc/PID/fd (macOS, BSD) gets."""
    monkeypatch.setattr(advertise, "_PROC", str(tmp_path / "no-proc"))
    pool = TokenPool.create(2)
    with pytest.raises(CannotAdvertise, match="style='fifo'"):
        pool.environ(style="fifo")
    fake(tmp_path / "bin", "ninja", "1.13.2")
    adv = advertise.advertise(pool, "auto", command=[str(tmp_path / "bin" / "ninja")])
    assert adv.style == "pipe" and adv.pass_fds == pool.pass_fds
    assert for_any_child(pool).style == "pipe"
    close_clean(pool)


# -- auto ---------------------------------------------------------------------------


def test_command_style_rule(tmp_path: Path) -> None:
    old, new, bsd = tmp_path / "old", tmp_path / "new", tmp_path / "bsd"
    for directory, version in ((old, "GNU Make 4.3"), (new, "GNU Make 4.4.1"), (bsd, "bmake")):
        for name in ("make", "gmake", "mingw32-make", "make-4.2"):
            fake(directory, name, version)
    path_old, path_new = {"PATH": str(old)}, {"PATH": str(new)}
    assert command_style(["make", "-C", "x"], path_old) == "pipe"
    assert command_style(["make"], path_new) == "fifo"
    assert command_style("gmake -s", path_new) == "fifo"  # a shell string: its first word
    assert command_style([str(new / "mingw32-make")]) == "fifo"
    assert command_style([new / "make-4.2"]) == "fifo"  # the name is not the version
    assert command_style([bsd / "make"]) == "pipe"  # not GNU make: pipes are safest
    assert command_style(["make"], {"PATH": str(tmp_path / "nowhere")}) == "pipe"
    for name in ("ninja", "/usr/bin/ninja-build", "samu"):
        assert command_style([name]) == "fifo"
    for name in ("cargo", "rustc", "cargo.exe"):
        assert command_style([name]) == "pipe"
    for command in (["cmake", "--build", "."], [sys.executable], ["bmake"], [], None, [3]):
        assert command_style(command) is None
    # --version is asked once per executable, with no pool in its environment (make
    # 4.3 would die on a fifo auth before answering).
    probed = old / "make.probed"
    assert probed.read_text() == "\n"
    command_style(["make"], path_old)
    assert probed.read_text() == "\n"


def test_run_gives_each_make_the_form_it_speaks(tmp_path: Path) -> None:
    make43 = fake(tmp_path / "43", "make", "GNU Make 4.3")
    make44 = fake(tmp_path / "44", "make", "GNU Make 4.4.1")
    common = {"env": clean_env(), "capture_output": True, "text": True, "timeout": TIMEOUT}

    pipe = TokenPool.create(3)
    flags, fds = report_of(pipe.run([make44], **common).stdout)  # type: ignore[arg-type]
    assert parse_makeflags(flags).auth == FifoAuth(fifo_path(pipe)) and fds == []
    flags, fds = report_of(pipe.run([make43], **common).stdout)  # type: ignore[arg-type]
    assert parse_makeflags(flags).auth == pipe.auth and fds == list(pipe.pass_fds)
    flags, fds = report_of(pipe.run([make44], style=None, **common).stdout)  # type: ignore[arg-type]
    assert parse_makeflags(flags).auth == pipe.auth
    assert close_clean(pipe) == 2

    fifo = TokenPool.create(3, style="fifo")
    fifo.release(fifo.acquire())  # the escrow for its slot is made once, and kept
    before = sorted(os.listdir("/proc/self/fd"))
    flags, fds = report_of(fifo.run([make43], **common).stdout)  # type: ignore[arg-type]
    auth = parse_makeflags(flags).auth
    assert isinstance(auth, PipeAuth) and fds == [auth.read_fd, auth.write_fd]
    assert sorted(os.listdir("/proc/self/fd")) == before  # the view was closed here
    flags, fds = report_of(fifo.run([make44], **common).stdout)  # type: ignore[arg-type]
    assert parse_makeflags(flags).auth == fifo.auth and fds == []
    assert fifo.implicit_free
    assert close_clean(fifo) == 2


# -- children whose command is not known (what a job would export) ---------------------


def test_a_created_pipe_pool_goes_by_path_unless_paths_make_would_die_on_it(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new"
    old = tmp_path / "old"
    fake(new, "make", "GNU Make 4.4.1")
    fake(old, "make", "GNU Make 4.3")
    pool = TokenPool.create(2)
    for path, form in ((str(new), "fifo"), (str(tmp_path / "none"), "fifo"), (str(old), "pipe")):
        with for_any_child(pool, {"PATH": path}) as adv:
            assert adv.style == form, path
            auth = parse_makeflags(adv.environ["MAKEFLAGS"]).auth
            assert auth == (FifoAuth(fifo_path(pool)) if form == "fifo" else pool.auth)
            # By path, the pipe's fds need not reach the child.
            assert adv.pass_fds == (() if form == "fifo" else pool.pass_fds)
    fifo = TokenPool.create(2, style="fifo")
    assert for_any_child(fifo, {"PATH": str(old)}).style == "fifo"  # nothing else to offer
    close_clean(pool)
    close_clean(fifo)


def test_a_pool_keeps_the_form_this_process_was_given_it_in(tmp_path: Path) -> None:
    fake(tmp_path, "make", "GNU Make 4.4.1")
    path = {"PATH": str(tmp_path)}
    pool = TokenPool.create(2)
    other = TokenPool.create(2)
    as_pipe = {**pool.environ(), **path}  # as make 4.3 would have handed it to us
    assert advertise.given_style(pool, as_pipe) == "pipe"
    assert for_any_child(pool, as_pipe).style == "pipe"
    by_path = {**pool.environ(style="fifo"), **path}
    assert advertise.given_style(pool, by_path) == "fifo"
    assert for_any_child(pool, by_path).style == "fifo"
    # Another pool's advertisement, or none, says nothing about this one.
    assert advertise.given_style(pool, other.environ()) is None
    assert advertise.given_style(pool, {"MAKEFLAGS": " -j2 --jobserver-auth=-2,-2"}) is None
    assert for_any_child(pool, {**other.environ(), **path}).style == "fifo"
    close_clean(pool)
    close_clean(other)


# -- makejobs serve's default style ----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "version", "style"),
    [
        ("make", "GNU Make 4.4.1", "fifo"),
        ("make", "GNU Make 4.3", "pipe"),
        ("ninja", "1.13.2", "fifo"),
        ("cargo", "cargo 1.95.0", "pipe"),
        ("build.sh", "", "pipe"),
    ],
)
def test_serve_creates_the_pool_in_the_form_cmd_speaks(
    tmp_path: Path, name: str, version: str, style: str
) -> None:
    program = fake(tmp_path, name, version)
    done = subprocess.run(
        [sys.executable, "-m", "makejobs", "serve", "-j", "3", "--", str(program)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    flags, _fds = report_of(done.stdout)
    auth = parse_makeflags(flags).auth
    assert isinstance(auth, FifoAuth if style == "fifo" else PipeAuth), flags


def test_the_defaults_the_readme_table_chose(tmp_path: Path) -> None:
    """TokenPool.create() and Jobserver(slots=N) make pipe pools; pool.run() offers the form
    the command speaks: a fifo to make 4.4.1, the pipe to make 4.3 (issue 13, item 4)."""
    from makejobs import Jobserver

    pool = TokenPool.create(2)
    assert pool.style == "pipe" and isinstance(pool.auth, PipeAuth)
    with Jobserver(slots=2) as js:
        assert js.pool.style == "pipe"
    for version, form in (("GNU Make 4.4.1", FifoAuth), ("GNU Make 4.3", PipeAuth)):
        program = fake(tmp_path / version.split()[-1], "make", version)
        done = pool.run([str(program)], env=clean_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        flags, _fds = report_of(done.stdout)
        assert isinstance(parse_makeflags(flags).auth, form), (version, flags)
    close_clean(pool)
