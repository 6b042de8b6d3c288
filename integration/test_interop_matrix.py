"""Interop matrix: every pool parent against every kind of pool child, measured from spans.

Parents (who creates the pool a child joins):

* ``make43``: GNU make 4.3, pipe; ``make441-fifo`` and ``make441-pipe``: GNU make 4.4.1 with
  its default fifo and with ``--jobserver-style=pipe``. The child is one recipe line, with
  ``+`` unless the cell is about its absence.
* ``serve-pipe``, ``serve-fifo``: ``makejobs serve --strict``.
* ``py-pipe``: ``TokenPool.create()`` in this (the test) process, the child started with
  ``subprocess.run(env=pool.environ(), pass_fds=pool.pass_fds)``; ``py-fifo``: a fifo pool
  and ``pool.run()``; ``py-jobserver``: a ``Jobserver`` in this process on a created pipe
  pool, whose job starts the child (``TokenPool.from_environ()`` in the job, then
  ``subprocess.run(..., pass_fds=pool.pass_fds)``) while two sibling jobs log spans too.

Children (what runs on the pool): Python programs using ``Jobserver()`` and
``JobserverExecutor()`` (``recipes/interop.py``), ``makejobs run`` and ``makejobs exec``,
ninja 1.13, cargo on a path-only workspace (``cargo_ws.py``, built once per session), and
sub-makes (4.3 and 4.4.1). Every child is set up to run *more* than the pool's N at once if
it ignored the pool (ninja's own default is cores+1 or more, ``cargo -j 8`` over 5 crates,
``exec --max 8``, a sub-make with no ``-j`` runs 1, ``Jobserver()`` without a pool sizes
itself to the CPUs), so a measured peak of exactly N shows both that the child joined and
that it really used the tokens.

Every job logs a start and an end (``tests/spans.py``; the cargo build scripts write the same
format from Rust). Each cell asserts, according to its expectation (:func:`expect`):

* ``JOINS``: the parent and child succeed, the peak of overlapping spans is <= N and == N;
* ``SERIAL``: the child cannot use the pool (a documented misconfiguration, such as a pipe
  pool's recipe without ``+``); it says so (the message is asserted) and runs its jobs one
  at a time, peak 1;
* ``PEER_IGNORES``: a peer's documented limit: it silently or noisily ignores a pool it
  cannot use and runs on its own parallelism, so the measured peak *exceeds* N (asserted,
  so that a fixed peer shows up as a failure to update here);
* ``FAILS``: the combination cannot work and must fail clearly (make 4.3 on a fifo pool).

and always token conservation: a root make prints no ``INTERNAL: Exiting with``, ``serve``
reports no missing or extra token (and ``--strict`` did not turn the exit into 125), and a
pool created in this process finds all N-1 tokens on ``close()``.

Further axes: recipes without ``+``; ``TMPDIR`` containing a space (make 4.4.1 puts its
fifo there and escapes the blank in ``MAKEFLAGS``: makejobs and make parse that, ninja and
cargo do not; makejobs' own fifos avoid the blank); a private, sandbox-like ``TMPDIR``
(fifos are made inside it, joined by absolute path from children with a different
``TMPDIR``, and nothing is left behind). Nested chains: make -> Python ``Jobserver`` job ->
make -> Python job, and serve -> ninja -> Python -> cargo, measured at the leaves. Finally
a ``Jobserver`` job starting ``make`` the right ways and the default-``subprocess`` pitfall.

Spans are the only use of time; nothing sleeps to order events. Every subprocess has a
timeout. Measured peaks are printed (``pytest -rP``) and recorded as junit properties.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

import pytest

import cargo_ws
from makefiles import mq, q
from makejobs import Jobserver
from makejobs.errors import TokenCountWarning
from makejobs.pool import Style, TokenPool
from makejobs.protocol import FifoAuth, MakeFlags, PipeAuth, parse_makeflags
from peers import Peer, clean_environ, run_captured
from spans import LogError, Span, peak_overlap, read_spans, run_job

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
JOB = HERE / "recipes" / "job.py"
INTEROP = HERE / "recipes" / "interop.py"
PY = sys.executable

#: Pool size of the matrix: the creator's slot plus 2 tokens.
SLOTS = 3
#: Pool size where a peer is expected to ignore the pool: small enough that its own
#: default parallelism (ninja: 3 on 2 CPUs) visibly exceeds it.
SMALL_SLOTS = 2
#: Jobs per child: more than SLOTS, so a child that uses the pool reaches N.
JOBS = 4
JOB_SECONDS = 0.2
#: Bound on one parent run (the whole cell); pytest-timeout (120 s) bounds the test.
RUN_TIMEOUT = 60

MAKE_MISSING_PLUS = "jobserver unavailable: using -j1.  Add '+' to parent make rule."
MAKEJOBS_MISSING_PLUS = "add '+' to the recipe line"


# ----------------------------------------------------------------------------------------
# Parents


@dataclasses.dataclass(frozen=True)
class Parent:
    key: str
    kind: str  # "make", "serve", "py-pipe", "py-fifo", "py-jobserver"
    style: Style  # the pool style the child sees
    peer: str | None = None  # fixture name of the make
    make_args: tuple[str, ...] = ()


PARENTS = {
    p.key: p
    for p in (
        Parent("make43", "make", "pipe", "make43"),
        Parent("make441-fifo", "make", "fifo", "make441"),
        Parent("make441-pipe", "make", "pipe", "make441", ("--jobserver-style=pipe",)),
        Parent("serve-pipe", "serve", "pipe"),
        Parent("serve-fifo", "serve", "fifo"),
        Parent("py-pipe", "py-pipe", "pipe"),
        Parent("py-fifo", "py-fifo", "fifo"),
        Parent("py-jobserver", "py-jobserver", "pipe"),
    )
}
FIFO_PARENTS = ["make441-fifo", "serve-fifo", "py-fifo"]

CHILDREN = [
    "jobserver",
    "executor",
    "mj-run",
    "mj-exec",
    "ninja",
    "cargo",
    "submake43",
    "submake441",
]
PYTHON_CHILDREN = {"jobserver", "executor", "mj-run", "mj-exec"}
#: Children whose reading of MAKEFLAGS differs: one Python API, ninja, cargo, make.
PARSER_CHILDREN = ["jobserver", "ninja", "cargo", "submake441"]


# ----------------------------------------------------------------------------------------
# Expectations


class Kind(enum.Enum):
    JOINS = "joins"
    SERIAL = "serial"
    PEER_IGNORES = "peer-ignores"
    FAILS = "fails"


@dataclasses.dataclass(frozen=True)
class Expect:
    kind: Kind
    message: str | None = None  # must appear in the run's output
    why: str = ""
    #: JOINS only: the measured peak must reach N. False only where the child's share is
    #: decided by a race with other holders of the pool, as documented by ``why``.
    full: bool = True


def expect(parent: Parent, child: str, *, plus: bool = True, blank_fifo: bool = False) -> Expect:
    """What a cell must show. *blank_fifo*: the parent's fifo path contains a space."""
    if child == "submake43" and parent.style == "fifo":
        return Expect(
            Kind.FAILS,
            "invalid --jobserver-auth string 'fifo:",
            "make 4.3 knows only pipe pools and stops on a fifo auth",
        )
    if parent.style == "pipe" and not plus:
        # make closes its pipe for recipe lines without '+': 4.3 leaves the stale numbers
        # in MAKEFLAGS, 4.4 appends --jobserver-auth=-2,-2.
        if child in PYTHON_CHILDREN:
            return Expect(
                Kind.SERIAL,
                MAKEJOBS_MISSING_PLUS,
                "makejobs refuses closed/disabled fds, says so and runs one job at a time",
            )
        if child.startswith("submake"):
            return Expect(Kind.SERIAL, MAKE_MISSING_PLUS, "make warns and runs -j1")
        if child == "ninja":
            message = (
                "Could not initialize jobserver: Invalid file descriptors"
                if parent.key == "make43"
                else None
            )
            return Expect(
                Kind.PEER_IGNORES, message, "ninja falls back to its own -j (silently for -2,-2)"
            )
        if child == "cargo":
            return Expect(
                Kind.PEER_IGNORES, None, "cargo silently falls back to a pool of its own -j"
            )
    if blank_fifo:
        # ninja and cargo split MAKEFLAGS on blanks without honouring make's '\ ' escape
        # (protocol.md section 3, observed): they cut the fifo path at the space.
        if child == "ninja":
            return Expect(
                Kind.PEER_IGNORES,
                "Error opening fifo for reading: No such file or directory",
                "ninja cannot open the cut path and falls back to its own -j",
            )
        if child == "cargo":
            return Expect(
                Kind.PEER_IGNORES, None, "cargo cannot open the cut path and silently uses -j 8"
            )
    if child == "mj-exec" and parent.kind == "py-jobserver":
        return Expect(
            Kind.JOINS,
            full=False,
            why="exec takes the slots free when it starts; the sibling jobs may still hold"
            " theirs then, and may have ended by the time its tool runs",
        )
    return Expect(Kind.JOINS)


