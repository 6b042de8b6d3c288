#!/usr/bin/env python3
"""Per-job overhead of running a trivial function in its own process, side by side.

Usage::

    python benchmarks/job_overhead.py [--quick] [--json FILE] [--methods fork,spawn] [-n JOBS]

The job is ``add_one(i)`` (returns ``i + 1``), so what is measured is the cost
of starting a process, running one call in it, bringing the result back and
reaping the process. Contenders, per start method:

* ``raw fork+waitpid`` (fork only, the baseline): ``os.fork()``, the child
  calls ``os._exit(0)``, the parent ``os.waitpid``; no result comes back. This
  is the floor for any design that runs each job in a fresh forked process.
* ``multiprocessing.Process``: ``Process(target=add_one, args=(i,))``,
  ``.start()`` then ``.join()`` per job (no result comes back either).
* ``makejobs``: ``Jobserver(method, slots=S)``, in two modes:
  ``serial`` (slots=1: ``submit(add_one, (i,)).result()`` one job after
  another, i.e. pure per-job latency) and ``throughput`` (slots=2: submit
  every job of the sample, then collect every result).
* ``jobserver 3.0.1`` (PyPI ``jobserver``): ``Jobserver(context=method,
  slots=S)`` doing the same two modes with ``submit(fn=, args=)``.

Every sample ends only when all of its processes have been reaped: jobserver
3.0.1 hands back a result as soon as the pipe delivers it and reaps the
process later (inside a later ``submit``), so its samples end by waiting in
``multiprocessing.active_children()`` until the processes it started are
gone.

Each sample of a Jobserver row runs on a Jobserver opened for that sample
and closed after it, outside the timing (under fork, one untimed job warms
it up first). No other row's Jobserver is alive while a row is timed, as in
a program that uses one library: at-fork work that a live Jobserver does
in *every* fork of the process would otherwise tax the other rows too
(makejobs' own is now one counter increment; it used to make a pipe and an
epoll set per live pool, 0.2-0.3 ms each). The fork server is told to preload this
module, ``makejobs._child`` and ``jobserver``, as it would preload a main
module that imports its job library; spawn jobs pay for importing their
library, which is part of what a spawn job costs.

Start methods are measured one after another. Within a start method,
samples are interleaved: each round times one sample of every contender, in
an order rotated from round to round, and brackets each of them by ``raw
fork+waitpid`` samples taken just before and just after it, so that drift
in machine speed (frequency scaling, other processes on a shared box) hits a
row and its baseline alike.

The table shows, per row, the median over rounds of ms per job, the median
over rounds of its ratio to the mean of its two bracketing raw samples, and
the median over rounds of its ratio to the ``jobserver 3.0.1`` sample of the
same start method and mode in the same round (``serial`` for the raw and
``multiprocessing`` rows). The targets, with fork: makejobs at most
1.5x raw fork+waitpid, and at least 1.5x faster than jobserver 3.0.1 (a
ratio of at most 0.67).

Top-level imports are kept to a few stdlib modules because spawn children
re-import this module (as ``__mp_main__`` when run as a script) to find
``add_one``: every contender pays for that import, so it is kept small.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
import time

# typing is not imported at run time (see above); mypy treats this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from contextlib import ExitStack
    from typing import Any, Callable

# Measure the working tree even when makejobs is not installed.
# (os.path, not pathlib: see above on what spawn children import.)
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

__all__ = [
    "BASELINE",
    "METHODS",
    "TARGET_FASTER_THAN_JOBSERVER",
    "TARGET_RAW_RATIO",
    "add_one",
    "main",
    "run",
    "to_markdown",
]

#: The row every ``ratio_raw`` is taken against.
BASELINE = "raw fork+waitpid"
#: Start methods measured by default.
METHODS = ("fork", "forkserver", "spawn")
#: The goals, with fork: makejobs at most this many raw fork+waitpid ...
TARGET_RAW_RATIO = 1.5
#: ... and at least this many times faster than jobserver 3.0.1.
TARGET_FASTER_THAN_JOBSERVER = 1.5

MAKEJOBS = "makejobs"
JOBSERVER = "jobserver 3.0.1"
MULTIPROCESSING = "multiprocessing.Process"
SERIAL = "serial"
THROUGHPUT = "throughput"
#: Slots per mode: one is pure per-job latency, two lets jobs overlap (2 cores).
SLOTS = {SERIAL: 1, THROUGHPUT: 2}


class _Settings:
    """Jobs per sample, rounds and time budget (s) per start method."""

    def __init__(
        self, jobs: dict[str, int], raw_jobs: int, rounds: dict[str, int], budget: dict[str, float]
    ) -> None:
        self.jobs = jobs
        self.raw_jobs = raw_jobs
        self.rounds = rounds
        self.budget = budget


# A fork job costs a few ms, a forkserver job 15-40 ms and a spawn job 60-170 ms
# (on a shared 2-CPU VM); a round of every row takes about 0.6 s, 2 s and 4 s.
# No new round starts past the budget once MIN_ROUNDS are done.
_FULL = _Settings(
    jobs={"fork": 16, "forkserver": 4, "spawn": 4},
    raw_jobs=8,
    rounds={"fork": 30, "forkserver": 12, "spawn": 8},
    budget={"fork": 14.0, "forkserver": 14.0, "spawn": 18.0},
)
_QUICK = _Settings(
    jobs={"fork": 8, "forkserver": 2, "spawn": 2},
    raw_jobs=4,
    rounds={"fork": 6, "forkserver": 3, "spawn": 3},
    budget={"fork": 1.5, "forkserver": 1.0, "spawn": 1.0},
)
MIN_ROUNDS = 3


def add_one(x: int) -> int:
    """The job: trivial on purpose, so that only the per-job overhead is left."""
    return x + 1


class Contender:
    """One row: how to prepare a sample, or why it cannot run here."""

    def __init__(
        self,
        method: str,
        contender: str,
        mode: str,
        jobs: int,
        prepare: Callable[[ExitStack], Callable[[int], float]] | None = None,
        *,
        slots: int | None = None,
        warm: bool = False,
        skipped: str = "",
        note: str = "",
    ) -> None:
        self.method = method
        self.contender = contender
        self.mode = mode
        self.jobs = jobs
        self.prepare = prepare
        self.slots = slots
        self.warm = warm  # run one untimed job after preparing
        self.skipped = skipped
        self.note = note

    def sample(self, k: int) -> float:
        """Milliseconds per job over one sample of *k* jobs (set-up and clean-up untimed)."""
        assert self.prepare is not None
        with contextlib.ExitStack() as stack:
            sample = self.prepare(stack)
            if self.warm:
                sample(1)
            return _ms_per_job(sample, k)

    @property
    def name(self) -> str:
        return f"{self.method} {self.contender} {self.mode}"


# -- samples ---------------------------------------------------------------------------------
#
# Each sample function is written out in full, so that what is timed is the
# contender's own code plus a bare `for` loop, the same in every row.


def _raw_fork_sample(k: int) -> float:
    fork, waitpid, exit_ = os.fork, os.waitpid, os._exit
    t0 = time.perf_counter()
    for _ in range(k):
        pid = fork()
        if pid == 0:  # pragma: no cover - child
            exit_(0)
        waitpid(pid, 0)
    return time.perf_counter() - t0


def _process_sample(context: Any) -> Callable[[int], float]:
    Process = context.Process

    def sample(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            p = Process(target=add_one, args=(i,))
            p.start()
            p.join()
        elapsed = time.perf_counter() - t0
        if p.exitcode != 0:
            raise RuntimeError(f"multiprocessing job exited with {p.exitcode}")
        return elapsed

    return sample


def _makejobs_serial(js: Any) -> Callable[[int], float]:
    submit = js.submit

    def sample(k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            if submit(add_one, (i,)).result() != i + 1:
                raise AssertionError("wrong result")
        return time.perf_counter() - t0

    return sample


def _makejobs_throughput(js: Any) -> Callable[[int], float]:
    submit = js.submit

    def sample(k: int) -> float:
        t0 = time.perf_counter()
        futures = [submit(add_one, (i,)) for i in range(k)]
        for i, future in enumerate(futures):
            if future.result() != i + 1:
                raise AssertionError("wrong result")
        return time.perf_counter() - t0

    return sample


def _live_children() -> set[Any]:
    import multiprocessing

    return set(multiprocessing.active_children())


def _settle(before: set[Any]) -> None:
    """Wait until every multiprocessing child started since *before* has exited and been reaped.

    Children alive before the sample (a harness's own workers) are not waited for.
    """
    import multiprocessing

    deadline = time.monotonic() + 30
    # active_children() reaps the finished ones; poll briefly for the rest,
    # which have already sent their result and are only exiting.
    while any(p not in before for p in multiprocessing.active_children()):
        if time.monotonic() > deadline:
            raise RuntimeError("jobserver 3.0.1 job processes did not exit within 30 s")
        time.sleep(0.0001)


def _jobserver_serial(js: Any) -> Callable[[int], float]:
    submit = js.submit

    def sample(k: int) -> float:
        before = _live_children()
        t0 = time.perf_counter()
        for i in range(k):
            if submit(fn=add_one, args=(i,)).result() != i + 1:
                raise AssertionError("wrong result")
        _settle(before)
        return time.perf_counter() - t0

    return sample


def _jobserver_throughput(js: Any) -> Callable[[int], float]:
    submit = js.submit

    def sample(k: int) -> float:
        before = _live_children()
        t0 = time.perf_counter()
        futures = [submit(fn=add_one, args=(i,)) for i in range(k)]
        for i, future in enumerate(futures):
            if future.result() != i + 1:
                raise AssertionError("wrong result")
        _settle(before)
        return time.perf_counter() - t0

    return sample


# -- contenders ------------------------------------------------------------------------------


def _add_to_pythonpath(path: str) -> None:
    """Put *path* first on PYTHONPATH (for processes started from now on) if it is not there."""
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *entries])


def _load_jobserver() -> tuple[Any, str]:
    """PyPI jobserver 3.0.1 as a module, or None and why not."""
    try:
        import jobserver
    except ImportError as e:
        return None, f"cannot import jobserver (pip install jobserver==3.0.1): {e}"
    version = getattr(jobserver, "__version__", None)
    if version is None:
        try:
            from importlib.metadata import version as dist_version

            version = dist_version("jobserver")
        except Exception:  # no metadata (a source checkout): measure it anyway
            return jobserver, ""
    if version != "3.0.1":
        return None, f"jobserver {version} is installed, not 3.0.1"
    return jobserver, ""


def _ready(sample: Callable[[int], float]) -> Callable[[ExitStack], Callable[[int], float]]:
    """A Contender.prepare for a row that needs nothing set up."""

    def prepare(stack: ExitStack) -> Callable[[int], float]:
        return sample

    return prepare


def _pooled(
    factory: Callable[[], Any], make: Callable[[Any], Callable[[int], float]]
) -> Callable[[ExitStack], Callable[[int], float]]:
    """A Contender.prepare that opens a fresh Jobserver for the sample and closes it after."""

    def prepare(stack: ExitStack) -> Callable[[int], float]:
        return make(stack.enter_context(factory()))

    return prepare


def _contenders(method: str, k: int, rhysu: Any, missing: str) -> list[Contender]:
    """The rows of one start method (the raw baseline excluded)."""
    import multiprocessing

    from makejobs.jobserver import Jobserver

    if method not in multiprocessing.get_all_start_methods():
        why = f"start method {method!r} is not available here"
        return [
            Contender(method, contender, mode, k, skipped=why)
            for contender, mode in (
                (MULTIPROCESSING, SERIAL),
                (MAKEJOBS, SERIAL),
                (MAKEJOBS, THROUGHPUT),
                (JOBSERVER, SERIAL),
                (JOBSERVER, THROUGHPUT),
            )
        ]
    if method == "forkserver":
        # The fork server imports these once, as it would for a main module that
        # imports its job library at the top (it preloads __main__ by default);
        # otherwise every forkserver job would pay for importing the library.
        # No effect when this process's fork server is already running.
        # Python 3.11's fork server ignores the sys.path it is sent, so the
        # working tree must be on PYTHONPATH for it to find makejobs (a failed
        # preload is silently skipped, and each job would import it again).
        _add_to_pythonpath(_ROOT)
        preload = [add_one.__module__, "makejobs._child"]
        if rhysu is not None:
            preload.append("jobserver")
        multiprocessing.get_context("forkserver").set_forkserver_preload(preload)
    context = multiprocessing.get_context(method)
    cases = [
        Contender(
            method,
            MULTIPROCESSING,
            SERIAL,
            k,
            _ready(_process_sample(context)),
            note="start() + join(); no result comes back",
        )
    ]
    # A fresh Jobserver per sample, closed right after it (untimed): whatever
    # at-fork work a live Jobserver does runs in every fork of this process,
    # so idle ones would tax the other rows' forks, the baseline's included.
    # Under fork one untimed job warms it up; elsewhere that would cost more
    # than the first-use work it hides.
    warm = method == "fork"
    for mode, make in ((SERIAL, _makejobs_serial), (THROUGHPUT, _makejobs_throughput)):
        slots = SLOTS[mode]
        prepare = _pooled(functools.partial(Jobserver, method, slots=slots), make)
        cases.append(Contender(method, MAKEJOBS, mode, k, prepare, slots=slots, warm=warm))
    for mode, make in ((SERIAL, _jobserver_serial), (THROUGHPUT, _jobserver_throughput)):
        slots = SLOTS[mode]
        if rhysu is None:
            cases.append(Contender(method, JOBSERVER, mode, k, slots=slots, skipped=missing))
            continue
        factory = functools.partial(rhysu.Jobserver, context=method, slots=slots)
        prepare = _pooled(factory, make)
        cases.append(Contender(method, JOBSERVER, mode, k, prepare, slots=slots, warm=warm))
    return cases


# -- measurement -----------------------------------------------------------------------------


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _ms_per_job(sample: Callable[[int], float], k: int) -> float:
    """Milliseconds per job over one sample of *k* jobs, with the garbage collector off."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return sample(k) * 1e3 / k
    finally:
        if enabled:
            gc.enable()


class _Phase:
    """The interleaved samples of one start method's rows and their raw baseline."""

    def __init__(self, baseline: Contender, cases: list[Contender]) -> None:
        self.baseline = baseline
        self.cases = cases
        self.active = [c for c in cases if c.prepare is not None]
        self.ms: dict[str, list[float]] = {c.name: [] for c in [baseline, *self.active]}
        self.vs_raw: dict[str, list[float]] = {c.name: [] for c in self.active}
        self.raw_first: list[float] = []  # the first baseline sample of each round
        self.rounds = 0

    def measure(self, max_rounds: int, budget: float | None) -> None:
        baseline = self.baseline
        for case in [baseline, *self.active]:
            case.sample(1)  # warm-up: start the fork server, first imports
        t_start = time.perf_counter()
        others = self.active
        while self.rounds < max_rounds:
            over = budget is not None and time.perf_counter() - t_start > budget
            if over and self.rounds >= MIN_ROUNDS:
                break
            # Each sample is bracketed by two baseline samples and compared with
            # their mean, so that the pair sees the same machine state. The order
            # rotates from round to round so that no row always runs first.
            before = baseline.sample(baseline.jobs)
            self.ms[baseline.name].append(before)
            self.raw_first.append(before)
            k = self.rounds % len(others) if others else 0
            for case in others[k:] + others[:k]:
                x = case.sample(case.jobs)
                after = baseline.sample(baseline.jobs)
                self.ms[baseline.name].append(after)
                self.ms[case.name].append(x)
                self.vs_raw[case.name].append(2 * x / (before + after))
                before = after
            self.rounds += 1

    def row(self, case: Contender) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": case.name,
            "method": case.method,
            "contender": case.contender,
            "mode": case.mode,
            "slots": case.slots,
            "jobs": case.jobs,
            "rounds": 0,
            "ms_median": None,
            "ms_min": None,
            "ms_max": None,
            "ratio_raw": None,
            "ratio_jobserver": None,
            "note": case.note,
            "skipped": case.skipped,
        }
        if case.prepare is None:
            return row
        samples = self.ms[case.name]
        is_baseline = case is self.baseline
        # The jobserver 3.0.1 sample of the same round (samples are in step,
        # one per row and round, plus the baseline's first of each round).
        ratio_js = None
        ref = next(
            (c for c in self.active if c.contender == JOBSERVER and c.mode == case.mode), None
        )
        if ref is not None:
            mine = self.raw_first if is_baseline else samples
            ratio_js = _median([a / b for a, b in zip(mine, self.ms[ref.name])])
        row.update(
            rounds=self.rounds,
            ms_median=_median(samples),
            ms_min=min(samples),
            ms_max=max(samples),
            ratio_raw=1.0 if is_baseline else _median(self.vs_raw[case.name]),
            ratio_jobserver=ratio_js,
        )
        return row


