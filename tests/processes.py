"""Running makejobs and other programs from the tests (shared by tests/ and integration/).

A test that starts a program must not let it see the pool of whatever make happens to run
the test suite, and the program must import the makejobs under test: :func:`clean_env`
gives both. :func:`mj` runs ``python -m makejobs ARGS`` to the end in such an environment,
and :func:`describe` turns a finished process into an assertion message.

The makejobs the children import is the one next to this directory when there is one (a
checkout or an unpacked sdist); a copy of tests/ run against an installed wheel has no
``makejobs/`` beside it, so its children import the installed package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["POOL_VARIABLES", "PY", "REPO", "TIMEOUT", "clean_env", "describe", "mj"]

#: The directory above tests/: a checkout or an unpacked sdist.
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
#: Seconds a program run by :func:`mj` may take before the test fails.
TIMEOUT = 60

#: Variables through which a parent make, cargo or makejobs serve advertises its pool (or,
#: for MAKELEVEL, its recursion).
POOL_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKEJOBS_LEDGER")


def clean_env(**extra: str) -> dict[str, str]:
    """``os.environ`` without any advertised pool, :data:`REPO` first on ``PYTHONPATH``,
    then *extra*."""
    env = {k: v for k, v in os.environ.items() if k not in POOL_VARIABLES}
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    env.update(extra)
    return env


def mj(
    *args: str,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = TIMEOUT,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m makejobs ARGS`` to the end, as text.

    *env* defaults to :func:`clean_env`; standard input is *input*, else ``/dev/null``;
    the output is captured unless *kwargs* say ``capture_output=False`` (then pass
    ``stdout``/``stderr`` yourself).
    """
    kwargs.setdefault("capture_output", True)
    return subprocess.run(
        [PY, "-m", "makejobs", *args],
        env=clean_env() if env is None else env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    """A finished process's status and output, for assertion messages."""
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
