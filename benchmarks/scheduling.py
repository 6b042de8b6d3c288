#!/usr/bin/env python3
"""Scheduling efficiency under ``make -j2``: a mixed workload, its makespan against the ideal.

Usage::

    python benchmarks/scheduling.py [--quick] [--json FILE] [--rounds R]

One generated Makefile, run with ``make -j2``, holds a mixed workload of CPU-bound
work (2 cores, so nothing sleeps: a sleeping recipe would make any schedule look
good):

* four shell recipes ``sh-1`` ... ``sh-4``: a ``/bin/sh`` arithmetic loop of about
  300 ms each (calibrated on this machine before the run);
* two Python recipes (``+python scheduling.py _step ...``): ``py-a`` runs 8 chunks
  of about 150 ms of pure-Python arithmetic with ``makejobs.Jobserver()`` (one forked
  process per chunk), ``py-b`` runs 4 such chunks on
  ``makejobs.JobserverExecutor()`` (reused workers, default start method). Both
  join make's pool from ``MAKEFLAGS``, so their chunks run on make's slots.

``all`` lists the shell recipes first, then ``py-b`` and ``py-a``, so the Python
recipes start last and are the long pole: the point of sharing make's pool is that a
Python recipe can spread its chunks over slots that the rest of the build has freed.

Every unit of work (a chunk, a shell loop) logs its start and end; the **work** of a
run is the sum of those durations, and the **ideal** makespan is ``max(work / 2,
longest unit)``, the best any scheduler could do with 2 slots. **Efficiency** is the
ideal divided by the measured makespan (wall time of the whole ``make -j2``, from
start to exit), so every overhead counts against it: make, starting Python and
importing makejobs in each Python recipe, starting job processes and workers. The
target: at least 90%.

The baseline is the same Makefile with the Python recipes running their chunks one
after another in the recipe process (no pool use): its efficiency is taken against
the same kind of ideal, and ``speed-up`` is its makespan divided by the pool run's
in the same round. From the logs, ``peak`` is the most units that ever ran at once:
it must never exceed 2, or the efficiency would come from oversubscribing the CPUs.

Rounds are interleaved (every variant once per round, order rotated); the table
gives medians over rounds. A full run uses make 4.3 (the system make, pipe
jobserver: the recipes need the ``+``) and make 4.4.1 (fifo jobserver), a
``--quick`` run make 4.3 only.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
Spawned workers re-import this file, so its top-level imports are kept to a few
stdlib modules.
"""

from __future__ import annotations

import os
import sys
import time

# When this file starts running (a Python recipe's start, but for the interpreter's own
# start-up, about 20 ms before).
_T0 = time.time()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable

# Measure the working tree even when makejobs is not installed.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

__all__ = ["SLOTS", "TARGET_EFFICIENCY", "main", "run", "to_markdown", "verdicts"]

#: make -jSLOTS.
SLOTS = 2
#: The goal: the pool run's makespan within 1/0.9 of the ideal.
TARGET_EFFICIENCY = 0.90
POOL = "makejobs pool"
SERIAL = "serial (no pool)"
VARIANTS = (POOL, SERIAL)

# (name, chunks, api) of the Python recipes and the number of shell recipes.
_PY_RECIPES = (("py-a", 12, "jobserver"), ("py-b", 3, "executor"))
_SHELL_RECIPES = 4

#: (rounds, chunk ms, shell recipe ms, make keys) of a full and a --quick run.
_FULL = (5, 150.0, 300.0, ("make 4.3", "make 4.4.1"))
_QUICK = (3, 150.0, 300.0, ("make 4.3",))


# -- the work ----------------------------------------------------------------------------------


def burn(iterations: int) -> int:
    """Pure-Python CPU work: about *iterations* / (calibrated rate) seconds."""
    x = 0
    for i in range(iterations):
        x += i
    return x


