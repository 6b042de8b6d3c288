"""A SIGKILLed ``makejobs serve`` leaves its directory behind; the next serve removes it.

Only what no process uses any more goes: a killed serve's ledger (pipe pool) or fifo
directory (fifo pool) once its command is gone too, never those of a serve still running.
Directories are made to look old with ``os.utime`` (serve leaves young ones alone, since a
pool being created has its directory a moment before anyone holds it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from makejobs import _procfs
from makejobs.cli._leftovers import remove_leftovers
from makejobs.ledger import ledger_pool

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

# Joins the pool (a fifo client holds the fifo open only from then on), prints where the
# pool's directory is and its own pid, then waits.
REPORT = r"""
import os, sys, time
from makejobs import TokenPool
pool = TokenPool.from_environ()
print(os.environ["MAKEJOBS_LEDGER"], os.getpid(), flush=True)
time.sleep(120)
"""


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    env.pop("CARGO_MAKEFLAGS", None)
    env["TMPDIR"] = str(tmp)
    env["PYTHONPATH"] = str(REPO)
    return env


def _serve(tmp: Path, style: str) -> tuple[subprocess.Popen[str], Path, int]:
    """A running serve, the directory it made in *tmp*, and its command's pid."""
    proc = subprocess.Popen(
        [PY, "-m", "makejobs", "serve", "-j2", "--style", style, "--", PY, "-c", REPORT],
        env=_env(tmp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ledger, pid = proc.stdout.readline().split()
    made = Path(ledger) if style == "pipe" else Path(ledger).parent
    assert made.parent == tmp, made
    return proc, made, int(pid)


def _pool_key(made: Path) -> tuple[int, int]:
    """The pipe or fifo of the pool whose directory is *made*."""
    fifo = made / "fifo"
    if fifo.exists():
        st = os.stat(fifo)
        return st.st_dev, st.st_ino
    pool = ledger_pool(str(made))
    assert pool is not None
    return pool[1], pool[2]


def _kill(pid: int, made: Path) -> None:
    """SIGKILL *pid* and wait (bounded) until no process has the pool of *made* open:
    helpers of the killed client (a makejobs guardian) may take a moment to go."""
    key = _pool_key(made)
    fifo = made / "fifo"
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _procfs.scan_holders(key, path=str(fifo) if fifo.exists() else None).fds:
        assert time.monotonic() < deadline, f"the pool of {made} is still held"
        time.sleep(0.01)


def _age(path: Path) -> None:
    old = time.time() - 3600
    for p in [path, *path.iterdir()]:
        os.utime(p, (old, old), follow_symlinks=False)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_next_serve_removes_what_a_killed_serve_left(tmp_path: Path, style: str) -> None:
    dead, dead_dir, dead_cmd = _serve(tmp_path, style)
    alive, alive_dir, _ = _serve(tmp_path, style)
    try:
        dead.kill()
        dead.wait()
        # Its command still has the pool open: nothing is removed yet.
        _age(dead_dir)
        _age(alive_dir)
        assert remove_leftovers([str(tmp_path)]) == []
        _kill(dead_cmd, dead_dir)
        done = subprocess.run(
            [PY, "-m", "makejobs", "serve", "-j2", "--", PY, "-c", "pass"],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert not dead_dir.exists(), sorted(os.listdir(tmp_path))
        assert alive_dir.exists()
    finally:
        alive.send_signal(signal.SIGTERM)
        alive.communicate(timeout=30)
    assert not alive_dir.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_young_and_foreign_directories_are_left_alone(tmp_path: Path) -> None:
    dead, dead_dir, dead_cmd = _serve(tmp_path, "pipe")
    dead.kill()
    dead.wait()
    _kill(dead_cmd, dead_dir)
    # Young: a pool may be in the making.
    assert remove_leftovers([str(tmp_path)]) == []
    # Not a ledger (no pool file) or not laid out like a fifo pool: not ours to judge.
    stranger = tmp_path / "makejobs-ledger-stranger"
    stranger.mkdir()
    other = tmp_path / "makejobs-other"
    other.mkdir()
    os.mkfifo(other / "fifo")
    (other / "notes.txt").write_text("mine")
    for path in (dead_dir, stranger, other):
        _age(path)
    assert remove_leftovers([str(tmp_path)]) == [str(dead_dir)]
    assert stranger.exists() and other.exists()


def test_help_says_what_each_style_leaves_and_who_removes_it() -> None:
    done = subprocess.run(
        [PY, "-m", "makejobs", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "a token ledger for either style (makejobs-ledger-* in $TMPDIR" in text, text
    assert "After a SIGKILL they stay; the next serve removes those" in text, text
