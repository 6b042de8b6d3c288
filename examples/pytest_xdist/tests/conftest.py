"""Says how many workers xdist started and on which pool, at the end of the run."""

from __future__ import annotations

import os

import pytest


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    if hasattr(config, "workerinput"):
        return
    workers = config.getoption("numprocesses", None)
    flags = os.environ.get("MAKEFLAGS", "")
    pool = "make's jobserver pool" if "--jobserver-auth=" in flags else "no jobserver pool"
    terminalreporter.write_line(f"{workers} xdist workers on {pool} (MAKEFLAGS={flags.strip()!r})")
