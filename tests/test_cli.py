"""The ``makejobs`` command line: serve, exec, run, status (real subprocesses, fast).

Every command runs as ``python -m makejobs`` in a child process with a clean environment
(no outer MAKEFLAGS), so what is tested is what a shell or make would get. Children that
must be running when a signal arrives announce it through a marker file, which the test
polls with a bound; no sleep orders events. Real make/ninja/cargo are exercised in
integration/test_cli_peers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from makejobs import cli
from makejobs.jobserver import usable_cpus
from makejobs.protocol import FifoAuth, PipeAuth, parse_makeflags
from pools import GREEDY
from processes import (
    PY,
    REPO,
    clean_env,
    describe,
    mj,
    on_a_terminal,
    read_terminal,
    start_mj,
    wait_for,
)
from spans import peak_overlap, read_spans, span_commands

TIMEOUT = 30


def py(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


# --------------------------------------------------------------------------------------
# help and entry points


@pytest.mark.parametrize("sub", [[], ["serve"], ["exec"], ["run"], ["status"]])
def test_python_m_help(sub: list[str]) -> None:
    proc = mj(*sub, "--help")
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.startswith("usage: python -m makejobs"), proc.stdout
    assert proc.stderr == ""


def test_help_documents_the_decisions() -> None:
    serve = mj("serve", "--help").stdout
    assert "auto (default)" in serve and "upstream ninja" in serve and "4.3" in serve
    assert "forced in" in serve  # children must not get their own -j
    exec_ = mj("exec", "--help").stdout
    assert cli.SLOTS_VARIABLE in exec_ and "124" in exec_
    status = mj("status", "--help").stdout
    assert "0 a usable pool" in status and "1 none" in status and "2 one is advertised" in status


def test_main_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    assert "usage: makejobs" in capsys.readouterr().out
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: makejobs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", "-j", "0", "--", "true"])
    assert info.value.code == 2


def test_console_script_is_declared() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert 'makejobs = "makejobs.cli:main"' in text
    script = shutil.which("makejobs", path=os.path.dirname(PY))
    if script is not None:  # installed in this environment (pip install -e .)
        proc = subprocess.run(
            [script, "--help"], capture_output=True, text=True, timeout=TIMEOUT, env=clean_env()
        )
        assert proc.returncode == 0 and proc.stdout.startswith("usage: makejobs")


@pytest.mark.parametrize("sub", ["serve", "exec"])
def test_missing_command_is_a_usage_error(sub: str) -> None:
    proc = mj(sub, "--")
    assert proc.returncode == 2
    assert "command" in proc.stderr


# --------------------------------------------------------------------------------------
# status


def test_status_without_pool() -> None:
    proc = mj("status")
    assert proc.returncode == 1, describe(proc)
    assert "none advertised" in proc.stdout and "makejobs serve" in proc.stdout
    report = json.loads(mj("status", "--json").stdout)
    assert report["advertised"] is False and report["usable"] is False
    assert report["variables"] == {"CARGO_MAKEFLAGS": None, "MAKEFLAGS": None, "MFLAGS": None}


def test_status_mentions_make_j_without_pool() -> None:
    proc = mj("status", env=clean_env(MAKEFLAGS=" -j1"))
    assert proc.returncode == 1
    assert "-j1" in proc.stdout and "N > 1" in proc.stdout


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_status_under_serve(style: str) -> None:
    proc = mj("serve", "-j", "3", "--style", style, "--", PY, "-m", "makejobs", "status", "--json")
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout)
    assert report["usable"] is True and report["style"] == style
    assert report["jobs"] == 3 and report["available"] == 2
    if style == "pipe":
        assert report["read_fd"] is not None and report["path"] is None
    else:
        assert report["path"].endswith("fifo") and report["read_fd"] is None
    text = mj("serve", "-j", "3", "--style", style, "--", PY, "-m", "makejobs", "status")
    assert text.returncode == 0 and "jobserver: usable" in text.stdout


@pytest.mark.parametrize(
    ("makeflags", "style", "words"),
    [
        (" -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2", "disabled", ["disabled", "'+'"]),
        (" -j4 --jobserver-auth=57,58", "pipe", ["not open", "'+'"]),
        (" -j4 --jobserver-auth=fifo:/nonexistent/fifo", "fifo", ["does not exist"]),
        (" -j4 --jobserver-auth=gmake_semaphore_12", "unsupported", ["Windows"]),
    ],
)
def test_status_unusable(makeflags: str, style: str, words: list[str]) -> None:
    proc = mj("status", env=clean_env(MAKEFLAGS=makeflags))
    assert proc.returncode == 2, describe(proc)
    assert "NOT usable" in proc.stdout
    for word in words:
        assert word in proc.stdout, proc.stdout
    report = json.loads(mj("status", "--json", env=clean_env(MAKEFLAGS=makeflags)).stdout)
    assert report["advertised"] and not report["usable"] and report["style"] == style
    assert report["reason"] and report["hints"] and report["variable"] == "MAKEFLAGS"


# --------------------------------------------------------------------------------------
# serve


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_serve_exports_the_pool(style: str) -> None:
    proc = mj("serve", "-j", "4", "--style", style, "--", *py(GREEDY))
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout)
    # The command runs on the implicit slot and finds the other 3 as tokens.
    assert report["style"] == style and report["slots"] == 4 and report["jobs"] == 4
    assert "--jobserver-auth=" in report["makeflags"] and "--jobserver-auth=" in report["cargo"]
    assert proc.stderr == ""  # every token came back: nothing to report


def test_serve_keeps_other_makeflags_words() -> None:
    env = clean_env(MAKEFLAGS="ks -j9 --jobserver-auth=-2,-2 -- V=1")
    proc = mj("serve", "-j", "2", "--", *py("import os; print(os.environ['MAKEFLAGS'])"), env=env)
    assert proc.returncode == 0, describe(proc)
    flags = parse_makeflags(proc.stdout.strip())
    assert flags.letters == "ks" and flags.jobs == 2 and isinstance(flags.auth, PipeAuth)
    assert proc.stdout.strip().endswith("-- V=1")


@pytest.mark.parametrize(
    ("code", "status"), [("raise SystemExit(0)", 0), ("raise SystemExit(7)", 7)]
)
def test_serve_passes_the_exit_status_through(code: str, status: int) -> None:
    assert mj("serve", "-j", "2", "--", *py(code)).returncode == status


def test_serve_reports_death_by_signal_as_128_plus_n() -> None:
    proc = mj(
        "serve", "-j", "2", "--", *py("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    )
    assert proc.returncode == 128 + signal.SIGTERM, describe(proc)


def test_serve_command_not_found_or_not_executable(tmp_path: Path) -> None:
    proc = mj("serve", "--", str(tmp_path / "nope"))
    assert proc.returncode == cli.EXIT_NOT_FOUND and "not found" in proc.stderr
    plain = tmp_path / "plain.txt"
    plain.write_text("not a program\n")
    proc = mj("serve", "--", str(plain))
    assert proc.returncode == cli.EXIT_CANNOT_EXECUTE and "cannot execute" in proc.stderr


# A client that is not makejobs (it reads the pipe itself, like make or cargo would) and
# dies holding a token: nothing records it, so serve can only report it missing.
LEAK = """
import os
from makejobs.protocol import parse_makeflags
auth = parse_makeflags(os.environ["MAKEFLAGS"]).auth
os.read(auth.read_fd, 1)
os._exit(0)  # dies holding the token
"""

EXTRA = """
import os
from makejobs.protocol import parse_makeflags
auth = parse_makeflags(os.environ["MAKEFLAGS"]).auth
os.write(auth.write_fd, b"+")  # a token nobody took
"""


def test_serve_reports_missing_and_extra_tokens() -> None:
    proc = mj("serve", "-j", "3", "--", *py(LEAK))
    assert proc.returncode == 0, describe(proc)
    assert "1 jobserver token(s) missing" in proc.stderr and "1 of 2" in proc.stderr
    proc = mj("serve", "-j", "3", "--", *py(EXTRA))
    assert proc.returncode == 0, describe(proc)
    assert "1 extra jobserver token(s)" in proc.stderr
    strict = mj("serve", "-j", "3", "--strict", "--", *py(LEAK))
    assert strict.returncode == cli.EXIT_FAILED and "missing" in strict.stderr
    failing = mj("serve", "-j", "3", "--strict", "--", *py(LEAK.replace("_exit(0)", "_exit(4)")))
    assert failing.returncode == 4  # the command's own failure wins


def test_serve_removes_the_fifo_after_a_normal_exit() -> None:
    proc = mj(
        "serve",
        "--style",
        "fifo",
        "--",
        *py("from makejobs.pool import TokenPool; print(TokenPool.from_environ().auth.path)"),
    )
    assert proc.returncode == 0, describe(proc)
    fifo = Path(proc.stdout.strip())
    assert fifo.name == "fifo" and not fifo.exists() and not fifo.parent.exists()


# A well-behaved client: holds two slots, announces it, and gives them back when told to stop.
HOLDER = """
import signal, sys, time
from pathlib import Path
from makejobs.pool import TokenPool
signal.signal(signal.SIGTERM, signal.default_int_handler)
pool = TokenPool.from_environ()
tokens = [pool.acquire(), pool.acquire()]
print(pool.auth.path if pool.style == "fifo" else "-", flush=True)
Path(sys.argv[1]).touch()
try:
    time.sleep(60)
