"""Proof with real peers: TokenPool shares one limit with GNU make 4.3, make 4.4.1 and ninja.

Two directions are exercised:

* **Joining.** A Makefile runs several Python recipes (``recipes/worker.py``) under
  ``make -jN``. Each recipe joins the pool with ``TokenPool.from_environ()`` and runs
  several jobs on as many slots as it can get. Every job logs a start and an end
  timestamp to one shared log (``tests/spans.py``); the peak number of overlapping spans must
  never exceed N and must reach N when there is enough work.
* **Creating.** ``TokenPool.create(N)`` is handed to a child ``make`` or ``ninja`` that
  has no ``-j`` of its own; their jobs (``recipes/job.py``) log spans the same way.

Timing is used only to measure (the logged spans); nothing waits on a sleep to order
events. Every subprocess has a timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from makejobs.errors import TokenCountWarning
from makejobs.pool import Style, TokenPool
from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import LogError, Span, peak_overlap, read_spans

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "recipes" / "worker.py"
JOB = HERE / "recipes" / "job.py"

#: Seconds any single peer run may take before the test fails instead of hanging.
RUN_TIMEOUT = 60
#: Pool size used throughout; 2 cores are enough to run 3 sleeping jobs at once.
SLOTS = 3
#: Length of one job. Long against process start-up, short for the wall-time budget.
JOB_SECONDS = 0.3

#: (peer fixture, extra make options, the style the recipes should see)
MAKE_STYLES = {
    "make43-pipe": ("make43", (), "pipe"),
    "make441-fifo": ("make441", (), "fifo"),
    "make441-pipe": ("make441", ("--jobserver-style=pipe",), "pipe"),
}


def peer_env() -> dict[str, str]:
    """A clean environment (no outer MAKEFLAGS) in which recipes can import makejobs."""
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    return clean_environ(PYTHONPATH=path)


def mk_quote(word: object) -> str:
    """Quote a word for the shell of a make recipe line ($ doubled for make)."""
    return shlex.quote(str(word)).replace("$", "$$")


def run_peer(argv: Sequence[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_captured(argv, cwd, RUN_TIMEOUT, **kwargs)


def assert_make_clean(proc: subprocess.CompletedProcess[str]) -> None:
    """make exited 0 and found every token back (no ``INTERNAL: Exiting with``)."""
    assert proc.returncode == 0, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)


def by_recipe(spans: Sequence[Span]) -> dict[str, list[Span]]:
    groups: dict[str, list[Span]] = {}
    for span in spans:
        groups.setdefault(span.name.split(".")[0], []).append(span)
    return groups


def assert_decoy_untouched(name: str, report: dict[str, Any]) -> None:
    """fds 3-6 were the decoy file before joining and were never read (offset still 0)."""
    for when in ("low_fds_before", "low_fds_after_work"):
        for fd, state in report[when].items():
            assert state.get("kind") == "regular", (name, when, fd, state)
            assert state["offset"] == 0, (name, when, fd, state)


@dataclasses.dataclass
class HarnessRun:
    """One make run over worker recipes: make's result, the spans, the recipes' reports."""

    proc: subprocess.CompletedProcess[str]
    spans: list[Span]
    reports: dict[str, dict[str, Any]]
    decoy: Path

    @property
    def peak(self) -> int:
        return peak_overlap(self.spans)


def run_harness(
    make: Peer,
    workdir: Path,
    *,
    make_args: Sequence[str] = (),
    plus: bool = True,
    recipes: int = 4,
    jobs: int = 3,
    slots: int = SLOTS,
    mode: str = "pool",
    decoy: bool = False,
    deadline: float = 30.0,
    complete: bool = True,
) -> HarnessRun:
    """Run ``make -jSLOTS`` over RECIPES worker recipes of JOBS jobs each.

    ``plus`` marks the recipe lines recursive (``+``). ``decoy`` starts each recipe with
    fds 3 to 6 open on a regular file full of ``+`` bytes (what a stale ``R,W`` may point
    to after the shell reused the numbers). ``complete`` asserts that every job ran.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "spans.log"
    reports = workdir / "reports"
    reports.mkdir()
    decoy_file = workdir / "decoy.txt"
    decoy_file.write_bytes(b"+" * 64)
    targets = [f"r{i}" for i in range(1, recipes + 1)]
    command = " ".join(
        [
            mk_quote(sys.executable),
            mk_quote(WORKER),
            "--name $@",
            f"--jobs {jobs}",
            f"--seconds {JOB_SECONDS}",
            f"--log {mk_quote(log)}",
            f"--report {mk_quote(reports)}/$@.json",
            f"--mode {mode}",
            f"--deadline {deadline}",
        ]
    )
    if decoy:
        command += "".join(f" {fd}<{mk_quote(decoy_file)}" for fd in range(3, 7))
    makefile = workdir / "Makefile"
    makefile.write_text(
        f".PHONY: all {' '.join(targets)}\n"
        f"all: {' '.join(targets)}\n"
        f"{' '.join(targets)}:\n"
        f"\t{'+' if plus else ''}@{command}\n"
    )
    proc = run_peer(
        make.argv("-s", f"-j{slots}", *make_args, "-f", str(makefile)),
        cwd=workdir,
        env=peer_env(),
    )
    found = {p.stem: json.loads(p.read_text()) for p in reports.glob("*.json")}
    try:
        spans = read_spans(log)
    except LogError as e:
        pytest.fail(f"{e}\n{describe(proc)}")
    assert sorted(found) == sorted(targets), describe(proc)
    run = HarnessRun(proc, spans, found, decoy_file)
    expected = sorted(f"{t}.j{i}" for t in targets for i in range(jobs))
    if complete:
        assert sorted(s.name for s in spans) == expected, describe(proc)
    # Shown by `pytest -rP`: the measured numbers behind the assertions.
    print(f"{make.key} -j{slots} {' '.join(make_args)} plus={plus} mode={mode}: peak {run.peak}")
    return run


