"""makejobs serve gives back the tokens of makejobs clients that were killed.

A client killed alone gives its tokens back through its guardian (see
makejobs.guardian); the ledger that serve keeps is for clients killed with
their guardian, as ``kill -9`` of a whole process group does, so these tests
kill both.
"""

from __future__ import annotations

import subprocess
import sys

MAIN = r"""
import os, signal, subprocess, sys, time
from makejobs import TokenPool
def kill_with_guardian(pid):
    import psutil
    for child in psutil.Process(pid).children():
        if any("_guardian_main" in word for word in child.cmdline()):
            child.kill()
    os.kill(pid, signal.SIGKILL)


pool = TokenPool.from_environ()
holder = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], env=pool.environ(), pass_fds=pool.pass_fds,
    stdout=subprocess.PIPE,
)
assert holder.stdout.readline() == b"holding\n"
assert pool.available() == 1, pool.available()   # -j4: 3 tokens, the holder took 2
kill_with_guardian(holder.pid)
holder.wait()
# serve looks about once a second; wait for it, bounded.
deadline = time.monotonic() + 20
while pool.available() != 3:
    assert time.monotonic() < deadline, "serve did not recover the tokens"
    time.sleep(0.05)
print("recovered", flush=True)
"""

HOLDER = r"""
import os, time
from makejobs import TokenPool
pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=10) for _ in range(3)]   # implicit + 2 tokens
os.write(1, b"holding\n")
time.sleep(600)
"""

ORPHAN_MAIN = r"""
import os, signal, subprocess, sys, time
from makejobs import TokenPool
def kill_with_guardian(pid):
    import psutil
    for child in psutil.Process(pid).children():
        if any("_guardian_main" in word for word in child.cmdline()):
            child.kill()
    os.kill(pid, signal.SIGKILL)

def kill_with_guardian(pid):
    import psutil
    for child in psutil.Process(pid).children():
        if any("_guardian_main" in word for word in child.cmdline()):
            child.kill()
    os.kill(pid, signal.SIGKILL)


pool = TokenPool.from_environ()
holder = subprocess.Popen(
    [sys.executable, "-c", sys.argv[1]], env=pool.environ(), pass_fds=pool.pass_fds,
    stdout=subprocess.PIPE,
)
line = holder.stdout.readline().split()
assert line[0] == b"orphan", line
kill_with_guardian(holder.pid)
holder.wait()
print(line[1].decode(), flush=True)
"""

ORPHAN_HOLDER = r"""
import os, time
from makejobs import TokenPool
pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=10) for _ in range(2)]   # implicit + 1 token
child = os.fork()
if child == 0:   # a job on the holder's token that outlives it
    quiet = os.open(os.devnull, os.O_RDWR)   # keep no pipe of the test's open
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    time.sleep(600)
    os._exit(0)
os.write(1, b"orphan %d\n" % child)
time.sleep(600)
"""


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "makejobs", "serve", "-j", "4", "--", sys.executable, "-c", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_serve_recovers_tokens_of_a_killed_client() -> None:
    done = serve(MAIN, HOLDER)
    assert done.returncode == 0, done.stderr
    assert "recovered" in done.stdout
    assert "recovered 2 jobserver token(s)" in done.stderr
    assert "missing" not in done.stderr


def test_serve_recovers_nothing_while_an_orphan_may_use_the_tokens() -> None:
    done = serve(ORPHAN_MAIN, ORPHAN_HOLDER)
    orphan = int(done.stdout.split()[0])
    try:
        assert done.returncode == 0, done.stderr
        assert "orphaned process(es) still running" in done.stderr
        assert "recovered 1" not in done.stderr
        assert "1 jobserver token(s) missing" in done.stderr
    finally:
        import os
        import signal

        try:
            os.kill(orphan, signal.SIGKILL)
        except ProcessLookupError:
            pass
