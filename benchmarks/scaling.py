#!/usr/bin/env python3
"""Time and peak RSS as the number of jobs grows: does the cost per job stay flat?

Usage::

    python benchmarks/scaling.py [--quick] [--json FILE] [--max N] [--contenders KEYS]

For every contender and every size N in 10^2, 10^3, 10^4, 10^5 (up to ``--max``), a
*fresh* interpreter creates a private pool of 2 slots, warms up (starts its workers, runs
a few jobs), records its peak RSS so far (``ru_maxrss``, the baseline), then times N
trivial jobs (``abs(i)``) and records its peak RSS again. A fresh process per size keeps
one size's peak from hiding the next one's. Contenders (keys for ``--contenders``):

* ``jobserver``: ``Jobserver("fork", pool=TokenPool.create(2))``, one process per job:
  ``futures = [js.submit(abs, (i,)) for i in range(N)]`` then every ``result()``, the
  way a caller usually writes it (every future is kept until the end).
* ``executor``: ``JobserverExecutor(2, jobserver=...)`` on its default start method
  (forkserver), the same keep-every-future pattern.
* ``executor-window``: the executor with at most 1,000 futures outstanding (the caller
  drops each future once it has its result), so that what remains of the RSS growth is
  the executor's own per-task state, not the caller's list.
* ``jobserver-window`` (only with ``--contenders``): the Jobserver the same way. It shows
  why the kept-futures Jobserver row slows down a little as N grows: the caller's list
  of futures grows the parent, and every ``fork`` copies the parent's page tables.

Rows: ``contender``, ``n``, ``seconds`` (the N jobs only), ``us_per_job``,
``baseline_rss_mb``, ``peak_rss_mb``, ``rss_growth_mb`` (peak minus baseline),
``bytes_per_job`` (growth / N) and ``max_child_rss_mb`` (the largest reaped child).
Verdict per contender: the cost per job at the largest N against the cost at 10^3
(10^2 is dominated by noise on a shared machine): "flat" when within 1.5x, which
means total time grows linearly with N.

Budget on 2 CPUs: a fork job costs about 5 ms, so ``--quick`` (sizes up to 10^4) takes
about a minute and the full run (10^5) about 9 minutes, almost all of it the 10^5 forks;
``--max 10000`` caps a full run the same way.

A combined harness imports :func:`run` (rows as dicts), :func:`to_markdown` and
:func:`verdicts`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]

__all__ = [
    "CONTENDERS",
    "DEFAULT_CONTENDERS",
    "FLAT_RATIO",
    "SIZES",
    "main",
    "run",
    "to_markdown",
    "verdicts",
]

#: Contender key -> label (labels carry no digits: the harness strips from the first number).
CONTENDERS = {
    "jobserver": "Jobserver.submit (fork)",
    "executor": "JobserverExecutor.submit",
    "executor-window": "JobserverExecutor.submit (bounded window)",
    "jobserver-window": "Jobserver.submit (fork, bounded window)",
}
#: What runs without --contenders: the windowed Jobserver would double the time of a full
#: run (another 8 minutes of forks at 10^5), so it is measured on request only.
DEFAULT_CONTENDERS = ("jobserver", "executor", "executor-window")
SIZES = (100, 1_000, 10_000, 100_000)
#: Per-job cost at the largest N over the cost at 10^3 that still counts as flat.
FLAT_RATIO = 1.5
_QUICK_MAX = 10_000
_WINDOW = 1_000
_SLOTS = 2

# Runs in a fresh interpreter per (contender, size). Prints one JSON object.
_WORKER = (
    textwrap.dedent(
        """
    import json, resource, sys, time
    from collections import deque

    def peak_mb(who=resource.RUSAGE_SELF):
        return resource.getrusage(who).ru_maxrss / 1024  # KiB on Linux

    def main(kind, n):
        from makejobs import Jobserver, JobserverExecutor, TokenPool
        pool = TokenPool.create(SLOTS)
        js = Jobserver("fork", pool=pool)
        if kind.startswith("jobserver"):
            for f in [js.submit(abs, (-i,)) for i in range(20)]:
                f.result()
            baseline = peak_mb()
            start = time.perf_counter()
            if kind == "jobserver":
                futures = [js.submit(abs, (-i,)) for i in range(n)]
                total = sum(f.result() for f in futures)
                del futures
            else:
                window, total = deque(), 0
                for i in range(n):
                    if len(window) >= WINDOW:
                        total += window.popleft().result()
                    window.append(js.submit(abs, (-i,)))
                total += sum(f.result() for f in window)
            seconds = time.perf_counter() - start
        else:
            executor = JobserverExecutor(SLOTS, jobserver=js)
            for f in [executor.submit(abs, -i) for i in range(200)]:
                f.result()
            baseline = peak_mb()
            start = time.perf_counter()
            if kind == "executor":
                futures = [executor.submit(abs, -i) for i in range(n)]
                total = sum(f.result() for f in futures)
                del futures
            else:
                window, total = deque(), 0
                for i in range(n):
                    if len(window) >= WINDOW:
                        total += window.popleft().result()
                    window.append(executor.submit(abs, -i))
                total += sum(f.result() for f in window)
            seconds = time.perf_counter() - start
            executor.shutdown()
        assert total == n * (n - 1) // 2, total
        peak = peak_mb()
        js.close()
        found = pool.close()
        print(json.dumps({
            "seconds": seconds,
            "baseline_rss_mb": baseline,
            "peak_rss_mb": peak,
            "max_child_rss_mb": peak_mb(resource.RUSAGE_CHILDREN),
            "tokens_back": found == SLOTS - 1,
        }))

    if __name__ == "__main__":
        main(sys.argv[1], int(sys.argv[2]))
    """
    )
    .replace("SLOTS", str(_SLOTS))
    .replace("WINDOW", str(_WINDOW))
)


def _environ() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKEJOBS_LEDGER")
    }
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_ROOT) if not old else os.pathsep.join([str(_ROOT), old])
    return env


def _measure(kind: str, n: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER, kind, str(n)],
        env=_environ(),
        cwd=_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=max(120.0, n * 0.05),
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"{kind} n={n} failed (exit {proc.returncode}):\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run(
    quick: bool,
    *,
    max_jobs: int | None = None,
    contenders: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per (contender, size), sizes 10^2 .. *max_jobs* (quick: 10^4, else 10^5).

    Rows carry ``name``, ``contender``, ``key``, ``n``, ``seconds``, ``us_per_job``,
    ``baseline_rss_mb``, ``peak_rss_mb``, ``rss_growth_mb``, ``bytes_per_job``,
    ``max_child_rss_mb``, ``tokens_back`` and ``skipped`` (None: every row is measured).
    """
    cap = max_jobs if max_jobs is not None else (_QUICK_MAX if quick else SIZES[-1])
    sizes = [n for n in SIZES if n <= cap]
    if not sizes:
        raise ValueError(f"--max {cap} is below the smallest size {SIZES[0]}")
    keys = contenders if contenders is not None else list(DEFAULT_CONTENDERS)
    unknown = sorted(set(keys) - set(CONTENDERS))
    if unknown:
        raise ValueError(f"unknown contenders {unknown}; choose from {sorted(CONTENDERS)}")
    rows: list[dict[str, Any]] = []
    for key in keys:
        for n in sizes:
            m = _measure(key, n)
            growth = max(0.0, m["peak_rss_mb"] - m["baseline_rss_mb"])
            rows.append(
                {
                    "name": f"{CONTENDERS[key]}: {n} jobs",
                    "contender": CONTENDERS[key],
                    "key": key,
                    "n": n,
                    "seconds": m["seconds"],
                    "us_per_job": m["seconds"] / n * 1e6,
                    "baseline_rss_mb": m["baseline_rss_mb"],
                    "peak_rss_mb": m["peak_rss_mb"],
                    "rss_growth_mb": growth,
                    "bytes_per_job": growth * 2**20 / n,
                    "max_child_rss_mb": m["max_child_rss_mb"],
                    "tokens_back": m["tokens_back"],
                    "skipped": None,
                }
            )
            if log is not None:
                row = rows[-1]
                log(
                    f"{row['name']}: {row['seconds']:.2f} s, {row['us_per_job']:.1f} us/job,"
                    f" peak RSS {row['peak_rss_mb']:.1f} MB (+{growth:.1f})"
                )
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per contender: cost per job at the largest N over the cost at 10^3 (flat: <= 1.5x)."""
    out: list[dict[str, Any]] = []
    for label in dict.fromkeys(row["contender"] for row in rows):
        mine = sorted((r for r in rows if r["contender"] == label), key=lambda r: r["n"])
        reference = next((r for r in mine if r["n"] >= 1_000), None)
        largest = mine[-1]
        if reference is None or reference is largest:
            continue
        ratio = largest["us_per_job"] / reference["us_per_job"]
        out.append(
            {
                "what": f"{label}: cost per job at {largest['n']:,} jobs vs {reference['n']:,}",
                "value": ratio,
                "target": f"<= {FLAT_RATIO:g}x (linear total)",
                "ok": ratio <= FLAT_RATIO and all(r["tokens_back"] for r in mine),
            }
        )
    return out


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, then one verdict line per contender."""
    lines = [
        "| contender | jobs | seconds | µs per job | baseline RSS MB | peak RSS MB"
        " | growth MB | bytes per job | tokens back |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['contender']} | {r['n']:,} | {r['seconds']:.2f} | {r['us_per_job']:.1f}"
            f" | {r['baseline_rss_mb']:.1f} | {r['peak_rss_mb']:.1f} | {r['rss_growth_mb']:.1f}"
            f" | {r['bytes_per_job']:,.0f} | {'yes' if r['tokens_back'] else 'NO'} |"
        )
    notes = [
        f"- {v['what']}: {v['value']:.2f}x, {'flat' if v['ok'] else 'NOT flat'}"
        f" (target {v['target']})"
        for v in verdicts(rows)
    ]
    notes.append(
        f"- pool of {_SLOTS} slots; a fresh interpreter per row; RSS is ru_maxrss (peak), the"
        " baseline taken after warm-up"
    )
    return "\n".join([*lines, "", *notes])


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "slots": _SLOTS,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="sizes up to 10^4 (about a minute on 2 CPUs)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE")
    parser.add_argument(
        "--max", type=int, default=None, metavar="N", help="largest job count (default 10^5)"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {','.join(CONTENDERS)}"
        f" (default {','.join(DEFAULT_CONTENDERS)})",
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    rows = run(
        args.quick,
        max_jobs=args.max,
        contenders=[c for c in args.contenders.split(",") if c],
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    seconds = time.monotonic() - started
    print(to_markdown(rows))
    if args.json:
        doc = {
            "benchmark": "scaling",
            "quick": args.quick,
            "seconds": seconds,
            "environment": _environment(),
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
