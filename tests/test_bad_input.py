"""Bad input: fuzzed MAKEFLAGS, and every unusable pool description named by its cause.

Two halves:

* **Fuzzing** (hypothesis). ``TokenPool.from_environ`` is fed arbitrary strings and
  near-valid ``MAKEFLAGS``/``MFLAGS``/``CARGO_MAKEFLAGS`` built from make's own words, whose
  descriptors and fifo paths point at a zoo of real objects: a genuine pipe pool, a live fifo
  pool, a regular file, a terminal, a socket, ``/dev/null``, a directory, an anonymous inode,
  closed and out-of-range numbers, a stale fifo, missing paths. Whatever the input, it
  returns None or a pool of the genuine pipe/fifo, or raises ``JobserverUnavailable``;
  it never hangs, never leaks a descriptor, and never reads anything but a pool (the
  regular file's offsets stay 0, the socket's pending bytes stay put, the pools keep
  exactly their tokens).
* **Named causes.** One test per bad input that ``tests/test_pool.py`` does not already
  cover, asserting the message (and ``makejobs status``) names the cause: one end closed,
  both numbers naming the same end, a directory or anonymous-inode fd, descriptors too large,
  an empty auth, ``fifo:`` without a path, a socket path, a fifo this process may not open
  (as root too, by dropping privileges in a child), and negative, zero, huge and
  non-numeric ``-j`` / ``slots``.

Known bugs are kept as strict xfails (``xfail_strict = true``): each fails today and turns
into an error the day it is fixed, so the marker gets removed then.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import json
import os
import resource
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import termios
import textwrap
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from inherited import inherited_pipe
from makejobs import Jobserver, TokenPool
from makejobs.errors import JobserverUnavailable
from makejobs.pool import Style
from makejobs.protocol import PipeAuth, parse_makeflags
from processes import PY, clean_env

TIMEOUT = 60
TOKENS = b"ab"  # what each zoo pool holds: two distinct bytes, so a swap would show

LINUX = sys.platform.startswith("linux")


def pending(fd: int) -> int:
    """Bytes waiting to be read on *fd* (FIONREAD), without reading them."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    return buf[0]


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd" if LINUX else "/dev/fd")}


