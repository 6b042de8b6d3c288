"""A make recipe that runs Jobserver jobs on make's pool and then waits to be killed.

Usage: killed_parent.py DIR METHOD JOBS (METHOD "executor": tasks of a
JobserverExecutor). Each job writes its pid to DIR/job-<pid> and
sleeps; once JOBS jobs run, the recipe writes "<recipe pid> <job pids...>" to DIR/ready
and sleeps until the test kills it (SIGTERM or SIGKILL: Python's default SIGTERM action
runs no cleanup). Standard library and makejobs only.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def job(directory: str) -> None:
    Path(directory, f"job-{os.getpid()}").write_text("running\n")
    time.sleep(120)


def main() -> None:
    from makejobs import Jobserver, JobserverExecutor

    directory, method, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if method == "executor":  # tasks in JobserverExecutor's workers (forkserver)
        executor = JobserverExecutor(count)
        for _ in range(count):
            executor.submit(job, directory)
        while len([p for p in os.listdir(directory) if p.startswith("job-")]) < count:
            time.sleep(0.01)
        pids = sorted(int(p[4:]) for p in os.listdir(directory) if p.startswith("job-"))
    else:
        js = Jobserver(method)
        futures = [js.submit(job, (directory,), timeout=60) for _ in range(count)]
        pids = [f.pid for f in futures]
    for pid in pids:
        while not Path(directory, f"job-{pid}").exists():
            time.sleep(0.01)
    ready = Path(directory, "ready.tmp")
    ready.write_text(" ".join(str(p) for p in [os.getpid(), *pids]) + "\n")
    ready.rename(Path(directory, "ready"))
    time.sleep(120)


if __name__ == "__main__":
    main()
