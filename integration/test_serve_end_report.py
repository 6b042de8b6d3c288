"""serve's end-of-run report after it passes SIGTERM on is the same, true one every time.

The client is shaped like a process-pool client (JobserverExecutor, a forking build tool):
a main process holds three tokens and runs worker processes on them. The workers inherit
its ledger record, so its lock (see makejobs.ledger) is free only once they are all gone.
SIGTERM to serve reaches the main process, which dies at once, and the workers, which
take a moment to clean up. When serve judged at the instant the main process died, the
workers were still alive: it said "N orphaned process(es) still running" and
"3 jobserver token(s) missing" in some runs and recovered the tokens in others. Serve
gives signalled descendants a bounded moment to exit, so every run must say the same.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable
RUNS = 10

CLIENT = r"""
import os, signal, sys, time
from makejobs import TokenPool

pool = TokenPool.from_environ()
tokens = [pool.acquire(timeout=10) for _ in range(4)]   # the implicit slot + 3 tokens

def clean_up_then_exit(signum, frame):
    # A worker's teardown (flushing, closing, joining threads) takes a moment.
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        pass
    os._exit(0)

started, announce = os.pipe()
for _ in range(3):
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, clean_up_then_exit)
        os.write(announce, b"w")
        while True:
            time.sleep(60)
os.close(announce)
got = b""
while len(got) < 3:
    got += os.read(started, 3 - len(got))
open(sys.argv[1], "w").close()
time.sleep(600)
"""


def _start(ready: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "makejobs", "serve", "-j", "4", "--", PY, "-c", CLIENT, str(ready)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_ready(ready: Path, proc: subprocess.Popen[str], bound: float = 60) -> None:
    deadline = time.monotonic() + bound
    while not ready.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"serve exited {proc.returncode} early\n{out}\n{err}")
        assert time.monotonic() < deadline, f"{ready.name} did not appear in {bound} s"
        time.sleep(0.01)


def _serve_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("makejobs serve:")]


def test_report_after_sigterm_is_the_same_true_one_in_every_run(tmp_path: Path) -> None:
    # The runs overlap, which makes the machine busier and the workers slower to exit:
    # the harder case for serve's judgement.
    runs = []
    try:
        for i in range(RUNS):
            ready = tmp_path / f"ready.{i}"
            runs.append((ready, _start(ready)))
        reports = []
        for ready, proc in runs:
            _wait_ready(ready, proc)
            proc.send_signal(signal.SIGTERM)
        for _ready, proc in runs:
            _out, err = proc.communicate(timeout=60)
            assert proc.returncode == -signal.SIGTERM, (proc.returncode, err)
            reports.append(_serve_lines(err))
    finally:
        for _ready, proc in runs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for report in reports:
        text = "\n".join(report)
        assert "orphaned" not in text and "missing" not in text and "extra" not in text, text
    # Every token came back in every run, through the same path each time (serve's
    # recovery, unless a later makejobs returns them from the client side itself).
    assert all(report == reports[0] for report in reports), reports
