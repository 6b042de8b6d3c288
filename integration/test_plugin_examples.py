"""The plugin examples (examples/pytest_xdist, examples/build_ext) run under make 4.3 and
4.4.1 as their Makefiles say, and print what they claim.

Each example is copied to a scratch directory first, so a run leaves nothing in the
checkout. The pytest example loads only xdist and makejobs' plugin (the benchmark's peers
may be installed and would register plugins too).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from peers import Peer, clean_environ, run_captured
from processes import describe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT = 180


def run_example(make: Peer, name: str, tmp_path: Path, jobs: int, **env: str) -> str:
    root = tmp_path / name
    if not root.exists():
        shutil.copytree(EXAMPLES / name, root)
    argv = make.argv(f"-j{jobs}", f"PYTHON={sys.executable}")
    proc = run_captured(argv, root, TIMEOUT, env=clean_environ(**env))
    assert proc.returncode == 0, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)
    return proc.stdout


@pytest.mark.parametrize("key", ["make43", "make441"])
def test_pytest_xdist_example(key: str, peers: dict[str, Peer], tmp_path: Path) -> None:
    out = run_example(
        peers[key],
        "pytest_xdist",
        tmp_path,
        2,  # the README says -j4; -j2 starts fewer workers on this 2-CPU machine
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        PYTEST_ADDOPTS="-p xdist -p makejobs",
    )
    assert "8 passed" in out
    assert "2 xdist workers on make's jobserver pool" in out
    assert "docs: done" in out and "lint: done" in out


@pytest.mark.parametrize("key", ["make43", "make441"])
def test_build_ext_example(key: str, peers: dict[str, Peer], tmp_path: Path) -> None:
    out = run_example(peers[key], "build_ext", tmp_path, 4)
    assert "primes below 1000: 168" in out
    assert len([line for line in out.splitlines() if " -c src/" in line]) == 4
    assert "docs: done" in out
    # Built already: a second run compiles nothing and links nothing.
    again = run_example(peers[key], "build_ext", tmp_path, 4)
    assert " -c src/" not in again and " -shared " not in again
    assert "primes below 1000: 168" in again
