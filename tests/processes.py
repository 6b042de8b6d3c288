"""Running makejobs and other programs from the tests (shared by tests/ and integration/).

A test that starts a program must not let it see the pool of whatever make happens to run
the test suite, and the program must import the makejobs under test: :func:`clean_env`
gives both. :func:`mj` runs ``python -m makejobs ARGS`` to the end in such an environment,
and :func:`describe` turns a finished process into an assertion message. :func:`start_mj`
starts it instead, for a test that acts while it runs (:func:`wait_for` what it must have
done by then); :func:`on_a_terminal` starts it with its standard error on a terminal,
whose output :func:`read_terminal` collects. :func:`write_program` makes a stand-in for
a program (a shell script named ``make`` that reports what it was given).

The makejobs the children import is the one next to this directory when there is one (a
checkout or an unpacked sdist); a copy of tests/ run against an installed wheel has no
``makejobs/`` beside it, so its children import the installed package.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "POOL_VARIABLES",
    "PY",
    "REPO",
    "TIMEOUT",
    "clean_env",
    "describe",
    "mj",
    "on_a_terminal",
    "read_terminal",
    "start_mj",
    "wait_for",
    "write_program",
]

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


def start_mj(
    *args: str, env: dict[str, str] | None = None, text: bool = True, **kwargs: Any
) -> subprocess.Popen[Any]:
    """Start ``python -m makejobs ARGS``: no input, output piped (as text unless *text*
    is false), *env* defaulting to :func:`clean_env`; *kwargs* go to Popen."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [PY, "-m", "makejobs", *args],
        env=clean_env() if env is None else env,
        text=text,
        **kwargs,
    )


def wait_for(
    ready: Path | Callable[[], bool], proc: subprocess.Popen[Any], what: str, bound: float = 20
) -> None:
    """Poll until *ready* (a file exists, or a condition holds), for at most *bound*
    seconds; fail at once if *proc* (*what*) exits first."""
    if isinstance(ready, Path):
        holds, awaited = ready.exists, ready.name
    else:
        holds, awaited = ready, "what the test waits for"
    deadline = time.monotonic() + bound
    while not holds():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"{what}: exited {proc.returncode} before {awaited}\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what}: {awaited} did not appear within {bound} s")
        time.sleep(0.01)


@contextlib.contextmanager
def on_a_terminal(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m makejobs ARGS`` with its standard error on a new terminal (a pty), its
    standard input and output piped; yields it and the terminal's side, closed after."""
    terminal, its_side = pty.openpty()
    try:
        try:
            child = subprocess.Popen(
                [PY, "-m", "makejobs", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=its_side,
                env=clean_env(),
            )
        finally:
            os.close(its_side)  # the child has its own
        yield child, terminal
    finally:
        os.close(terminal)


def read_terminal(terminal: int, quiet: float = 0.5) -> bytes:
    """What *terminal* shows until nothing comes for *quiet* seconds or its other side
    is closed."""
    shown = b""
    while select.select([terminal], [], [], quiet)[0]:
        try:
            data = os.read(terminal, 4096)
        except OSError as e:
            assert e.errno == errno.EIO  # the terminal's other side is closed
            break
        if not data:
            break
        shown += data
    return shown


def write_program(directory: Path, name: str, script: str) -> Path:
    """*script* as the executable ``directory/name`` (the directory made if need be)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(script)
    path.chmod(0o755)
    return path
