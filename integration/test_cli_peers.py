"""Proof with real peers: the ``makejobs`` command line under and over make, ninja and cargo.

* ``makejobs serve -j 3 -- make`` (make 4.3 and 4.4.1, pipe and fifo), ``serve -- ninja``
  (both styles: the PyPI ninja wheel also accepts pipes) and ``serve -j 2 -- cargo build
  -j 8`` on a path-only workspace the test writes: the peer's jobs log timestamped spans
  (``tests/spans.py``) and the measured peak never exceeds the pool and reaches it.
* ``make -j4`` running ``makejobs run`` and ``makejobs exec`` in '+' recipes next to
  ordinary recipes: everything together stays within make's 4 slots.
* Exit statuses travel through, and every token comes back (serve reports missing or
  extra ones on stderr; make prints ``INTERNAL: Exiting with ...``).
* SIGINT to ``serve`` while make or ninja is mid-build: serve exits promptly (by the same
  signal when the build died of it), the fifo is gone, and the tokens are back (make 4.3,
  ninja). make 4.4.1 as a jobserver *client* often does not write back the tokens of
  recipes it loses to SIGINT (its own root make reports the same loss with ``INTERNAL:
  Exiting with 1 jobserver tokens available``), so there only promptness and cleanup
  are checked.

Spans are the only use of time: recipes that must be running when a signal is sent
announce it with marker files, polled with a bound. Every subprocess has a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from makefiles import mq, q, write_makefile
from makejobs.protocol import FifoAuth, parse_makeflags
from peers import Peer, clean_environ, run_captured
from processes import describe
from spans import logged_peak, peak_overlap, read_spans

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "recipes" / "job.py"
PY = sys.executable
RUN_TIMEOUT = 60
JOB_SECONDS = 0.3
SLOTS = 3


def env(**extra: str) -> dict[str, str]:
    """No outer pool; makejobs importable by ``python -m makejobs`` in recipes."""
    old = os.environ.get("PYTHONPATH")
    path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
    return clean_environ(PYTHONPATH=path, **extra)


def makejobs(*args: str) -> list[str]:
    return [PY, "-m", "makejobs", *args]


def run(argv: Sequence[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return run_captured(argv, cwd, RUN_TIMEOUT, **kwargs)


def assert_tokens_back(proc: subprocess.CompletedProcess[str]) -> None:
    """Neither serve nor a root make found a token missing or extra."""
    assert "token(s) missing" not in proc.stderr, describe(proc)
    assert "extra jobserver token" not in proc.stderr, describe(proc)
    assert "INTERNAL" not in proc.stderr, describe(proc)


def job_line(log: Path, name: str = "$@", seconds: float = JOB_SECONDS) -> str:
    """A make recipe command logging one span (``$@`` stays for make to expand)."""
    return f"{mq(PY)} {mq(JOB)} {mq(log)} {name} {seconds}"


def wait_for_files(paths: Sequence[Path], proc: subprocess.Popen[Any], bound: float = 30) -> None:
    deadline = time.monotonic() + bound
    while not all(p.exists() for p in paths):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"exited {proc.returncode} before the markers appeared\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"markers did not appear within {bound} s")
        time.sleep(0.02)


JOBS = [f"j{i}" for i in range(1, 10)]

SERVE_MAKE = {
    "make43-pipe": ("make43", "pipe"),
    "make441-pipe": ("make441", "pipe"),
    "make441-fifo": ("make441", "fifo"),
}


# --------------------------------------------------------------------------------------
# serve over make, ninja, cargo


@pytest.mark.parametrize("case", sorted(SERVE_MAKE))
def test_serve_limits_make(case: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    peer_key, style = SERVE_MAKE[case]
    make: Peer = request.getfixturevalue(peer_key)
    log = tmp_path / "spans.log"
    write_makefile(tmp_path / "Makefile", {name: "@" + job_line(log) for name in JOBS}, JOBS)
    # No -j for make: it takes its parallelism from the pool alone (alone it runs 1 job).
    proc = run(
        makejobs("serve", "-j", str(SLOTS), "--style", style, "--", make.path, "-s"),
        tmp_path,
        env=env(),
    )
    assert proc.returncode == 0, describe(proc)
    assert "jobserver unavailable" not in proc.stderr, describe(proc)
    assert_tokens_back(proc)
    peak = logged_peak(log, JOBS)
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak


def test_serve_fifo_is_fatal_to_make43_which_is_why_pipe_is_the_default(
    make43: Peer, tmp_path: Path
) -> None:
    write_makefile(tmp_path / "Makefile", {"a": "@true"}, ["a"])
    proc = run(
        makejobs("serve", "-j", "2", "--style", "fifo", "--", make43.path), tmp_path, env=env()
    )
    assert proc.returncode == 2, describe(proc)
    assert "jobserver-auth" in proc.stderr, describe(proc)
    plain = run(makejobs("serve", "-j", "2", "--", make43.path, "-s"), tmp_path, env=env())
    assert plain.returncode == 0, describe(plain)


@pytest.mark.parametrize("peer_key", ["make43", "make441"])
def test_serve_passes_make_failure_through(
    peer_key: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    make: Peer = request.getfixturevalue(peer_key)
    log = tmp_path / "spans.log"
    rules = {"ok1": "@" + job_line(log), "ok2": "@" + job_line(log), "bad": "@exit 3"}
    write_makefile(tmp_path / "Makefile", rules, list(rules))
    proc = run(makejobs("serve", "-j", str(SLOTS), "--", make.path, "-s"), tmp_path, env=env())
    assert proc.returncode == 2, describe(proc)  # make's own status for a failed recipe
    assert_tokens_back(proc)


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_serve_limits_ninja(ninja: Peer, style: str, tmp_path: Path) -> None:
    log = tmp_path / "spans.log"
    assert not any(c in str(tmp_path) + PY for c in "$ :")  # no ninja escapes needed
    lines = [
        "rule job",
        f"  command = {q(PY)} {q(JOB)} {q(log)} $out {JOB_SECONDS} $out",
        *(f"build {name}: job" for name in JOBS),
    ]
    (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
    # No -j: on its own ninja runs cores + 2 jobs, more than the pool.
    proc = run(
        makejobs("serve", "-j", str(SLOTS), "--style", style, "--", ninja.path),
        tmp_path,
        env=env(),
    )
    assert proc.returncode == 0, describe(proc)
    assert "Jobserver mode detected" in proc.stdout + proc.stderr, describe(proc)
    assert_tokens_back(proc)
    peak = logged_peak(log, JOBS)
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak


CRATES = [f"c{i}" for i in range(1, 6)]

BUILD_RS = """\
use std::process::Command;

