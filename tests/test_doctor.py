"""``makejobs doctor``: each situation named with its fix, and the exit status (issue 15 item 3).

Situations that need a real make (a recipe without '+', -jN forced in a sub-make, make 4.3
under a fifo pool...) are produced with make 4.3 and 4.4.1 in
integration/test_observe_peers.py; here the environment is set up directly, and the pure
judgements are checked on their own.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from makejobs.cli.doctor import judge_ninja, parse_version, protected_fifo_applies
from processes import PY, clean_env

LINUX = sys.platform.startswith("linux")


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _doctor(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = _run([PY, "-m", "makejobs", "doctor", "--json", *args], env)
    return done.returncode, json.loads(done.stdout)


def _ids(report: dict[str, Any]) -> list[str]:
    return [finding["id"] for finding in report["findings"]]


def test_no_pool_and_bare_j() -> None:
    status, report = _doctor()
    assert status == 1 and _ids(report) == ["no-pool"], report
    assert "makejobs serve" in report["findings"][0]["fix"]
    status, report = _doctor(env=clean_env(MAKEFLAGS="-j"))
    assert status == 1 and _ids(report) == ["bare-j"], report
    assert "make -jN" in report["findings"][0]["fix"]


@pytest.mark.parametrize(
    ("auth", "finding", "words"),
    [
        ("-2,-2", "recipe-not-recursive", "'+'"),
        ("fifo:", "unsupported-auth", "fifo path is empty"),
        ("gmake_semaphore_7", "unsupported-auth", "Windows"),
        ("fifo:/nonexistent/GMfifo999999999", "fifo-missing", "has exited"),
    ],
)
def test_an_advertised_pool_that_cannot_be_used(auth: str, finding: str, words: str) -> None:
    status, report = _doctor(env=clean_env(MAKEFLAGS=f" -j4 --jobserver-auth={auth}"))
    assert status == 2 and report["advertised"] and not report["usable"]
    assert _ids(report) == [finding], report
    assert words in report["findings"][0]["message"] + report["findings"][0]["fix"]


def test_a_fifo_nobody_holds_is_stale(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    status, report = _doctor(env=clean_env(MAKEFLAGS=f" -j2 --jobserver-auth=fifo:{fifo}"))
    assert status == 2 and _ids(report) == ["fifo-stale"], report


@pytest.mark.skipif(not LINUX, reason="needs /proc")
def test_descriptors_reused_for_other_files_are_stale() -> None:
    # What a recipe without '+' under make 4.3 can see: the numbers name other files.
    line = f"exec {PY} -m makejobs doctor --json 3</etc/hostname 4>/dev/null"
    done = _run(["/bin/sh", "-c", line], clean_env(MAKEFLAGS=" -j2 --jobserver-auth=3,4"))
    report = json.loads(done.stdout)
    assert done.returncode == 2 and _ids(report) == ["stale-fds"], report
    message = report["findings"][0]["message"]
    assert "regular file (/etc/hostname)" in message and "character device" in message


@pytest.mark.skipif(not LINUX, reason="needs /proc")
def test_closed_descriptors_no_ancestor_holds_are_stale() -> None:
    status, report = _doctor(env=clean_env(MAKEFLAGS=" -j2 --jobserver-auth=57,58"))
    assert status == 2 and _ids(report) == ["stale-fds"], report
    assert "no ancestor" in report["findings"][0]["message"]


# Under serve (a pipe pool): a Python program starts doctor with subprocess's defaults.
CLOSE_FDS = textwrap.dedent(
    """
    import subprocess, sys
    subprocess.run([sys.executable, "-m", "makejobs", "doctor", "--json"])
    """
)


@pytest.mark.skipif(not LINUX, reason="needs /proc")
def test_a_python_parent_that_closed_the_fds_is_named() -> None:
    done = _run([PY, "-m", "makejobs", "serve", "-j2", "--", PY, "-c", CLOSE_FDS])
    report = json.loads(done.stdout)
    assert _ids(report) == ["python-close-fds"], report
    finding = report["findings"][0]
    assert "python (pid" in finding["message"] and "pass_fds" in finding["fix"]


def test_a_usable_pool_and_a_command_that_would_leave_it() -> None:
    # The make and ninja doctor finds on PATH are judged too: put the test extra's wheels
    # (make 4.4.1, ninja 1.13) first, as an activated environment does.
    wheels = clean_env(PATH=os.pathsep.join([str(Path(PY).parent), os.environ.get("PATH", "")]))
    serve = [PY, "-m", "makejobs", "serve", "-j2", "--style", "fifo", "--"]
    done = _run([*serve, PY, "-m", "makejobs", "doctor", "--json"], wheels)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and report["usable"] and _ids(report) == ["ok"], report
    if LINUX:
        assert "owner: makejobs serve" in report["pool"]
    done = _run([*serve, PY, "-m", "makejobs", "doctor", "--json", "--", "make", "-j8"], wheels)
    report = json.loads(done.stdout)
    assert done.returncode == 0 and "command-j" in _ids(report), report


def test_versions_and_ninja() -> None:
    assert parse_version("GNU Make 4.3") == (4, 3)
    assert parse_version("1.13.2.git.kitware.jobserver-pipe-1") == (1, 13, 2)
    assert parse_version("ninja") is None
    old = judge_ninja((1, 11, 1), "1.11.1", "fifo")
    assert old is not None and old[0] == "ninja-no-client"
    upstream = judge_ninja((1, 13, 0), "1.13.0", "pipe")
    assert upstream is not None and upstream[0] == "ninja-pipe-pool"
    assert judge_ninja((1, 13, 2), "1.13.2.git.kitware.jobserver-pipe-1", "pipe") is None
    assert judge_ninja((1, 13, 0), "1.13.0", "fifo") is None


def _stat(mode: int, uid: int) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


def test_protected_fifos_rule() -> None:
    tmp = _stat(stat.S_IFDIR | 0o1777, 0)  # /tmp: sticky, world-writable, root's
    fifo = stat.S_IFIFO | 0o600
    assert protected_fifo_applies(_stat(fifo, 1000), tmp, 1001)  # another user's fifo
    assert not protected_fifo_applies(_stat(fifo, 1001), tmp, 1001)  # our own
    assert not protected_fifo_applies(_stat(fifo, 0), tmp, 1001)  # the directory owner's
    private = _stat(stat.S_IFDIR | 0o700, 1000)
    assert not protected_fifo_applies(_stat(fifo, 1000), private, 1001)