def run(
    quick: bool = False,
    n: int | None = None,
    *,
    methods: Iterable[str] | None = None,
    rounds: int | None = None,
) -> list[dict[str, Any]]:
    """Measure every contender; return one dict per row, baseline first.

    Start methods are measured one after another (fork first). Within a start
    method the rows are interleaved round by round, each sample bracketed by
    raw fork+waitpid samples. Each sample of a pooled row runs on a Jobserver
    opened for it and closed after it (untimed), so that no other row's
    Jobserver is alive while a row is timed: at-fork work a live Jobserver
    does would tax every fork of the process.

    Args:
        quick: fewer rounds and jobs (about 9 s instead of 50 s on 2 cores).
        n: jobs per sample for every row (baseline included), instead of the
            per-method defaults (16 fork, 4 forkserver/spawn; 8 raw).
        methods: start methods to measure (default: fork, forkserver, spawn);
            the raw fork baseline is always measured.
        rounds: interleaved rounds per start method, instead of the default.
            Without it, no round starts after the method's time budget once
            ``MIN_ROUNDS`` are done.

    Each row has ``name``, ``method``, ``contender``, ``mode``, ``slots``
    (None for rows without a pool), ``jobs`` (per sample), ``rounds``,
    ``ms_median`` (ms per job, median over rounds), ``ms_min``, ``ms_max``,
    ``ratio_raw`` (median over rounds of the row's ms per job divided by the
    mean of the two raw fork+waitpid samples bracketing it), ``ratio_jobserver``
    (median over rounds of the row's ms divided by the jobserver 3.0.1 sample
    of the same method and mode in the same round, serial for rows without a
    pool; None when jobserver 3.0.1 is not measured), ``note`` and ``skipped``
    (non-empty, with the numbers None, when the row could not run here). The
    baseline row comes from the fork phase (else the first one measured).

    Measuring forkserver sets this process's fork server preload list and
    puts the working tree on ``PYTHONPATH`` (both stay so afterwards).
    """
    chosen = list(dict.fromkeys(METHODS if methods is None else methods))
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown start methods {unknown}; choose from {METHODS}")
    if not chosen:
        raise ValueError("no start method to measure")
    if (n is not None and n < 1) or (rounds is not None and rounds < 1):
        raise ValueError("n and rounds must be positive")
    chosen.sort(key=METHODS.index)
    settings = _QUICK if quick else _FULL
    rhysu, missing = _load_jobserver()
    phases: list[_Phase] = []
    for method in chosen:
        k = settings.jobs[method] if n is None else n
        raw_jobs = settings.raw_jobs if n is None else n
        baseline = Contender("fork", BASELINE, SERIAL, raw_jobs, _ready(_raw_fork_sample))
        max_rounds = settings.rounds[method] if rounds is None else rounds
        budget = None if rounds is not None else settings.budget[method]
        phase = _Phase(baseline, _contenders(method, k, rhysu, missing))
        phase.measure(max_rounds, budget)
        phases.append(phase)
    first = phases[0]
    rows = [first.row(first.baseline)]
    for phase in phases:
        rows.extend(phase.row(case) for case in phase.cases)
    return rows