fn main() {
    // Rerun on every test run, so each run measures the build scripts again.
    println!("cargo:rerun-if-env-changed=MJ_RUN");
    let var = |name: &str| std::env::var(name).expect(name);
    let name = format!("{}.{}", var("CARGO_PKG_NAME"), var("MJ_RUN"));
    let status = Command::new(var("MJ_PYTHON"))
        .args([var("MJ_JOB"), var("MJ_LOG"), name, "0.5".to_string()])
        .status()
        .expect("spawn the span logger");
    assert!(status.success());
}
"""


def make_workspace(root: Path) -> None:
    """A path-only cargo workspace (no registry, works offline) of CRATES."""
    root.mkdir()
    members = ", ".join(f'"{c}"' for c in CRATES)
    (root / "Cargo.toml").write_text(f'[workspace]\nmembers = [{members}]\nresolver = "2"\n')
    for crate in CRATES:
        (root / crate / "src").mkdir(parents=True)
        (root / crate / "Cargo.toml").write_text(
            f'[package]\nname = "{crate}"\nversion = "0.1.0"\nedition = "2021"\nbuild = "build.rs"\n'
        )
        (root / crate / "src" / "lib.rs").write_text("pub fn f() {}\n")
        (root / crate / "build.rs").write_text(BUILD_RS)


def test_serve_limits_cargo_build(cargo: Peer, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    make_workspace(workspace)
    log = tmp_path / "spans.log"
    base = env(
        MJ_PYTHON=PY,
        MJ_JOB=str(JOB),
        MJ_LOG=str(log),
        CARGO_TARGET_DIR=str(tmp_path / "target"),
        CARGO_TERM_COLOR="never",
    )
    build = [cargo.path, "build", "--offline", "-q", "-j", "8"]
    slots = 2
    # cargo's own -j8 does not escape the pool it joins.
    proc = run(
        makejobs("serve", "-j", str(slots), "--", *build), workspace, env={**base, "MJ_RUN": "1"}
    )
    assert proc.returncode == 0, describe(proc)
    assert_tokens_back(proc)
    spans = read_spans(log)
    assert sorted(s.name for s in spans) == sorted(f"{c}.1" for c in CRATES)
    assert peak_overlap(spans) == slots
    # Control: the same build scripts without the pool run more than that at once.
    log.unlink()
    control = run(build, workspace, env={**base, "MJ_RUN": "2"})
    assert control.returncode == 0, describe(control)
    assert peak_overlap(read_spans(log)) > slots


# --------------------------------------------------------------------------------------
# make calling makejobs run / exec

MAKE_STYLES = {"make43-pipe": ("make43", ()), "make441-fifo": ("make441", ())}


@pytest.mark.parametrize("case", sorted(MAKE_STYLES))
def test_make_calls_makejobs_run(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    peer_key, make_args = MAKE_STYLES[case]
    make: Peer = request.getfixturevalue(peer_key)
    log = tmp_path / "spans.log"
    commands = tmp_path / "commands.txt"
    run_jobs = [f"r{i}" for i in range(1, 7)]
    commands.write_text(
        "".join(f"{q(PY)} {q(JOB)} {q(log)} {name} {JOB_SECONDS}\n" for name in run_jobs)
    )
    others = ["a", "b", "c"]
    rules = {"runner": "+@" + " ".join(mq(w) for w in makejobs("run", "-f", str(commands)))}
    rules.update({name: "@" + job_line(log) for name in others})
    write_makefile(tmp_path / "Makefile", rules, list(rules))
    proc = run([make.path, "-s", "-j4", *make_args], tmp_path, env=env())
    assert proc.returncode == 0, describe(proc)
    assert "jobserver unavailable" not in proc.stderr and "makejobs run" not in proc.stderr
    assert_tokens_back(proc)
    peak = logged_peak(log, run_jobs + others)
    assert peak <= 4, peak
    assert peak == 4, peak


def test_make_sees_makejobs_run_failures(make441: Peer, tmp_path: Path) -> None:
    commands = tmp_path / "commands.txt"
    commands.write_text("true\nexit 5\ntrue\n")
    rules = {
        "runner": "+@"
        + " ".join(mq(w) for w in makejobs("run", "--keep-going", "-f", str(commands)))
    }
    write_makefile(tmp_path / "Makefile", rules, ["runner"])
    proc = run([make441.path, "-s", "-j3"], tmp_path, env=env())
    assert proc.returncode == 2, describe(proc)
    assert "1 of 3 command(s) failed" in proc.stderr and "exit 5" in proc.stderr
    assert_tokens_back(proc)


# A tool that does not speak the jobserver: MAKEJOBS_SLOTS threads, each one span.
WIDE = """
import os, sys, threading
sys.path.insert(0, {tests!r})
import spans
log, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
count = int(os.environ["MAKEJOBS_SLOTS"])
with open(sys.argv[4], "w") as f:
    f.write(str(count))
