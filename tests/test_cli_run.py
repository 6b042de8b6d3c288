"""``makejobs run`` as users of make -j/-l, xargs -P and GNU parallel expect it, and every
command's quiet end on a closed standard output (issue 12 items 7-8, issue 15 section 4).

Each test starts ``python -m makejobs`` as a real process. Where commands must be at some
point when something happens (running, or finished in some order), they wait for marker
files with bounded shell loops; nothing waits for a fixed time in their place.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from makejobs.cli._load import runnable_from_loadavg
from makejobs.cli._run_output import JobLog
from makejobs.cli.run import make_dry_run, read_commands
from processes import PY, clean_env, describe, mj, on_a_terminal, read_terminal, start_mj, wait_for
from spans import peak_overlap, read_spans, span_commands

TIMEOUT = 30
# A shell loop that waits (boundedly: 20 s) for the file named by its argument.
WAIT = 'i=0; until [ -e "{0}" ] || [ $i -ge 2000 ]; do sleep 0.01; i=$((i+1)); done'


def wait(path: Path) -> str:
    return WAIT.format(path)


def assert_groups_gone(pids: list[int]) -> None:
    """Every process group led by one of *pids* (one per command) is empty."""
    assert pids
    for pgid in pids:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)


# -- closed standard output (issue 12, item 7) -----------------------------------------------


def closed_pipe() -> int:
    """The write end of a pipe whose reader is already gone (what `| true` becomes)."""
    r, w = os.pipe()
    os.close(r)
    return w


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "PYTHONUNBUFFERED"])
@pytest.mark.parametrize(
    "args", [["status"], ["status", "--json"], ["--help"], ["run", "--help"]], ids=" ".join
)
def test_closed_stdout_ends_quietly_by_sigpipe(args: list[str], buffered: bool) -> None:
    # Before: a BrokenPipeError traceback (status), or "Exception ignored ... BrokenPipeError"
    # and exit 120 when the flush at interpreter exit found the pipe closed (--help).
    environ = clean_env(PYTHONUNBUFFERED="1")
    if buffered:
        del environ["PYTHONUNBUFFERED"]
    w = closed_pipe()
    try:
        proc = mj(*args, env=environ, stdout=w, stderr=subprocess.PIPE, capture_output=False)
    finally:
        os.close(w)
    assert proc.stderr == "", describe(proc)
    if "--help" in args and not buffered:
        # Unbuffered, the failed write happens inside argparse, which ignores it in
        # newer Pythons (exit 0: 3.11.7 does) and raises it in older ones (3.9, 3.10: SIGPIPE
        # here); quiet either way.
        assert proc.returncode in (0, -signal.SIGPIPE), describe(proc)
    else:
        assert proc.returncode == -signal.SIGPIPE, describe(proc)


def test_run_with_closed_stdout_stops_and_reaps_every_command(tmp_path: Path) -> None:
    # The issue's `printf 'echo first\nsleep 3; echo x > orphan.txt\n...' | run -j3 | true`,
    # with the first command waiting until the others have started and said who they are.
    pids = tmp_path / "pids"
    ready = tmp_path / "ready"
    orphan = tmp_path / "orphan.txt"
    started = f'echo $$ >> "{pids}"; [ $(wc -l < "{pids}") -ge 2 ] && touch "{ready}"'
    lines = [
        f"{wait(ready)}; echo first",
        f'{started}; sleep 3; echo x > "{orphan}"',
        f"{started}; sleep 3",
    ]
    w = closed_pipe()
    try:
        proc = mj(
            "run",
            "-j3",
            input="\n".join(lines) + "\n",
            stdout=w,
            stderr=subprocess.PIPE,
            capture_output=False,
        )
    finally:
        os.close(w)
    assert proc.returncode == -signal.SIGPIPE, describe(proc)
    assert proc.stderr == "", describe(proc)
    assert_groups_gone([int(pid) for pid in pids.read_text().split()])
    assert not orphan.exists()  # and, the groups being gone, it never will


def test_run_piped_into_head_exits_quietly(tmp_path: Path) -> None:
    # The issue's `printf 'seq 1 5\nsleep 0.5; echo late\n' | run -j2 | head -1`, with the
    # second command waiting until head has gone (and its shell closed the pipe) instead.
    gone = tmp_path / "gone"
    script = (
        f"printf 'seq 1 5\\n{wait(gone)}; echo late\\n'"
        f' | {PY} -m makejobs run -j2 | {{ head -1; exec <&-; touch "{gone}"; }}'
        '; echo "status=${PIPESTATUS[1]}" >&2'
    )
    proc = subprocess.run(
        ["bash", "-c", script], env=clean_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert proc.stdout == "1\n", describe(proc)
    assert proc.stderr == f"status={128 + signal.SIGPIPE}\n", describe(proc)


def test_run_stops_and_reaps_its_commands_when_it_fails_unexpectedly(tmp_path: Path) -> None:
    # Fault injection: the printer raises when the first command ends.
    pids = tmp_path / "pids"
    ready = tmp_path / "ready"
    script = """
    import sys
    from makejobs.cli import _run_output, main
    def finish(self, job):
        raise RuntimeError("injected")
    _run_output.Printer.finish = finish
    sys.exit(main(["run", "-j", "3"]))
    """
    lines = [wait(ready)] + [
        f'echo $$ >> "{pids}"; [ $(wc -l < "{pids}") -ge 2 ] && touch "{ready}"; sleep 30'
    ] * 2
    proc = subprocess.run(
        [PY, "-c", textwrap.dedent(script)],
        input="\n".join(lines) + "\n",
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 1 and "RuntimeError: injected" in proc.stderr, describe(proc)
    assert_groups_gone([int(pid) for pid in pids.read_text().split()])


def test_run_stops_its_commands_and_dies_of_another_fatal_signal(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    commands = tmp_path / "commands"
    commands.write_text("".join(f'echo $$ > "{marker}{i}"; sleep 30\n' for i in range(2)))
    proc = start_mj("run", "-j", "2", "-f", str(commands))
    for i in range(2):
        wait_for(Path(f"{marker}{i}"), proc, "run", TIMEOUT)
    proc.send_signal(signal.SIGUSR1)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGUSR1, err
    assert "stopped by SIGUSR1" in err
    assert_groups_gone([int(Path(f"{marker}{i}").read_text()) for i in range(2)])


# -- make -n and --dry-run (issue 12 item 8; issue 15) ----------------------------------------


@pytest.mark.parametrize(
    "makeflags, dry",
    [
        ("n -j2 --jobserver-auth=3,4", True),
        ("kn", True),
        ("-n", True),
        (" -j2 --jobserver-auth=3,4", False),
        (" -j2 -- n=1", False),  # a variable override, not a flag
        ("", False),
    ],
)
def test_make_dry_run_is_read_from_makeflags(makeflags: str, dry: bool) -> None:
    assert make_dry_run({"MAKEFLAGS": makeflags}) is dry
    assert make_dry_run({}) is False


@pytest.mark.parametrize("how", ["--dry-run", "-n", "MAKEFLAGS=n"])
def test_dry_run_prints_the_commands_and_runs_none(how: str, tmp_path: Path) -> None:
    made = tmp_path / "made"
    text = f'touch "{made}"\n# a comment\necho a \\\n  b\n'
    if how.startswith("MAKEFLAGS="):
        proc = mj("run", input=text, env=clean_env(MAKEFLAGS="n -j2"))
    else:
        proc = mj("run", how, "--joblog", str(tmp_path / "log"), input=text)
    assert proc.returncode == 0 and proc.stderr == "", describe(proc)
    assert proc.stdout == f'touch "{made}"\necho a \\\n  b\n'
    assert not made.exists()
    assert not (tmp_path / "log").exists()  # GNU parallel writes no job log in a dry run


# -- input ------------------------------------------------------------------------------------


def test_backslash_continues_a_line() -> None:
    text = "echo a \\\n  b\n\n# note \\\nstill the note\necho 'c\\\nd'\necho e\\\\\necho f\\"
    assert read_commands(text) == [
        "echo a \\\n  b",
        "echo 'c\\\nd'",
        "echo e\\\\",
        "echo f\\",
    ]
    proc = mj("run", "-j1", "--keep-order", input=text)
    assert proc.returncode == 0, describe(proc)
    # The shell reads the backslash-newline as it would in a script: joined outside
    # quotes, kept inside single quotes.
    assert proc.stdout == "a b\nc\\\nd\ne\\\nf\\\n"


def test_words_after_the_options_get_a_hint(tmp_path: Path) -> None:
    proc = mj("run", "echo", "hi")
    assert proc.returncode == 2
    assert "standard input or -f FILE" in proc.stderr and "echo 'echo hi' | makejobs run" in (
        proc.stderr
    )
    commands = tmp_path / "cmds.txt"
    commands.write_text("true\n")
    proc = mj("run", str(commands))
    assert proc.returncode == 2 and f"use -f {commands}" in proc.stderr, describe(proc)


# -- -l LOAD ----------------------------------------------------------------------------------


@pytest.mark.parametrize("load, expected", [("0", 1), ("1000", 3)])
def test_load_limit_like_make(load: str, expected: int, tmp_path: Path) -> None:
    # -l 0: the load is always too high, yet one command always runs (make -l 0 too).
    text, log = span_commands(tmp_path, 4, 0.2)
    proc = mj("run", "-j", "3", "-l", load, input=text)
    assert proc.returncode == 0, describe(proc)
    assert len(log.read_text().splitlines()) == 8
    assert peak_overlap(read_spans(log)) == expected


def test_loadavg_runnable_count() -> None:
    assert runnable_from_loadavg("0.52 0.41 0.30 3/345 6789\n") == 3
    assert runnable_from_loadavg("0.52 0.41 0.30") is None
    assert runnable_from_loadavg("0.52 0.41 0.30 x/345 1") is None


def test_bad_load_is_a_usage_error() -> None:
    for value, message in (("-1", "must be 0 or more"), ("x", "not a number"), ("nan", "0 or")):
        proc = mj("run", "-l", value)
        assert proc.returncode == 2 and message in proc.stderr, describe(proc)


# -- output -----------------------------------------------------------------------------------


def reverse_finishers(tmp_path: Path) -> str:
    """Three commands that end in the order 3, 2, 1, each printing its name.

    Each waits until the one after it has been reaped by run (so has been printed, unless
    held back): a zombie still answers ``kill -0``.
    """

    def after(n: int) -> str:
        pid = tmp_path / f"pid{n}"
        return (
            f"{wait(pid)}; i=0; while kill -0 $(cat {pid}) 2>/dev/null && [ $i -lt 2000 ];"
            " do sleep 0.01; i=$((i+1)); done"
        )

    def announce(n: int) -> str:
        pid = tmp_path / f"pid{n}"
        return f'echo $$ > "{pid}.new" && mv "{pid}.new" "{pid}"'

    return (
        f"{after(2)}; echo one; echo e1 >&2; exit 1\n"
        f"{announce(2)}; {after(3)}; echo two\n"
        f"{announce(3)}; echo three\n"
    )


def test_keep_order_prints_in_input_order(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    proc = mj("run", "-j3", "-k", input=reverse_finishers(tmp_path / "a"))
    assert proc.stdout == "three\ntwo\none\n", describe(proc)  # the order they ended in
    (tmp_path / "b").mkdir()
    proc = mj("run", "-j3", "-k", "--keep-order", input=reverse_finishers(tmp_path / "b"))
    assert proc.returncode == 1, describe(proc)
    assert proc.stdout == "one\ntwo\nthree\n"
    assert proc.stderr.startswith("e1\nmakejobs run: command 1 failed (exit 1)"), describe(proc)


def test_line_buffer_prints_lines_as_they_come(tmp_path: Path) -> None:
    release = tmp_path / "release"
    commands = tmp_path / "commands"
    commands.write_text(f"echo early; {wait(release)}; echo late\n")
    proc = start_mj("run", "-j2", "--line-buffer", "-f", str(commands), text=False)
    assert proc.stdout is not None
    # The first line must arrive while its command is still running (grouped output
    # would hold it until the command ends, which it cannot before we release it).
    ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT)
    assert ready
    assert proc.stdout.readline() == b"early\n"
    release.touch()
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and out == b"late\n", err


def test_line_buffer_never_mixes_lines(tmp_path: Path) -> None:
    half, done = tmp_path / "half", tmp_path / "done"
    text = (
        f'printf aa; touch "{half}"; {wait(done)}; echo aa\n'
        f'{wait(half)}; echo bb; touch "{done}"\n'
    )
    for extra in ([], ["--keep-order"]):
        for marker in (half, done):
            marker.unlink(missing_ok=True)
        proc = mj("run", "-j2", "--line-buffer", *extra, input=text)
        assert proc.returncode == 0, describe(proc)
        assert sorted(proc.stdout.splitlines()) == ["aaaa", "bb"], describe(proc)
        if extra:
            assert proc.stdout == "aaaa\nbb\n"


# Runs `makejobs run` in this process and then reports its peak RSS (VmHWM: the high-water
# mark of this address space only; ru_maxrss would also hold the RSS of the process it was
# spawned from, since exec keeps it).
PEAK_RSS = """
import os, sys
from makejobs.cli import main
status = main(sys.argv[1:])
with open("/proc/self/status") as f:
    peak = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
