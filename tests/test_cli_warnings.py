"""serve and exec say so when a pool would be escaped or stacked, and how to fix it.

* A ``-j`` given to make or ninja in CMD: make leaves the pool ("-jN forced in submake"),
  ninja ignores it (issue 12 item 10; issue 13 item 5 for serve).
* serve under an inherited usable pool stacks a new pool on top of it; under ``-2,-2``
  (make 4.4's "not recursive" mark) or a bare ``-j`` the parent's jobs are not limited by
  it either.
* exec: a ``-j`` in CMD overrides the count exec hands on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from makejobs.cli._diagnose import jobs_option, program_kind
from processes import PY, clean_env, mj

MAKE = "/usr/bin/make"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["make", "-j8"], ("make", "-j8")),
        (["/usr/bin/make", "-j"], ("make", "-j")),
        (["gmake", "-C", "src", "-j", "4", "all"], ("make", "-j 4")),
        (["make-4.4", "all", "--jobs=3"], ("make", "--jobs=3")),
        (["make", "-kj"], ("make", "-kj")),
        (["make", "--jobs", "2"], ("make", "--jobs 2")),
        (["ninja", "-j8"], ("ninja", "-j8")),
        (["ninja", "-C", "build", "-j", "2"], ("ninja", "-j 2")),
        (["ninja", "-vj3"], ("ninja", "-vj3")),
        # No -j option: a file called -j8, a target after --, another program.
        (["make", "-f", "-j8"], None),
        (["make", "--", "-j4"], None),
        (["ninja", "-C", "-j2"], None),
        (["cargo", "build", "-j8"], None),
        (["makejobs", "run", "-j8"], None),
        ([], None),
    ],
)
def test_jobs_option_is_read_as_make_and_ninja_read_it(
    command: list[str], expected: tuple[str, str] | None
) -> None:
    assert jobs_option(command) == expected


def test_program_kind() -> None:
    assert [program_kind(p) for p in ("x86_64-linux-gnu-make", "makejobs", "remake")] == [
        "make",
        None,
        None,
    ]


def test_serve_warns_about_j_given_to_make_and_ninja() -> None:
    done = mj("serve", "-j4", "--", MAKE, "-j8", "--version")
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "'-j8'" in done.stderr, done.stderr
    assert "forced in submake" in done.stderr and "up to 8 jobs" in done.stderr
    assert "serve -j" in done.stderr  # the fix
    done = mj("serve", "-j4", "--", MAKE, "-j", "--version")
    assert "no limit" in done.stderr, done.stderr
    ninja = str(Path(PY).with_name("ninja"))
    done = mj("serve", "-j4", "--", ninja, "-j", "8", "--version")
    assert "ninja with -j does not use the pool" in done.stderr, done.stderr


def test_serve_is_quiet_without_reasons() -> None:
    done = mj("serve", "-j4", "--", MAKE, "--version")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_serve_warns_when_it_stacks_a_pool_on_an_inherited_one() -> None:
    inner = [PY, "-m", "makejobs", "serve", "-j8", "--", PY, "-c", "pass"]
    done = mj("serve", "-j2", "--", *inner)
    assert done.returncode == 0, done.stderr
    assert "already shared here" in done.stderr and "-j2" in done.stderr, done.stderr
    assert "without serve" in done.stderr


@pytest.mark.parametrize(
    ("makeflags", "words"),
    [
        # make 4.4's mark for a recipe line that is not recursive (pipe mode).
        (" -j4 --jobserver-auth=3,4 --jobserver-auth=-2,-2", ["withheld", "'+'"]),
        # make 4.3's way: the fds named are not open here.
        (" -j4 --jobserver-auth=50,51", ["cannot be used", "not open"]),
        ("-j", ["bare -j", "no limit"]),
    ],
)
def test_serve_explains_a_parent_pool_it_cannot_join(makeflags: str, words: list[str]) -> None:
    done = mj("serve", "-j2", "--", PY, "-c", "pass", env=clean_env(MAKEFLAGS=makeflags))
    assert done.returncode == 0, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_exec_warns_when_a_j_overrides_its_count() -> None:
    def under_pool(*cmd: str) -> str:
        done = mj("serve", "-j3", "--", PY, "-m", "makejobs", "exec", "--max", "2", "--", *cmd)
        assert done.returncode == 0, done.stderr
        return done.stderr

    err = under_pool(MAKE, "-j8", "--version")
    assert "overrides the -j2" in err and "Drop '-j8'" in err, err
    ninja = str(Path(PY).with_name("ninja"))
    err = under_pool(ninja, "-j8", "--version")
    assert "-j '$MAKEJOBS_SLOTS'" in err, err
    # The count exec holds, asked for explicitly: nothing to say.
    assert under_pool(ninja, "-j$MAKEJOBS_SLOTS", "--version") == ""
    assert under_pool(MAKE, "--version") == ""