finally:
    for token in tokens:
        pool.release(token)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_serve_signal_is_passed_on_and_everything_cleaned(
    style: str, signum: int, tmp_path: Path
) -> None:
    marker = tmp_path / "holding"
    proc = start_mj("serve", "-j", "3", "--style", style, "--", *py(HOLDER), str(marker))
    wait_for(marker, proc, "serve")
    started = time.monotonic()
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - started < 10
    # The client returned its tokens and died of an unhandled KeyboardInterrupt, which
    # Python turns into death by SIGINT. After SIGINT serve dies of it too; after SIGTERM
    # it reports the command's SIGINT death as 130.
    expected = -signal.SIGINT if signum == signal.SIGINT else 128 + signal.SIGINT
    assert proc.returncode == expected, (proc.returncode, out, err)
    assert "missing" not in err and "extra" not in err, err
    if style == "fifo":
        fifo = Path(out.strip())
        assert not fifo.exists() and not fifo.parent.exists()


def test_serve_dies_of_the_signal_its_command_died_of(tmp_path: Path) -> None:
    marker = tmp_path / "makeflags"
    script = f'echo "$MAKEFLAGS" > "{marker}.tmp" && mv "{marker}.tmp" "{marker}"; exec sleep 60'
    proc = start_mj("serve", "--style", "fifo", "--", "sh", "-c", script)
    wait_for(marker, proc, "serve")
    auth = parse_makeflags(marker.read_text().strip()).auth
    assert isinstance(auth, FifoAuth) and os.path.exists(auth.path)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=TIMEOUT)
    # sleep died of SIGINT; so does serve, after removing the fifo (a shell then stops too).
    assert proc.returncode == -signal.SIGINT
    assert not os.path.exists(auth.path) and not os.path.exists(os.path.dirname(auth.path))