os.write(int(os.environ["PEAK_FD"]), peak.encode())
sys.exit(status)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux's")
def test_large_output_is_spooled_not_held_in_memory(tmp_path: Path) -> None:
    # 64 MB of output held in memory cost twice that before (chunks, then joined).
    size = 64_000_000
    out = tmp_path / "out"
    r, w = os.pipe()
    try:
        with open(out, "wb") as sink:
            proc = subprocess.run(
                [PY, "-c", PEAK_RSS, "run", "-j1"],
                input=f"head -c {size} /dev/zero\n".encode(),
                stdout=sink,
                stderr=subprocess.PIPE,
                env=clean_env(TMPDIR=str(tmp_path), PEAK_FD=str(w)),
                pass_fds=(w,),
                timeout=TIMEOUT,
            )
        os.close(w)
        w = -1
        peak_kib = int(os.read(r, 100))
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size == size
    assert peak_kib < 48 * 1024, f"peak RSS {peak_kib / 1024:.1f} MiB"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the spool file is gone


def test_progress_line_counts_and_eta_on_a_terminal(tmp_path: Path) -> None:
    release = tmp_path / "release"
    with on_a_terminal("run", "-j2", "-k") as (child, terminal):
        assert child.stdin is not None
        child.stdin.write(f"true\nexit 3\n{wait(release)}\n".encode())
        child.stdin.close()
        shown = b""
        deadline = time.monotonic() + TIMEOUT
        while b"ETA" not in shown and time.monotonic() < deadline:
            if select.select([terminal], [], [], 1)[0]:
                shown += os.read(terminal, 4096)
        release.touch()
        child.wait(timeout=TIMEOUT)
        shown += read_terminal(terminal)
    assert child.returncode == 1
    assert re.search(rb"\[2/3\] 1 running, 1 failed, ETA \d+s", shown), shown
    assert b"[3/3] 0 running, 1 failed" in shown, shown


