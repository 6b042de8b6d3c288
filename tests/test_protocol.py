"""Tests for makejobs.protocol: the sans-IO MAKEFLAGS codec.

The table cases are the values real peers produce (research/protocol.md §1.2,
observed with GNU make 4.3 and 4.4.1, cargo 1.95 and ninja's jobserver_pool.py)
plus the hand-written spellings make itself accepts.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from makejobs.protocol import (
    FifoAuth,
    MakeFlags,
    PipeAuth,
    escape_word,
    format_makeflags,
    parse_makeflags,
    replace_auth,
    split_words,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

AUTH = "--jobserver-auth"
FDS = "--jobserver-fds"
FLAG_LETTERS = "bBdehikLmnpqrRsStvw"
TMP_FIFO = "/tmp/GMfifo4411"


def flags(**kw: Any) -> MakeFlags:
    """MakeFlags with dry_run derived from letters, like parse does."""
    kw.setdefault("dry_run", "n" in kw.get("letters", ""))
    return MakeFlags(**kw)


# --------------------------------------------------------------------------
# Real MAKEFLAGS values

REAL = [
    pytest.param(
        f"s -j4 {AUTH}=fifo:{TMP_FIFO}",
        flags(auth=FifoAuth(TMP_FIFO), jobs=4, letters="s", source=AUTH),
        id="make441-fifo",
    ),
    pytest.param(
        f"s -j4 {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), jobs=4, letters="s", source=AUTH),
        id="make441-pipe-recursive",
    ),
    pytest.param(
        f"s -j4 {AUTH}=3,4 {AUTH}=-2,-2",
        flags(disabled=True, jobs=4, letters="s", source=AUTH),
        id="make441-pipe-nonrecursive-appended",
    ),
    pytest.param(
        f"s -j4 {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), jobs=4, letters="s", source=AUTH),
        id="make43-pipe",
    ),
    pytest.param(
        f"ks -j3 {AUTH}=fifo:{TMP_FIFO}",
        flags(auth=FifoAuth(TMP_FIFO), jobs=3, letters="ks", source=AUTH),
        id="make441-keep-going",
    ),
    pytest.param("s -j", flags(letters="s"), id="unlimited-j"),
    pytest.param("s -j1", flags(letters="s", jobs=1), id="j1-no-jobserver"),
    pytest.param("s", flags(letters="s"), id="no-j"),
    pytest.param(
        f"s -j4 {AUTH}=fifo:{TMP_FIFO} -- BAZ=a\\ b FOO=bar",
        flags(auth=FifoAuth(TMP_FIFO), jobs=4, letters="s", source=AUTH),
        id="overrides",
    ),
    pytest.param(
        f"s -j4 {AUTH}=3,4 -- FOO={AUTH}=fifo:/evil {AUTH}=9,9 -j99 -n",
        flags(auth=PipeAuth(3, 4), jobs=4, letters="s", source=AUTH),
        id="auth-looking-overrides-ignored",
    ),
    pytest.param(
        f"s -j4 -l8 -Otarget {AUTH}=fifo:{TMP_FIFO} --sync-mutex=fnm:/tmp/GmAbCdEf",
        flags(auth=FifoAuth(TMP_FIFO), jobs=4, letters="s", source=AUTH),
        id="load-and-output-sync",
    ),
    pytest.param(
        f"s -j4 {AUTH}=fifo:/home/u/t\\ d/GMfifo4411",
        flags(auth=FifoAuth("/home/u/t d/GMfifo4411"), jobs=4, letters="s", source=AUTH),
        id="tmpdir-with-space",
    ),
    pytest.param(
        f"n -j4 {AUTH}=fifo:{TMP_FIFO}",
        flags(auth=FifoAuth(TMP_FIFO), jobs=4, letters="n", source=AUTH),
        id="dry-run",
    ),
    pytest.param(
        f"kn -j4 {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), jobs=4, letters="kn", source=AUTH),
        id="dry-run-keep-going",
    ),
    pytest.param(
        f" -j4 {AUTH}=fifo:{TMP_FIFO}",
        flags(auth=FifoAuth(TMP_FIFO), jobs=4, source=AUTH),
        id="sub-make-leading-space",
    ),
    pytest.param(
        f"w -j4 {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), jobs=4, letters="w", source=AUTH),
        id="make43-sub-make-w",
    ),
    pytest.param(
        f"-j {FDS}=6,7 {AUTH}=6,7",
        flags(auth=PipeAuth(6, 7), source=AUTH),
        id="cargo-pipe",
    ),
    pytest.param(
        f"-j {FDS}=fifo:/tmp/jobserver-fifo {AUTH}=fifo:/tmp/jobserver-fifo",
        flags(auth=FifoAuth("/tmp/jobserver-fifo"), source=AUTH),
        id="cargo-fifo",
    ),
    pytest.param(
        f" -j4 {FDS}=5,6 {AUTH}=5,6",
        flags(auth=PipeAuth(5, 6), jobs=4, source=AUTH),
        id="ninja-pool-pipe",
    ),
    pytest.param(
        f" -j4 {AUTH}=fifo:/tmp/ninja-pool/fifo",
        flags(auth=FifoAuth("/tmp/ninja-pool/fifo"), jobs=4, source=AUTH),
        id="ninja-pool-fifo",
    ),
    pytest.param(
        f" {FDS}=3,4 -j",
        flags(auth=PipeAuth(3, 4), source=FDS),
        id="make41-fds",
    ),
    pytest.param("kj4", flags(letters="k", jobs=4), id="hand-written-kj4"),
    pytest.param("-nk", flags(letters="nk"), id="dash-nk"),
    pytest.param("nk", flags(letters="nk"), id="nk"),
    pytest.param(
        f"-j4 {AUTH}=gmake_semaphore_1234",
        flags(unsupported="gmake_semaphore_1234", jobs=4, source=AUTH),
        id="windows-semaphore",
    ),
    pytest.param(
        f"-j {FDS}=__rust_jobserver_semaphore_42 {AUTH}=__rust_jobserver_semaphore_42",
        flags(unsupported="__rust_jobserver_semaphore_42", source=AUTH),
        id="jobserver-rs-windows",
    ),
    pytest.param(f"{AUTH}=3", flags(unsupported="3", source=AUTH), id="garbage-one-number"),
    pytest.param(f"{AUTH}=a,b", flags(unsupported="a,b", source=AUTH), id="garbage-letters"),
    pytest.param(f"{AUTH}=3,4,5", flags(unsupported="3,4,5", source=AUTH), id="garbage-triple"),
    pytest.param(f"{AUTH}=+3,4", flags(unsupported="+3,4", source=AUTH), id="garbage-plus"),
    pytest.param(f"{AUTH}=fifo", flags(unsupported="fifo", source=AUTH), id="garbage-fifo"),
    pytest.param(f"{AUTH}=-1,4", flags(disabled=True, source=AUTH), id="one-negative"),
    pytest.param(
        f"{AUTH}=-99999999999999,-2", flags(disabled=True, source=AUTH), id="huge-negative"
    ),
    pytest.param(f"{AUTH}=0,0", flags(auth=PipeAuth(0, 0), source=AUTH), id="zero-fds"),
    pytest.param(f"{AUTH}=-0,007", flags(auth=PipeAuth(0, 7), source=AUTH), id="minus-zero"),
    pytest.param(f"{AUTH}=5,5", flags(auth=PipeAuth(5, 5), source=AUTH), id="same-fd"),
    pytest.param("", flags(), id="empty"),
    pytest.param(" \t ", flags(), id="blank"),
    pytest.param("\n\t -k", flags(letters="k"), id="leading-newline-skipped"),
    pytest.param("FOO=bar -k", flags(letters="k"), id="first-word-assignment"),
    pytest.param(
        f"--dry-run --keep-going {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), letters="nk", source=AUTH),
        id="long-flags",
    ),
    pytest.param(f"-f {AUTH}=3,4", flags(), id="required-arg-swallows-auth-word"),
    pytest.param(
        f"-C {AUTH}=3,4 {AUTH}=fifo:/x",
        flags(auth=FifoAuth("/x"), source=AUTH),
        id="required-arg-swallows-one-word",
    ),
    pytest.param(
        f"-Ok {AUTH}=3,4",
        flags(auth=PipeAuth(3, 4), source=AUTH),
        id="O-takes-rest-of-word",
    ),
    pytest.param("- -k", flags(letters="k"), id="plain-dash-ignored"),
    pytest.param(
        f"foo.o {AUTH}=3,4 -k",
        flags(auth=PipeAuth(3, 4), letters="k", source=AUTH),
        id="scanning-continues-after-non-option",
    ),
    pytest.param(
        f"{AUTH}=fifo:/a\\\\b\\ c", flags(auth=FifoAuth("/a\\b c"), source=AUTH), id="escapes"
    ),
    pytest.param(
        f"{AUTH}=fifo:/tmp/caf\u00e9/\u6587",
        flags(auth=FifoAuth("/tmp/caf\u00e9/\u6587"), source=AUTH),
        id="unicode-path",
    ),
    pytest.param(
        f"{AUTH}=fifo:/tmp/x\\",
        flags(auth=FifoAuth("/tmp/x\\"), source=AUTH),
        id="final-lone-backslash",
    ),
    pytest.param(
        f"{AUTH}=fifo:/tmp/a\tb", flags(auth=FifoAuth("/tmp/a"), source=AUTH), id="tab-separates"
    ),
]


@pytest.mark.parametrize(("value", "expected"), REAL)
def test_real_values(value: str, expected: MakeFlags) -> None:
    assert parse_makeflags(value) == expected


SPELLINGS = [
    pytest.param("-j4", 4, id="-jN"),
    pytest.param("-j 4", 4, id="-j N"),
    pytest.param("--jobs=4", 4, id="--jobs=N"),
    pytest.param("--jobs 4", 4, id="--jobs N"),
    pytest.param("-kj 4", 4, id="-kj N"),
    pytest.param("kj4", 4, id="kjN"),
    pytest.param("-j", None, id="bare -j"),
    pytest.param("--jobs", None, id="bare --jobs"),
    pytest.param("-j -k", None, id="bare -j then option"),
    pytest.param("-j4 -j", None, id="last -j wins (bare)"),
    pytest.param("-j -j4", 4, id="last -j wins"),
    pytest.param("-j007", 7, id="leading zeros"),
    pytest.param("-l 8 -j2", 2, id="other numeric options"),
]


@pytest.mark.parametrize(("value", "jobs"), SPELLINGS)
def test_jobs_spellings(value: str, jobs: int | None) -> None:
    parsed = parse_makeflags(value)
    assert parsed.jobs == jobs
    assert parsed.problems == ()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(f"{AUTH} fifo:/p", flags(auth=FifoAuth("/p"), source=AUTH), id="auth-fifo"),
        pytest.param(f"{AUTH} 3,4", flags(auth=PipeAuth(3, 4), source=AUTH), id="auth-pipe"),
        pytest.param(f"{FDS} 3,4", flags(auth=PipeAuth(3, 4), source=FDS), id="fds-pipe"),
        pytest.param(
            f"{AUTH} fifo:/a\\ b -k",
            flags(auth=FifoAuth("/a b"), letters="k", source=AUTH),
            id="escaped",
        ),
        pytest.param(f"{AUTH} -k", flags(unsupported="-k", source=AUTH), id="swallows-option"),
        pytest.param(f"{AUTH} --", flags(unsupported="--", source=AUTH), id="swallows-dashdash"),
    ],
)
def test_separate_argument_auth(value: str, expected: MakeFlags) -> None:
    assert parse_makeflags(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            f"{AUTH}=fifo:X {FDS}=8,9", flags(auth=PipeAuth(8, 9), source=FDS), id="fds-last"
        ),
        pytest.param(
            f"{FDS}=8,9 {AUTH}=fifo:X", flags(auth=FifoAuth("X"), source=AUTH), id="auth-last"
        ),
        pytest.param(
            f"{AUTH}=3,4 {AUTH}=-2,-2", flags(disabled=True, source=AUTH), id="then-disabled"
        ),
        pytest.param(
            f"{AUTH}=-2,-2 {AUTH}=fifo:x", flags(auth=FifoAuth("x"), source=AUTH), id="re-enabled"
        ),
        pytest.param(
            f"{AUTH}=gmake_semaphore_1 {FDS}=3,4",
            flags(auth=PipeAuth(3, 4), source=FDS),
            id="unsupported-then-pipe",
        ),
        pytest.param(
            f"{AUTH}=3,4 {FDS}=junk", flags(unsupported="junk", source=FDS), id="pipe-then-junk"
        ),
        pytest.param(
            f"{AUTH}=3,4 {FDS} 5,6 {AUTH} 7,8 {FDS}=9,10",
            flags(auth=PipeAuth(9, 10), source=FDS),
            id="mixed-spellings",
        ),
    ],
)
def test_last_auth_word_wins(value: str, expected: MakeFlags) -> None:
    assert parse_makeflags(value) == expected


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ("-j-3", "negative"),
        ("--jobs=-3", "negative"),
        ("-jfoo", "not a positive integer"),
        ("-j4k", "not a positive integer"),
        ("-j+4", "not a positive integer"),
        ("--jobs=", "not a positive integer"),
        ("-j\u0664", "not a positive integer"),  # Arabic-Indic digit: not ASCII
        ("-j0", "zero"),
        ("-j 0", "zero"),
        ("-j2147483648", "too large"),
        ("-j99999999999999999999999999", "too large"),
        ("--jobs " + "9" * 5000, "too large"),  # beyond int()'s default digit limit
    ],
)
def test_bad_jobs(value: str, cause: str) -> None:
    parsed = parse_makeflags(value)
    assert parsed.jobs is None
    assert len(parsed.problems) == 1
    assert cause in parsed.problems[0]


def test_bad_jobs_then_good_jobs() -> None:
    parsed = parse_makeflags("-jfoo -j3")
    assert parsed.jobs == 3
    assert len(parsed.problems) == 1


def test_largest_jobs_accepted() -> None:
    assert parse_makeflags("-j2147483647").jobs == 2**31 - 1


@pytest.mark.parametrize(
    ("value", "unsupported", "needle"),
    [
        pytest.param(f"{AUTH}=", "", "empty", id="empty-auth"),
        pytest.param(f"{AUTH}=fifo:", "fifo:", "empty", id="empty-fifo-path"),
        pytest.param(f"{AUTH}=2147483648,3", "2147483648,3", "too large", id="fd-too-large"),
        pytest.param(
            f"{AUTH}=3,{'9' * 5000}", f"3,{'9' * 5000}", "too large", id="fd-huge-digits"
        ),
        pytest.param(f"{AUTH}=fifo:/a\nb", "fifo:/a\nb", "newline", id="fifo-newline"),
    ],
)
def test_unusable_auth_is_reported(value: str, unsupported: str, needle: str) -> None:
    parsed = parse_makeflags(value)
    assert parsed.unsupported == unsupported
    assert parsed.auth is None and not parsed.disabled
    assert parsed.source == AUTH
    assert parsed.advertises_pool()
    assert any(needle in p for p in parsed.problems)


def test_largest_fd_accepted() -> None:
    assert parse_makeflags(f"{AUTH}=2147483647,0").auth == PipeAuth(2**31 - 1, 0)


@pytest.mark.parametrize(
    "value",
    [
        "\0",
        f"-k {AUTH}=3,4\0{AUTH}=5,6",
        "\\",
        "\\\\\\",
        " \\ ",
        "\\\t",
        "kx",
        "-x",
        "---",
        "--jobserver-auth",
        "-f",
        "-kf",
        "--dry-run=yes",
        "=",
        "--=",
        "\udcff",
        "\U0001f600 -j\U0001f600",
        "-j" + "9" * 100_000,
    ],
)
def test_odd_input_never_raises(value: str) -> None:
    parsed = parse_makeflags(value)
    assert isinstance(parsed, MakeFlags)


def test_nul_truncates_like_c() -> None:
    parsed = parse_makeflags(f"-k {AUTH}=3,4\0{AUTH}=5,6")
    assert parsed.auth == PipeAuth(3, 4)
    assert any("NUL" in p for p in parsed.problems)


def test_unknown_letter_is_a_problem() -> None:
    parsed = parse_makeflags("kx -j2")
    assert parsed.letters == "k"
    assert parsed.jobs == 2
    assert any("-x" in p for p in parsed.problems)


def test_missing_argument_is_a_problem() -> None:
    parsed = parse_makeflags(f"{AUTH}=3,4 {AUTH}")
    assert parsed.auth == PipeAuth(3, 4)
    assert any("lacks its argument" in p for p in parsed.problems)


def test_unknown_long_options_are_silent() -> None:
    parsed = parse_makeflags("s --shuffle=reverse --future-option --no-print-directory -j2")
    assert parsed == flags(letters="s", jobs=2)


def test_advertises_pool() -> None:
    assert not MakeFlags().advertises_pool()
    assert not MakeFlags(jobs=4, letters="k").advertises_pool()
    assert MakeFlags(auth=PipeAuth(3, 4)).advertises_pool()
    assert MakeFlags(auth=FifoAuth("/x")).advertises_pool()
    assert MakeFlags(disabled=True).advertises_pool()
    assert MakeFlags(unsupported="").advertises_pool()


# --------------------------------------------------------------------------
# Value types


@pytest.mark.parametrize("fds", [(-1, 4), (3, -2), (2**31, 4), (3, 2**40)])
def test_pipe_auth_rejects_bad_fds(fds: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        PipeAuth(*fds)


@pytest.mark.parametrize("fds", [(True, 4), (3.0, 4), ("3", 4)])
def test_pipe_auth_rejects_non_ints(fds: tuple[Any, Any]) -> None:
    with pytest.raises(TypeError):
        PipeAuth(*fds)


@pytest.mark.parametrize("path", ["", "/tmp/a\nb", "/tmp/a\0b"])
def test_fifo_auth_rejects_bad_paths(path: str) -> None:
    with pytest.raises(ValueError):
        FifoAuth(path)


def test_values_are_frozen_and_hashable() -> None:
    mf = parse_makeflags(f"s -j4 {AUTH}=3,4")
    assert hash(mf) == hash(parse_makeflags(f"s -j4 {AUTH}=3,4"))
    with pytest.raises(AttributeError):
        mf.jobs = 5  # type: ignore[misc]


# --------------------------------------------------------------------------
# split_words / escape_word


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", []),
        ("  \t ", []),
        ("a b", ["a", "b"]),
        ("  a \t  b  ", ["a", "b"]),
        ("a\\ b", ["a b"]),
        ("a\\\\ b", ["a\\", "b"]),
        ("a\\\tb", ["a\tb"]),
        ("\\x", ["x"]),
        ("a\\", ["a\\"]),
        ("\\", ["\\"]),
        ("\n a", ["a"]),
        ("a \nb", ["a", "\nb"]),
        ("a\nb", ["a\nb"]),
    ],
)
def test_split_words(value: str, words: list[str]) -> None:
    assert split_words(value) == words


@pytest.mark.parametrize(
    ("word", "escaped"),
    [
        ("plain", "plain"),
        ("a b", "a\\ b"),
        ("a\tb", "a\\\tb"),
        ("a\\b", "a\\\\b"),
        ("\nx", "\\\nx"),
        ("$x", "$x"),
    ],
)
def test_escape_word(word: str, escaped: str) -> None:
    assert escape_word(word) == escaped


@FAST
@given(st.lists(st.text(min_size=1), max_size=6))
def test_escape_split_round_trip(words: list[str]) -> None:
    assert split_words(" ".join(escape_word(w) for w in words)) == words


# --------------------------------------------------------------------------
# format_makeflags


@pytest.mark.parametrize(
    ("mf", "text"),
    [
        pytest.param(MakeFlags(), "", id="nothing"),
        pytest.param(MakeFlags(letters="s"), "s", id="letters-only"),
        pytest.param(MakeFlags(jobs=4), " -j4", id="leading-space"),
        pytest.param(
            MakeFlags(auth=PipeAuth(3, 4), jobs=4, letters="ks"),
            f"ks -j4 {FDS}=3,4 {AUTH}=3,4",
            id="pipe",
        ),
        pytest.param(
            MakeFlags(auth=FifoAuth("/tmp/t d/GMfifo1"), jobs=4),
            f" -j4 {AUTH}=fifo:/tmp/t\\ d/GMfifo1",
            id="fifo-escaped",
        ),
        pytest.param(
            MakeFlags(auth=FifoAuth("C:\\x\ty")), f" {AUTH}=fifo:C:\\\\x\\\ty", id="fifo-backslash"
        ),
        pytest.param(MakeFlags(disabled=True), f" {AUTH}=-2,-2", id="disabled"),
        pytest.param(
            MakeFlags(unsupported="gmake_semaphore_1234", letters="n", dry_run=True),
            f"n {AUTH}=gmake_semaphore_1234",
            id="unsupported",
        ),
        pytest.param(MakeFlags(unsupported="a b"), f" {AUTH}=a\\ b", id="unsupported-escaped"),
    ],
)
def test_format(mf: MakeFlags, text: str) -> None:
    assert format_makeflags(mf) == text


def test_format_ignores_source_and_problems() -> None:
    mf = MakeFlags(auth=PipeAuth(3, 4), source=FDS, problems=("x",))
    assert format_makeflags(mf) == format_makeflags(MakeFlags(auth=PipeAuth(3, 4)))


@pytest.mark.parametrize(
    "mf",
    [
        pytest.param(MakeFlags(letters="j"), id="letter-j"),
        pytest.param(MakeFlags(letters="kl"), id="letter-l"),
        pytest.param(MakeFlags(letters="O"), id="letter-O"),
        pytest.param(MakeFlags(letters="k x"), id="letter-space"),
        pytest.param(MakeFlags(letters="-k"), id="letter-dash"),
        pytest.param(MakeFlags(letters="n"), id="n-without-dry-run"),
        pytest.param(MakeFlags(dry_run=True), id="dry-run-without-n"),
        pytest.param(MakeFlags(jobs=0), id="jobs-zero"),
        pytest.param(MakeFlags(jobs=-1), id="jobs-negative"),
        pytest.param(MakeFlags(jobs=2**31), id="jobs-huge"),
        pytest.param(MakeFlags(auth=PipeAuth(3, 4), disabled=True), id="auth-and-disabled"),
        pytest.param(MakeFlags(auth=PipeAuth(3, 4), unsupported="x"), id="auth-and-unsupported"),
        pytest.param(MakeFlags(disabled=True, unsupported="x"), id="disabled-and-unsupported"),
        pytest.param(MakeFlags(unsupported=""), id="unsupported-empty"),
        pytest.param(MakeFlags(unsupported="3,4"), id="unsupported-is-pipe"),
        pytest.param(MakeFlags(unsupported="-2,-2"), id="unsupported-is-disabled"),
        pytest.param(MakeFlags(unsupported="fifo:/x"), id="unsupported-is-fifo"),
        pytest.param(MakeFlags(unsupported="fifo:"), id="unsupported-empty-fifo"),
        pytest.param(MakeFlags(unsupported="2147483648,1"), id="unsupported-huge-fd"),
        pytest.param(MakeFlags(unsupported="a\nb"), id="unsupported-newline"),
        pytest.param(MakeFlags(unsupported="a\0b"), id="unsupported-nul"),
    ],
)
def test_format_rejects_invalid(mf: MakeFlags) -> None:
    with pytest.raises(ValueError):
        format_makeflags(mf)


@pytest.mark.parametrize(
    "mf",
    [
        pytest.param(MakeFlags(jobs=True), id="jobs-bool"),
        pytest.param(MakeFlags(jobs=2.0), id="jobs-float"),  # type: ignore[arg-type]
        pytest.param(MakeFlags(auth="3,4"), id="auth-str"),  # type: ignore[arg-type]
    ],
)
def test_format_rejects_wrong_types(mf: MakeFlags) -> None:
    with pytest.raises(TypeError):
        format_makeflags(mf)


def test_format_output_is_read_back_by_make_style_split() -> None:
    # What make's own decoder sees: the fifo word is one word, unescaped.
    text = format_makeflags(MakeFlags(auth=FifoAuth("/t d/\\f"), jobs=2, letters="s"))
    assert split_words(text) == ["s", "-j2", f"{AUTH}=fifo:/t d/\\f"]


# --------------------------------------------------------------------------
# Round trip

fds = st.integers(min_value=0, max_value=2**31 - 1)
exportable_text = st.text(min_size=1).filter(lambda t: "\n" not in t and "\0" not in t)
PIPE_LIKE = re.compile(r"-?[0-9]+,-?[0-9]+")


def is_plain_unsupported(text: str) -> bool:
    """Independent statement of what reads back as unsupported without problems."""
    return (
        text != ""
        and "\n" not in text
        and "\0" not in text
        and not text.startswith("fifo:")
        and PIPE_LIKE.fullmatch(text) is None
    )


unsupported_texts = st.one_of(
    st.sampled_from(
        ["gmake_semaphore_1234", "__rust_jobserver_semaphore_7", "3", "a,b", "3,4,5", "fifo"]
    ),
    st.text(min_size=1).filter(is_plain_unsupported),
)


@st.composite
def valid_flags(draw: st.DrawFn) -> MakeFlags:
    letters = draw(st.text(alphabet=FLAG_LETTERS, max_size=6))
    jobs = draw(st.none() | st.integers(min_value=1, max_value=2**31 - 1))
    kind = draw(st.sampled_from(["none", "pipe", "fifo", "disabled", "unsupported"]))
    extra: dict[str, Any] = {}
    if kind == "pipe":
        extra["auth"] = PipeAuth(draw(fds), draw(fds))
    elif kind == "fifo":
        extra["auth"] = FifoAuth(draw(exportable_text))
    elif kind == "disabled":
        extra["disabled"] = True
    elif kind == "unsupported":
        extra["unsupported"] = draw(unsupported_texts)
    source = None if kind == "none" else AUTH
    return MakeFlags(letters=letters, dry_run="n" in letters, jobs=jobs, source=source, **extra)


@FAST
@given(valid_flags())
def test_parse_format_round_trip(mf: MakeFlags) -> None:
    assert parse_makeflags(format_makeflags(mf)) == mf


@FAST
@given(st.builds(FifoAuth, exportable_text))
def test_fifo_path_round_trip(auth: FifoAuth) -> None:
    assert parse_makeflags(format_makeflags(MakeFlags(auth=auth))).auth == auth


# --------------------------------------------------------------------------
# Parse never raises

FRAGMENTS = [
    "--jobserver-auth=",
    "--jobserver-fds=",
    "--jobserver-auth",
    "--jobserver-fds",
    "--jobs",
    "--jobs=",
    "-j",
    "fifo:",
    "/tmp/x",
    "-",
    "--",
    ",",
    "0",
    "3",
    "4",
    "2147483648",
    "99999999999",
    "\\",
    " ",
    "\t",
    "\\ ",
    "=",
    "k",
    "n",
    "s",
    "f",
    "O",
    "C",
    "\n",
    "\r",
    "\u00e9",
]

near_valid_values = st.lists(
    st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join), max_size=8
).map(" ".join)


@FAST
@given(st.text())
def test_parse_never_raises_on_text(value: str) -> None:
    parsed = parse_makeflags(value)
    check_invariants(parsed)


@FAST
@given(near_valid_values)
def test_parse_never_raises_on_near_valid(value: str) -> None:
    parsed = parse_makeflags(value)
    check_invariants(parsed)


def check_invariants(mf: MakeFlags) -> None:
    assert (mf.auth is not None) + mf.disabled + (mf.unsupported is not None) <= 1
    assert (mf.source is not None) == mf.advertises_pool()
    assert mf.source in (None, AUTH, FDS)
    assert set(mf.letters) <= set(FLAG_LETTERS)
    assert mf.dry_run == ("n" in mf.letters)
    assert mf.jobs is None or 1 <= mf.jobs < 2**31
    assert all(isinstance(p, str) and p for p in mf.problems)
    if mf.unsupported is not None and not mf.problems:
        # Clean unsupported text is exportable as is.
        assert is_plain_unsupported(mf.unsupported)
    if not mf.problems and mf.source == AUTH:
        # A clean parse with the modern spelling is reproduced exactly.
        assert parse_makeflags(format_makeflags(mf)) == mf


# --------------------------------------------------------------------------
# replace_auth: exact results


@pytest.mark.parametrize(
    ("value", "auth", "kw", "expected"),
    [
        pytest.param(
            f"s -j4 {AUTH}=fifo:{TMP_FIFO}",
            PipeAuth(5, 6),
            {},
            f"s -j4 {FDS}=5,6 {AUTH}=5,6",
            id="keep-jobs",
        ),
        pytest.param(
            f"s -j4 {AUTH}=fifo:{TMP_FIFO}",
            PipeAuth(5, 6),
            {"jobs": 3},
            f"s -j3 {FDS}=5,6 {AUTH}=5,6",
            id="replace-jobs",
        ),
        pytest.param(
            f"s -j4 {AUTH}=3,4 -- BAZ=a\\ b FOO={AUTH}=9,9",
            FifoAuth("/p q"),
            {},
            f"s -j4 {AUTH}=fifo:/p\\ q -- BAZ=a\\ b FOO={AUTH}=9,9",
            id="before-overrides",
        ),
        pytest.param(
            f"-k {AUTH} fifo:/old -j 2 {FDS} 3,4 -w",
            PipeAuth(7, 8),
            {"jobs": 5},
            f" -k -w -j5 {FDS}=7,8 {AUTH}=7,8",
            id="separate-argument-forms",
        ),
        pytest.param(
            f"kj4 {AUTH}=3,4",
            PipeAuth(7, 8),
            {"jobs": 2},
            f"k -j2 {FDS}=7,8 {AUTH}=7,8",
            id="cluster-j-trimmed",
        ),
        pytest.param(
            f"kj4 {AUTH}=3,4",
            PipeAuth(7, 8),
            {},
            f"kj4 {FDS}=7,8 {AUTH}=7,8",
            id="cluster-j-kept-without-jobs",
        ),
        pytest.param("-kj 4 -s", None, {"jobs": 2}, " -k -s -j2", id="cluster-j-separate-arg"),
        pytest.param(
            f"-j {FDS}=6,7 {AUTH}=6,7",
            FifoAuth("/f"),
            {},
            f" -j {AUTH}=fifo:/f",
            id="cargo",
        ),
        pytest.param(
            f"s -j4 {AUTH}=3,4", None, {"disabled": True}, f"s -j4 {AUTH}=-2,-2", id="disable"
        ),
        pytest.param(f"s -j4 {AUTH}=3,4", None, {}, "s -j4", id="strip"),
        pytest.param(f" {AUTH}=3,4", None, {}, "", id="strip-to-empty"),
        pytest.param(
            f"s --sync-mutex=fnm:/tmp/a\\ b {AUTH}=3,4 -l8",
            PipeAuth(5, 6),
            {},
            f"s --sync-mutex=fnm:/tmp/a\\ b -l8 {FDS}=5,6 {AUTH}=5,6",
            id="other-words-verbatim",
        ),
        pytest.param("", PipeAuth(3, 4), {"jobs": 4}, f" -j4 {FDS}=3,4 {AUTH}=3,4", id="empty"),
        pytest.param("  \t", FifoAuth("/f"), {}, f" {AUTH}=fifo:/f", id="blank"),
        pytest.param("", None, {}, "", id="empty-strip"),
        pytest.param("-- A=1", FifoAuth("/f"), {}, f" {AUTH}=fifo:/f -- A=1", id="only-overrides"),
        pytest.param(
            f"{AUTH}=3,4 foo", FifoAuth("/f"), {}, f" {AUTH}=fifo:/f foo", id="promotion-hazard"
        ),
        pytest.param(f"{AUTH}=3,4 foo", None, {}, " - foo", id="promotion-hazard-strip"),
        pytest.param(
            "j4 foo",
            FifoAuth("/f"),
            {"jobs": 2},
            f" -j2 {AUTH}=fifo:/f foo",
            id="promotion-hazard-letters-word",
        ),
        pytest.param(
            "-k -f", FifoAuth("/f"), {}, f" -k {AUTH}=fifo:/f -f", id="trailing-missing-arg"
        ),
        pytest.param("kf", FifoAuth("/f"), {}, f" {AUTH}=fifo:/f -kf", id="dashless-missing-arg"),
        pytest.param(
            "-k abc\\", FifoAuth("/f"), {}, f" -k abc\\\\ {AUTH}=fifo:/f", id="dangling-backslash"
        ),
        pytest.param(
            f"-f {AUTH}=3,4",
            FifoAuth("/f"),
            {},
            f" -f {AUTH}=3,4 {AUTH}=fifo:/f",
            id="auth-word-that-is-an-argument-kept",
        ),
        pytest.param(
            f"{AUTH}= \n{AUTH}=",
            None,
            {},
            f"\\\n{AUTH}=",
            id="promoted-word-with-leading-newline-escaped",
        ),
        pytest.param(
            f"{AUTH}=3,4 \r=", None, {}, "\\\r=", id="promoted-word-with-leading-cr-escaped"
        ),
        pytest.param(
            f"s {AUTH}=3,4 -- {AUTH}=9,9 -j8",
            PipeAuth(1, 2),
            {"jobs": 3},
            f"s -j3 {FDS}=1,2 {AUTH}=1,2 -- {AUTH}=9,9 -j8",
            id="overrides-untouched",
        ),
        # Dropping the auth word must not hand "3" to the bare --jobs (found by hypothesis).
        pytest.param(f"--jobs {AUTH}= 3", None, {}, " --jobs - 3", id="bare-jobs-stays-bare"),
        pytest.param(
            f"-l {AUTH}=3,4 2",
            PipeAuth(5, 6),
            {},
            f" -l - 2 {FDS}=5,6 {AUTH}=5,6",
            id="bare-load-stays-bare",
        ),
    ],
)
def test_replace_auth_exact(
    value: str, auth: PipeAuth | FifoAuth | None, kw: dict[str, Any], expected: str
) -> None:
    assert replace_auth(value, auth, **kw) == expected


@pytest.mark.parametrize(
    ("args", "kw"),
    [
        pytest.param(("a\0b", None), {}, id="nul"),
        pytest.param(("", PipeAuth(3, 4)), {"disabled": True}, id="auth-and-disabled"),
        pytest.param(("", PipeAuth(3, 4)), {"jobs": 0}, id="jobs-zero"),
    ],
)
def test_replace_auth_rejects(args: tuple[Any, ...], kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace_auth(*args, **kw)


@pytest.mark.parametrize(
    ("auth", "kw"),
    [
        (None, {}),
        (PipeAuth(3, 4), {}),
        (FifoAuth("/a b"), {"jobs": 4}),
        (None, {"disabled": True, "jobs": 1}),
    ],
)
@pytest.mark.parametrize("blank", ["", " ", "\t\n "])
def test_replace_auth_blank_is_format(
    blank: str, auth: PipeAuth | FifoAuth | None, kw: dict[str, Any]
) -> None:
    fresh = MakeFlags(auth=auth, jobs=kw.get("jobs"), disabled=kw.get("disabled", False))
    assert replace_auth(blank, auth, **kw) == format_makeflags(fresh)


# --------------------------------------------------------------------------
# replace_auth: properties

new_auths = st.one_of(
    st.none(),
    st.builds(PipeAuth, fds, fds),
    st.builds(FifoAuth, exportable_text),
)
new_jobs = st.none() | st.integers(min_value=1, max_value=2**31 - 1)

OTHER_WORDS = [
    "-l8",
    "-Otarget",
    "--sync-mutex=fnm:/tmp/Gm\\ x",
    "--no-print-directory",
    "-k",
    "--debug=b",
    "-I/usr/in\\\\clude",
    "--jobserver-style=pipe",
    "-w",
    "--trace",
    "-",
    "X=1",
    "--shuffle=reverse",
]
AUTH_WORDS = [
    f"{AUTH}=3,4",
    f"{FDS}=5,6",
    f"{AUTH}=-2,-2",
    f"{AUTH}=fifo:/tmp/a\\ b",
    f"{AUTH} fifo:/x",
    f"{FDS} 7,8",
    f"{AUTH}=gmake_semaphore_1",
    f"{AUTH}=",
]
JOBS_WORDS = ["-j4", "-j", "-j 3", "--jobs=2", "--jobs 5", "-jfoo"]
OVERRIDES = ["A=1", "B=a\\ b", f"C={AUTH}=3,4", f"{AUTH}=9,9", "-j9", "--", "D=\\\\"]


@st.composite
def structured_values(draw: st.DrawFn) -> tuple[str, list[str], list[str], list[str]]:
    """A make-like value and its parts: (value, head words, job words, overrides)."""
    letters = draw(st.text(alphabet=FLAG_LETTERS, max_size=4))
    segments = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just("other"), st.sampled_from(OTHER_WORDS)),
                st.tuples(st.just("auth"), st.sampled_from(AUTH_WORDS)),
                st.tuples(st.just("jobs"), st.sampled_from(JOBS_WORDS)),
            ),
            max_size=8,
        )
    )
    overrides = draw(st.none() | st.lists(st.sampled_from(OVERRIDES), max_size=3))
    sep = draw(st.sampled_from([" ", "  ", " \t"]))
    parts = [letters] + [text for _, text in segments]
    if overrides is not None:
        parts += ["--", *overrides]
    value = sep.join(parts)
    head = split_words(letters)
    others: list[str] = []
    jobs_words: list[str] = []
    for kind, text in segments:
        if kind == "other":
            others += split_words(text)
        elif kind == "jobs":
            others += split_words(text)  # kept in place when jobs is not given
            jobs_words += split_words(text)
    tail = [] if overrides is None else ["--", *(w for o in overrides for w in split_words(o))]
    return value, head + others, jobs_words, tail


@FAST
@given(structured_values(), new_auths, new_jobs, st.booleans())
def test_replace_auth_keeps_other_words(
    parts: tuple[str, list[str], list[str], list[str]],
    auth: PipeAuth | FifoAuth | None,
    jobs: int | None,
    disabled: bool,
) -> None:
    value, kept, jobs_words, tail = parts
    if auth is not None:
        disabled = False
    result = replace_auth(value, auth, jobs=jobs, disabled=disabled)
    ours = split_words(format_makeflags(MakeFlags(auth=auth, jobs=jobs, disabled=disabled)))
    if jobs is not None:
        # Every -j word goes; "-j 3" leaves no stray "3".
        for w in jobs_words:
            kept.remove(w)
    assert split_words(result) == kept + ours + tail

    before = parse_makeflags(value)
    after = parse_makeflags(result)
    assert after.auth == auth
    assert after.disabled == disabled
    assert after.unsupported is None
    assert after.source == (AUTH if (auth is not None or disabled) else None)
    assert after.jobs == (jobs if jobs is not None else before.jobs)
    assert after.letters == before.letters
    assert after.dry_run == before.dry_run


# Few characters, many of them special to make's reader: finds layout corner cases fast.
special_text = st.text(alphabet=" \t\n\r\\-=,:jkfn03", max_size=30)


@FAST
@given(
    st.one_of(st.text(), near_valid_values, special_text).filter(lambda v: "\0" not in v),
    new_auths,
    new_jobs,
    st.booleans(),
)
def test_replace_auth_result_parses_to_new_auth(
    value: str, auth: PipeAuth | FifoAuth | None, jobs: int | None, disabled: bool
) -> None:
    if auth is not None:
        disabled = False
    result = replace_auth(value, auth, jobs=jobs, disabled=disabled)
    before = parse_makeflags(value)
    after = parse_makeflags(result)
    assert after.auth == auth
    assert after.disabled == disabled
    assert after.unsupported is None
    if jobs is not None:
        assert after.jobs == jobs
    else:
        assert after.jobs == before.jobs
    assert after.letters == before.letters
    # Applying the same rewrite again changes nothing.
    assert replace_auth(result, auth, jobs=jobs, disabled=disabled) == result
