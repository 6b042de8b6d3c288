"""Load and soak: 10,000 jobs and 100,000 tasks inside a recipe of a real ``make -j2``.

Each test runs one Python recipe under make. The recipe joins make's pool (``Jobserver()``
/ ``JobserverExecutor()`` with no arguments), warms up, takes a baseline of what this
process owns, runs the load, and measures again:

* open descriptors (the set of ``/proc/self/fd`` entries and what they point at),
* child processes (pids; the fork server and resource tracker started during warm-up are
  part of the baseline and may stay),
* threads (``/proc/self/task``),
* resident memory (allowed to grow by at most ``RSS_SLACK_MB`` over the warmed-up
  baseline: CPython keeps freed arenas, but nothing may grow with the number of jobs),
* tokens: ``pool.available()`` at the end equals what it was at the start, the pool
  handle holds nothing, and make itself finds every token at exit (no ``INTERNAL:``).

The Jobserver case uses make 4.4.1 (fifo pool), the executor case make 4.3 (pipe pool).
Budget: about 60 s together on 2 CPUs, almost all of it the 10,000 forks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from peers import Peer, clean_environ

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable
RSS_SLACK_MB = 20

COMMON = """
import gc, json, os, sys, threading, time
import psutil

def snapshot():
    gc.collect()
    me = psutil.Process()
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # listdir's own descriptor, closed again
    return {
        "fds": fds,
        "children": sorted(p.pid for p in me.children()),
        "threads": len(os.listdir("/proc/self/task")),
        "rss_mb": me.memory_info().rss / 2**20,
    }

def identity(x):
    return x
"""

JOBS_RECIPE = (
    COMMON
    + """
from makejobs import Jobserver

def main(report_path, total):
    report = {}
    started = time.monotonic()
    js = Jobserver("fork")  # joins make's pool
    pool = js.pool
    report["style"] = pool.style
    report["available_at_start"] = pool.available()
    for f in [js.submit(identity, (i,)) for i in range(200)]:  # warm-up
        f.result()
    report["baseline"] = snapshot()
    done = 0
    # Most jobs by plain submit, in batches whose futures are then dropped...
    while done < total * 4 // 5:
        batch = [js.submit(identity, (i,)) for i in range(done, done + 500)]
        assert [f.result() for f in batch] == list(range(done, done + 500))
        done += 500
    # ...the rest through map, one job per call.
    rest = list(range(done, total))
    assert list(js.map(identity, [(i,) for i in rest])) == rest
    done += len(rest)
    report["jobs"] = done
    report["after"] = snapshot()
    report["implicit_free"] = pool.implicit_free
    report["held"] = pool.held
    report["available_at_end"] = pool.available()
    js.close()
    report["seconds"] = time.monotonic() - started
    with open(report_path, "w") as f:
        json.dump(report, f)

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
"""
)

TASKS_RECIPE = (
    COMMON
    + """
from makejobs import JobserverExecutor
from makejobs.pool import TokenPool

