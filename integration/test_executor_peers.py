"""Proof with real peers: JobserverExecutor() inside make recipes shares make's -j limit.

A Makefile run with ``make -j2`` has two Python recipes that each create a default
``JobserverExecutor()`` (which joins the pool make advertises in MAKEFLAGS) and run several
timed tasks on it, next to a shell recipe that runs plain jobs of its own. Every task and
every shell job logs a start and an end (``tests/spans.py``, one CLOCK_MONOTONIC for all
processes); the peak number of overlapping spans must stay at most 2 and reach 2 (there is
enough work). Each executor recipe also reports what it joined and whether its tokens came
back, and make itself must find all its tokens at the end (no ``INTERNAL: Exiting with``).

Styles: GNU make 4.3 (pipe, recipe lines marked '+'), make 4.4.1 (fifo, its default) and
make 4.4.1 with ``--jobserver-style=pipe``. A control without '+' under make 4.3 shows the
executor falling back to one task at a time with a warning instead of misreading fds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from makefiles import mq
from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import LogError, Span, peak_overlap, read_spans

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "recipes" / "job.py"

SLOTS = 2
TASK_SECONDS = 0.3
TASKS_PER_RECIPE = 4
RUN_TIMEOUT = 90

#: What each Python recipe runs: a default executor, tasks that log spans, a JSON report.
RECIPE = textwrap.dedent(
    """
    import json, os, sys, warnings
    sys.path.insert(0, {tests!r})
    import spans
    from makejobs import Jobserver, JobserverExecutor

    def main(name, log, tasks, seconds, report_path, mode):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if mode == "private":  # the control: a pool of its own, ignoring make's
                executor = JobserverExecutor(jobserver=Jobserver(slots=3))
            else:
                executor = JobserverExecutor()  # joins the pool named by MAKEFLAGS
        pool = executor.pool
        report = {{
            "name": name,
            "makeflags": os.environ.get("MAKEFLAGS", ""),
            "style": pool.style,
            "owner": pool.owner,
            "slots": pool.slots,
            "warnings": [str(w.message) for w in caught],
        }}
        with executor:
            futures = [
                executor.submit(spans.run_job, log, f"{{name}}.t{{i}}", seconds)
                for i in range(tasks)
            ]
            for future in futures:
                future.result()
            # Every task is done: the executor must hold nothing now.
            report["idle_implicit_free"] = pool.implicit_free
            report["idle_held"] = pool.held
        report["closed_after_shutdown"] = pool.closed
        with open(report_path, "w") as f:
            json.dump(report, f)

    if __name__ == "__main__":
        name, log, tasks, seconds, report_path, mode = sys.argv[1:]
        main(name, log, int(tasks), float(seconds), report_path, mode)
    """
)

#: (peer fixture, extra make options, the '+' prefix, the style the recipes should join)
VARIANTS = {
    "make43-pipe": ("make43", (), True, "pipe"),
    "make441-fifo": ("make441", (), True, "fifo"),
    "make441-pipe": ("make441", ("--jobserver-style=pipe",), True, "pipe"),
}


class Run:
    def __init__(
        self, proc: subprocess.CompletedProcess[str], spans: list[Span], reports: dict[str, Any]
    ) -> None:
        self.proc = proc
        self.spans = spans
        self.reports = reports

    @property
    def peak(self) -> int:
        return peak_overlap(self.spans)


def run_make(
    make: Peer, workdir: Path, make_args: Sequence[str], plus: bool, mode: str = "join"
) -> Run:
    log = workdir / "spans.log"
    reports = workdir / "reports"
    reports.mkdir()
    recipe = workdir / "executor_recipe.py"
    recipe.write_text(RECIPE.format(tests=str(REPO / "tests")))
    python = mq(sys.executable)
    prefix = "+" if plus else ""
    executor_line = (
        f"\t{prefix}@{python} {mq(recipe)} $@ {mq(log)} {TASKS_PER_RECIPE} {TASK_SECONDS}"
        f" {mq(reports)}/$@.json {mode}\n"
    )
    # The shell recipe: two plain jobs in a row, each holding the recipe's one slot.
    shell_line = (
        f"\t@{python} {mq(JOB)} {mq(log)} sh.1 {TASK_SECONDS} && "
        f"{python} {mq(JOB)} {mq(log)} sh.2 {TASK_SECONDS}\n"
    )
    (workdir / "Makefile").write_text(
        ".PHONY: all py1 py2 sh\n"
        "all: py1 py2 sh\n"
        "py1 py2:\n" + executor_line + "sh:\n" + shell_line
    )
    env = clean_environ(PYTHONPATH=str(REPO))
    proc = run_captured(
        make.argv("-s", f"-j{SLOTS}", *make_args, "-f", str(workdir / "Makefile")),
        workdir,
        RUN_TIMEOUT,
        env=env,
    )
    try:
        spans = read_spans(log)
    except LogError as e:
        pytest.fail(f"{e}\n{describe(proc)}")
    found = {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}
    run = Run(proc, spans, found)
    expected = sorted(
        [f"{r}.t{i}" for r in ("py1", "py2") for i in range(TASKS_PER_RECIPE)] + ["sh.1", "sh.2"]
    )
    assert sorted(s.name for s in spans) == expected, describe(proc)
    assert sorted(found) == ["py1", "py2"], describe(proc)
    print(f"{make.key} -j{SLOTS} {' '.join(make_args)} plus={plus}: peak {run.peak}")
    return run


def assert_make_clean(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, describe(proc)
    assert "INTERNAL: Exiting with" not in proc.stderr, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_executors_and_a_shell_recipe_share_make_j2(
    variant: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    peer_key, make_args, plus, style = VARIANTS[variant]
    make: Peer = request.getfixturevalue(peer_key)
    run = run_make(make, tmp_path, make_args, plus)
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        assert report["style"] == style, (name, report)
        assert report["owner"] is False, (name, report)  # joined, not a private pool
        assert not report["warnings"], (name, report)
        assert report["idle_implicit_free"] and report["idle_held"] == 0, (name, report)
        assert report["closed_after_shutdown"], (name, report)
    assert run.peak <= SLOTS, run.peak
    assert run.peak == SLOTS, run.peak


def test_without_plus_make43_executor_runs_one_task_at_a_time(
    make43: Peer, tmp_path: Path
) -> None:
    """make 4.3 closes the pipe for a recipe line without '+' but leaves MAKEFLAGS naming
    it: the executor must warn and run on its own slot only, never exceed -j2 and never
    lose make's tokens."""
    run = run_make(make43, tmp_path, (), plus=False)
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        assert report["warnings"], (name, report)
        assert any("'+'" in w for w in report["warnings"]), (name, report)
        spans = [s for s in run.spans if s.name.startswith(f"{name}.")]
        assert peak_overlap(spans) == 1, (name, spans)
    assert run.peak <= SLOTS, run.peak


def test_control_private_pools_exceed_the_limit(make43: Peer, tmp_path: Path) -> None:
    """Control: executors on pools of their own break -j2, so the measurement can see it."""
    run = run_make(make43, tmp_path, (), plus=True, mode="private")
    assert run.proc.returncode == 0, describe(run.proc)
    assert run.peak > SLOTS, run.peak
