#!/usr/bin/env python3
"""Cost of one token round trip (take a token, give it back), side by side.

Usage::

    python benchmarks/token_roundtrip.py [--quick] [--json FILE]

Every implementation reads and writes a real token byte on a pipe (or fifo)
that holds a few tokens, so the cost of interest is what each library adds on
top of the ``read(1)`` + ``write(1)`` system-call pair, which is measured in the
same run as the baseline:

* ``raw pipe``: ``os.read(r, 1)`` + ``os.write(w, byte)`` on an ``os.pipe``.
* ``raw fifo``: the same on a named fifo (the floor for the fifo rows).
* ``makejobs ...``: a *joined* pipe pool (``TokenPool.from_environ`` on a
  ``MAKEFLAGS`` naming the pipe, exactly what a recipe of ``make -j4`` sees),
  with the implicit slot held first so that every ``acquire`` reads a byte and
  every ``release`` writes one; through ``acquire``/``release``,
  ``try_acquire``/``release`` and ``with pool.slot()``; and a created fifo pool.
* ``gnumake-tokenpool``: ``JobClient().acquire()`` + ``release(token)`` on the
  same kind of pipe and fifo. Its ``acquire`` arms a ``SIGALRM`` interval timer
  around every read, so it works only in the main thread (and cancels any timer
  the caller set); its rows say so, and are skipped with a reason when it
  cannot run (not installed, Python < 3.11, not the main thread).

Samples are short (a few ms) and interleaved: each round times one sample of
every implementation, in an order rotated from round to round, and brackets
each of them by ``raw pipe`` samples taken just before and just after it, so
that drift in machine speed (frequency scaling, noisy neighbours on a shared
box) hits the row and its baseline alike. The table shows, per
implementation, the median over rounds of ns per round trip and the median
over rounds of its ratio to the mean of its two bracketing ``raw pipe``
samples. The target for makejobs is at most 3x the raw pipe pair.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

# Measure the working tree even when makejobs is not installed.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks._common import command_line, report  # noqa: E402
from makejobs.pool import TokenPool  # noqa: E402
from makejobs.protocol import FifoAuth  # noqa: E402

__all__ = ["BASELINE", "TARGET_RATIO", "main", "run", "to_markdown"]

#: The row every ratio is taken against.
BASELINE = "raw pipe"
#: The goal: a makejobs round trip costs at most this many raw pairs.
TARGET_RATIO = 3.0
#: Tokens in each pipe: more than one, so that a read never finds it empty.
TOKENS = 3

#: Full run: at most this many rounds, the wall time one sample of one
#: implementation aims at, and the wall-time budget of the whole run: on a
#: loaded machine the run stops early (after at least _MIN_ROUNDS rounds).
_FULL = (101, 0.008, 18.0)
#: --quick run.
_QUICK = (41, 0.003, 2.5)
_MIN_ROUNDS = 5

# A timed loop takes an iteration count and returns the elapsed nanoseconds.
Loop = Callable[[int], int]


@dataclass
class Case:
    """One implementation under test: its timed loop, or why it cannot run."""

    name: str
    implementation: str
    operation: str
    transport: str
    loop: Loop | None = None
    note: str = ""
    skipped: str = ""
    iterations: int = 0


# -- fixtures --------------------------------------------------------------------------------


@contextlib.contextmanager
def _token_pipe() -> Iterator[tuple[int, int]]:
    """An ``os.pipe`` holding TOKENS token bytes, as a parent make would set it up."""
    r, w = os.pipe()
    # Inheritable, as make's pipe is in its child: makejobs refuses to join an
    # advertised pipe that is close-on-exec (this process's own).
    os.set_inheritable(r, True)
    os.set_inheritable(w, True)
    try:
        os.write(w, b"+" * TOKENS)
        yield r, w
    finally:
        os.close(r)
        os.close(w)


@contextlib.contextmanager
def _token_fifo() -> Iterator[str]:
    """A named fifo holding TOKENS token bytes (kept open by us while in use)."""
    tmp = tempfile.mkdtemp(prefix="makejobs-bench-")
    path = os.path.join(tmp, "fifo")
    os.mkfifo(path, 0o600)
    # O_RDWR never blocks on a fifo (Linux) and keeps it alive for other openers.
    keeper = os.open(path, os.O_RDWR)
    try:
        os.write(keeper, b"+" * TOKENS)
        yield path
    finally:
        os.close(keeper)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set os.environ entries for the duration of the block (restored afterwards)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _makeflags_pipe(r: int, w: int) -> str:
    # What make 4.3 / 4.4 --jobserver-style=pipe exports to a '+' recipe.
    return f" -j{TOKENS + 1} --jobserver-auth={r},{w}"


# -- timed loops -----------------------------------------------------------------------------
#
# Each loop is written out in full (no per-iteration indirection through a
# callable), so that what is timed is the implementation's own code plus the
# bare `for` loop, which costs the same in every row, baseline included.


def _raw_loop(r: int, w: int) -> Loop:
    read, write = os.read, os.write
    clock = time.perf_counter_ns

    def loop(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            write(w, read(r, 1))
        return clock() - t0

    return loop


def _acquire_release_loop(pool: TokenPool) -> Loop:
    clock = time.perf_counter_ns

    def loop(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            token = pool.acquire()
            pool.release(token)
        return clock() - t0

    return loop


def _try_acquire_release_loop(pool: TokenPool) -> Loop:
    clock = time.perf_counter_ns

    def loop(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            token = pool.try_acquire()
            assert token is not None  # the pipe never runs dry here
            pool.release(token)
        return clock() - t0

    return loop


def _slot_loop(pool: TokenPool) -> Loop:
    clock = time.perf_counter_ns

    def loop(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            with pool.slot():
                pass
        return clock() - t0

    return loop


def _gnumake_loop(client: Any) -> Loop:
    clock = time.perf_counter_ns

    def loop(n: int) -> int:
        t0 = clock()
        for _ in range(n):
            token = client.acquire()
            assert token is not None  # the pipe never runs dry here
            client.release(token)
        return clock() - t0

    return loop


# -- cases -----------------------------------------------------------------------------------


def _joined_pool(stack: contextlib.ExitStack, r: int, w: int) -> TokenPool:
    """Join the pipe as a make recipe would, and hold the implicit slot."""
    pool = TokenPool.from_environ({"MAKEFLAGS": _makeflags_pipe(r, w)})
    assert pool is not None
    stack.callback(pool.close)
    implicit = pool.acquire()
    assert implicit.implicit
    stack.callback(pool.release, implicit)
    return pool


def _gnumake_client(stack: contextlib.ExitStack, makeflags: str) -> Any:
    """A gnumake_tokenpool.JobClient on *makeflags*; raises RuntimeError with the reason if not."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("its acquire() arms SIGALRM, which works only in the main thread")
    try:
        import gnumake_tokenpool  # type: ignore[import-untyped]
    except ImportError as e:  # not installed, or Python < 3.11 (it imports typing.Never)
        raise RuntimeError(f"cannot import gnumake_tokenpool: {e}") from None
    # It reads MAKEFLAGS from os.environ, once, in its constructor.
    with _environ(MAKEFLAGS=makeflags):
        client = gnumake_tokenpool.JobClient(debug=False, debug2=False)
    # acquire() reads through a dup of the read fd that it never closes; close
    # it ourselves so that repeated runs do not leak descriptors.
    stack.callback(_close_gnumake_dup, client)
    return client