# --------------------------------------------------------------------------------------
# The measurement itself


def test_peak_overlap_counts_concurrent_spans() -> None:
    spans = [Span("a", 0, 10), Span("b", 2, 5), Span("c", 4, 8), Span("d", 9, 12)]
    assert peak_overlap(spans) == 3  # a, b, c overlap in [4, 5)
    assert peak_overlap([]) == 0


def test_peak_overlap_ends_before_starts_at_equal_times() -> None:
    # A slot handed over at t=5 is one slot, not two.
    assert peak_overlap([Span("a", 0, 5), Span("b", 5, 9), Span("c", 9, 12)]) == 1
    assert peak_overlap([Span("a", 0, 5), Span("b", 4, 9)]) == 2


def test_read_spans_rejects_unfinished_and_torn_logs(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("S 1 a\nE 3 a\nS 2 b\n")
    with pytest.raises(LogError, match="without end"):
        read_spans(log)
    log.write_text("S 1 a\nE 3a\n")
    with pytest.raises(LogError, match="malformed"):
        read_spans(log)
    log.write_text("S 1 a\nE 3 a\nS 4 a\nE 5 a\n")
    with pytest.raises(LogError, match="twice"):
        read_spans(log)


def test_measurement_detects_oversubscription(make43: Peer, tmp_path: Path) -> None:
    """Control: recipes that ignore the pool push the measured peak above -j3."""
    run = run_harness(make43, tmp_path, mode="greedy")
    assert_make_clean(run.proc)
    assert run.peak > SLOTS, run.peak


# --------------------------------------------------------------------------------------
# Python recipes joining make's pool


@pytest.fixture(scope="module", params=sorted(MAKE_STYLES))
def plus_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, HarnessRun]:
    """4 recipes x 3 jobs under make -j3, recipe lines marked '+', one run per style."""
    peer_key, make_args, style = MAKE_STYLES[request.param]
    make: Peer = request.getfixturevalue(peer_key)
    workdir = tmp_path_factory.mktemp(f"plus-{request.param}")
    return style, run_harness(make, workdir, make_args=make_args, plus=True)