# -- output ----------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per fork makejobs row on the two targets."""
    lines = []
    for row in rows:
        if row["method"] != "fork" or row["contender"] != MAKEJOBS or row["skipped"]:
            continue
        raw = row["ratio_raw"]
        text = (
            f"fork makejobs {row['mode']}: {raw:.2f}x raw fork+waitpid"
            f" (target <= {TARGET_RAW_RATIO:g}x: {'ok' if raw <= TARGET_RAW_RATIO else 'MISS'})"
        )
        js = row["ratio_jobserver"]
        if js is not None:
            faster = 1 / js
            ok = faster >= TARGET_FASTER_THAN_JOBSERVER
            text += (
                f"; {faster:.2f}x as fast as jobserver 3.0.1"
                f" (target >= {TARGET_FASTER_THAN_JOBSERVER:g}x: {'ok' if ok else 'MISS'})"
            )
        lines.append(text)
    return lines


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the verdicts and notes below it."""
    lines = [
        "| method | contender | mode | ms/job (median) | ratio to raw fork"
        " | ratio to jobserver 3.0.1 |",
        "|---|---|---|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        mode = row["mode"] if row["slots"] is None else f"{row['mode']} (slots={row['slots']})"
        if row["skipped"]:
            notes.append(f"- {row['name']}: not measured: {row['skipped']}")
        elif row["note"]:
            notes.append(f"- {row['method']} {row['contender']}: {row['note']}")
        lines.append(
            f"| {row['method']} | {row['contender']} | {mode}"
            f" | {_fmt(row['ms_median'], '.3f')} | {_fmt(row['ratio_raw'], '.2f', 'x')}"
            f" | {_fmt(row['ratio_jobserver'], '.2f', 'x')} |"
        )
    notes = [f"- {v}" for v in verdicts(rows)] + sorted(set(notes), key=notes.index)
    measured = [r for r in rows if not r["skipped"]]
    if measured:
        per = ", ".join(
            f"{m} {r['jobs']}"
            for m in METHODS
            for r in measured
            if r["method"] == m and r["contender"] == MAKEJOBS and r["mode"] == SERIAL
        )
        phases = ", ".join(
            f"{m} {r['rounds']}"
            for m in METHODS
            for r in measured
            if r["method"] == m and r["contender"] == MAKEJOBS and r["mode"] == SERIAL
        )
        notes.append(
            f"- Interleaved rounds per start method (measured one after another): {phases};"
            f" jobs per sample: {per}, raw {measured[0]['jobs']}."
            " Ratios are medians over rounds of per-round ratios"
            " (to the mean of the bracketing raw samples; to the jobserver 3.0.1 sample of the"
            " same method and mode, serial for rows without a pool), so they need not equal"
            " the ratio of the medians."
        )
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import command_line, report

    parser = command_line(__doc__, quick="about 10 s instead of 55 s")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated start methods (default: %(default)s)",
    )
    parser.add_argument("-n", type=int, default=None, help="jobs per sample for every row")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    return report(
        args,
        "job_overhead",
        lambda: run(quick=args.quick, n=args.n, methods=methods, rounds=args.rounds),
        to_markdown,
        baseline=BASELINE,
        targets={
            "ratio_raw_at_most": TARGET_RAW_RATIO,
            "faster_than_jobserver_at_least": TARGET_FASTER_THAN_JOBSERVER,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