def _close_gnumake_dup(client: Any) -> None:
    fd = getattr(client, "_fdReadDup", None)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    fifo = getattr(client, "_fdFifo", None)
    if fifo is not None:
        with contextlib.suppress(OSError):
            os.close(fifo)
        client._fdFifo = None  # its __del__ would close the number again


_GNUMAKE_NOTE = "SIGALRM itimer around every read: main thread only, cancels the caller's timer"


def _cases(stack: contextlib.ExitStack) -> list[Case]:
    cases: list[Case] = []

    r, w = stack.enter_context(_token_pipe())
    cases.append(
        Case(BASELINE, "raw os.read + os.write", "read(1) + write(1)", "pipe", _raw_loop(r, w))
    )

    fifo = stack.enter_context(_token_fifo())
    fr = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stack.callback(os.close, fr)
    fw = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    stack.callback(os.close, fw)
    cases.append(
        Case("raw fifo", "raw os.read + os.write", "read(1) + write(1)", "fifo", _raw_loop(fr, fw))
    )

    # Each makejobs row joins its own pipe: rows never share tokens or state.
    for name, operation, make_loop in (
        ("makejobs acquire", "acquire() + release()", _acquire_release_loop),
        ("makejobs try_acquire", "try_acquire() + release()", _try_acquire_release_loop),
        ("makejobs slot", "with pool.slot()", _slot_loop),
    ):
        r, w = stack.enter_context(_token_pipe())
        pool = _joined_pool(stack, r, w)
        cases.append(Case(name, "makejobs", operation, "pipe (joined)", make_loop(pool)))

    created = TokenPool.create(TOKENS + 1, style="fifo")
    stack.callback(created.close)
    implicit = created.acquire()
    stack.callback(created.release, implicit)
    cases.append(
        Case(
            "makejobs fifo acquire",
            "makejobs",
            "acquire() + release()",
            "fifo (created)",
            _acquire_release_loop(created),
        )
    )

    assert isinstance(created.auth, FifoAuth)
    fifo_path = created.auth.path
    r, w = stack.enter_context(_token_pipe())
    pipe_case = Case(
        "gnumake-tokenpool",
        "gnumake-tokenpool",
        "acquire() + release()",
        "pipe (joined)",
        note=_GNUMAKE_NOTE,
    )
    fifo_case = Case(
        "gnumake-tokenpool fifo",
        "gnumake-tokenpool",
        "acquire() + release()",
        "fifo (joined)",
        note=_GNUMAKE_NOTE,
    )
    # It joins the makejobs-created fifo, as it would join make 4.4's.
    for case, makeflags in (
        (pipe_case, _makeflags_pipe(r, w)),
        (fifo_case, f" -j{TOKENS + 1} --jobserver-auth=fifo:{fifo_path}"),
    ):
        try:
            case.loop = _gnumake_loop(_gnumake_client(stack, makeflags))
        except Exception as e:  # NoJobServer, or the RuntimeError reasons above
            case.skipped = str(e) or type(e).__name__
        cases.append(case)
    return cases