# --------------------------------------------------------------------------------------
# exec

SHOW = "import json, os; print(json.dumps({k: os.environ.get(k) for k in ('MAKEJOBS_SLOTS', 'A', 'B', 'MAKEFLAGS', 'CARGO_MAKEFLAGS')}))"


def test_exec_without_pool_uses_cpus_or_max() -> None:
    proc = mj("exec", "--", *py(SHOW))
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["MAKEJOBS_SLOTS"] == str(usable_cpus())
    proc = mj("exec", "--max", "5", "--", *py(SHOW))
    assert json.loads(proc.stdout)["MAKEJOBS_SLOTS"] == "5"
    proc = mj("exec", "--min", "3", "--max", "3", "--env", "A", "--env", "B", "--", *py(SHOW))
    shown = json.loads(proc.stdout)
    assert shown["A"] == shown["B"] == "3" and shown["MAKEJOBS_SLOTS"] is None
    assert shown["MAKEFLAGS"] is None  # no pool: the environment is left alone


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_exec_takes_slots_and_hides_the_pool(style: str) -> None:
    inner = [PY, "-m", "makejobs", "exec", "--", *py(SHOW)]
    proc = mj("serve", "-j", "4", "--style", style, "--", *inner)
    assert proc.returncode == 0, describe(proc)
    shown = json.loads(proc.stdout)
    assert shown["MAKEJOBS_SLOTS"] == "4"  # default --max: the pool's -j
    for variable in ("MAKEFLAGS", "CARGO_MAKEFLAGS"):
        flags = parse_makeflags(shown[variable])
        assert not flags.advertises_pool() and flags.jobs == 4, shown
    assert proc.stderr == ""  # all tokens back at the end
    capped = mj(
        "serve",
        "-j",
        "4",
        "--style",
        style,
        "--",
        PY,
        "-m",
        "makejobs",
        "exec",
        "--max",
        "2",
        "--",
        *py(SHOW),
    )
    assert json.loads(capped.stdout)["MAKEJOBS_SLOTS"] == "2" and capped.stderr == ""