# ----------------------------------------------------------------------------------------
# Children


@dataclasses.dataclass
class Cell:
    """One run's private directory, span log and environment."""

    workdir: Path
    slots: int
    tmpdir: Path | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "spans.log"

    @property
    def flags(self) -> Path:
        """Where the child's wrapper records the MAKEFLAGS it was given."""
        return self.workdir / "child-makeflags.txt"

    def env(self, **extra: str) -> dict[str, str]:
        """No outer pool; makejobs importable; TMPDIR as the cell asks."""
        old = os.environ.get("PYTHONPATH")
        path = str(REPO) if not old else os.pathsep.join([str(REPO), old])
        env = clean_environ(PYTHONPATH=path)
        env.update(extra)
        if self.tmpdir is not None:
            env["TMPDIR"] = str(self.tmpdir)
        return env


@dataclasses.dataclass
class Child:
    key: str
    argv: list[str]
    env: dict[str, str]
    names: Callable[[], list[str]]  # the span names it must log (called after the run)
    report: Path | None = None  # a Python child's JSON report
    count: Path | None = None  # makejobs exec: how many slots the tool got


def job_names(prefix: str, count: int = JOBS) -> list[str]:
    return [f"{prefix}.j{i}" for i in range(count)]


def write_submakefile(path: Path, log: Path, names: Sequence[str]) -> None:
    """A makefile of independent targets, each one job.py span."""
    job = f"{mq(PY)} {mq(JOB)} {mq(log)} $@ {JOB_SECONDS}"
    path.write_text(
        f".PHONY: all {' '.join(names)}\nall: {' '.join(names)}\n{' '.join(names)}:\n\t@{job}\n"
    )