# -- --joblog ---------------------------------------------------------------------------------

JOBLOG_ROW = re.compile(
    r"(?P<seq>\d+)\t:\t(?P<start>\d+\.\d{3})\t(?P<runtime> *\d+\.\d{3})\t0"
    r"\t(?P<receive>\d+)\t(?P<exitval>\d+)\t(?P<signal>\d+)\t(?P<command>[^\t\n]*)"
)


def test_joblog_is_gnu_parallels_format(tmp_path: Path) -> None:
    log = tmp_path / "joblog"
    before = time.time()
    text = "echo hello\nexit 3\nkill -9 $$\necho a\\\necho b\n"
    proc = mj("run", "-j1", "-k", "--joblog", str(log), input=text)
    assert proc.returncode == 1, describe(proc)
    header, *rows = log.read_text().split("\n")[:-1]
    assert header == "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand"
    assert header + "\n" == JobLog.HEADER
    fields = []
    for row in rows:
        match = JOBLOG_ROW.fullmatch(row)
        assert match, row
        fields.append(match.groupdict())
    assert [f["seq"] for f in fields] == ["1", "2", "3", "4"]
    assert [(f["exitval"], f["signal"]) for f in fields] == [
        ("0", "0"),
        ("3", "0"),
        ("0", str(int(signal.SIGKILL))),
        ("0", "0"),
    ]
    assert [f["receive"] for f in fields] == ["6", "0", "0", "8"]  # "hello\n", "aecho b\n"
    assert [f["command"] for f in fields][3] == "echo a\\\0echo b"
    assert all(len(f["runtime"]) == 10 for f in fields)
    assert all(before - 1 <= float(f["start"]) <= time.time() for f in fields)
    # +FILE appends rows, no second header (as GNU parallel).
    assert mj("run", "--joblog", f"+{log}", input="true\n").returncode == 0
    lines = log.read_text().splitlines()
    assert len(lines) == 6 and lines.count(header) == 1 and lines[-1].endswith("\ttrue")


def test_joblog_that_cannot_be_written_is_a_usage_error(tmp_path: Path) -> None:
    proc = mj("run", "--joblog", str(tmp_path / "no" / "such" / "dir"), input="true\n")
    assert proc.returncode == 2 and "cannot write the job log" in proc.stderr, describe(proc)


# -- the exit status convention -----------------------------------------------------------------


def test_help_states_the_exit_status_convention() -> None:
    text = mj("run", "--help").stdout
    for phrase in (
        "exit status: 0 every command succeeded; 1 some failed or were not started; 2 usage",
        "125 makejobs itself failed",
        "SIGPIPE",
        "GNU parallel's",
        "-l LOAD works like make's",
        "--dry-run",
        "--keep-order",
        "--line-buffer",
    ):
        assert phrase in " ".join(text.split()), phrase


def test_exit_statuses_follow_the_convention(tmp_path: Path) -> None:
    assert mj("run", input="true\ntrue\n").returncode == 0
    assert mj("run", "-k", input="true\nexit 7\n").returncode == 1
    assert mj("run", "-j1", input="exit 7\ntrue\n").returncode == 1  # one failed, one not run
    assert mj("run", "--bogus").returncode == 2