# -- measurement -----------------------------------------------------------------------------


def _sample(loop: Loop, n: int) -> float:
    """Nanoseconds per iteration over *n* iterations, with the garbage collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return loop(n) / n
    finally:
        if enabled:
            gc.enable()


def _calibrate(loop: Loop, target_s: float) -> int:
    """An iteration count that makes one sample of *loop* take about *target_s* seconds."""
    n = 64
    while True:
        elapsed = loop(n)
        if elapsed >= 2_000_000 or n >= 1 << 24:  # 2 ms is enough to extrapolate
            return max(16, int(n * target_s * 1e9 / max(elapsed, 1)))
        n *= 4


def run(
    quick: bool = False, *, iterations: int | None = None, rounds: int | None = None
) -> list[dict[str, Any]]:
    """Measure every implementation; return one dict per row, baseline first.

    Args:
        quick: fewer rounds and shorter samples (at most about 3 s instead of 20 s).
        iterations: round trips per sample, instead of calibrating each row to
            a fixed sample duration (tests pass a tiny count).
        rounds: number of interleaved rounds, run in full; by default as many
            as fit in the time budget, up to a maximum.

    Each row has ``name``, ``implementation``, ``operation``, ``transport``,
    ``ns_median`` (ns per round trip, median over rounds), ``ns_min``,
    ``ns_max``, ``ratio`` (median over rounds of this row's ns divided by the
    mean of the two baseline samples bracketing it), ``ratio_of_medians``
    (``ns_median`` over the baseline's), ``rounds``,
    ``iterations`` (per sample), ``note`` and ``skipped`` (non-empty, with the
    numbers None, when the implementation could not run here).
    """
    start = time.monotonic()
    max_rounds, target_s, budget_s = _QUICK if quick else _FULL
    # An explicit round count is honoured exactly; the default one is cut
    # short when the time budget runs out.
    deadline = None if rounds is not None else start + budget_s
    rounds = max_rounds if rounds is None else rounds
    if rounds < 1 or (iterations is not None and iterations < 1):
        raise ValueError("rounds and iterations must be positive")
    with contextlib.ExitStack() as stack:
        cases = _cases(stack)
        # (case, its loop) for every implementation that can run here.
        timed = [(c, c.loop) for c in cases if c.loop is not None]
        for case, loop in timed:
            case.iterations = iterations or _calibrate(loop, target_s)
            _sample(loop, max(1, case.iterations // 4))  # warm-up, untimed
        (baseline, base_loop), *others = timed  # _cases() lists the baseline first
        assert baseline.name == BASELINE
        base: list[float] = []
        samples: dict[str, list[float]] = {c.name: [] for c, _ in others}
        ratios: dict[str, list[float]] = {c.name: [] for c, _ in others}
        done = 0
        for i in range(rounds):
            if deadline is not None and i >= _MIN_ROUNDS and time.monotonic() > deadline:
                break
            done += 1
            # Every sample is bracketed by two baseline samples and compared with
            # their mean, so that the pair sees the same machine state (a loaded
            # CI box drifts within milliseconds). The order of the others rotates
            # from round to round so that no row always runs first or last.
            before = _sample(base_loop, baseline.iterations)
            base.append(before)
            k = i % len(others) if others else 0
            for case, loop in others[k:] + others[:k]:
                x = _sample(loop, case.iterations)
                after = _sample(base_loop, baseline.iterations)
                base.append(after)
                samples[case.name].append(x)
                ratios[case.name].append(2 * x / (before + after))
                before = after

    samples[BASELINE] = base
    ratios[BASELINE] = [1.0] * len(base)
    base_median = statistics.median(base)
    rows: list[dict[str, Any]] = []
    for case in cases:
        row: dict[str, Any] = {
            "name": case.name,
            "implementation": case.implementation,
            "operation": case.operation,
            "transport": case.transport,
            "ns_median": None,
            "ns_min": None,
            "ns_max": None,
            "ratio": None,
            "ratio_of_medians": None,
            "rounds": 0,
            "iterations": case.iterations,
            "note": case.note,
            "skipped": case.skipped,
        }
        if case.loop is not None:
            ns = samples[case.name]
            row.update(
                ns_median=statistics.median(ns),
                ns_min=min(ns),
                ns_max=max(ns),
                ratio=statistics.median(ratios[case.name]),
                ratio_of_medians=statistics.median(ns) / base_median,
                rounds=done,
            )
        rows.append(row)
    return rows


# -- output ----------------------------------------------------------------------------------


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with notes on rows that are special."""
    lines = [
        "| implementation | operation | transport | ns per round trip (median) | ratio to raw |",
        "|---|---|---|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        if row["skipped"]:
            ns = ratio = "n/a"
            notes.append(f"- {row['name']}: not measured: {row['skipped']}")
        else:
            ns = f"{row['ns_median']:,.0f}"
            ratio = f"{row['ratio']:.2f}x"
            if row["note"]:
                notes.append(f"- {row['name']}: {row['note']}")
        lines.append(
            f"| {row['name']} | {row['operation']} | {row['transport']} | {ns} | {ratio} |"
        )
    verdicts = [
        f"{r['name']} {r['ratio']:.2f}x {'ok' if r['ratio'] <= TARGET_RATIO else 'OVER'}"
        for r in rows
        if r["implementation"] == "makejobs" and not r["skipped"]
    ]
    if verdicts:
        notes.append(f"- target makejobs <= {TARGET_RATIO:g}x raw pipe: " + "; ".join(verdicts))
    first = next(r for r in rows if not r["skipped"])
    notes.append(
        f"- {first['rounds']} interleaved rounds; ratio = median over rounds of"
        " (row / mean of the raw pipe samples just before and after it)"
    )
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    args = command_line(__doc__, quick="about 3 s instead of 20 s").parse_args(argv)
    return report(
        args,
        "token_roundtrip",
        lambda: run(quick=args.quick),
        to_markdown,
        baseline=BASELINE,
        target_ratio=TARGET_RATIO,
    )


if __name__ == "__main__":
    sys.exit(main())