threads = [threading.Thread(target=spans.run_job, args=(log, f"{{name}}.t{{i}}", seconds))
           for i in range(count)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.parametrize("case", sorted(MAKE_STYLES))
def test_make_calls_makejobs_exec(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    peer_key, make_args = MAKE_STYLES[case]
    make: Peer = request.getfixturevalue(peer_key)
    wide = tmp_path / "wide.py"
    wide.write_text(textwrap.dedent(WIDE.format(tests=str(REPO / "tests"))))
    log = tmp_path / "spans.log"

    def exec_line(target: str, *options: str) -> str:
        argv = makejobs(
            "exec",
            *options,
            "--",
            PY,
            str(wide),
            str(log),
            target,
            "0.5",
            str(tmp_path / f"{target}.n"),
        )
        return "+@" + " ".join(mq(w) for w in argv)

    # Alone under -j4, exec gets the whole pool (its default --max is make's -j).
    write_makefile(tmp_path / "Makefile", {"alone": exec_line("alone")}, ["alone"])
    proc = run([make.path, "-s", "-j4", *make_args], tmp_path, env=env())
    assert proc.returncode == 0, describe(proc)
    assert_tokens_back(proc)
    assert (tmp_path / "alone.n").read_text() == "4"
    assert logged_peak(log, [f"alone.t{i}" for i in range(4)]) == 4

    # Next to ordinary recipes: whatever exec gets, the total stays within -j4.
    log.unlink()
    others = ["a", "b", "c", "d", "e"]
    rules = {"wide": exec_line("wide", "--max", "3")}
    rules.update({name: "@" + job_line(log) for name in others})
    write_makefile(tmp_path / "Makefile", rules, list(rules))
    proc = run([make.path, "-s", "-j4", *make_args], tmp_path, env=env())
    assert proc.returncode == 0, describe(proc)
    assert_tokens_back(proc)
    count = int((tmp_path / "wide.n").read_text())
    assert 1 <= count <= 3
    peak = logged_peak(log, others + [f"wide.t{i}" for i in range(count)])
    assert peak <= 4, peak


def test_make_sees_the_exit_status_of_the_exec_command(make43: Peer, tmp_path: Path) -> None:
    argv = makejobs("exec", "--", "sh", "-c", 'exit "$MAKEJOBS_SLOTS"')
    write_makefile(tmp_path / "Makefile", {"x": "+@" + " ".join(mq(w) for w in argv)}, ["x"])
    proc = run([make43.path, "-s", "-j3"], tmp_path, env=env())
    assert proc.returncode == 2 and "Error 3" in proc.stderr, describe(proc)
    assert_tokens_back(proc)


# --------------------------------------------------------------------------------------
# SIGINT during serve

SIGINT_CASES = {
    "make43-pipe": ("make43", "pipe"),
    "make441-fifo": ("make441", "fifo"),
    "ninja-fifo": ("ninja", "fifo"),
    "ninja-pipe": ("ninja", "pipe"),
}


@pytest.mark.parametrize("case", sorted(SIGINT_CASES))
def test_sigint_during_serve_cleans_up(
    case: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    peer_key, style = SIGINT_CASES[case]
    peer: Peer = request.getfixturevalue(peer_key)
    names = ["a", "b", "c"]
    markers = [tmp_path / f"started.{n}" for n in names]
    flags = tmp_path / "makeflags"
    if peer_key == "ninja":
        lines = [
            "rule long",
            f'  command = echo "$$MAKEFLAGS" > {q(flags)}; touch started.$out; exec sleep 60',
        ]
        lines += [f"build {n}: long" for n in names]
        (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
        argv = [peer.path]
    else:
        recipe = f'@echo "$$MAKEFLAGS" > {mq(flags)}; touch started.$@; exec sleep 60'
        write_makefile(tmp_path / "Makefile", {n: recipe for n in names}, names)
        argv = [peer.path, "-s"]
    proc = subprocess.Popen(
        makejobs("serve", "-j", str(SLOTS), "--style", style, "--", *argv),
        cwd=tmp_path,
        env=env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_files(markers, proc)
        auth = parse_makeflags(flags.read_text().strip()).auth
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=RUN_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert time.monotonic() - started < 10
    # make dies of SIGINT, so serve cleans up and dies of it too; ninja catches it and
    # exits 130, which serve passes on as any exit status.
    if peer_key == "ninja":
        assert proc.returncode == 130, (proc.returncode, out, err)
    elif proc.returncode != -signal.SIGINT:
        # make's own race when it and its recipes get SIGINT at once, as from a terminal
        # (reproduced with killpg on a bare make): "wait: No child processes.  Stop."
        assert proc.returncode == 2 and "No child processes" in err, (proc.returncode, out, err)
    if style == "fifo":
        assert isinstance(auth, FifoAuth)
        assert not os.path.exists(auth.path) and not os.path.exists(os.path.dirname(auth.path))
    if peer_key != "make441":
        assert "missing" not in err and "extra" not in err, err