def test_exec_passes_the_exit_status_and_returns_slots() -> None:
    proc = mj(
        "serve", "-j", "3", "--", PY, "-m", "makejobs", "exec", "--", *py("raise SystemExit(9)")
    )
    assert proc.returncode == 9 and proc.stderr == "", describe(proc)
    proc = mj("exec", "--", str(Path("/nonexistent/cmd")))
    assert proc.returncode == cli.EXIT_NOT_FOUND


# Runs as the serve command: holds the only token, then runs exec, which cannot get 2 slots.
EXEC_WAIT = """
import subprocess, sys
from makejobs.pool import TokenPool
pool = TokenPool.from_environ()
held = [pool.try_acquire(), pool.try_acquire()]
assert all(t is not None for t in held) and pool.try_acquire() is None
rc = subprocess.run([sys.executable, "-m", "makejobs", "exec", "--min", "2", "--wait", "0.2",
                     "--", "true"]).returncode
for token in held:
    pool.release(token)
raise SystemExit(rc)
"""


def test_exec_wait_gives_up_with_124_and_returns_what_it_took() -> None:
    proc = mj("serve", "-j", "2", "--style", "fifo", "--", *py(EXEC_WAIT))
    assert proc.returncode == cli.EXIT_TIMEOUT, describe(proc)
    assert "only 1 of the 2 slots" in proc.stderr
    assert "missing" not in proc.stderr


def test_exec_min_above_the_pool_is_lowered() -> None:
    proc = mj(
        "serve", "-j", "2", "--", PY, "-m", "makejobs", "exec", "--min", "5", "--", *py(SHOW)
    )
    assert proc.returncode == 0, describe(proc)
    assert json.loads(proc.stdout)["MAKEJOBS_SLOTS"] == "2"
    assert "more than the whole pool" in proc.stderr


def test_exec_with_unusable_pool_warns_and_uses_min() -> None:
    env = clean_env(MAKEFLAGS=" -j8 --jobserver-auth=3,4 --jobserver-auth=-2,-2")
    proc = mj("exec", "--max", "6", "--", *py(SHOW), env=env)
    assert proc.returncode == 0, describe(proc)
    shown = json.loads(proc.stdout)
    assert shown["MAKEJOBS_SLOTS"] == "1"
    assert "disabled" in proc.stderr
    assert parse_makeflags(shown["MAKEFLAGS"]).jobs == 1


def test_exec_substitutes_literal_variables_in_arguments() -> None:
    proc = mj(
        "exec",
        "--max",
        "3",
        "--",
        "echo",
        "$MAKEJOBS_SLOTS",
        "-j${MAKEJOBS_SLOTS}",
        "$MAKEJOBS_SLOTSX",
    )
    assert proc.returncode == 0, describe(proc)
    assert proc.stdout.split() == ["3", "-j3", "$MAKEJOBS_SLOTSX"]
    named = mj("exec", "--max", "2", "--env", "N", "--", "echo", "$N", "$MAKEJOBS_SLOTS")
    assert named.stdout.split() == ["2", "$MAKEJOBS_SLOTS"]


def test_exec_usage_errors() -> None:
    assert mj("exec", "--min", "3", "--max", "2", "--", "true").returncode == 2
    assert mj("exec", "--env", "A=B", "--", "true").returncode == 2
    assert mj("exec", "--wait", "-1", "--", "true").returncode == 2


