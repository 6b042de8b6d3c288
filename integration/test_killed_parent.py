"""A Jobserver recipe killed under make: its tokens come back, its jobs stop (issue 11, A3).

make -j4 runs two recipes: a Python step that runs Jobserver jobs on make's pool, and a
sibling that keeps make alive until the test lets it end. The Python step is killed with
SIGTERM (what ``timeout`` sends and make forwards; Python's default action runs no
cleanup) or SIGKILL while its jobs run. Its guardian (makejobs.guardian) then stops the
orphaned jobs and gives their tokens back, so make ends without ``INTERNAL: Exiting
with N jobserver tokens available``; the jobs are gone within about a second.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from peers import Peer, clean_environ

RECIPE = Path(__file__).resolve().parent / "recipes" / "killed_parent.py"
REPO = Path(__file__).resolve().parents[1]

MAKEFILE = """\
all: py sibling
py:
\t+{python} {recipe} {dir} {method} 3
sibling:
\twhile [ ! -e {dir}/done ]; do sleep 0.02; done
"""


def gone(pid: int, timeout: float) -> bool:
    """True once process *pid* has exited (a zombie counts: init may reap it late)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        import select

        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


@pytest.mark.parametrize("method", ["fork", "spawn", "executor"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("key", ["make43", "make441"])
def test_a_killed_jobserver_recipe_leaves_make_no_tokens_short(
    key: str, signum: int, method: str, peers: dict[str, Peer], tmp_path: Path
) -> None:
    make = peers[key]
    (tmp_path / "Makefile").write_text(
        MAKEFILE.format(python=sys.executable, recipe=RECIPE, dir=tmp_path, method=method)
    )
    env = clean_environ(PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        make.argv("-j4", "-C", str(tmp_path)),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = tmp_path / "ready"
        while not ready.exists():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the Python step never started its jobs"
            time.sleep(0.02)
        recipe, *jobs = (int(word) for word in ready.read_text().split())
        assert len(jobs) == 3
        os.kill(recipe, signum)
        # The guardian stops the orphaned jobs (SIGTERM, then SIGKILL after a grace).
        for job in jobs:
            assert gone(job, 5), f"job {job} still runs after its parent was killed"
    finally:
        (tmp_path / "done").write_text("")
        output, _ = proc.communicate(timeout=60)
    print(output)
    assert "INTERNAL" not in output, output