def make_child(key: str, cell: Cell, request: pytest.FixtureRequest) -> Child:
    log, work = cell.log, cell.workdir
    if key in ("jobserver", "executor"):
        name = "js" if key == "jobserver" else "xc"
        report = work / f"{name}.json"
        argv = [PY, str(INTEROP), key, "--log", str(log), "--name", name]
        argv += ["--jobs", str(JOBS), "--seconds", str(JOB_SECONDS), "--report", str(report)]
        return Child(key, argv, {}, lambda: job_names(name), report=report)
    if key == "mj-run":
        commands = work / "commands.txt"
        commands.write_text(
            "".join(f"{q(PY)} {q(JOB)} {q(log)} {n} {JOB_SECONDS}\n" for n in job_names("rn"))
        )
        argv = [PY, "-m", "makejobs", "run", "-f", str(commands)]
        return Child(key, argv, {}, lambda: job_names("rn"))
    if key == "mj-exec":
        count = work / "exec-count.txt"
        argv = [PY, "-m", "makejobs", "exec", "--max", "8", "--", PY, str(INTEROP), "wide"]
        argv += ["--log", str(log), "--name", "wd", "--seconds", str(JOB_SECONDS)]
        argv += ["--count", str(count)]

        def names() -> list[str]:
            return [f"wd.t{i}" for i in range(int(count.read_text()))]

        return Child(key, argv, {}, names, count=count)
    if key == "ninja":
        ninja: Peer = request.getfixturevalue("ninja")
        build = work / "ninja"
        build.mkdir()
        assert not any(c in str(work) + PY for c in "$ :\n")  # no ninja escapes needed
        lines = [
            "rule job",
            f"  command = {q(PY)} {q(JOB)} {q(log)} $out {JOB_SECONDS} $out",
            *(f"build {n}: job" for n in job_names("nj")),
        ]
        (build / "build.ninja").write_text("\n".join(lines) + "\n")
        return Child(key, [ninja.path, "-C", str(build)], {}, lambda: job_names("nj"))
    if key == "cargo":
        cargo: Peer = request.getfixturevalue("cargo")
        manifest, target = request.getfixturevalue("cargo_workspace")
        return Child(
            key,
            cargo_ws.build_argv(cargo.path, manifest),
            cargo_ws.run_env(target, log),
            cargo_ws.span_names,
        )
    if key in ("submake43", "submake441"):
        make: Peer = request.getfixturevalue(key[3:])
        makefile = work / "sub.mk"
        write_submakefile(makefile, log, job_names("sm"))
        # No -j: alone this make runs one job at a time; the pool is its only parallelism.
        return Child(key, [make.path, "-s", "-f", str(makefile)], {}, lambda: job_names("sm"))
    raise ValueError(key)