def test_exec_signal_returns_slots(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    driver = f"""
import subprocess, sys
proc = subprocess.Popen([sys.executable, "-m", "makejobs", "exec", "--", "sh", "-c",
                         'touch "{marker}"; exec sleep 60'])
print(proc.pid, flush=True)
proc.wait()
raise SystemExit(128 - proc.returncode if proc.returncode < 0 else proc.returncode)
"""
    proc = start_mj("serve", "-j", "3", "--style", "fifo", "--", *py(driver))
    assert proc.stdout is not None
    exec_pid = int(proc.stdout.readline())
    wait_for(marker, proc, "exec")
    os.kill(exec_pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    # exec passed SIGTERM on to sleep, which died of it; so did exec, slots given back.
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert "missing" not in err, err


# --------------------------------------------------------------------------------------
# run


def test_run_bounds_concurrency_by_a_new_pool(tmp_path: Path) -> None:
    text, log = span_commands(tmp_path, 6, 0.3)
    proc = mj("run", "-j", "3", input=text)
    assert proc.returncode == 0, describe(proc)
    assert len(log.read_text().splitlines()) == 12
    assert peak_overlap(read_spans(log)) == 3


def test_run_caps_with_j_under_an_inherited_pool(tmp_path: Path) -> None:
    text, log = span_commands(tmp_path, 6, 0.2)
    commands = tmp_path / "commands.txt"
    commands.write_text(text)
    proc = mj(
        "serve", "-j", "4", "--", PY, "-m", "makejobs", "run", "-j", "2", "-f", str(commands)
    )
    assert proc.returncode == 0, describe(proc)
    assert peak_overlap(read_spans(log)) == 2


def test_run_under_serve_uses_its_pool(tmp_path: Path) -> None:
    text, log = span_commands(tmp_path, 8, 0.2)
    commands = tmp_path / "commands.txt"
    commands.write_text(text)
    proc = mj(
        "serve",
        "-j",
        "3",
        "--style",
        "fifo",
        "--",
        PY,
        "-m",
        "makejobs",
        "run",
        "-f",
        str(commands),
    )
    assert proc.returncode == 0, describe(proc)
    assert peak_overlap(read_spans(log)) == 3 and proc.stderr == ""


def test_run_exports_the_pool_to_each_command(tmp_path: Path) -> None:
    script = tmp_path / "greedy.py"
    script.write_text(GREEDY)
    proc = mj("run", "-j", "3", input=f"{PY} {script}\n")
    assert proc.returncode == 0, describe(proc)
    report = json.loads(proc.stdout)
    assert report["slots"] == 3 and report["style"] == "pipe"


def test_run_commands_inherit_the_pool_fds_and_nothing_else(tmp_path: Path) -> None:
    # run starts commands with posix_spawn, which closes nothing itself: an fd
    # run inherited must not reach its commands, the pool's fds must.
    stray_r, stray_w = os.pipe()
    try:
        proc = mj(
            "run",
            "-j",
            "2",
            input="ls /proc/self/fd; echo MAKEFLAGS=$MAKEFLAGS\n",
            pass_fds=(stray_r, stray_w),
        )
    finally:
        os.close(stray_r)
        os.close(stray_w)
    assert proc.returncode == 0, describe(proc)
    lines = proc.stdout.splitlines()
    flags = parse_makeflags(lines[-1].partition("=")[2])
    assert isinstance(flags.auth, PipeAuth)
    fds = {int(word) for word in lines[:-1]}
    pool_fds = {flags.auth.read_fd, flags.auth.write_fd}
    # pass_fds keeps the numbers, and run opened its pool after inheriting them.
    assert not {stray_r, stray_w} & fds, lines
    # 0-2, the pool, and the descriptor ls opened to list the directory.
    assert pool_fds <= fds and len(fds - pool_fds - {0, 1, 2}) == 1, lines


def test_run_commands_get_default_signal_dispositions() -> None:
    # Python ignores SIGPIPE; a command must not inherit that, or `yes | head`
    # would spin on EPIPE instead of dying.
    proc = mj("run", "-j", "1", input="grep -E '^Sig(Ign|Blk):' /proc/self/status\n")
    assert proc.returncode == 0, describe(proc)
    masks = dict(line.split(":") for line in proc.stdout.splitlines())
    ignored = int(masks["SigIgn"].strip(), 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1)), proc.stdout
    assert int(masks["SigBlk"].strip(), 16) == 0, proc.stdout


def test_run_command_stdin_is_dev_null_and_group_is_its_own() -> None:
    proc = mj("run", "-j", "1", input="cat; ps -o pid=,pgid= -p $$\n")
    assert proc.returncode == 0, describe(proc)
    pid, pgid = proc.stdout.split()
    assert pid == pgid


def test_run_reports_a_shell_that_cannot_start_and_keeps_every_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from makejobs.cli import run as run_module

    commands = tmp_path / "c.txt"
    commands.write_text("true\ntrue\n")
    for name in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(run_module, "_SHELL", str(tmp_path / "no-such-shell"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a token missing at close would be a TokenCountWarning
        status = cli.main(["run", "-j", "2", "--keep-going", "-f", str(commands)])
    err = capfd.readouterr().err
    assert status == 1, err
    for number in (1, 2):
        assert f"command {number} failed (cannot start {tmp_path}/no-such-shell:" in err, err
    assert "No such file or directory)" in err, err
    assert "2 of 2 command(s) failed" in err and "came back" not in err, err


def test_run_keeps_each_commands_output_together() -> None:
    lines = [
        f"for i in 1 2 3; do echo c{n}-$i; echo e{n}-$i >&2; sleep 0.05; done" for n in range(4)
    ]
    proc = mj("run", "-j", "4", input="\n".join(lines))
    assert proc.returncode == 0, describe(proc)
    for stream, prefix in ((proc.stdout, "c"), (proc.stderr, "e")):
        got = stream.split()
        assert len(got) == 12
        for k in range(0, 12, 3):
            block = got[k : k + 3]
            n = block[0].split("-")[0]
            assert block == [f"{n}-1", f"{n}-2", f"{n}-3"] and n.startswith(prefix)


def test_run_merges_streams_in_order_when_they_are_one_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    with open(out, "w") as f:
        proc = subprocess.run(
            [PY, "-m", "makejobs", "run", "-j", "2"],
            input="echo a1; echo a2 >&2; echo a3\necho b1 >&2; echo b2\n",
            stdout=f,
            stderr=f,
            text=True,
            env=clean_env(),
            timeout=TIMEOUT,
        )
    assert proc.returncode == 0
    got = out.read_text().split()
    a, b = ["a1", "a2", "a3"], ["b1", "b2"]
    assert got in (a + b, b + a), got


def test_run_stops_after_the_first_failure_unless_keep_going(tmp_path: Path) -> None:
    lines = "echo one\nexit 3\necho three\nkill -9 $$\necho five\n"
    proc = mj("run", "-j", "1", input=lines)
    assert proc.returncode == 1
    assert proc.stdout.split() == ["one"]
    assert "command 2 failed (exit 3)" in proc.stderr
    assert "1 of 5 command(s) failed" in proc.stderr and "3 command(s) not started" in proc.stderr
    proc = mj("run", "-j", "1", "--keep-going", input=lines)
    assert proc.returncode == 1
    assert proc.stdout.split() == ["one", "three", "five"]
    assert "2 of 5 command(s) failed" in proc.stderr and "killed by SIGKILL" in proc.stderr
    assert "not started" not in proc.stderr


def test_run_reads_a_file_skips_blanks_and_comments(tmp_path: Path) -> None:
    commands = tmp_path / "c.txt"
    commands.write_text("# a comment\n\n   \necho hello\n  # indented comment\n")
    proc = mj("run", "-f", str(commands))
    assert proc.returncode == 0 and proc.stdout == "hello\n", describe(proc)
    assert mj("run", input="").returncode == 0
    assert mj("run", "-f", str(tmp_path / "missing")).returncode == 2


def test_run_progress_line_only_on_a_terminal() -> None:
    proc = mj("run", "-j", "2", input="true\ntrue\n")
    assert "\x1b[K" not in proc.stderr
    with on_a_terminal("run", "-j", "2") as (child, terminal):
        out, _ = child.communicate(b"echo x\ntrue\nsleep 0.1\n", timeout=TIMEOUT)
        shown = read_terminal(terminal)
    assert child.returncode == 0 and out == b"x\n"
    assert b"\x1b[K[3/3] 0 running" in shown and b"[0/3]" in shown


def test_run_signal_stops_commands_and_dies_of_it(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    lines = "".join(f'touch "{marker}{i}"; sleep 60\n' for i in range(2)) + "echo never\n"
    commands = tmp_path / "commands.txt"
    commands.write_text(lines)
    proc = start_mj("run", "-j", "2", "-f", str(commands))
    wait_for(Path(f"{marker}0"), proc, "run")
    wait_for(Path(f"{marker}1"), proc, "run")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert time.monotonic() - started < 10
    assert proc.returncode == -signal.SIGTERM, err
    assert "never" not in out
    assert "interrupted by SIGTERM" in err and "1 command(s) not started" in err


def test_run_with_unusable_pool_runs_one_at_a_time(tmp_path: Path) -> None:
    text, log = span_commands(tmp_path, 3, 0.1)
    env = clean_env(MAKEFLAGS=" -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2")
    proc = mj("run", input=text, env=env)
    assert proc.returncode == 0, describe(proc)
    assert "one command at a time" in proc.stderr
    assert peak_overlap(read_spans(log)) == 1
    (tmp_path / "second").mkdir()
    text, log2 = span_commands(tmp_path / "second", 4, 0.2)
    proc = mj("run", "-j", "2", input=text, env=env)
    assert proc.returncode == 0 and "new pool of 2" in proc.stderr
    assert peak_overlap(read_spans(log2)) == 2