def test_plus_recipes_share_make_pool_up_to_n(plus_run: tuple[str, HarnessRun]) -> None:
    style, run = plus_run
    assert_make_clean(run.proc)
    assert "jobserver unavailable" not in run.proc.stderr, describe(run.proc)
    for name, report in run.reports.items():
        assert report["joined"], (name, report)
        assert report["style"] == style, (name, report)
    assert run.peak <= SLOTS, run.peak
    assert run.peak == SLOTS, run.peak
    # The recipes really took tokens beyond their implicit slots.
    assert sum(r["tokens_used"] for r in run.reports.values()) > 0, run.reports


def test_plus_recipes_leave_make_pipe_flags_unchanged(plus_run: tuple[str, HarnessRun]) -> None:
    style, run = plus_run
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        if style == "fifo":
            assert report["pipe_auth"] is None, (name, report)
            continue
        before = report["fds_before"]
        assert before["read"]["kind"] == before["write"]["kind"] == "fifo", (name, report)
        # make 4.3+ makes the read end of its pipe non-blocking itself; seeing that flag
        # shows these are make's shared descriptions, not copies of ours.
        assert before["read"]["flags"] & os.O_NONBLOCK, (name, report)
        for when in ("fds_after_join", "fds_after_work", "fds_after_close"):
            for end in ("read", "write"):
                assert report[when][end]["flags"] == before[end]["flags"], (name, when, end)


def test_plain_recipe_under_make43_refuses_stale_fds(make43: Peer, tmp_path: Path) -> None:
    """make 4.3 leaves stale R,W in MAKEFLAGS for a non-'+' recipe and closes the fds; the
    shell reuses the numbers for a regular file, which must never be read as tokens."""
    run = run_harness(make43, tmp_path, plus=False, decoy=True)
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        assert report["pipe_auth"] is not None, (name, report)  # the stale numbers
        read_fd = report["fds_before"]["read"]
        assert read_fd["open"] and read_fd["kind"] == "regular", (name, report)
        assert not report["joined"], (name, report)
        assert report["unavailable"] is not None and "'+'" in report["unavailable"], report
        assert "regular file" in report["unavailable"], report
        assert_decoy_untouched(name, report)
    assert run.decoy.read_bytes() == b"+" * 64
    # Without a pool each recipe runs its jobs one at a time; make still bounds recipes.
    for name, spans in by_recipe(run.spans).items():
        assert peak_overlap(spans) == 1, name
    assert run.peak <= SLOTS, run.peak


def test_plain_recipe_under_make441_pipe_is_disabled(make441: Peer, tmp_path: Path) -> None:
    """make 4.4.1 appends --jobserver-auth=-2,-2 for a non-'+' recipe in pipe mode."""
    run = run_harness(
        make441, tmp_path, make_args=("--jobserver-style=pipe",), plus=False, decoy=True
    )
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        assert "--jobserver-auth=-2,-2" in report["makeflags"], (name, report)
        assert not report["joined"], (name, report)
        reason = report["unavailable"]
        assert reason is not None and "disabled" in reason and "'+'" in reason, report
        assert report["pipe_auth"] is None, report  # -2,-2 names no fds
        assert_decoy_untouched(name, report)
    for name, spans in by_recipe(run.spans).items():
        assert peak_overlap(spans) == 1, name
    assert run.peak <= SLOTS, run.peak


def test_plain_recipe_under_make441_fifo_joins(make441: Peer, tmp_path: Path) -> None:
    """In fifo mode make 4.4.1 gives the pool to every child, '+' or not."""
    run = run_harness(make441, tmp_path, plus=False)
    assert_make_clean(run.proc)
    for name, report in run.reports.items():
        assert report["joined"] and report["style"] == "fifo", (name, report)
    assert run.peak <= SLOTS, run.peak
    assert run.peak == SLOTS, run.peak
    assert sum(r["tokens_used"] for r in run.reports.values()) > 0, run.reports


