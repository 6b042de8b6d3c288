"""``makejobs status``: the real reason first, bare -j, fifo pools, and who holds the pool.

Issue 12 item 11 (hints) and issue 15 item 1 (holders, tokens, owner). The pool holders
are found through Linux /proc, so those tests need Linux.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from typing import Any

import pytest

from makejobs.cli._holders import role_of, short_command
from makejobs.protocol import describe_unsupported_auth, unlimited_jobs
from processes import PY, clean_env, mj

LINUX = sys.platform.startswith("linux")


def _status(makeflags: str) -> tuple[str, dict[str, Any]]:
    text = mj("status", env=clean_env(MAKEFLAGS=makeflags))
    report = json.loads(mj("status", "--json", env=clean_env(MAKEFLAGS=makeflags)).stdout)
    return text.stdout, report


@pytest.mark.parametrize(
    ("auth", "reason"),
    [
        ("3", "a single number"),
        ("fifo:", "fifo path is empty"),
        ("99999999999999999999,1", "descriptor too large"),
        ("", "the value is empty"),
    ],
)
def test_a_malformed_auth_gets_its_own_reason_and_no_windows_hint(auth: str, reason: str) -> None:
    text, report = _status(f" -j4 --jobserver-auth={auth}")
    assert reason in report["reason"], report
    assert "Windows" not in text and not any("Windows" in h for h in report["hints"])
    # The reason is what "why not" says, before any note or hint.
    lines = text.splitlines()
    why = next(i for i, line in enumerate(lines) if line.strip().startswith("why not:"))
    assert reason in lines[why]
    assert all(not line.strip().startswith(("note:", "hint:")) for line in lines[:why])


def test_a_semaphore_name_gets_the_windows_hint() -> None:
    text, report = _status(" -j4 --jobserver-auth=gmake_semaphore_1234")
    assert "Windows" in text
    assert report["style"] == "unsupported"
    assert any("Windows semaphore" in hint for hint in report["hints"]), report


def test_bare_j_is_unlimited_not_missing() -> None:
    text, report = _status("-j")
    assert "not given" not in text and "unlimited" in text, text
    assert report["unlimited"] is True and report["jobs"] is None
    assert any("no limit" in hint for hint in report["hints"])
    _text, report = _status("k")
    assert report["unlimited"] is False


def test_a_fifo_pool_says_make_before_4_4_cannot_join_it() -> None:
    done = mj("serve", "-j3", "--style", "fifo", "--", PY, "-m", "makejobs", "status")
    assert done.returncode == 0, done.stderr
    assert "make 4.3 and older cannot join it" in done.stdout, done.stdout
    done = mj("serve", "-j3", "--style", "pipe", "--", PY, "-m", "makejobs", "status")
    assert "cannot join it" not in done.stdout


def test_protocol_helpers() -> None:
    assert unlimited_jobs("-j") and unlimited_jobs("kj") and unlimited_jobs(" -j --jobs")
    assert not unlimited_jobs(" -j4") and not unlimited_jobs("") and not unlimited_jobs("-j -j3")
    assert describe_unsupported_auth("gmake_semaphore_1")[1] is True
    assert describe_unsupported_auth("3,x")[1] is False
    assert describe_unsupported_auth("fifo:/a\nb")[1] is False


def test_roles_are_read_from_command_lines() -> None:
    assert role_of(["/usr/bin/make", "-j4"]) == "make"
    assert role_of(["ninja"]) == "ninja"
    assert role_of(["/home/u/.cargo/bin/cargo", "build"]) == "cargo"
    assert role_of(["/v/bin/python3.11", "/v/bin/makejobs", "serve", "-j4"]) == "makejobs serve"
    assert role_of(["python3", "-m", "makejobs", "run", "-j2"]) == "makejobs run"
    assert role_of(["makejobs", "exec", "--", "x"]) == "makejobs exec"
    assert role_of(["python3", "-m", "makejobs._guardian", "7"]) == "makejobs guardian"
    assert role_of(["/bin/sh", "-c", "true"]) == "shell"
    assert role_of([]).startswith("unknown")
    assert short_command(["/v/bin/python3.11", "/v/bin/makejobs", "serve", "--", "x"]) == (
        "makejobs serve -- x"
    )
    assert short_command(["/usr/bin/make", "-j4"]) == "make -j4"


# Under serve -j4: a makejobs client takes 2 tokens and waits; status looks at the pool.
HOLD_AND_LOOK = textwrap.dedent(
    """
    import subprocess, sys
    from makejobs import TokenPool
    pool = TokenPool.from_environ()
    holder = subprocess.Popen(
        [sys.executable, "-c", sys.argv[1]], env=pool.environ(), pass_fds=pool.pass_fds,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )
    assert holder.stdout.readline() == b"holding\\n"
    look = subprocess.run(
        [sys.executable, "-m", "makejobs", "status", *sys.argv[2:]], env=pool.environ(),
        pass_fds=pool.pass_fds, capture_output=True, text=True,
    )
    holder.stdin.close()
    holder.wait()
    print(look.stdout, end="")
    print("holder", holder.pid, file=sys.stderr)
    """
)
HOLDER = textwrap.dedent(
    """
    import sys
    from makejobs import TokenPool
    pool = TokenPool.from_environ()
    tokens = [pool.acquire(timeout=10) for _ in range(3)]   # implicit slot + 2 tokens
    print("holding", flush=True)
    sys.stdin.read()
    for token in tokens:
        pool.release(token)
    """
)


@pytest.mark.skipif(not LINUX, reason="holders are found through /proc")
def test_status_lists_the_holders_their_tokens_and_the_owner() -> None:
    done = mj("serve", "-j4", "--", PY, "-c", HOLD_AND_LOOK, HOLDER, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    holder_pid = int(done.stderr.split("holder")[1].split()[0])
    by_pid = {h["pid"]: h for h in report["holders"]}
    assert by_pid[holder_pid]["tokens"] == 2, report["holders"]
    owner = report["owner"]
    assert owner["role"] == "makejobs serve" and owner["owner"] is True
    assert report["holders"][0] == owner  # the owner comes first
    # The python that started both holds the pool too, and keeps no ledger record.
    # (makejobs clients may also have guardian processes holding the pool: shown as such.)
    others = [h for h in report["holders"] if h["pid"] not in (holder_pid, owner["pid"])]
    guardians = [h for h in others if "_guardian" in " ".join(h["command"])]
    assert all(h["role"] == "makejobs guardian" for h in guardians)
    others = [h for h in others if h not in guardians]
    assert [h["role"] for h in others] == ["python"] and others[0]["tokens"] is None
    assert report["tokens"] == {
        "total": 3,
        "free": 1,
        "held": 2,
        "held_by_makejobs_clients": 2,
    }
    assert os.getpid() not in by_pid
    text = mj("serve", "-j4", "--", PY, "-c", HOLD_AND_LOOK, HOLDER).stdout
    assert "1 free, 2 held, 2 of them by makejobs clients" in text, text
    assert "makejobs serve, owns the pool: makejobs serve -j4" in text, text
    assert "holds 2 token(s)" in text
