"""``makejobs run`` under real make 4.3 and 4.4.1: ``make -n`` runs nothing; commands that
ignore SIGTERM are still stopped when run has to end early, and processes that ignore a
passed-on SIGINT are ended too (issue 12, items 7 and 8). The last two take run's 2 s grace,
which is why they are here and not among the unit tests.

make runs ``+`` recipe lines even under ``-n`` (so that a sub-make can print what it would
do), and the README tells users to mark ``makejobs run`` lines with ``+``: run must read
make's ``n`` from ``MAKEFLAGS`` and only print its commands.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peers import Peer, clean_environ, run_captured
from processes import describe, start_mj, wait_for

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
RUN_TIMEOUT = 60
WAIT = 'i=0; until [ -e "{0}" ] || [ $i -ge 2000 ]; do sleep 0.01; i=$((i+1)); done'


def env(**extra: str) -> dict[str, str]:
    """No outer pool; makejobs importable by ``python -m makejobs`` in recipes."""
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    return clean_environ(PYTHONPATH=path, **extra)


def recipe(*words: str) -> str:
    """A make recipe line: quoted for the shell, ``$`` doubled for make."""
    return " ".join(shlex.quote(w).replace("$", "$$") for w in words)


@pytest.mark.parametrize("peer", ["make43", "make441"])
@pytest.mark.parametrize("flag", ["-n", "--dry-run"])
def test_make_n_prints_the_commands_of_a_plus_line_and_runs_none(
    peer: str, flag: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer)
    (tmp_path / "cmds.txt").write_text("touch made1\ntouch made2\n")
    line = recipe(PY, "-m", "makejobs", "run", "-f", "cmds.txt")
    (tmp_path / "Makefile").write_text(f"all:\n\t+{line}\n")
    proc = run_captured([make.path, flag, "-j2"], tmp_path, RUN_TIMEOUT, env=env())
    assert proc.returncode == 0, describe(proc)
    assert "touch made1\ntouch made2\n" in proc.stdout, describe(proc)
    assert not (tmp_path / "made1").exists() and not (tmp_path / "made2").exists()
    # The same Makefile without -n runs them: the line above really was executed.
    proc = run_captured([make.path, "-s", "-j2"], tmp_path, RUN_TIMEOUT, env=env())
    assert proc.returncode == 0, describe(proc)
    assert (tmp_path / "made1").exists() and (tmp_path / "made2").exists()


def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    # stdout's reader is gone, so run must stop its commands; this one ignores SIGTERM (and
    # so does its background child), so only SIGKILL, 2 s later, ends the group.
    pids, ready, orphan = tmp_path / "pids", tmp_path / "ready", tmp_path / "orphan"
    commands = tmp_path / "commands"
    commands.write_text(
        f"{WAIT.format(ready)}; echo first\n"
        f'trap "" TERM; echo $$ > "{pids}"; sleep 30 & touch "{ready}"; wait;'
        f' echo x > "{orphan}"\n'
    )
    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run(
            [PY, "-m", "makejobs", "run", "-j2", "-f", str(commands)],
            stdin=subprocess.DEVNULL,
            stdout=w,
            stderr=subprocess.PIPE,
            env=env(),
            text=True,
            timeout=RUN_TIMEOUT,
        )
    finally:
        os.close(w)
    assert proc.returncode == -signal.SIGPIPE and proc.stderr == "", proc.stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(int(pids.read_text()), 0)
    assert not orphan.exists()


def test_what_ignores_a_passed_on_sigint_is_ended_too(tmp_path: Path) -> None:
    # sh starts `cmd &` with SIGINT ignored: after ^C the command's shell dies, and its
    # background process must not be left running.
    bg = tmp_path / "bg"
    commands = tmp_path / "commands"
    commands.write_text(f'sleep 60 & echo $! > "{bg}"; wait\n')
    proc = start_mj("run", "-f", str(commands), env=env())
    wait_for(lambda: bg.exists() and bg.read_text().strip() != "", proc, "run", RUN_TIMEOUT)
    sleeper = int(bg.read_text())
    group = os.getpgid(sleeper)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=RUN_TIMEOUT)
    assert proc.returncode == -signal.SIGINT, err
    assert "interrupted by SIGINT" in err
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