def _log(path: str, line: str) -> None:
    # O_APPEND writes of one short line never interleave with other writers'.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def chunk(name: str, k: int, iterations: int, log: str) -> int:
    """One unit of a Python recipe: burn, and log when it ran."""
    t0, c0 = time.time(), time.thread_time()
    burn(iterations)
    t1, c1 = time.time(), time.thread_time()
    _log(log, f"unit {name}:{k} {t0:.6f} {t1:.6f} {os.getpid()} {c1 - c0:.6f}")
    return k


def _log_phase(log: str, name: str, phase: str) -> None:
    """Mark the instant a Python recipe reached *phase* (its start-up is broken down by it)."""
    now = time.time()
    _log(log, f"phase {name}:{phase} {now:.6f} {now:.6f} {os.getpid()} -")


def _step(argv: Sequence[str]) -> int:
    """A Python recipe: ``_step NAME CHUNKS ITERATIONS API MODE LOG``."""
    name, chunks_s, iterations_s, api, mode, log = argv
    started = _T0
    chunks, iterations = int(chunks_s), int(iterations_s)
    if mode == "serial":
        for k in range(chunks):
            chunk(name, k, iterations, log)
    elif api == "jobserver":
        from makejobs import Jobserver

        _log_phase(log, name, "imported")
        with Jobserver(context="fork") as js:
            futures = [js.submit(chunk, (name, k, iterations, log)) for k in range(chunks)]
            done = [f.result() for f in futures]
        assert done == list(range(chunks))
    elif api == "executor":
        from makejobs import JobserverExecutor

        _log_phase(log, name, "imported")
        with JobserverExecutor() as executor:
            done = list(
                executor.map(
                    chunk, [name] * chunks, range(chunks), [iterations] * chunks, [log] * chunks
                )
            )
        assert done == list(range(chunks))
    else:
        raise SystemExit(f"unknown api {api!r}")
    _log(log, f"recipe {name} {started:.6f} {time.time():.6f} {os.getpid()} -")
    return 0


# -- calibration -------------------------------------------------------------------------------

_SH_LOOP = 'i=0; while [ "$i" -lt {n} ]; do i=$((i+1)); done'


def _calibrate_python() -> float:
    """burn() iterations per second on this machine (best of a few tries)."""
    n = 200_000
    best = min(_timed(lambda: burn(n)) for _ in range(3))
    return n / best


def _calibrate_shell() -> float:
    """Iterations per second of the /bin/sh loop used by the shell recipes (best of a few)."""
    import subprocess

    n = 20_000
    cmd = ["/bin/sh", "-c", _SH_LOOP.format(n=n)]
    best = min(_timed(lambda: subprocess.run(cmd, check=True)) for _ in range(3))
    return n / best


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the Makefile --------------------------------------------------------------------------------


def makefile_text(*, mode: str, chunk_iterations: int, shell_iterations: int, log: str) -> str:
    """The Makefile of one variant (*mode* ``pool`` or ``serial``)."""
    py_names = [name for name, _, _ in _PY_RECIPES]
    sh_names = [f"sh-{k}" for k in range(1, _SHELL_RECIPES + 1)]
    order = sh_names + py_names[::-1]  # shell recipes first, the longest Python one last
    loop = _SH_LOOP.format(n=shell_iterations).replace("$", "$$")
    lines = [
        f"all: {' '.join(order)}",
        f".PHONY: all {' '.join(order)}",
        "",
    ]
    for name in sh_names:
        # `date +%s.%N` (GNU date) brackets the loop; the log line is one short append.
        lines += [
            f"{name}:",
            f"\t@t0=$$(date +%s.%N); {loop}; "
            f'echo "unit {name} $$t0 $$(date +%s.%N) $$$$ -" >> {log}',
        ]
    for name, chunks, api in _PY_RECIPES:
        lines += [
            f"{name}:",
            f"\t+@{sys.executable} {os.path.abspath(__file__)} _step"
            f" {name} {chunks} {chunk_iterations} {api} {mode} {log}",
        ]
    return "\n".join(lines) + "\n"