def status(makeflags: str, pass_fds: tuple[int, ...] = ()) -> tuple[int, dict[str, object]]:
    """``makejobs status --json`` in a child that inherits *pass_fds*: (exit code, report)."""
    proc = subprocess.run(
        [PY, "-m", "makejobs", "status", "--json"],
        env=clean_env(MAKEFLAGS=makeflags),
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    report: dict[str, object] = json.loads(proc.stdout)
    return proc.returncode, report


def status_text(makeflags: str, pass_fds: tuple[int, ...] = ()) -> str:
    """The human-readable ``makejobs status`` output."""
    proc = subprocess.run(
        [PY, "-m", "makejobs", "status"],
        env=clean_env(MAKEFLAGS=makeflags),
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return proc.stdout


def unavailable(makeflags: str) -> JobserverUnavailable:
    """The JobserverUnavailable that joining *makeflags* raises (fails if it joins)."""
    with pytest.raises(JobserverUnavailable) as info:
        pool = TokenPool.from_environ({"MAKEFLAGS": makeflags})
        if pool is not None:
            pool.close()
    assert info.value.variable == "MAKEFLAGS"
    return info.value


# --------------------------------------------------------------------------------------
# The zoo: real objects the fuzzed descriptors and paths point at


@dataclass
class Zoo:
    """Everything a fuzzed MAKEFLAGS may name, and how to check nothing was read."""

    pipe_r: int
    pipe_w: int
    fifo_path: str
    fifo_holder: int  # our O_RDWR descriptor keeping the live fifo alive
    regular: list[int]  # descriptors on one regular file, each with its own offset
    tty_master: int
    tty_slave: int
    sock_a: int
    sock_b: int  # has SOCKET_BYTES pending, which nobody may read
    devnull: int
    dirfd: int
    anon: int  # an anonymous inode (epoll instance)
    stale_fifo: str
    missing: str
    directory: str
    regular_path: str
    socket_path: str
    keep: list[object] = field(default_factory=list)  # objects that must stay alive

    SOCKET_BYTES = 5

    @property
    def fds(self) -> list[int]:
        """Descriptor numbers worth naming, and two that are surely not open."""
        return [
            self.pipe_r,
            self.pipe_w,
            *self.regular,
            self.tty_master,
            self.tty_slave,
            self.sock_a,
            self.sock_b,
            self.devnull,
            self.dirfd,
            self.anon,
            1_000_000,  # beyond RLIMIT_NOFILE: EBADF
            2**31 - 1,  # the largest C int: EBADF
        ]

    @property
    def paths(self) -> list[str]:
        # Character devices are left out on purpose: see
        # test_fifo_path_to_dev_null_is_named_not_a_crash (a known bug).
        return [
            self.fifo_path,
            self.stale_fifo,
            self.missing,
            self.directory,
            self.regular_path,
            self.socket_path,
            "relative/GMfifo1",
            "/proc/self/fd/" + str(self.pipe_r),  # a path to the genuine pipe
        ]

    def check_untouched(self) -> None:
        """No byte was read from anything but a pool, and each pool holds its tokens."""
        for fd in self.regular:
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0, "a regular file was read"
        assert pending(self.sock_b) == self.SOCKET_BYTES, "a socket was read"
        assert pending(self.pipe_r) == len(TOKENS), "the pipe pool lost or gained tokens"
        assert pending(self.fifo_holder) == len(TOKENS), "the fifo pool lost or gained tokens"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    if not LINUX:
        pytest.skip("the zoo uses Linux descriptors (epoll, /proc/self/fd)")
    base = tmp_path_factory.mktemp("zoo")
    opened: list[int] = []

    def track(fd: int) -> int:
        opened.append(fd)
        return fd

    pipe_r, pipe_w = (track(fd) for fd in inherited_pipe())
    os.write(pipe_w, TOKENS)
    fifo = base / "live-fifo"
    os.mkfifo(fifo, 0o600)
    holder = track(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
    os.write(holder, TOKENS)
    regular_path = base / "passwd"
    regular_path.write_bytes(b"+" * 64)
    regular = [track(os.open(regular_path, os.O_RDWR)) for _ in range(3)]
    master, slave = (track(fd) for fd in os.openpty())
    a, b = socket.socketpair()
    a.sendall(b"+" * Zoo.SOCKET_BYTES)
    devnull = track(os.open(os.devnull, os.O_RDWR))
    dirfd = track(os.open(base, os.O_RDONLY))
    epoll = select.epoll()
    stale = base / "stale-fifo"
    os.mkfifo(stale, 0o600)
    directory = base / "a-directory"
    directory.mkdir()
    sock_path = base / "a-socket"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    zoo = Zoo(
        pipe_r=pipe_r,
        pipe_w=pipe_w,
        fifo_path=str(fifo),
        fifo_holder=holder,
        regular=regular,
        tty_master=master,
        tty_slave=slave,
        sock_a=a.fileno(),
        sock_b=b.fileno(),
        devnull=devnull,
        dirfd=dirfd,
        anon=epoll.fileno(),
        stale_fifo=str(stale),
        missing=str(base / "no-such-fifo"),
        directory=str(directory),
        regular_path=str(regular_path),
        socket_path=str(sock_path),
        keep=[a, b, epoll, listener],
    )
    yield zoo
    for fd in opened:
        os.close(fd)
    for obj in (a, b, epoll, listener):
        obj.close()


# --------------------------------------------------------------------------------------
# Strategies: arbitrary text, and words make itself writes, bent a little


BLANKS = st.sampled_from([" ", "  ", "\t", " \t "])

JOBS_WORDS = st.one_of(
    st.sampled_from(["-j", "--jobs", "-j4", "-j0", "-j-3", "-jabc", "--jobs=2", "-j 3"]),
    st.builds(
        lambda prefix, value: prefix + value,
        st.sampled_from(["-j", "--jobs=", "-kj", "-j "]),
        st.text(alphabet="0123456789-+x. ", max_size=14),
    ),
)
LETTER_WORDS = st.text(alphabet="knsiwBeqtr", min_size=1, max_size=4)
OTHER_WORDS = st.sampled_from(
    ["--", "V=1", "-Otarget", "-l8", "--no-print-directory", "-f", "--eval=x", "-", "\\", "-C"]
)
AUTH_OPTIONS = st.sampled_from(
    [
        "--jobserver-auth=",
        "--jobserver-fds=",
        "--jobserver-auth ",  # separate-argument form
        "--jobserver-a=",  # an abbreviation make would accept and we ignore
        "-jobserver-auth=",
    ]
)


def fd_text(zoo: Zoo) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(zoo.fds).map(str),
        st.sampled_from(["-2", "-1", "-0", "007", "99999999999", "", "x", " 3"]),
        st.integers(min_value=-3, max_value=2**32).map(str),
    )


def auth_values(zoo: Zoo) -> st.SearchStrategy[str]:
    fd = fd_text(zoo)
    # Pairs of one object's descriptors (and their swaps): the shapes stale numbers take.
    pairs = [
        (zoo.pipe_r, zoo.pipe_w),
        (zoo.regular[0], zoo.regular[1]),
        (zoo.regular[2], zoo.regular[2]),
        (zoo.tty_slave, zoo.tty_master),
        (zoo.tty_slave, zoo.tty_slave),
        (zoo.sock_b, zoo.sock_a),
        (zoo.devnull, zoo.devnull),
        (zoo.dirfd, zoo.dirfd),
        (zoo.anon, zoo.anon),
        (zoo.pipe_r, zoo.regular[0]),
        (zoo.regular[0], zoo.pipe_w),
    ]
    pair = st.sampled_from(pairs).flatmap(
        lambda p: st.sampled_from([f"{p[0]},{p[1]}", f"{p[1]},{p[0]}"])
    )
    path = st.one_of(
        st.sampled_from(zoo.paths),
        st.sampled_from(zoo.paths).map(lambda p: p.replace("/", "/./", 1)),
        st.text(max_size=12),
    )
    return st.one_of(
        pair,
        pair,
        st.builds(lambda r, w: f"{r},{w}", fd, fd),
        path.map(lambda p: "fifo:" + p.replace("\\", "\\\\").replace(" ", "\\ ")),
        st.sampled_from(["fifo:", "", "gmake_semaphore_7", "-2,-2", "3,4,5", "fifo"]),
        st.text(max_size=20),
    )


def makeflags_values(zoo: Zoo) -> st.SearchStrategy[str]:
    """Near-valid values: make's words, an auth word or two, odd spacing and order."""
    auth_word = st.builds(lambda o, v: o + v, AUTH_OPTIONS, auth_values(zoo))
    word = st.one_of(auth_word, auth_word, JOBS_WORDS, LETTER_WORDS, OTHER_WORDS)

    @st.composite
    def value(draw: st.DrawFn) -> str:
        words = draw(st.lists(word, min_size=1, max_size=6))
        out = " " if draw(st.booleans()) else ""
        for i, w in enumerate(words):
            out += (draw(BLANKS) if i else "") + w
        return out

    valid = st.just(f" -j3 --jobserver-auth={zoo.pipe_r},{zoo.pipe_w}") | st.just(
        f" -j3 --jobserver-auth=fifo:{zoo.fifo_path}"
    )

    @st.composite
    def mutated(draw: st.DrawFn) -> str:
        text = draw(valid)
        for _ in range(draw(st.integers(1, 3))):
            i = draw(st.integers(0, len(text)))
            op = draw(st.sampled_from(["insert", "delete", "replace"]))
            c = draw(st.sampled_from([*" \t\\,-:=0123456789x\n", "--", " -j1"]))
            if op == "insert":
                text = text[:i] + c + text[i:]
            elif op == "delete":
                text = text[:i] + text[i + 1 :]
            else:
                text = text[:i] + c + text[i + 1 :]
        return text

    return st.one_of(value(), mutated())


def environments(values: st.SearchStrategy[str]) -> st.SearchStrategy[dict[str, str]]:
    return st.fixed_dictionaries(
        {},
        optional={"CARGO_MAKEFLAGS": values, "MAKEFLAGS": values, "MFLAGS": values},
    )


def check_join(zoo: Zoo, env: Mapping[str, str]) -> None:
    """The property: None, a pool of the genuine pipe/fifo, or JobserverUnavailable."""
    try:
        pool = TokenPool.from_environ(env)
    except JobserverUnavailable as e:
        assert str(e).strip(), "the message must say why"
        event(f"refused: {type(e).__name__}")
        zoo.check_untouched()
        return
    if pool is None:
        event("no pool advertised")
        zoo.check_untouched()
        return
    event(f"joined {pool.style}")
    try:
        # Only the two genuine pools can be joined (the pipe also by its /proc path).
        joined = os.fstat(pool._core.reader)
        genuine = [os.fstat(fd) for fd in (zoo.pipe_r, zoo.fifo_holder)]
        assert (joined.st_dev, joined.st_ino) in [(g.st_dev, g.st_ino) for g in genuine], pool
        first = pool.try_acquire()
        assert first is not None and first.implicit
        second = pool.try_acquire()
        assert second is not None and second.byte in (b"a", b"b"), second
        pool.release(second)
        pool.release(first)
    finally:
        pool.close()
    zoo.check_untouched()


FUZZ = settings(
    max_examples=300,
    deadline=2000,  # a join is microseconds; seconds would mean a blocking open or read
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(data=st.data())
def test_fuzzed_near_valid_makeflags_join_refuse_or_ignore(zoo: Zoo, data: st.DataObject) -> None:
    before = open_fds()
    env = data.draw(environments(makeflags_values(zoo)), label="environment")
    check_join(zoo, env)
    assert open_fds() == before, "from_environ leaked or closed a descriptor"


@FUZZ
@given(env=environments(st.text(max_size=60)))
def test_fuzzed_arbitrary_text_never_escapes_the_contract(zoo: Zoo, env: dict[str, str]) -> None:
    before = open_fds()
    check_join(zoo, env)
    assert open_fds() == before


@settings(max_examples=300, deadline=None)
@given(value=st.text())
def test_parse_makeflags_reports_rather_than_raises(value: str) -> None:
    flags = parse_makeflags(value)
    # At most one of the three auth outcomes; jobs is a positive C int or None.
    assert (flags.auth is not None) + flags.disabled + (flags.unsupported is not None) <= 1
    assert flags.jobs is None or 1 <= flags.jobs < 2**31
    assert all(isinstance(p, str) and p for p in flags.problems)


@settings(max_examples=200, deadline=None)
@given(value=st.lists(JOBS_WORDS, min_size=1, max_size=3).map(" ".join))
def test_near_valid_jobs_words_name_their_problem(value: str) -> None:
    """Every -j value make would reject is ignored *with* a note naming why."""
    flags = parse_makeflags(value)
    assert flags.jobs is None or 1 <= flags.jobs < 2**31
    for problem in flags.problems:
        if problem.startswith("ignored -j value"):
            assert any(
                why in problem
                for why in ("negative", "zero", "too large", "not a positive integer")
            ), problem


# --------------------------------------------------------------------------------------
# Each unusable descriptor, named (the cases tests/test_pool.py leaves out)


def test_one_end_closed_names_that_end(zoo: Zoo) -> None:
    e = unavailable(f" -j4 --jobserver-auth={zoo.pipe_r},1000000")
    assert "the write fd 1000000 is not open" in str(e) and "'+'" in str(e)
    e = unavailable(f" -j4 --jobserver-auth=1000000,{zoo.pipe_w}")
    assert "the read fd 1000000 is not open" in str(e)
    code, report = status(f" -j4 --jobserver-auth={zoo.pipe_r},{zoo.pipe_w}")
    # Not handed to the child: both are closed there, and status says so.
    assert code == 2 and "not open" in str(report["reason"]), report


def test_both_numbers_naming_one_end_look_swapped(zoo: Zoo) -> None:
    e = unavailable(f" -j4 --jobserver-auth={zoo.pipe_r},{zoo.pipe_r}")
    assert f"the write fd {zoo.pipe_r} is open read-only" in str(e), e
    assert "swapped or reused" in str(e)
    e = unavailable(f" -j4 --jobserver-auth={zoo.pipe_w},{zoo.pipe_w}")
    assert f"the read fd {zoo.pipe_w} is open write-only" in str(e), e
    zoo.check_untouched()


def test_directory_and_anonymous_inode_fds_are_named(zoo: Zoo) -> None:
    e = unavailable(f" -j4 --jobserver-auth={zoo.dirfd},{zoo.dirfd}")
    assert "is a directory, not a pipe" in str(e), e
    e = unavailable(f" -j4 --jobserver-auth={zoo.anon},{zoo.anon}")
    assert "not a pipe" in str(e) and "must never be read" in str(e), e


@pytest.mark.parametrize(
    ("fd_kind", "named"),
    [
        ("regular", "a regular file"),
        ("tty_slave", "character device"),
        ("sock_b", "a socket"),
        ("devnull", "character device"),
        ("dirfd", "a directory"),
    ],
)
def test_status_names_the_kind_of_a_non_pipe_fd(zoo: Zoo, fd_kind: str, named: str) -> None:
    fd = zoo.regular[0] if fd_kind == "regular" else getattr(zoo, fd_kind)
    code, report = status(f" -j4 --jobserver-auth={fd},{fd}", pass_fds=(fd,))
    assert code == 2 and report["advertised"] and not report["usable"], report
    assert named in str(report["reason"]) and "not a pipe" in str(report["reason"]), report
    zoo.check_untouched()


@pytest.mark.parametrize(
    ("auth", "problem"),
    [
        ("99999999999,4", "too large"),
        ("4,2147483648", "too large"),
        ("", "empty jobserver auth"),
        ("fifo:", "fifo path is empty"),
        ("3", None),
        ("3,4,5", None),
    ],
    ids=["read-too-large", "write-too-large", "empty", "fifo-no-path", "one-number", "three"],
)
def test_malformed_auth_is_refused_and_status_says_why(auth: str, problem: str | None) -> None:
    makeflags = f" -j4 --jobserver-auth={auth}"
    e = unavailable(makeflags)
    assert "unsupported jobserver style" in str(e) and repr(auth) in str(e), e
    flags = parse_makeflags(makeflags)
    if problem is not None:
        assert any(problem in p for p in flags.problems), flags.problems
        assert problem in status_text(makeflags)
    code, report = status(makeflags)
    assert code == 2 and report["style"] == "unsupported", report


def test_negative_auth_other_than_minus_two_also_disables() -> None:
    # make writes -2,-2; any negative descriptor means the same to every reader.
    for auth in ("-1,4", "3,-7", "-2,-2"):
        e = unavailable(f" -j4 --jobserver-auth={auth}")
        assert "disabled the jobserver" in str(e), e


# --------------------------------------------------------------------------------------
# Fifo paths


def test_socket_path_is_not_a_fifo(zoo: Zoo) -> None:
    e = unavailable(f" -j4 --jobserver-auth=fifo:{zoo.socket_path}")
    assert "is a socket, not a fifo" in str(e), e


def test_path_through_a_regular_file_is_named(zoo: Zoo) -> None:
    e = unavailable(f" -j4 --jobserver-auth=fifo:{zoo.regular_path}/GMfifo1")
    assert "cannot inspect the fifo" in str(e) and "Not a directory" in str(e), e


CANNOT_OPEN = textwrap.dedent(
    """
    import os, sys
    from makejobs.errors import JobserverUnavailable
    from makejobs.pool import TokenPool
    os.setgid(65534)
    os.setgroups([])
    os.setuid(65534)  # nobody: the fifo's mode 0600 now applies
    try:
        TokenPool.from_environ({"MAKEFLAGS": sys.argv[1]})
    except JobserverUnavailable as e:
        print("unavailable:", e)
    else:
        print("joined")
    """
)


def test_fifo_this_process_may_not_open_is_named(tmp_path: Path) -> None:
    """EACCES on the fifo. Root ignores modes, so as root a child drops to 'nobody'."""
    if os.geteuid() != 0:
        pytest.skip("tests/test_pool.py::test_unreadable_fifo_is_reported covers non-root")
    # pytest's tmp_path lives under a 0700 directory: 'nobody' could not even stat the
    # fifo there, so use a directory others may traverse, as make's $TMPDIR would be.
    base = Path(tempfile.gettempdir())
    if any(not os.stat(p).st_mode & stat.S_IXOTH for p in [base, *base.parents]):
        pytest.skip(f"{base} is not searchable by others; cannot drop privileges")
    shared = Path(tempfile.mkdtemp(prefix="makejobs-eacces-", dir=base))
    shared.chmod(0o711)  # others may traverse it, not list it
    fifo = shared / "GMfifo4242"
    os.mkfifo(fifo, 0o600)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # live: its make is "running"
    try:
        proc = subprocess.run(
            [PY, "-c", CANNOT_OPEN, f" -j4 --jobserver-auth=fifo:{fifo}"],
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        os.close(holder)
        shutil.rmtree(shared, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr
    assert "unavailable:" in proc.stdout, proc.stdout
    assert "cannot open the fifo" in proc.stdout and "Permission denied" in proc.stdout


@pytest.mark.parametrize("device", ["/dev/null", "/dev/zero"])
def test_fifo_path_to_dev_null_is_named_not_a_crash(device: str) -> None:
    before = open_fds()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = unavailable(f" -j4 --jobserver-auth=fifo:{device}")
    finally:
        leaked = open_fds() - before
        for fd in leaked:
            with contextlib.suppress(OSError):  # one is listdir's own, already closed
                os.close(fd)
    assert device in str(e) and not leaked, (e, leaked)


def test_fifo_path_to_a_terminal_is_refused(zoo: Zoo) -> None:
    path = os.ttyname(zoo.tty_slave)
    try:
        pool = TokenPool.from_environ({"MAKEFLAGS": f" -j4 --jobserver-auth=fifo:{path}"})
    except JobserverUnavailable as e:
        assert "terminal" in str(e) or "character device" in str(e), e
        return
    assert pool is not None
    pool.close()
    raise AssertionError(f"joined the terminal {path} as a jobserver")


# --------------------------------------------------------------------------------------
# -j and slots


BAD_JOBS = [
    ("-j-3", "negative"),
    ("-j0", "zero"),
    ("-j 0", "zero"),
    ("--jobs=0", "zero"),
    ("-j99999999999", "too large"),
    ("-j2147483648", "too large"),
    ("-jabc", "not a positive integer"),
    ("--jobs=x", "not a positive integer"),
    ("-j2.5", "not a positive integer"),
    ("-j+3", "not a positive integer"),
]


@pytest.mark.parametrize(("word", "why"), BAD_JOBS, ids=[w for w, _ in BAD_JOBS])
def test_bad_j_is_ignored_with_its_cause_and_the_pool_still_joins(
    zoo: Zoo, word: str, why: str
) -> None:
    makeflags = f" {word} --jobserver-auth={zoo.pipe_r},{zoo.pipe_w}"
    flags = parse_makeflags(makeflags)
    assert flags.jobs is None
    assert isinstance(flags.auth, PipeAuth)
    value = word.split("=", 1)[1] if "=" in word else word[2:].strip()
    assert any(f"ignored -j value {value!r}: {why}" in p for p in flags.problems), flags.problems
    # -j is informative only: the pool is joined all the same, of unknown size.
    pool = TokenPool.from_environ({"MAKEFLAGS": makeflags})
    assert pool is not None and pool.slots is None
    pool.close()
    text = status_text(makeflags, pass_fds=(zoo.pipe_r, zoo.pipe_w))
    assert "jobserver: usable" in text, text
    assert f"note:       ignored -j value {value!r}: {why}" in text, text
    zoo.check_untouched()


def test_bad_j_without_a_pool_is_still_reported() -> None:
    code, report = status(" -j-3")
    assert code == 1 and not report["advertised"], report
    assert report["problems"] == ["ignored -j value '-3': negative"], report


@pytest.mark.parametrize(
    ("slots", "error", "words"),
    [
        (0, ValueError, "at least 1"),
        (-3, ValueError, "at least 1"),
        ("4", TypeError, "must be an int"),
        (2.5, TypeError, "must be an int"),
        (True, TypeError, "must be an int"),
    ],
)
def test_bad_slots_in_the_api_name_the_cause(slots: object, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        TokenPool.create(slots)  # type: ignore[arg-type]
    with pytest.raises(error, match=words):
        Jobserver("fork", slots=slots)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "words"),
    [("-3", "must be at least 1, not -3"), ("0", "at least 1"), ("abc", "not a whole number")],
)
def test_bad_serve_j_is_a_usage_error_naming_the_cause(value: str, words: str) -> None:
    proc = subprocess.run(
        [PY, "-m", "makejobs", "serve", "-j", value, "--", "true"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr, proc.stderr


def _limit_memory() -> None:  # pragma: no cover - runs in the child
    # Enough for Python and makejobs, far too little for a gigabyte of token bytes.
    limit = 1 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.parametrize("value", ["2147483647", "99999999999"])
def test_huge_serve_j_is_refused_quickly_without_allocating_it(value: str) -> None:
    proc = subprocess.run(
        [PY, "-m", "makejobs", "serve", "-j", value, "--", "true"],
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        preexec_fn=_limit_memory,
    )
    assert proc.returncode == 125, proc.stderr
    assert "use fewer slots" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_slots_beyond_the_pipe_are_a_value_error_naming_the_limit() -> None:
    # Large enough to exceed any pipe, small enough to allocate: the part that works today.
    styles: tuple[Style, ...] = ("pipe", "fifo")
    for style in styles:
        with pytest.raises(ValueError, match=r"pipe-max-size.*use fewer slots"):
            TokenPool.create(20_000_000, style=style)


def test_fd_exhaustion_while_joining_is_an_oserror_not_a_crash(zoo: Zoo) -> None:
    """With no descriptor left, joining fails with EMFILE and leaves nothing behind."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 1, hard))
    try:
        try:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        except OSError as e:
            assert e.errno == errno.EMFILE
        with pytest.raises(OSError) as info:
            TokenPool.from_environ(
                {"MAKEFLAGS": f" -j3 --jobserver-auth={zoo.pipe_r},{zoo.pipe_w}"}
            )
        assert info.value.errno == errno.EMFILE
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    zoo.check_untouched()