def test_thread_per_job_recipes_complete(make43: Peer, tmp_path: Path) -> None:
    """The plainest client: one thread per job, each ``with pool.slot():``. Under -j2 with
    two such recipes, every slot is an implicit one; the jobs must still all run."""
    run = run_harness(
        make43,
        tmp_path,
        plus=True,
        recipes=2,
        slots=2,
        mode="threads",
        deadline=5,
        complete=False,
    )
    stuck = [name for name, report in run.reports.items() if report["stuck"]]
    assert not stuck, f"recipes stuck waiting for a slot: {stuck}\n{describe(run.proc)}"
    assert_make_clean(run.proc)
    assert len(run.spans) == 6, run.spans
    assert run.peak <= 2, run.peak


# --------------------------------------------------------------------------------------
# Pools we create, limiting make and ninja


def close_checked(pool: TokenPool) -> int | None:
    """Close *pool*; fail on any TokenCountWarning."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pool.close()
    bad = [w for w in caught if issubclass(w.category, TokenCountWarning)]
    assert not bad, [str(w.message) for w in bad]
    return result


def run_on_created_pool(
    style: Style, argv: Sequence[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], int | None]:
    pool = TokenPool.create(SLOTS, style=style)
    try:
        proc = run_peer(argv, cwd, env=pool.environ(peer_env()), pass_fds=pool.pass_fds)
    finally:
        returned = close_checked(pool)
    return proc, returned


JOB_NAMES = [f"j{i}" for i in range(1, 10)]


@pytest.mark.parametrize(
    ("peer_key", "style"),
    [("make43", "pipe"), ("make441", "pipe"), ("make441", "fifo")],
    ids=["make43-pipe", "make441-pipe", "make441-fifo"],
)
def test_created_pool_limits_child_make(
    peer_key: str, style: Style, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    log = tmp_path / "spans.log"
    makefile = tmp_path / "Makefile"
    job = f"{mk_quote(sys.executable)} {mk_quote(JOB)} {mk_quote(log)} $@ {JOB_SECONDS}"
    makefile.write_text(
        f".PHONY: all {' '.join(JOB_NAMES)}\n"
        f"all: {' '.join(JOB_NAMES)}\n"
        f"{' '.join(JOB_NAMES)}:\n"
        f"\t@{job}\n"
    )
    # No -j: make must take its parallelism from the pool alone (alone it would run 1).
    proc, returned = run_on_created_pool(style, make.argv("-s", "-f", str(makefile)), tmp_path)
    assert_make_clean(proc)
    assert "jobserver unavailable" not in proc.stderr, describe(proc)
    spans = read_spans(log)
    assert sorted(s.name for s in spans) == sorted(JOB_NAMES)
    peak = peak_overlap(spans)
    print(f"created {style} pool of {SLOTS} -> {make.key}: peak {peak}, close() -> {returned}")
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak
    assert returned == SLOTS - 1


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_created_pool_limits_child_ninja(ninja: Peer, style: Style, tmp_path: Path) -> None:
    log = tmp_path / "spans.log"
    lines = [
        "rule job",
        f"  command = {shlex.quote(sys.executable)} {shlex.quote(str(JOB))}"
        f" {shlex.quote(str(log))} $out {JOB_SECONDS} $out",
    ]
    lines += [f"build {name}: job" for name in JOB_NAMES]
    # Paths with '$', ' ' or ':' would need ninja escapes; tmp_path has none of them.
    assert not any(c in str(tmp_path) + sys.executable for c in "$ :")
    (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
    # No -j: on its own ninja would run (cores + 2) jobs, more than the pool's 3 on 2 cores.
    proc, returned = run_on_created_pool(style, ninja.argv(), tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert "Jobserver mode detected" in proc.stdout, describe(proc)
    spans = read_spans(log)
    assert sorted(s.name for s in spans) == sorted(JOB_NAMES)
    peak = peak_overlap(spans)
    print(f"created {style} pool of {SLOTS} -> ninja: peak {peak}, close() -> {returned}")
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak
    assert returned == SLOTS - 1