def _parse_log(
    path: str,
) -> tuple[
    list[tuple[str, float, float]],
    dict[str, tuple[float, float]],
    dict[str, float],
    dict[str, float],
]:
    """(units, Python recipes, CPU seconds of the Python units, phases) from a run's log.

    Phases are keyed ``"recipe:phase"`` (``py-b:imported``: makejobs is imported).
    """
    units: list[tuple[str, float, float]] = []
    recipes: dict[str, tuple[float, float]] = {}
    cpu: dict[str, float] = {}
    phases: dict[str, float] = {}
    with open(path) as f:
        for line in f:
            kind, name, start, end, _pid, seconds = line.split()
            if kind == "unit":
                units.append((name, float(start), float(end)))
                if seconds != "-":
                    cpu[name] = float(seconds)
            elif kind == "phase":
                phases[name] = float(start)
            else:
                recipes[name] = (float(start), float(end))
    return units, recipes, cpu, phases


def _peak(units: Sequence[tuple[str, float, float]]) -> int:
    events = sorted([(s, 1) for _, s, _ in units] + [(e, -1) for _, _, e in units])
    peak = now = 0
    for _, delta in events:  # at equal times, ends (-1) sort before starts
        now += delta
        peak = max(peak, now)
    return peak


# -- measurement -------------------------------------------------------------------------------


def _find_makes(keys: Sequence[str]) -> dict[str, tuple[str | None, str]]:
    """``{"make 4.3": (path or None, version text or why not)}`` via integration/peers.py."""
    import importlib.util

    path = os.path.join(_ROOT, "integration", "peers.py")
    peers = None
    if os.path.exists(path):
        spec = importlib.util.spec_from_file_location("_makejobs_peers", path)
        if spec is not None and spec.loader is not None:
            peers = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(spec.name, peers)
            spec.loader.exec_module(peers)
    out: dict[str, tuple[str | None, str]] = {}
    for key in keys:
        peer_key = {"make 4.3": "make43", "make 4.4.1": "make441"}[key]
        if peers is None:
            import shutil

            make = shutil.which("make") if key == "make 4.3" else None
            out[key] = (make, "make on PATH") if make else (None, "no make found")
            continue
        try:
            peer = peers.find_peer(peer_key)
        except Exception as e:  # PeerMissing
            message = getattr(e, "message", str(e)) or type(e).__name__
            out[key] = (None, message.splitlines()[0])
        else:
            out[key] = (peer.path, peer.version_text)
    return out


def _environ(scratch: str) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKE_TERMOUT"):
        env.pop(name, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = _ROOT + (os.pathsep + path if path else "")
    env["LC_ALL"] = "C"
    # Measure makejobs as installed, with compiled bytecode: under PYTHONDONTWRITEBYTECODE
    # every Python process would compile makejobs' sources again (tens of ms per start).
    # The bytecode goes to a cache in *scratch*, never into the working tree.
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None or not env.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = os.path.join(scratch, "pycache")
    return env


def _run_once(make: str, makefile: str, log: str, env: dict[str, str]) -> dict[str, Any]:
    """One ``make -j2`` run: its makespan, and what the log says about it."""
    import subprocess

    if os.path.exists(log):
        os.unlink(log)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [make, "-r", f"-j{SLOTS}", "-f", makefile],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=os.path.dirname(makefile),
    )
    makespan = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-800:]
        raise RuntimeError(f"{make} -j{SLOTS} exited {proc.returncode}: {err}")
    units, recipes, cpu, phases = _parse_log(log)
    expected = sum(c for _, c, _ in _PY_RECIPES) + _SHELL_RECIPES
    if len(units) != expected:
        raise RuntimeError(f"expected {expected} logged units, found {len(units)}")
    durations = [end - start for _, start, end in units]
    work = sum(durations)
    ideal = max(work / SLOTS, max(durations))
    # How long each Python recipe ran before its first unit started (imports, pool, workers),
    # and how much of that went to importing makejobs (the rest: pool, job processes).
    startup: dict[str, float] = {}
    imports: dict[str, float] = {}
    for name, (start, _end) in recipes.items():
        firsts = [s for n, s, _ in units if n.split(":")[0] == name]
        if firsts:
            startup[name] = min(firsts) - start
        if f"{name}:imported" in phases:
            imports[name] = phases[f"{name}:imported"] - start
    return {
        "makespan": makespan,
        "work": work,
        "ideal": ideal,
        "efficiency": ideal / makespan,
        "idle": SLOTS * makespan - work,
        "peak": _peak(units),
        "py_startup": max(startup.values()) if startup else 0.0,
        "startup_slot": sum(startup.values()),
        # CPU time over wall time of the Python chunks: below 1 when they waited for a CPU.
        "cpu_share": sum(cpu.values()) / sum(end - start for n, start, end in units if n in cpu),
        "py_startup_by_recipe": startup,
        "py_import_by_recipe": imports,
    }


