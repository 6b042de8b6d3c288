"""``makejobs bridge``: the inherited pool, offered to CMD in the form CMD speaks (fast).

The test process plays make: it creates a pool and starts ``python -m makejobs bridge``
with the pool exported and its descriptors inherited, as a ``+`` recipe of make would.
The commands are a Python client that joins whatever it is given and counts its slots,
and shell scripts named ``make``/``ninja`` that answer ``--version`` and report what
they were given. Real make 4.3/4.4.1, ninja and cargo under bridge are in
integration/test_bridge_peers.py. A command that must be running when a signal arrives
announces it with a marker file, polled with a bound.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from makejobs import advertise, cli
from makejobs.pool import TokenPool
from makejobs.protocol import FifoAuth, PipeAuth, parse_makeflags
from pools import GREEDY, close_clean
from processes import PY, clean_env, write_program

TIMEOUT = 30

# A stand-in named make or ninja: answers --version, else reports what it was given.
FAKE = """#!/bin/sh
if [ "$1" = --version ]; then echo "VERSION"; exit 0; fi
printf 'MAKEFLAGS=%s\\n' "$MAKEFLAGS"
"""


def bridge(
    *args: str, pool: TokenPool | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start the bridge as a '+' recipe of make would: the pool exported and inherited."""
    base = clean_env() if env is None else env
    return subprocess.Popen(
        [PY, "-m", "makejobs", "bridge", *args],
        env=base if pool is None else pool.environ(base),
        pass_fds=() if pool is None else pool.pass_fds,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def fake(directory: Path, name: str, version: str) -> Path:
    return write_program(directory, name, FAKE.replace("VERSION", version))


# -- offering the pool in the other form ----------------------------------------------


def test_a_pipe_pool_is_offered_by_the_bridges_own_path() -> None:
    pool = TokenPool.create(3)
    proc = bridge("--style", "fifo", "-v", "--", PY, "-c", GREEDY, pool=pool)
    code, out, err = finish(proc)
    assert code == 0, err
    report = json.loads(out)
    # The command joined by path, without inheriting anything, and got the whole pool:
    # the bridge's own slot (it took nothing itself) and the two tokens.
    assert report["style"] == "fifo" and report["slots"] == 3
    auth = parse_makeflags(report["makeflags"]).auth
    assert auth == FifoAuth(f"/proc/{proc.pid}/fd/{auth.path.rsplit('/', 1)[1]}")  # type: ignore[union-attr]
    assert f"offering the pipe pool as fifo (fifo:{auth.path}): --style fifo" in err  # type: ignore[union-attr]
    assert close_clean(pool) == 2


def test_a_fifo_pool_is_offered_as_descriptors_the_command_inherits() -> None:
    pool = TokenPool.create(3, style="fifo")
    code, out, err = finish(bridge("--style", "pipe", "--", PY, "-c", GREEDY, pool=pool))
    assert code == 0, err
    report = json.loads(out)
    assert report["style"] == "pipe" and report["slots"] == 3
    flags = parse_makeflags(report["makeflags"])
    assert isinstance(flags.auth, PipeAuth) and flags.jobs is None  # a bare -j
    assert close_clean(pool) == 2


@pytest.mark.parametrize(
    "pool_style, name, version, offered",
    [
        ("fifo", "make", "GNU Make 4.3", "pipe"),
        ("pipe", "make", "GNU Make 4.4.1", "fifo"),
        ("pipe", "ninja", "1.13.2", "fifo"),
        ("fifo", "cargo", "cargo 1.95.0", "pipe"),
    ],
)
def test_auto_asks_the_command(
    pool_style: str, name: str, version: str, offered: str, tmp_path: Path
) -> None:
    fake(tmp_path, name, version)
    pool = TokenPool.create(3, style=pool_style)  # type: ignore[arg-type]
    env = clean_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    code, out, err = finish(bridge("-v", "--", name, pool=pool, env=env))
    assert code == 0, err
    auth = parse_makeflags(out.split("=", 1)[1].strip()).auth
    assert isinstance(auth, FifoAuth if offered == "fifo" else PipeAuth), out
    assert f"as {offered} " in err and f"{name} is best given a {offered} pool" in err
    assert close_clean(pool) == 2


def test_auto_leaves_other_commands_the_pools_own_form() -> None:
    pool = TokenPool.create(3)
    code, out, err = finish(bridge("-v", "--", PY, "-c", GREEDY, pool=pool))
    assert code == 0, err
    report = json.loads(out)
    assert report["style"] == "pipe" and report["slots"] == 3
    assert "no known preference" in err
    assert close_clean(pool) == 2


# Takes the whole pool by blocking acquires: through a relay, tokens come one by one.
PATIENT = textwrap.dedent(
    """
    import json, os
    from makejobs.pool import TokenPool
    pool = TokenPool.from_environ()
    tokens = [pool.acquire(20) for _ in range(3)]
    print(json.dumps({"style": pool.style, "slots": len(tokens),
                      "makeflags": os.environ["MAKEFLAGS"]}))
    for token in tokens:
        pool.release(token)
    pool.close()
    """
)


@pytest.mark.parametrize("style", ["fifo", "auto"])
def test_without_proc_a_relay_carries_the_pipe_pool(
    style: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """As on a system without /proc/PID/fd (macOS): a private fifo relays the tokens."""
    monkeypatch.setattr(advertise, "_PROC", str(tmp_path / "no-proc"))
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", clean_env()["PYTHONPATH"])
    # A Python named ninja: auto prefers a fifo. A script, not a symlink: Python started
    # through a symlink outside its venv does not find the venv (nor an installed makejobs).
    ninja = tmp_path / "ninja"
    ninja.write_text(f'#!/bin/sh\nexec {shlex.quote(PY)} "$@"\n')
    ninja.chmod(0o755)
    pool = TokenPool.create(3)
    monkeypatch.setenv("MAKEFLAGS", pool.makeflags())
    status = cli.main(["bridge", "-v", "--style", style, "--", "ninja", "-c", PATIENT])
    out, err = capfd.readouterr()
    assert status == 0, err
    report = json.loads(out)
    assert report["style"] == "fifo" and report["slots"] == 3, (report, err)
    fifo = parse_makeflags(report["makeflags"]).auth
    assert isinstance(fifo, FifoAuth) and "makejobs-relay-" in fifo.path
    assert "as fifo through a relay" in err and "never came back" not in err
    assert not os.path.exists(fifo.path)  # removed with the relay
    assert not pool.closed  # the bridge's join of this process's pool was undone only
    assert close_clean(pool) == 2


# -- no usable pool -----------------------------------------------------------------


@pytest.mark.parametrize(
    "makeflags, why",
    [
        (None, "no jobserver pool is advertised"),
        ("s -j1", "-j1"),
        (" -j", "bare -j"),
        ("s", "make was run without -jN"),
    ],
)
def test_without_a_pool_it_says_so_points_to_serve_and_runs_the_command(
    makeflags: str | None, why: str
) -> None:
    env = clean_env() if makeflags is None else clean_env(MAKEFLAGS=makeflags)
    code, _out, err = finish(bridge("--", "sh", "-c", "exit 3", env=env))
    assert code == 3
    assert why in err and "makejobs serve" in err, err


def test_a_disabled_pool_is_explained_and_the_command_still_runs() -> None:
    env = clean_env(MAKEFLAGS=" -j3 --jobserver-auth=3,4 --jobserver-auth=-2,-2")
    code, out, err = finish(bridge("--", "sh", "-c", 'echo "$MAKEFLAGS"', env=env))
    assert code == 0
    assert "-2,-2 is how make 4.4 tells a command" in err and "'+'" in err
    assert parse_makeflags(out.strip()).disabled


def test_a_stale_pipe_is_never_handed_on() -> None:
    """make 4.3 leaves the numbers of closed fds; they may name other files by now."""
    env = clean_env(MAKEFLAGS=" -j3 --jobserver-auth=97,98")
    code, out, err = finish(bridge("--", "sh", "-c", 'echo "$MAKEFLAGS"', env=env))
    assert code == 0
    assert "the inherited pool cannot be used" in err and "not open" in err
    assert parse_makeflags(out.strip()).disabled and "97,98" not in out


# -- the command's own -j, exit status, signals --------------------------------------


@pytest.mark.parametrize(
    "argv, warning",
    [
        (["make", "-kj8"], "`make -kj8` leaves the pool"),
        (["make", "--jobs=4"], "forced in submake"),
        (["ninja", "-j4"], "`ninja -j4` ignores the pool"),
        (["cargo", "build", "-j", "8"], None),
        (["make", "-C", "dir"], None),
    ],
)
def test_a_j_of_the_command_own_is_warned_about(
    argv: list[str], warning: str | None, tmp_path: Path
) -> None:
    fake(tmp_path, argv[0], "GNU Make 4.3" if argv[0] == "make" else "x")
    env = clean_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    pool = TokenPool.create(2)
    code, _out, err = finish(bridge("--", *argv, pool=pool, env=env))
    assert code == 0, err
    if warning is None:
        assert err == ""
    else:
        assert warning in err
    close_clean(pool)


def test_exit_status_of_the_command_and_of_a_command_that_cannot_run(tmp_path: Path) -> None:
    pool = TokenPool.create(2)
    assert finish(bridge("--", "sh", "-c", "exit 7", pool=pool))[0] == 7
    code, _out, err = finish(bridge("--", str(tmp_path / "nothing"), pool=pool))
    assert code == cli.EXIT_NOT_FOUND and "command not found" in err
    assert close_clean(pool) == 1


def test_a_signal_is_passed_on_and_the_bridge_dies_of_it(tmp_path: Path) -> None:
    marker = tmp_path / "running"
    pool = TokenPool.create(2, style="fifo")
    proc = bridge(
        "--style", "pipe", "--", "sh", "-c", f'touch "{marker}"; exec sleep 60', pool=pool
    )
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    code, _out, err = finish(proc)
    assert code == -signal.SIGTERM, err
    assert close_clean(pool) == 1


def test_help_lists_bridge_and_its_styles() -> None:
    top = subprocess.run(
        [PY, "-m", "makejobs", "--help"], env=clean_env(), capture_output=True, text=True
    )
    assert re.search(r"bridge\s+run a command on the inherited pool", top.stdout)
    own = subprocess.run(
        [PY, "-m", "makejobs", "bridge", "--help"],
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    for text in ("auto (default)", "/proc/PID/fd/N", "makejobs serve", "leave the pool", "125"):
        assert text in own.stdout


def test_missing_command_is_a_usage_error() -> None:
    proc = subprocess.run(
        [PY, "-m", "makejobs", "bridge"], env=clean_env(), capture_output=True, text=True
    )
    assert proc.returncode == 2 and "a command to run is required" in proc.stderr