@pytest.fixture(scope="session")
def cargo_workspace(cargo: Peer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The span-logging workspace, compiled once; each use only re-runs the build scripts."""
    root = tmp_path_factory.mktemp("cargo")
    target = root / "target"
    manifest = cargo_ws.prepare(cargo.path, root / "ws", target, clean_environ())
    return manifest, target


# ----------------------------------------------------------------------------------------
# Running a parent over a child


@dataclasses.dataclass
class Outcome:
    returncode: int
    output: str  # stdout and stderr of everything, as the parent passed it on
    returned: int | None = None  # close() of a pool this process created


def describe(outcome: Outcome) -> str:
    return f"exit {outcome.returncode}\n--- output\n{outcome.output}"


def wrapper(argv: Sequence[str], flags: Path) -> list[str]:
    """*argv* behind a shell that first records the MAKEFLAGS the child gets."""
    script = 'printf "%s\\n" "$MAKEFLAGS" > "$0"; exec "$@"'
    return ["/bin/sh", "-c", script, str(flags), *argv]


def run_process(
    argv: Sequence[str], cwd: Path, env: dict[str, str], **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    return run_captured(argv, cwd, RUN_TIMEOUT, env=env, **kwargs)


def close_checked(pool: TokenPool) -> int | None:
    """Close a pool we created; a TokenCountWarning fails the test."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pool.close()
    bad = [str(w.message) for w in caught if issubclass(w.category, TokenCountWarning)]
    assert not bad, bad
    return result


@contextlib.contextmanager
def python_tmpdir(path: Path | None) -> Iterator[None]:
    """Make this process's temporary directory *path* for a moment (the TMPDIR a Python
    parent would have), so TokenPool.create(style="fifo") chooses as it would there."""
    if path is None:
        yield
        return
    saved = tempfile.tempdir
    tempfile.tempdir = str(path)
    try:
        yield
    finally:
        tempfile.tempdir = saved


def job_runs_command(argv: list[str], env: dict[str, str], how: str) -> tuple[int, str]:
    """A Jobserver job (in this module: forked, never pickled) that starts *argv*.

    ``pass_fds`` and ``pool-run`` are the right ways; ``plain`` is the pitfall: a default
    ``subprocess.run`` closes the pipe fds the job's MAKEFLAGS names.
    """
    pool = TokenPool.from_environ()  # the job's own handle on the pool it runs on
    assert pool is not None, "a job's environment advertises its pool"
    common: dict[str, Any] = dict(
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    try:
        if how == "pass_fds":
            proc = subprocess.run(argv, env=pool.environ(env), pass_fds=pool.pass_fds, **common)
        elif how == "pool-run":
            proc = pool.run(argv, env=env, **common)
        elif how == "plain":
            proc = subprocess.run(argv, env=pool.environ(env), **common)
        else:
            raise ValueError(how)
    finally:
        pool.close()
    return proc.returncode, proc.stdout


def run_parent(
    parent: Parent,
    child: Child,
    cell: Cell,
    request: pytest.FixtureRequest,
    *,
    plus: bool = True,
    how: str = "pass_fds",
    siblings: int = 2,
) -> Outcome:
    """Run *child* under *parent* with a pool of ``cell.slots``."""
    env = cell.env(**child.env)
    wrapped = wrapper(child.argv, cell.flags)
    if parent.kind == "make":
        make: Peer = request.getfixturevalue(str(parent.peer))
        line = f"printf '%s\\n' \"$$MAKEFLAGS\" > {mq(cell.flags)}; exec "
        line += " ".join(mq(w) for w in child.argv)
        (cell.workdir / "Makefile").write_text(
            f".PHONY: all\nall:\n\t{'+' if plus else ''}@{line}\n"
        )
        argv = make.argv("-s", f"-j{cell.slots}", *parent.make_args, "-f", "Makefile")
        proc = run_process(argv, cell.workdir, env)
        return Outcome(proc.returncode, proc.stdout + proc.stderr)
    if parent.kind == "serve":
        argv = [PY, "-m", "makejobs", "serve", "--strict", "-j", str(cell.slots)]
        argv += ["--style", parent.style, "--", *wrapped]
        proc = run_process(argv, cell.workdir, env)
        return Outcome(proc.returncode, proc.stdout + proc.stderr)
    with python_tmpdir(cell.tmpdir):
        pool = TokenPool.create(cell.slots, style=parent.style)
    try:
        if parent.kind == "py-pipe":
            proc = run_process(wrapped, cell.workdir, pool.environ(env), pass_fds=pool.pass_fds)
            code, output = proc.returncode, proc.stdout + proc.stderr
        elif parent.kind == "py-fifo":
            proc = pool.run(
                wrapped,
                cwd=cell.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT,
            )
            code, output = proc.returncode, proc.stdout + proc.stderr
        elif parent.kind == "py-jobserver":
            with Jobserver("fork", pool=pool) as js:
                # Submitted first: the child runs on this process's implicit slot.
                command = js.submit(job_runs_command, (wrapped, env, how))
                others = [
                    js.submit(run_job, (cell.log, f"sib.{i}", JOB_SECONDS))
                    for i in range(siblings)
                ]
                for future in others:
                    future.result(RUN_TIMEOUT)
                code, output = command.result(RUN_TIMEOUT)
        else:
            raise ValueError(parent.kind)
    except BaseException:
        # The run failed already: close quietly, so a count warning cannot hide why.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pool.close()
        raise
    return Outcome(code, output, close_checked(pool))


# ----------------------------------------------------------------------------------------
# Checking a cell


@dataclasses.dataclass
class Measured:
    peak: int
    spans: list[Span]
    makeflags: MakeFlags | None


def measure(outcome: Outcome, cell: Cell) -> Measured:
    try:
        spans = read_spans(cell.log)
    except LogError as e:
        pytest.fail(f"{e}\n{describe(outcome)}")
    flags = None
    if cell.flags.exists():
        flags = parse_makeflags(cell.flags.read_text().strip())
    return Measured(peak_overlap(spans), spans, flags)


def assert_tokens_conserved(parent: Parent, outcome: Outcome, cell: Cell) -> None:
    """Whoever created the pool found every token back."""
    if parent.kind == "make":
        assert "INTERNAL" not in outcome.output, describe(outcome)  # "INTERNAL: Exiting with"
    elif parent.kind == "serve":
        assert "jobserver token(s) missing" not in outcome.output, describe(outcome)
        assert "extra jobserver token" not in outcome.output, describe(outcome)
        assert outcome.returncode != 125, describe(outcome)  # --strict: a count mismatch
    else:
        assert outcome.returned == cell.slots - 1, (outcome.returned, describe(outcome))


def recorder(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    """Attach a measured value to the test's report (user_properties; unlike
    record_property this does not warn under junit_family xunit2)."""

    def record(name: str, value: object) -> None:
        request.node.user_properties.append((name, value))

    return record


def read_report(child: Child) -> dict[str, Any] | None:
    if child.report is None:
        return None
    assert child.report.exists(), f"{child.key} wrote no report"
    report: dict[str, Any] = json.loads(child.report.read_text())
    return report


def check_cell(
    cell_id: str,
    parent: Parent,
    child: Child,
    cell: Cell,
    outcome: Outcome,
    want: Expect,
    record: Callable[[str, object], None],
    *,
    siblings: int = 0,
) -> Measured:
    """Assert everything a cell promises (see the module docstring)."""
    m = measure(outcome, cell)
    sibling_names = [f"sib.{i}" for i in range(siblings)]
    why = f" ({want.why})" if want.why else ""
    print(f"{cell_id}: {want.kind.value}, peak {m.peak} of {cell.slots}{why}")
    record("peak", m.peak)
    record("slots", cell.slots)
    record("expect", want.kind.value)
    assert_tokens_conserved(parent, outcome, cell)
    if want.message is not None:
        assert want.message in outcome.output, f"expected {want.message!r}\n{describe(outcome)}"
    if want.kind is Kind.FAILS:
        assert outcome.returncode == 2, describe(outcome)  # make 4.3's status, passed on
        child_spans = [s for s in m.spans if s.name not in sibling_names]
        assert not child_spans, child_spans
        return m
    assert outcome.returncode == 0, describe(outcome)
    names = sorted(child.names() + sibling_names)
    assert sorted(s.name for s in m.spans) == names, describe(outcome)
    # The child was given the parent's pool (its style), or make's disabled/stale version.
    assert m.makeflags is not None and m.makeflags.advertises_pool(), m.makeflags
    report = read_report(child)
    if want.kind is Kind.JOINS:
        assert m.peak <= cell.slots, (m.peak, describe(outcome))
        if want.full:
            assert m.peak == cell.slots, (m.peak, describe(outcome))  # the pool was really used
        wanted_auth = FifoAuth if parent.style == "fifo" else PipeAuth
        assert isinstance(m.makeflags.auth, wanted_auth), m.makeflags
        for text in ("jobserver unavailable", "JobserverUnavailable", "makejobs run:"):
            assert text not in outcome.output, describe(outcome)
        if report is not None:
            assert report["owner"] is False and report["style"] == parent.style, report
            assert report["warnings"] == [], report
        if child.key == "ninja":
            assert "Jobserver mode detected" in outcome.output, describe(outcome)
            # Upstream ninja ignores pipe pools; this Kitware build accepts them with a warning.
            pipe_warning = "Jobserver 'pipe' mode detected"
            assert (pipe_warning in outcome.output) == (parent.style == "pipe"), outcome.output
        if child.count is not None:
            count = int(child.count.read_text())
            record("exec_slots", count)
            if siblings == 0:
                # exec takes every slot that is free when it starts: all of them here.
                assert count == cell.slots, count
            else:
                # Whatever the siblings left free; never exec's --max 8 (that is no pool).
                assert 1 <= count <= cell.slots, count
    elif want.kind is Kind.SERIAL:
        assert m.peak == 1, (m.peak, describe(outcome))
        if report is not None:  # a private pool of one slot, after a warning
            assert report["owner"] is True and report["slots"] == 1, report
            assert any(MAKEJOBS_MISSING_PLUS in w for w in report["warnings"]), report
    elif want.kind is Kind.PEER_IGNORES:
        # The documented peer limit: the pool is bypassed, the build oversubscribes.
        assert m.peak > cell.slots, (m.peak, describe(outcome))
    return m


def run_cell(
    request: pytest.FixtureRequest,
    workdir: Path,
    parent_key: str,
    child_key: str,
    *,
    plus: bool = True,
    tmpdir: Path | None = None,
    child_tmpdir: Path | None = None,
    blank_fifo: bool = False,
) -> tuple[Measured, Cell]:
    parent = PARENTS[parent_key]
    want = expect(parent, child_key, plus=plus, blank_fifo=blank_fifo)
    slots = SMALL_SLOTS if want.kind is Kind.PEER_IGNORES else SLOTS
    if want.kind is Kind.PEER_IGNORES and child_key == "ninja":
        assert ninja_default_jobs() > slots, "needs a machine where ninja's default -j > 2"
    cell = Cell(workdir, slots, tmpdir)
    child = make_child(child_key, cell, request)
    if child_tmpdir is not None:
        # A sandbox gives each action a TMPDIR of its own: the pool is still reached by path.
        child.argv = ["env", f"TMPDIR={child_tmpdir}", *child.argv]
    siblings = 2 if parent.kind == "py-jobserver" else 0
    outcome = run_parent(parent, child, cell, request, plus=plus, siblings=siblings)
    cell_id = f"{parent_key}{'' if plus else ' (no +)'} > {child_key}"
    m = check_cell(
        cell_id, parent, child, cell, outcome, want, recorder(request), siblings=siblings
    )
    return m, cell


def ninja_default_jobs() -> int:
    """ninja's own -j when it has no pool: 2 for one CPU, 3 for two, else CPUs + 2."""
    cpus = len(os.sched_getaffinity(0))
    return 2 if cpus <= 1 else 3 if cpus == 2 else cpus + 2


# ----------------------------------------------------------------------------------------
# The matrix


@pytest.mark.parametrize("child_key", CHILDREN)
@pytest.mark.parametrize("parent_key", list(PARENTS))
def test_matrix(
    parent_key: str,
    child_key: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Every parent x every child, recipe lines marked '+'."""
    m, _ = run_cell(request, tmp_path, parent_key, child_key)
    if parent_key == "make441-pipe" and m.makeflags is not None:
        assert not m.makeflags.disabled  # a '+' line gets the real fds, not -2,-2


WITHOUT_PLUS = [(p, c) for p in ("make43", "make441-pipe") for c in CHILDREN] + [
    ("make441-fifo", c) for c in PARSER_CHILDREN
]


@pytest.mark.parametrize(("parent_key", "child_key"), WITHOUT_PLUS)
def test_without_plus(
    parent_key: str,
    child_key: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Recipe lines without '+': a fifo reaches every child, a pipe only '+' children."""
    m, _ = run_cell(request, tmp_path, parent_key, child_key, plus=False)
    if parent_key == "make441-pipe":
        assert m.makeflags is not None and m.makeflags.disabled, m.makeflags  # -2,-2
    if parent_key == "make43":
        # make 4.3 leaves the numbers of the fds it closed.
        assert m.makeflags is not None and isinstance(m.makeflags.auth, PipeAuth)


def fifo_path(m: Measured) -> str:
    assert m.makeflags is not None and isinstance(m.makeflags.auth, FifoAuth), m.makeflags
    return m.makeflags.auth.path


def leftovers(directory: Path) -> list[str]:
    """Fifos (and makejobs' fifo directories) still in *directory*."""
    found = []
    for entry in directory.iterdir():
        if entry.name.startswith(("makejobs-", "GMfifo")) or stat.S_ISFIFO(entry.lstat().st_mode):
            found.append(entry.name)
    return found


@pytest.mark.parametrize("child_key", PARSER_CHILDREN)
@pytest.mark.parametrize("parent_key", FIFO_PARENTS)
def test_tmpdir_with_space(
    parent_key: str,
    child_key: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """TMPDIR with a blank. make 4.4.1 makes its fifo there and escapes the blank in
    MAKEFLAGS; makejobs and make read that correctly, ninja and cargo cut the path at the
    blank (known peer bug, asserted as such). makejobs' own fifos go to /tmp instead."""
    spaced = tmp_path / "t d"
    spaced.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    blank = parent_key == "make441-fifo"
    m, _ = run_cell(request, work, parent_key, child_key, tmpdir=spaced, blank_fifo=blank)
    path = fifo_path(m)
    if blank:
        assert path.startswith(str(spaced) + "/GMfifo"), path
    else:
        # TokenPool avoids a blank TMPDIR so that ninja and cargo can parse the path.
        assert " " not in path and not path.startswith(str(spaced)), path
    assert leftovers(spaced) == [], leftovers(spaced)


@pytest.mark.parametrize("child_key", PARSER_CHILDREN)
@pytest.mark.parametrize("parent_key", FIFO_PARENTS)
def test_private_tmpdir(
    parent_key: str,
    child_key: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """Sandbox-like private TMPDIRs (mode 0700): the parent's fifo is made inside its own,
    the child runs with another one and joins by absolute path; nothing is left behind."""
    private = tmp_path / "private-tmp"
    private.mkdir(mode=0o700)
    child_private = tmp_path / "child-tmp"
    child_private.mkdir(mode=0o700)
    work = tmp_path / "work"
    work.mkdir()
    m, _ = run_cell(
        request,
        work,
        parent_key,
        child_key,
        tmpdir=private,
        child_tmpdir=child_private,
    )
    assert fifo_path(m).startswith(str(private) + "/"), fifo_path(m)
    assert leftovers(private) == [], leftovers(private)
    assert leftovers(child_private) == [], leftovers(child_private)


# ----------------------------------------------------------------------------------------
# Nested chains, measured at the leaves


def assert_reports_joined(paths: Sequence[Path], style: Style) -> None:
    for path in paths:
        report = json.loads(path.read_text())
        assert report["owner"] is False and report["style"] == style, (path.name, report)
        assert report["warnings"] == [], (path.name, report)


CHAINS = {
    # top make, the sub-make its Python job starts, how the job starts it
    "make43-py-make43-py": ("make43", "make43", "pass_fds"),
    "make441fifo-py-make441-py": ("make441-fifo", "make441", "pool-run"),
    "make441pipe-py-make43-py": ("make441-pipe", "make43", "pass_fds"),
}


@pytest.mark.parametrize("case", list(CHAINS))
def test_chain_make_python_make_python(
    case: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """make -j3 -> '+' Python step (Jobserver) -> job starts make -> '+' Python leaves
    (Jobserver) -> jobs. Leaf spans: the step's own 2 jobs and 2 leaves x 3 jobs."""
    top_key, sub_key, how = CHAINS[case]
    parent = PARENTS[top_key]
    top: Peer = request.getfixturevalue(str(parent.peer))
    sub: Peer = request.getfixturevalue(sub_key)
    log = tmp_path / "spans.log"
    leaf = [PY, INTEROP, "jobserver", "--log", log, "--name", "LEAF", "--jobs", 3]
    leaf += ["--seconds", JOB_SECONDS, "--report", tmp_path / "LEAF.json"]
    leaf_line = " ".join(mq(w) for w in leaf).replace("LEAF", "$@")
    (tmp_path / "sub.mk").write_text(f".PHONY: all l1 l2\nall: l1 l2\nl1 l2:\n\t+@{leaf_line}\n")
    step = [PY, INTEROP, "nest", "--log", log, "--name", "top", "--jobs", 2]
    step += ["--seconds", JOB_SECONDS, "--report", tmp_path / "top.json", "--how", how]
    step += ["--", sub.path, "-s", "-f", tmp_path / "sub.mk"]
    (tmp_path / "Makefile").write_text(
        ".PHONY: all\nall:\n\t+@" + " ".join(mq(w) for w in step) + "\n"
    )
    cell = Cell(tmp_path, SLOTS)
    argv = top.argv("-s", f"-j{SLOTS}", *parent.make_args, "-f", "Makefile")
    proc = run_process(argv, tmp_path, cell.env())
    outcome = Outcome(proc.returncode, proc.stdout + proc.stderr)
    assert proc.returncode == 0, describe(outcome)
    assert_tokens_conserved(parent, outcome, cell)
    assert "jobserver unavailable" not in outcome.output, describe(outcome)
    spans = read_spans(log)
    expected = job_names("top", 2) + [f"{leaf}.j{i}" for leaf in ("l1", "l2") for i in range(3)]
    assert sorted(s.name for s in spans) == sorted(expected), describe(outcome)
    peak = peak_overlap(spans)
    print(f"chain {case}: peak {peak} of {SLOTS}")
    recorder(request)("peak", peak)
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak
    # Every Python level joined the top make's pool, at every depth.
    assert_reports_joined([tmp_path / f"{n}.json" for n in ("top", "l1", "l2")], parent.style)


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_chain_serve_ninja_python_cargo(
    style: Style,
    ninja: Peer,
    cargo: Peer,
    cargo_workspace: tuple[Path, Path],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """serve -j3 -> ninja -> Python step (Jobserver) -> job runs cargo (pool.run) -> build
    scripts. Leaf spans: 3 ninja edges, the step's 2 jobs, 5 build scripts."""
    manifest, target = cargo_workspace
    log = tmp_path / "spans.log"
    report = tmp_path / "step.json"
    step = [PY, INTEROP, "nest", "--log", log, "--name", "step", "--jobs", 2]
    step += ["--seconds", JOB_SECONDS, "--report", report, "--how", "pool-run", "--"]
    step += cargo_ws.build_argv(cargo.path, manifest)
    edges = job_names("nj", 3)
    assert not any(c in str(tmp_path) + str(manifest) + PY for c in "$ :\n")
    lines = [
        "rule step",
        "  command = " + " ".join(q(w) for w in step),
        "rule job",
        f"  command = {q(PY)} {q(JOB)} {q(log)} $out {JOB_SECONDS} $out",
        "build step: step",
        *(f"build {n}: job" for n in edges),
    ]
    (tmp_path / "build.ninja").write_text("\n".join(lines) + "\n")
    cell = Cell(tmp_path, SLOTS)
    argv = [PY, "-m", "makejobs", "serve", "--strict", "-j", str(SLOTS), "--style", style]
    argv += ["--", ninja.path, "-C", str(tmp_path)]
    proc = run_process(argv, tmp_path, cell.env(**cargo_ws.run_env(target, log)))
    outcome = Outcome(proc.returncode, proc.stdout + proc.stderr)
    assert proc.returncode == 0, describe(outcome)
    assert_tokens_conserved(PARENTS[f"serve-{style}"], outcome, cell)
    assert "Jobserver mode detected" in outcome.output, describe(outcome)
    spans = read_spans(log)
    expected = edges + job_names("step", 2) + cargo_ws.span_names()
    assert sorted(s.name for s in spans) == sorted(expected), describe(outcome)
    peak = peak_overlap(spans)
    cargo_peak = peak_overlap([s for s in spans if s.name.startswith("cargo.")])
    print(f"chain serve-{style}-ninja-py-cargo: peak {peak} of {SLOTS} (cargo {cargo_peak})")
    recorder(request)("peak", peak)
    assert peak <= SLOTS, peak
    assert peak == SLOTS, peak
    assert_reports_joined([report], style)


# ----------------------------------------------------------------------------------------
# A Jobserver job that starts make (or another pool client)

JOB_STARTS: dict[str, tuple[Style, str, str, Expect]] = {
    # pool style, how the job starts the child, child, expectation
    "pipe-pool-run-make43": ("pipe", "pool-run", "submake43", Expect(Kind.JOINS)),
    "pipe-pool-run-make441": ("pipe", "pool-run", "submake441", Expect(Kind.JOINS)),
    "pipe-plain-make43": ("pipe", "plain", "submake43", Expect(Kind.SERIAL, MAKE_MISSING_PLUS)),
    "pipe-plain-make441": (
        "pipe",
        "plain",
        "submake441",
        Expect(Kind.SERIAL, MAKE_MISSING_PLUS),
    ),
    "pipe-plain-jobserver": (
        "pipe",
        "plain",
        "jobserver",
        Expect(Kind.SERIAL, "subprocess closes them unless they are in pass_fds"),
    ),
    "fifo-plain-make441": ("fifo", "plain", "submake441", Expect(Kind.JOINS)),
}


@pytest.mark.parametrize("case", list(JOB_STARTS))
def test_jobserver_job_starts_child(
    case: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """A Jobserver job in this process starts make (or a Python pool client).

    In pipe style the job must hand the pool's fds on: ``pool.run()`` does (and
    ``pass_fds=pool.pass_fds``, the py-jobserver column of the matrix). The pitfall: a
    default ``subprocess.run()`` closes them, so make warns (with make's '+' hint, which is
    misleading here) and runs -j1, and makejobs says to use pass_fds; a fifo pool is
    reached by path and has no such pitfall.
    """
    style, how, child_key, want = JOB_STARTS[case]
    parent = Parent(f"py-jobserver-{style}", "py-jobserver", style)
    cell = Cell(tmp_path, SLOTS)
    child = make_child(child_key, cell, request)
    outcome = run_parent(parent, child, cell, request, how=how, siblings=0)
    check_cell(case, parent, child, cell, outcome, want, recorder(request))
