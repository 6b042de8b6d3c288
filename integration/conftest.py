"""Fixtures for the integration suite: real peers, located by absolute path.

Every test under integration/ is marked ``integration`` and depends on an autouse
session fixture that requires *all* peers (GNU make 4.3, GNU make 4.4.1, ninja 1.13, cargo;
see peers.py). A missing peer makes each integration test error with the explanation and
prints one summary block at the end, so the run fails instead of silently skipping. Run
``pytest tests`` for the unit tests alone on a machine without the peers.

Per-peer fixtures: ``make43``, ``make441``, ``ninja``, ``cargo`` (each a :class:`peers.Peer`),
``peer_env`` (os.environ without any inherited MAKEFLAGS/CARGO_MAKEFLAGS, LC_ALL=C).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peers import Peer, clean_environ, find_all, missing_report

_HERE = Path(__file__).parent.resolve()
_MISSING_KEY = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def peers(request: pytest.FixtureRequest) -> dict[str, Peer]:
    """All located peers by key; fails (never skips) when any is missing."""
    found, missing = find_all()
    if missing:
        report = missing_report(missing)
        request.config.stash[_MISSING_KEY] = report
        pytest.fail(report, pytrace=False)
    return found


@pytest.fixture(scope="session", autouse=True)
def _require_all_peers(peers: dict[str, Peer]) -> None:
    """Make every integration test depend on the full set of peers."""


@pytest.fixture(scope="session")
def make43(peers: dict[str, Peer]) -> Peer:
    """GNU Make 4.3 (pipe-style jobserver only: ``--jobserver-auth=R,W``)."""
    return peers["make43"]


@pytest.fixture(scope="session")
def make441(peers: dict[str, Peer]) -> Peer:
    """GNU Make 4.4.1 (fifo-style jobserver by default, ``--jobserver-style=pipe`` too)."""
    return peers["make441"]


@pytest.fixture(scope="session")
def ninja(peers: dict[str, Peer]) -> Peer:
    """ninja 1.13 (jobserver client)."""
    return peers["ninja"]


@pytest.fixture(scope="session")
def cargo(peers: dict[str, Peer]) -> Peer:
    """cargo (jobserver server for build scripts and rustc, client under make)."""
    return peers["cargo"]


@pytest.fixture
def peer_env() -> dict[str, str]:
    """Environment for starting a peer: no inherited jobserver, untranslated messages."""
    return clean_environ()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    report = terminalreporter.config.stash.get(_MISSING_KEY, "")
    if report:
        terminalreporter.section("missing jobserver peers", sep="!", red=True, bold=True)
        terminalreporter.line(report, red=True)