def run(
    quick: bool = False,
    *,
    rounds: int | None = None,
    scale: float | None = None,
    makes: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the workload in every variant; return one row per (make, variant).

    Args:
        quick: make 4.3 only (about 20 s instead of 60 s on 2 cores).
        rounds: interleaved rounds, instead of the default.
        scale: multiply every unit's duration (tests pass a small value).
        makes: a subset of ``("make 4.3", "make 4.4.1")``.

    Each row has ``name`` ("make: variant"), ``make``, ``make_version``,
    ``variant`` (``makejobs pool`` or ``serial (no pool)``), ``rounds``,
    ``makespan_s`` (median over rounds), ``makespan_min``, ``makespan_max``,
    ``work_s`` (sum of the units' durations, median), ``ideal_s`` (median of
    ``max(work / 2, longest unit)``), ``efficiency`` (median over rounds of ideal
    / makespan), ``efficiency_min``, ``peak`` (most units at once, max over
    rounds), ``py_startup_s`` (median over rounds of the slowest Python recipe's
    time from start to first unit), ``py_startup_by_recipe``,
    ``py_import_by_recipe`` (median of the part of it spent importing makejobs:
    the rest is the pool, job processes and workers), ``idle_slot_s``
    (median of 2 x makespan - work), ``startup_slot_s`` (median of the summed
    start-up of the Python recipes), ``cpu_share`` (median of CPU time / wall time
    of the Python chunks), ``speedup`` (median over rounds of the serial
    makespan / this one, for the pool rows), ``units`` ({shell, python chunk}
    nominal ms) and ``skipped``.
    """
    import shutil
    import statistics
    import tempfile

    default_rounds, chunk_ms, shell_ms, default_makes = _QUICK if quick else _FULL
    rounds = default_rounds if rounds is None else rounds
    if rounds < 1:
        raise ValueError("rounds must be positive")
    factor = 1.0 if scale is None else scale
    if factor <= 0:
        raise ValueError("scale must be positive")
    chunk_ms, shell_ms = chunk_ms * factor, shell_ms * factor
    makes = tuple(default_makes if makes is None else makes)
    found = _find_makes(makes)
    py_rate, sh_rate = _calibrate_python(), _calibrate_shell()
    chunk_iterations = max(1, int(py_rate * chunk_ms / 1e3))
    shell_iterations = max(1, int(sh_rate * shell_ms / 1e3))
    tmp = tempfile.mkdtemp(prefix="makejobs-sched-")
    env = _environ(tmp)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    speedups: dict[str, list[float]] = {}
    try:
        cases = []
        for key in makes:
            path, _text = found[key]
            if path is None:
                continue
            for variant in VARIANTS:
                mode = "pool" if variant == POOL else "serial"
                d = os.path.join(tmp, f"{key.replace(' ', '-')}-{mode}")
                os.mkdir(d)
                logfile = os.path.join(d, "units.log")
                makefile = os.path.join(d, "Makefile")
                with open(makefile, "w") as f:
                    f.write(
                        makefile_text(
                            mode=mode,
                            chunk_iterations=chunk_iterations,
                            shell_iterations=shell_iterations,
                            log=logfile,
                        )
                    )
                cases.append((key, variant, path, makefile, logfile))
        if cases:  # one untimed run: pyc files and page cache warm for every variant alike
            _run_once(cases[0][2], cases[0][3], cases[0][4], env)
        for r in range(rounds):
            shift = r % len(cases) if cases else 0
            this_round: dict[tuple[str, str], dict[str, Any]] = {}
            for key, variant, path, makefile, logfile in cases[shift:] + cases[:shift]:
                result = _run_once(path, makefile, logfile, env)
                this_round[(key, variant)] = result
                results.setdefault((key, variant), []).append(result)
            for key in makes:
                pool, serial = this_round.get((key, POOL)), this_round.get((key, SERIAL))
                if pool and serial:
                    speedups.setdefault(key, []).append(serial["makespan"] / pool["makespan"])
            if log is not None:
                log(f"scheduling: round {r + 1}/{rounds} done")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(values: list[dict[str, Any]], field: str) -> float:
        return float(statistics.median(v[field] for v in values))

    rows: list[dict[str, Any]] = []
    for key in makes:
        path, text = found[key]
        for variant in VARIANTS:
            row: dict[str, Any] = {
                "name": f"{key}: {variant}",
                "make": key,
                "make_version": text if path else None,
                "variant": variant,
                "rounds": 0,
                "makespan_s": None,
                "makespan_min": None,
                "makespan_max": None,
                "work_s": None,
                "ideal_s": None,
                "efficiency": None,
                "efficiency_min": None,
                "peak": None,
                "py_startup_s": None,
                "py_startup_by_recipe": None,
                "py_import_by_recipe": None,
                "idle_slot_s": None,
                "startup_slot_s": None,
                "cpu_share": None,
                "speedup": None,
                "units": {"shell_ms": shell_ms, "chunk_ms": chunk_ms},
                "skipped": "" if path else text,
            }
            values = results.get((key, variant))
            if values:
                row.update(
                    rounds=len(values),
                    makespan_s=med(values, "makespan"),
                    makespan_min=min(v["makespan"] for v in values),
                    makespan_max=max(v["makespan"] for v in values),
                    work_s=med(values, "work"),
                    ideal_s=med(values, "ideal"),
                    efficiency=med(values, "efficiency"),
                    efficiency_min=min(v["efficiency"] for v in values),
                    peak=max(v["peak"] for v in values),
                    py_startup_s=med(values, "py_startup"),
                    idle_slot_s=med(values, "idle"),
                    startup_slot_s=med(values, "startup_slot"),
                    cpu_share=med(values, "cpu_share"),
                    py_startup_by_recipe={
                        name: float(
                            statistics.median(
                                v["py_startup_by_recipe"].get(name, 0.0) for v in values
                            )
                        )
                        for name, _, _ in _PY_RECIPES
                    },
                    py_import_by_recipe=_median_by_recipe(values, "py_import_by_recipe"),
                )
                if variant == POOL and speedups.get(key):
                    row["speedup"] = float(statistics.median(speedups[key]))
            rows.append(row)
    return rows


def _median_by_recipe(values: list[dict[str, Any]], field: str) -> dict[str, float]:
    """Per Python recipe, the median over rounds of *field* (rounds that have it)."""
    import statistics

    out: dict[str, float] = {}
    for name, _, _ in _PY_RECIPES:
        seen = [v[field][name] for v in values if name in v[field]]
        if seen:
            out[name] = float(statistics.median(seen))
    return out


# -- output ------------------------------------------------------------------------------------


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pool rows against the target: ``{"what", "value", "target", "ok"}``."""
    out = []
    for row in rows:
        if row["variant"] != POOL or row["efficiency"] is None:
            continue
        ok = row["efficiency"] >= TARGET_EFFICIENCY and row["peak"] <= SLOTS
        what = f"scheduling efficiency under {row['make']} -j{SLOTS} (makejobs pool)"
        if row["peak"] > SLOTS:
            what += f", but {row['peak']} units ran at once"
        out.append(
            {
                "what": what,
                "value": row["efficiency"],
                "target": f">= {TARGET_EFFICIENCY:.0%}",
                "ok": ok,
            }
        )
    return out


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the verdicts and notes below it."""
    from benchmarks._common import fmt

    lines = [
        "| make | Python recipes | makespan s (median) | min-max | work s | ideal s"
        " | efficiency | peak | idle slot-s | py start slot-s | chunk CPU share | speed-up |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        if row["skipped"]:
            notes.append(f"- {row['make']}: not measured: {row['skipped']}")
            spread = "n/a"
        else:
            spread = f"{row['makespan_min']:.2f}-{row['makespan_max']:.2f}"
        lines.append(
            f"| {row['make']} | {row['variant']} | {fmt(row['makespan_s'], '.3f')} | {spread}"
            f" | {fmt(row['work_s'], '.2f')} | {fmt(row['ideal_s'], '.3f')}"
            f" | {fmt(row['efficiency'], '.1%')} | {fmt(row['peak'], 'd')}"
            f" | {fmt(row['idle_slot_s'], '.2f')} | {fmt(row['startup_slot_s'], '.2f')}"
            f" | {fmt(row['cpu_share'], '.0%')}"
            f" | {fmt(row['speedup'], '.2f', 'x')} |"
        )
    for row in rows:
        startup, imports = row.get("py_startup_by_recipe"), row.get("py_import_by_recipe")
        if row["variant"] == POOL and startup and imports:
            parts = [
                f"{name} {startup[name] * 1e3:.0f} ms, of which {imports[name] * 1e3:.0f} ms"
                " importing makejobs"
                for name in startup
                if name in imports
            ]
            notes.append(
                f"- {row['make']}: Python recipe start to first chunk (median): "
                + "; ".join(parts)
                + " (the rest: pool, job processes and workers)"
            )
    for v in verdicts(rows):
        notes.append(
            f"- target {v['what']} {v['target']}: {v['value']:.1%} {'ok' if v['ok'] else 'MISS'}"
        )
    measured = [r for r in rows if not r["skipped"]]
    if measured:
        units = measured[0]["units"]
        apis = {"jobserver": "Jobserver, fork", "executor": "JobserverExecutor"}
        recipes = " and ".join(
            f"{name} = {chunks} chunks ({apis[api]})" for name, chunks, api in _PY_RECIPES
        )
        notes.append(
            f"- {measured[0]['rounds']} interleaved rounds. Workload: {_SHELL_RECIPES} shell"
            f" recipes of ~{units['shell_ms']:.0f} ms, then {recipes} of"
            f" ~{units['chunk_ms']:.0f} ms each. ideal = max(work / {SLOTS}, longest unit);"
            " efficiency = median of ideal / makespan; idle slot-s = 2 x makespan - work (slot"
            " time not spent in a unit); py start slot-s = the part of it the Python recipes"
            " spent from their start to their first chunk (interpreter, imports, pool and"
            " workers); chunk CPU share = CPU time / wall time of the Python chunks (below"
            " 100% they waited for a CPU: other load on the machine stretches units and"
            " makespan alike, so efficiency stays comparable, but speed-up does not);"
            " speed-up = serial makespan / pool makespan in the same round"
        )
    return "\n".join([*lines, "", *sorted(set(notes), key=notes.index)])


def main(argv: list[str] | None = None) -> int:
    from benchmarks._common import command_line, progress, report

    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["_step"]:
        return _step(args_list[1:])
    parser = command_line(__doc__, quick="make 4.3 only (about 20 s)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args(args_list)
    return report(
        args,
        "scheduling",
        lambda: run(args.quick, rounds=args.rounds, log=progress),
        to_markdown,
        baseline=SERIAL,
        target_efficiency=TARGET_EFFICIENCY,
    )


if __name__ == "__main__":
    sys.exit(main())
