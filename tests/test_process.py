"""makejobs.process: subprocess.run / Popen that hold one slot and export the pool.

Children are real Python processes that join the pool themselves, so what is checked is
what a make or ninja started this way would see. Nothing waits on a sleep to order
events: a child that must stay alive blocks on its stdin until the test closes it.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

from makejobs.errors import Blocked
from makejobs.pool import Style, TokenPool
from makejobs.process import JobPopen, popen, run
from pools import close_clean
from processes import clean_env

TIMEOUT = 30

# A child that joins the pool it was given and reports what it got.
JOINER = textwrap.dedent(
    """
    import json, os, sys
    from makejobs.pool import TokenPool
    pool = TokenPool.from_environ()
    tokens = []
    while True:
        token = pool.try_acquire()
        if token is None:
            break
        tokens.append(token)
    report = {
        "style": pool.style,
        "slots": len(tokens),
        "implicit": sum(t.implicit for t in tokens),
        "makeflags": os.environ.get("MAKEFLAGS"),
        "cargo": os.environ.get("CARGO_MAKEFLAGS"),
        "foo": os.environ.get("FOO"),
    }
    for token in tokens:
        pool.release(token)
    pool.close()
    print(json.dumps(report))
    """
)


@pytest.fixture(params=["pipe", "fifo"])
def style(request: pytest.FixtureRequest) -> Style:
    return request.param  # type: ignore[no-any-return]


def test_run_exports_pool_and_runs_child_on_its_slot(style: Style) -> None:
    pool = TokenPool.create(3, style=style)
    proc = pool.run(
        [sys.executable, "-c", JOINER],
        env=clean_env(FOO="bar"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report["style"] == style
    # The child runs on our implicit slot (its own implicit one) and takes the 2 tokens.
    assert report["slots"] == 3 and report["implicit"] == 1
    assert "--jobserver-auth=" in report["makeflags"] and "-j3" in report["makeflags"]
    assert "--jobserver-auth=" in report["cargo"]
    assert report["foo"] == "bar"  # the given env is the base of the exported one
    assert pool.implicit_free and pool.held == 0
    assert close_clean(pool) == 2


def test_module_functions_match_methods() -> None:
    pool = TokenPool.create(2)
    proc = run(pool, [sys.executable, "-c", "print('hi')"], capture_output=True, timeout=TIMEOUT)
    assert proc.stdout.strip() == b"hi" and proc.returncode == 0
    with popen(pool, [sys.executable, "-c", "pass"]) as p:
        assert isinstance(p, JobPopen)
    assert p.returncode == 0
    assert close_clean(pool) == 1


def test_slot_is_held_for_the_life_of_the_process() -> None:
    pool = TokenPool.create(1)  # only the implicit slot
    proc = pool.popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        assert proc.slot_token is not None and proc.slot_token.implicit
        assert pool.try_acquire() is None  # the child has the only slot
        assert proc.poll() is None and not pool.implicit_free
    finally:
        proc.communicate(timeout=TIMEOUT)  # closes stdin, waits, reaps
    assert proc.returncode == 0
    assert proc.slot_token is None and pool.implicit_free
    assert close_clean(pool) == 0


def test_slot_goes_back_exactly_once() -> None:
    pool = TokenPool.create(2)
    first = pool.acquire()  # the implicit slot: the child gets the byte token
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        proc = pool.popen([sys.executable, "-c", "pass"])
        assert proc.wait(timeout=TIMEOUT) == 0
        assert pool.held == 0 and pool.available() == 1
        # Every later path that sees the exit must not release again.
        assert proc.wait() == 0
        assert proc.poll() == 0
        proc.send_signal(0)
        with proc:
            pass
        del proc
        gc.collect()
    assert pool.available() == 1
    pool.release(first)
    assert close_clean(pool) == 1


def test_poll_releases_once_the_exit_is_seen() -> None:
    pool = TokenPool.create(1)
    proc = pool.popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    assert proc.poll() is None and not pool.implicit_free
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=TIMEOUT)
    assert pool.implicit_free
    assert close_clean(pool) == 0


def test_slot_timeout_raises_blocked_and_starts_nothing(tmp_path: Path) -> None:
    pool = TokenPool.create(1)
    held = pool.acquire()
    marker = tmp_path / "started"
    with pytest.raises(Blocked):
        pool.run([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], slot_timeout=0.05)
    with pytest.raises(Blocked):
        pool.popen(["true"], slot_timeout=0)
    assert not marker.exists()
    pool.release(held)
    assert close_clean(pool) == 0


def test_spawn_failure_gives_the_slot_back(tmp_path: Path) -> None:
    pool = TokenPool.create(1)
    with pytest.raises(FileNotFoundError):
        pool.popen([str(tmp_path / "no-such-program")])
    with pytest.raises(FileNotFoundError):
        pool.run([str(tmp_path / "no-such-program")])
    assert pool.implicit_free
    assert close_clean(pool) == 0


def test_check_raises_after_the_slot_is_back() -> None:
    pool = TokenPool.create(1)
    with pytest.raises(subprocess.CalledProcessError) as info:
        pool.run(
            [sys.executable, "-c", "import sys; print('out'); sys.exit(3)"],
            capture_output=True,
            check=True,
        )
    assert info.value.returncode == 3 and info.value.stdout.strip() == b"out"
    assert pool.implicit_free
    assert close_clean(pool) == 0


def test_timeout_kills_and_reaps_before_raising() -> None:
    pool = TokenPool.create(1)
    with pytest.raises(subprocess.TimeoutExpired) as info:
        pool.run(
            [sys.executable, "-c", "import sys, time; print('begun', flush=True); time.sleep(60)"],
            capture_output=True,
            timeout=1.0,
        )
    assert info.value.stdout is not None and b"begun" in info.value.stdout
    assert pool.implicit_free  # killed and reaped, so the slot is free again
    assert close_clean(pool) == 0


def test_input_and_text_mode() -> None:
    pool = TokenPool.create(2)
    proc = pool.run(
        [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper())"],
        input="abc",
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.stdout == "ABC"
    with pytest.raises(ValueError):
        pool.run(["true"], input="x", stdin=subprocess.DEVNULL)
    with pytest.raises(ValueError):
        pool.run(["true"], capture_output=True, stdout=subprocess.DEVNULL)
    assert pool.implicit_free
    assert close_clean(pool) == 1


def test_interrupt_during_communicate_reaps_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = TokenPool.create(1)
    started: list[JobPopen] = []
    real = JobPopen.communicate

    def interrupted(self: JobPopen, *args: Any, **kwargs: Any) -> Any:
        started.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(JobPopen, "communicate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pool.run([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(JobPopen, "communicate", real)
    assert started and started[0].returncode is not None  # killed and reaped
    assert pool.implicit_free
    assert close_clean(pool) == 0


def test_user_pass_fds_are_kept_alongside_the_pool() -> None:
    pool = TokenPool.create(2)
    r, w = os.pipe()
    try:
        proc = pool.run(
            [sys.executable, "-c", textwrap.dedent(f"import os\nos.write({w}, b'x')\n") + JOINER],
            env=clean_env(),
            pass_fds=(w,),
            capture_output=True,
            timeout=TIMEOUT,
            check=True,
        )
        assert os.read(r, 1) == b"x"
        assert json.loads(proc.stdout)["slots"] == 2
    finally:
        os.close(r)
        os.close(w)
    assert close_clean(pool) == 1


def test_close_fds_false_is_honoured_without_warnings() -> None:
    pool = TokenPool.create(3)
    r, w = os.pipe()
    os.set_inheritable(w, True)  # close_fds=False passes every inheritable fd
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "pass_fds overriding close_fds"
            proc = pool.run(
                [
                    sys.executable,
                    "-c",
                    textwrap.dedent(f"import os\nos.write({w}, b'y')\n") + JOINER,
                ],
                env=clean_env(),
                close_fds=False,
                capture_output=True,
                timeout=TIMEOUT,
                check=True,
            )
        assert os.read(r, 1) == b"y"
        assert json.loads(proc.stdout)["slots"] == 3
        # The pool's fds went back to close-on-exec.
        assert not any(os.get_inheritable(fd) for fd in pool.pass_fds)
    finally:
        os.close(r)
        os.close(w)
    assert close_clean(pool) == 2


def test_garbage_collection_gives_the_slot_back_with_a_warning() -> None:
    pool = TokenPool.create(1)
    proc = pool.popen([sys.executable, "-c", "pass"])
    pid = proc.pid
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del proc
        gc.collect()
    assert any(
        issubclass(w.category, ResourceWarning) and str(pid) in str(w.message) for w in caught
    )
    assert pool.implicit_free
    assert close_clean(pool) == 0


def test_slot_after_pool_closed_is_not_an_error() -> None:
    pool = TokenPool.create(2)
    held = pool.acquire()  # the implicit slot; the child gets the token
    proc = pool.popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pool.close()  # writes back the token the child's slot is
    proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0 and proc.slot_token is None
    del held