def main(report_path, total):
    report = {}
    started = time.monotonic()
    pool = TokenPool.from_environ()  # the pool the executor will share
    report["style"] = pool.style
    report["available_at_start"] = pool.available()
    report["before_executor"] = snapshot()
    executor = JobserverExecutor()  # joins make's pool
    assert executor.pool._core is pool._core  # a handle of its own on the same pool
    futures = [executor.submit(identity, i) for i in range(2000)]  # warm-up: both workers
    assert [f.result() for f in futures] == list(range(2000))
    del futures
    report["baseline"] = snapshot()
    done = 0
    # Most tasks by plain submit, in batches whose futures are then dropped...
    while done < total * 3 // 5:
        batch = [executor.submit(identity, i) for i in range(done, done + 5000)]
        assert [f.result() for f in batch] == list(range(done, done + 5000))
        done += 5000
    del batch
    # ...the rest through map, chunked.
    rest = range(done, total)
    assert list(executor.map(identity, rest, chunksize=500)) == list(rest)
    done += len(rest)
    report["tasks"] = done
    report["after"] = snapshot()
    report["implicit_free"] = pool.implicit_free
    report["held"] = pool.held
    report["available_at_end"] = pool.available()
    executor.shutdown()
    report["after_shutdown"] = snapshot()
    # Kept for the life of the pool (reused) or the process: the escrow pipes that held
    # the slots, and the guardian's socket and life pipe (see makejobs.guardian).
    from makejobs import guardian
    core, keeper = pool._core, guardian.current(start=False)
    report["kept_fds"] = [str(fd) for e in core.free_tokens + core.free_implicit for fd in (e.r, e.w)]
    if keeper is not None:
        report["kept_fds"] += [str(keeper.life_w), str(keeper._sock.fileno())]
    report["seconds"] = time.monotonic() - started
    pool.close()
    with open(report_path, "w") as f:
        json.dump(report, f)

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
"""
)


def run_recipe(
    make: Peer, tmp_path: Path, code: str, count: int
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    script = tmp_path / "recipe.py"
    script.write_text(textwrap.dedent(code))
    report = tmp_path / "report.json"
    (tmp_path / "Makefile").write_text(f"all:\n\t+@{PY} {script} {report} {count}\n")
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    proc = subprocess.run(
        make.argv("-s", "-j2"),
        cwd=tmp_path,
        env=clean_environ(PYTHONPATH=path, TMPDIR=str(tmp_path)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    # make counts its tokens at exit; a lost or extra one prints "INTERNAL: Exiting with".
    assert "INTERNAL" not in proc.stderr, proc.stderr
    result: dict[str, Any] = json.loads(report.read_text())
    return proc, result


def assert_back_to(baseline: dict[str, Any], after: dict[str, Any], what: str) -> None:
    assert after["fds"] == baseline["fds"], (what, baseline["fds"], after["fds"])
    assert after["children"] == baseline["children"], (what, baseline, after)
    assert after["threads"] == baseline["threads"], (what, baseline, after)
    growth = after["rss_mb"] - baseline["rss_mb"]
    assert growth < RSS_SLACK_MB, (what, f"RSS grew by {growth:.1f} MB")


def assert_tokens_conserved(report: dict[str, Any]) -> None:
    # Under make -j2 the recipe is make's only job: it runs on make's implicit slot and
    # the pool holds make's one token whenever the recipe holds nothing.
    assert report["available_at_start"] == 1, report
    assert report["available_at_end"] == report["available_at_start"], report
    assert report["implicit_free"] and report["held"] == 0, report


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ten_thousand_jobs_through_jobserver_under_make(make441: Peer, tmp_path: Path) -> None:
    _, report = run_recipe(make441, tmp_path, JOBS_RECIPE, 10_000)
    assert report["style"] == "fifo" and report["jobs"] == 10_000
    assert_tokens_conserved(report)
    assert_back_to(report["baseline"], report["after"], "after 10,000 jobs")
    print(
        f"10,000 jobs under make -j2: {report['seconds']:.1f} s,"
        f" RSS {report['baseline']['rss_mb']:.1f} -> {report['after']['rss_mb']:.1f} MB"
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hundred_thousand_tasks_through_executor_under_make(make43: Peer, tmp_path: Path) -> None:
    _, report = run_recipe(make43, tmp_path, TASKS_RECIPE, 100_000)
    assert report["style"] == "pipe" and report["tasks"] == 100_000
    assert_tokens_conserved(report)
    assert_back_to(report["baseline"], report["after"], "after 100,000 tasks")
    # After shutdown: the workers and the manager thread are gone, and so is every fd the
    # executor opened; only the fork server and resource tracker (started by the warm-up,
    # kept by multiprocessing for the life of the process) and makejobs' guardian (started
    # with the first token, kept for the life of the process) may remain.
    before, final = report["before_executor"], report["after_shutdown"]
    assert final["threads"] == before["threads"], (before, final)
    extra_children = set(final["children"]) - set(before["children"])
    assert len(extra_children) <= 3, final
    assert extra_children <= set(report["baseline"]["children"]), (report["baseline"], final)
    opened = {
        fd: target
        for fd, target in final["fds"].items()
        if before["fds"].get(fd) != target and fd not in report["kept_fds"]
    }
    # The fork server's control socket and alive pipe, and the resource tracker's pipe.
    assert len(opened) <= 3, opened
    print(
        f"100,000 tasks under make -j2: {report['seconds']:.1f} s,"
        f" RSS {report['baseline']['rss_mb']:.1f} -> {report['after']['rss_mb']:.1f} MB"
    )
