#!/usr/bin/env python3
"""Every makejobs benchmark in one run: tables, targets, BENCHMARKS.md and a chart.

Usage::

    pip install -e '.[bench,plot]'
    python benchmarks/harness.py [--quick] [--only KEYS] [--skip KEYS] [--out DIR]
                                 [--publish | --no-publish] [--no-chart]

Sections, in order (KEYS are the first word):

1. ``token``: token round trip (``token_roundtrip.py``): makejobs pool vs raw
   ``os.read`` + ``os.write`` vs gnumake-tokenpool.
2. ``overhead``: per-job overhead (``job_overhead.py``), fork / forkserver / spawn:
   Jobserver vs jobserver 3.0.1 vs ``multiprocessing.Process`` vs raw fork+waitpid.
3. ``executor``: tiny-task throughput (``executor_throughput.py``): JobserverExecutor
   vs ProcessPoolExecutor vs loky vs jobserver 3.0.1, submit and map(chunksize).
4. ``commands``: command runner (``command_runner.py``): ``makejobs run -j N`` vs
   ``make -jN`` vs ``xargs -P N`` on 500 short commands.
5. ``scheduling``: scheduling efficiency (``scheduling.py``) of a mixed workload
   under ``make -j2``, makespan against the ideal.
6. ``scaling``: time and peak RSS as the job count grows (``scaling.py``): the
   executors up to 10^5 jobs, ``Jobserver`` (one fork per job, 3-5 ms each) up to
   10^4 (``--scaling-max 100000`` takes it to 10^5 as well, 5-8 more minutes);
   with ``--quick``, 10^4 and 10^3.

Each section runs in a fresh interpreter (``python -c`` importing the module and
calling its ``run(quick)``), one after another, so that no section inherits
another's pools, fork hooks, workers or peak RSS. Every process the sections start
imports makejobs from compiled bytecode, as an installed copy would, even under
``PYTHONDONTWRITEBYTECODE`` (the cache goes to a temporary ``PYTHONPYCACHEPREFIX``,
never into the working tree). Every section compares its
contenders side by side within its own run (interleaved rounds, medians, ratios
to a baseline measured in the same round); a section that fails or is missing is
reported as such and the others still run.

Outputs: the per-section tables and a targets table (PASS/MISS) on stdout;
``DIR/harness[-quick].json`` (every row), ``DIR/harness[-quick].md`` and
``DIR/harness[-quick].png`` (default DIR: ``benchmarks/results``, git-ignored). A
full run also publishes ``BENCHMARKS.md`` and ``BENCHMARKS.png`` at the top of the
repository (``--no-publish`` to skip; ``--publish`` to publish a ``--quick`` run).
The chart needs matplotlib (the ``plot`` extra); without it the chart is skipped
with a message.

A full run takes about 5-6 minutes on 2 cores, ``--quick`` about 1.5 minutes.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

__all__ = ["SECTIONS", "main", "run_section", "targets"]


@dataclass(frozen=True)
class Section:
    key: str
    module: str
    title: str
    what: str


SECTIONS = (
    Section(
        "token",
        "token_roundtrip",
        "1. Token round trip",
        "Take a token and give it back: makejobs pool vs raw os.read+os.write vs"
        " gnumake-tokenpool (ns per round trip, ratio to the raw pipe pair).",
    ),
    Section(
        "overhead",
        "job_overhead",
        "2. Per-job overhead",
        "Run add_one(i) in a process of its own and get the result (fork, forkserver,"
        " spawn): makejobs Jobserver vs jobserver 3.0.1 vs multiprocessing.Process vs raw"
        " fork+waitpid.",
    ),
    Section(
        "executor",
        "executor_throughput",
        "3. Tiny-task throughput",
        "Steady-state cost per tiny task with 2 reused workers: JobserverExecutor vs"
        " ProcessPoolExecutor vs loky vs jobserver 3.0.1 (submit, map with chunksize=100,"
        " and 1 MB results).",
    ),
    Section(
        "commands",
        "command_runner",
        "4. Command runner",
        "500 short shell commands N at a time: makejobs run -j N vs make -jN (4.3, 4.4.1)"
        " vs xargs -P N (makespan, ratio to make 4.3).",
    ),
    Section(
        "scheduling",
        "scheduling",
        "5. Scheduling efficiency under make -j2",
        "Mixed workload (Python recipes using makejobs + CPU-bound shell recipes):"
        " makespan against the ideal max(work / 2, longest unit).",
    ),
    Section(
        "scaling",
        "scaling",
        "6. Scaling",
        "Time and peak RSS as the number of jobs grows (10^2 ... 10^5; in the harness,"
        " Jobserver with fork goes to 10^4 unless --scaling-max 100000 is given); the cost"
        " per job must stay flat.",
    ),
)
_BY_KEY = {s.key: s for s in SECTIONS}

#: Per-section wall-time limit (seconds) before the section is killed and reported.
_TIMEOUT = 900.0

# A parent make or cargo must not lend its pool to the benchmarks.
_POOL_VARIABLES = ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKE_TERMOUT")


# -- running one section (in a child interpreter) -----------------------------------------------


def _run_scaling(module: Any, quick: bool, options: dict[str, Any], **kw: Any) -> Any:
    """scaling.py within the harness budget.

    One fork job costs 3-5 ms on 2 cores, so 10^5 Jobserver jobs alone would take 5-8
    minutes: by default the harness runs the executors up to 10^5 jobs (10^4 with
    --quick) and ``Jobserver.submit`` (fork) up to 10^4 (10^3 with --quick).
    ``--scaling-max N`` runs every contender up to N instead.
    """
    every = options.get("scaling_max")
    if every:
        return module.run(quick, max_jobs=every, **kw)
    keys = list(getattr(module, "DEFAULT_CONTENDERS", module.CONTENDERS))
    forks = [k for k in keys if k.startswith("jobserver")]  # a process per job
    others = [k for k in keys if not k.startswith("jobserver")]
    rows = []
    if forks:
        rows += module.run(quick, max_jobs=1_000 if quick else 10_000, contenders=forks, **kw)
    if others:
        rows += module.run(quick, max_jobs=10_000 if quick else 100_000, contenders=others, **kw)
    return rows


#: Sections that the harness runs with other arguments than ``run(quick)``.
_PLANS: dict[str, Callable[..., Any]] = {"scaling": _run_scaling}


def run_section(key: str, quick: bool, out: str, options: str = "{}") -> int:
    """Import section *key*'s module, call its ``run(quick)``, write rows + table to *out*.

    This is what the child interpreter runs; the parent only reads *out*. *options*
    is a JSON object of harness options (``scaling_max``).
    """
    section = _BY_KEY[key]
    module = importlib.import_module(section.module)
    kwargs: dict[str, Any] = {}
    if "log" in inspect.signature(module.run).parameters:
        kwargs["log"] = lambda line: print(f"  {line}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    plan = _PLANS.get(key)
    if plan is not None:
        rows = plan(module, quick, json.loads(options), **kwargs)
    else:
        rows = module.run(quick, **kwargs)
    seconds = time.monotonic() - t0
    doc: dict[str, Any] = {"seconds": seconds, "rows": rows, "markdown": None, "notes": []}
    try:
        doc["markdown"] = module.to_markdown(rows)
    except Exception as e:  # a table we cannot render is not a reason to lose the rows
        doc["notes"].append(f"to_markdown failed: {type(e).__name__}: {e}")
    for name in (
        "BASELINE",
        "TARGET_RATIO",
        "TARGET_RAW_RATIO",
        "TARGET_FASTER_THAN_JOBSERVER",
        "TARGET_EFFICIENCY",
    ):
        if hasattr(module, name):
            doc.setdefault("constants", {})[name] = getattr(module, name)
    Path(out).write_text(json.dumps(doc, default=str) + "\n")
    return 0


def _child_environ(pycache: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name in _POOL_VARIABLES:
        env.pop(name, None)
    if pycache is not None:
        # Every process the sections start (jobs, workers, make recipes, `makejobs run`)
        # imports makejobs from compiled bytecode, as an installed copy does, even when
        # PYTHONDONTWRITEBYTECODE is set here; the cache lives outside the working tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    parts = [str(BENCH), str(ROOT)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def _run_child(
    section: Section,
    quick: bool,
    timeout: float,
    options: dict[str, Any],
    pycache: str | None = None,
) -> dict[str, Any]:
    """Run one section in a fresh interpreter; its document, or one with an ``error``."""
    if not (BENCH / f"{section.module}.py").exists():
        return {"error": f"benchmarks/{section.module}.py does not exist (yet)", "rows": []}
    fd, out = tempfile.mkstemp(prefix=f"makejobs-{section.key}-", suffix=".json")
    os.close(fd)
    # `python -c`: the main module has no file, so spawn and forkserver children of the
    # section import nothing but the section's own module.
    code = (
        "import sys, harness;"
        " sys.exit(harness.run_section(sys.argv[1], sys.argv[2] == '1', *sys.argv[3:]))"
    )
    argv = [
        sys.executable,
        "-c",
        code,
        section.key,
        "1" if quick else "0",
        out,
        json.dumps(options),
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            argv, cwd=ROOT, env=_child_environ(pycache), stdout=subprocess.PIPE, timeout=timeout
        )
        elapsed = time.monotonic() - t0
        if proc.returncode != 0:
            tail = proc.stdout.decode(errors="replace").strip()[-300:]
            return {
                "error": f"exited {proc.returncode} after {elapsed:.0f} s {tail}".strip(),
                "rows": [],
            }
        doc: dict[str, Any] = json.loads(Path(out).read_text())
        doc["wall"] = elapsed
        return doc
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s", "rows": []}
    except (OSError, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}", "rows": []}
    finally:
        try:
            os.unlink(out)
        except OSError:
            pass


# -- targets ------------------------------------------------------------------------------------


def _times(value: float, limit: float) -> str:
    """A ratio with 2 decimals, or 3 when 2 would round it onto the limit it is checked against."""
    text = f"{value:.2f}"
    if value != limit and float(text) == limit:
        text = f"{value:.3f}"
    return text + "x"


def _target(number: int, what: str, goal: str, value: str, ok: bool | None) -> dict[str, Any]:
    return {"section": number, "what": what, "target": goal, "measured": value, "ok": ok}


def _token_targets(rows: list[dict[str, Any]], c: dict[str, Any]) -> list[dict[str, Any]]:
    limit = c.get("TARGET_RATIO", 3.0)
    mine = [r for r in rows if r.get("implementation") == "makejobs" and r.get("ratio")]
    if not mine:
        return [_target(1, "makejobs token round trip / raw pair", f"<= {limit:g}x", "n/a", None)]
    worst = max(mine, key=lambda r: r["ratio"])
    best = min(mine, key=lambda r: r["ratio"])
    value = (
        f"{best['ratio']:.2f}x-{worst['ratio']:.2f}x ({len(mine)} rows, worst: {worst['name']})"
    )
    return [
        _target(
            1,
            "makejobs token round trip / raw os.read+os.write",
            f"<= {limit:g}x",
            value,
            worst["ratio"] <= limit,
        )
    ]


def _overhead_targets(rows: list[dict[str, Any]], c: dict[str, Any]) -> list[dict[str, Any]]:
    raw_limit = c.get("TARGET_RAW_RATIO", 1.5)
    faster = c.get("TARGET_FASTER_THAN_JOBSERVER", 1.5)
    mine = [
        r
        for r in rows
        if r.get("method") == "fork" and r.get("contender") == "makejobs" and not r.get("skipped")
    ]
    out = []
    for row in mine:
        mode = row.get("mode")
        if row.get("ratio_raw") is not None:
            out.append(
                _target(
                    2,
                    f"fork Jobserver ({mode}) / raw fork+waitpid",
                    f"<= {raw_limit:g}x",
                    _times(row["ratio_raw"], raw_limit),
                    row["ratio_raw"] <= raw_limit,
                )
            )
    for row in mine:
        mode = row.get("mode")
        if row.get("ratio_jobserver"):
            speed = 1 / row["ratio_jobserver"]
            out.append(
                _target(
                    2,
                    f"fork Jobserver ({mode}): times faster than jobserver 3.0.1",
                    f">= {faster:g}x",
                    _times(speed, faster),
                    speed >= faster,
                )
            )
    return out or [
        _target(2, "fork Jobserver / raw fork+waitpid", f"<= {raw_limit:g}x", "n/a", None)
    ]


def _executor_targets(rows: list[dict[str, Any]], c: dict[str, Any]) -> list[dict[str, Any]]:
    limit = c.get("TARGET_RATIO", 1.2)
    out = []
    for row in rows:
        if row.get("contender") != "makejobs" or row.get("mode") not in ("submit", "map"):
            continue
        ratio = row.get("ratio")
        value = "n/a" if ratio is None else _times(ratio, limit)
        out.append(
            _target(
                3,
                f"JobserverExecutor / ProcessPoolExecutor per task ({row['mode']})",
                f"<= {limit:g}x",
                value,
                None if ratio is None else ratio <= limit,
            )
        )
    return out


def _module_verdicts(
    number: int, module_name: str, rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Sections whose module returns structured verdicts ({what, value, target, ok})."""
    module = importlib.import_module(module_name)
    out = []
    for v in module.verdicts(rows):
        if isinstance(v, dict):
            value = v.get("value")
            if isinstance(value, float):
                shown = f"{value:.1%}" if "%" in str(v.get("target", "")) else f"{value:.2f}x"
            else:
                shown = str(value)
            out.append(_target(number, v["what"], str(v.get("target", "")), shown, v.get("ok")))
        else:  # a line of text: show it, without a verdict we could check
            text = str(v)
            ok = (
                None
                if not re.search(r"\b(ok|MISS|meets|MISSES)\b", text)
                else ("MISS" not in text and "MISSES" not in text)
            )
            out.append(_target(number, text, "", "", ok))
    return out


def _scaling_targets(rows: list[dict[str, Any]], c: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return _module_verdicts(6, "scaling", rows)
    except (ImportError, AttributeError):
        pass
    return [
        _target(6, "cost per job stays flat from 10^2 to 10^5 jobs", "linear", "see table", None)
    ]


_TARGETS: dict[str, Callable[[list[dict[str, Any]], dict[str, Any]], list[dict[str, Any]]]] = {
    "token": _token_targets,
    "overhead": _overhead_targets,
    "executor": _executor_targets,
    "commands": lambda rows, c: _module_verdicts(4, "command_runner", rows),
    "scheduling": lambda rows, c: _module_verdicts(5, "scheduling", rows),
    "scaling": _scaling_targets,
}


def targets(key: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of section *key*, checked against its rows."""
    number = [s.key for s in SECTIONS].index(key) + 1
    if doc.get("error"):
        return [_target(number, f"{_BY_KEY[key].title}: not measured", "", doc["error"], None)]
    try:
        return _TARGETS[key](doc["rows"], doc.get("constants", {}))
    except Exception as e:  # a row format we do not know (yet): report, do not crash
        return [
            _target(
                number,
                f"{_BY_KEY[key].title}: targets not checked",
                "",
                f"{type(e).__name__}: {e}",
                None,
            )
        ]


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def targets_markdown(all_targets: list[dict[str, Any]]) -> str:
    lines = ["| # | comparison | target | measured | result |", "|---:|---|---|---|---|"]
    for t in all_targets:
        lines.append(
            f"| {t['section']} | {t['what']} | {t['target']} | {t['measured']}"
            f" | {_verdict(t['ok'])} |"
        )
    return "\n".join(lines)


# -- machine ------------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else None


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "?"
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {}
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    info["cpus"] = os.cpu_count()
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["usable_cpus"] = os.cpu_count()
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        pass
    info["kernel"] = f"{platform.system()} {platform.release()}"
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    info["python"] = (
        f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})"
    )
    info["packages"] = {
        name: _dist_version(name)
        for name in ("jobserver", "gnumake-tokenpool", "loky", "psutil", "matplotlib")
    }
    tools: dict[str, str | None] = {}
    try:
        import command_runner

        for name, (path, text) in command_runner.find_makes().items():
            tools[name] = f"{path} ({text})" if path else f"not found: {text}"
    except Exception as e:
        tools["make"] = f"not located: {e}"
    tools["xargs"] = _first_line(["xargs", "--version"])
    tools["/bin/sh"] = os.path.realpath("/bin/sh")
    info["tools"] = tools
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def _git() -> str:
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if head is None:
        return "unknown"
    try:
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return f"{head}{' + uncommitted changes' if dirty else ''}"


def machine_markdown(info: dict[str, Any]) -> str:
    lines = ["| | |", "|---|---|"]
    cpus = f"{info.get('cpus')} ({info.get('usable_cpus')} usable)"
    lines += [f"| CPU | {info.get('cpu')} |", f"| cores | {cpus} |"]
    if "ram_gib" in info:
        lines.append(f"| RAM | {info['ram_gib']} GiB |")
    lines.append(f"| kernel | {info.get('kernel')} |")
    if "os" in info:
        lines.append(f"| OS | {info['os']} |")
    lines.append(f"| Python | {info.get('python')} |")
    packages = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items())
    lines.append(f"| packages | {packages} |")
    for name, text in info.get("tools", {}).items():
        lines.append(f"| {name} | {text} |")
    if "loadavg_start" in info:
        start = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
        end = " ".join(f"{x:.2f}" for x in info.get("loadavg_end", ()))
        lines.append(f"| load average (1/5/15 min) | {start} at start; {end} at end |")
    lines.append(f"| makejobs | {info.get('git')} |")
    return "\n".join(lines)


# -- chart --------------------------------------------------------------------------------------


def _bars(
    ax: Any,
    labels: list[str],
    values: list[float],
    title: str,
    xlabel: str,
    target: float | None = None,
    log: bool = False,
) -> None:
    y = list(range(len(labels)))
    colors = ["tab:orange" if "makejobs" in label else "tab:blue" for label in labels]
    ax.barh(y, values, color=colors)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if log:
        ax.set_xscale("log")
    if target is not None:
        ax.axvline(target, color="tab:red", linestyle="--", linewidth=1)


def _plot_token(ax: Any, rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("ratio")]
    _bars(
        ax,
        [r["name"] for r in ok],
        [r["ratio"] for r in ok],
        "1. token round trip",
        "x raw pipe pair (target 3x)",
        3.0,
    )


def _plot_overhead(ax: Any, rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("ms_median")]
    labels = [f"{r['method']} {r['contender']} {r['mode']}" for r in ok]
    _bars(
        ax,
        labels,
        [r["ms_median"] for r in ok],
        "2. per-job overhead",
        "ms per job (log)",
        log=True,
    )


def _plot_executor(ax: Any, rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("ratio")]
    _bars(
        ax,
        [f"{r['mode']} {r['contender']}" for r in ok],
        [r["ratio"] for r in ok],
        "3. tiny-task throughput",
        "x ProcessPoolExecutor per task (log; target 1.2x)",
        1.2,
        log=True,
    )


def _plot_commands(ax: Any, rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("ratio") and r.get("workload") != "startup"]
    _bars(
        ax,
        [f"{r['workload']} -j{r['jobs']} {r['contender']}" for r in ok],
        [r["ratio"] for r in ok],
        "4. command runner (500 commands)",
        "makespan, x make 4.3 (target 1.1x)",
        1.1,
    )


def _plot_scheduling(ax: Any, rows: list[dict[str, Any]]) -> None:
    ok = [r for r in rows if r.get("efficiency")]
    _bars(
        ax,
        [f"{r['make']} {r['variant']}" for r in ok],
        [r["efficiency"] * 100 for r in ok],
        "5. scheduling under make -j2",
        "efficiency, % of ideal (target 90%)",
        90.0,
    )
    ax.set_xlim(0, 105)


def _plot_scaling(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Per-job time against job count, per series; whatever numeric keys the rows use."""

    def pick(row: dict[str, Any], names: tuple[str, ...]) -> Any:
        for name in names:
            if isinstance(row.get(name), (int, float)):
                return row[name]
        return None

    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        n = pick(row, ("jobs", "n", "count", "tasks"))
        t = pick(
            row,
            ("us_per_job", "ms_per_job", "us_per_task", "seconds", "s_median", "time_s", "wall_s"),
        )
        if n is None or t is None or row.get("skipped"):
            continue
        label = str(row.get("contender") or row.get("api") or row.get("name") or "")
        label = re.sub(r"\s*\(?\b\d+\b.*$", "", label) or "jobs"
        series.setdefault(label, []).append((float(n), float(t)))
    if not series:
        raise ValueError("no (job count, time) pairs in the rows")
    rss: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        n, peak = pick(row, ("n", "jobs")), pick(row, ("peak_rss_mb",))
        if n is not None and peak is not None and not row.get("skipped"):
            label = re.sub(r"\s*\(?\b\d+\b.*$", "", str(row.get("contender") or "")) or "jobs"
            rss.setdefault(label, []).append((float(n), float(peak)))
    for i, (label, points) in enumerate(series.items()):
        points.sort()
        ax.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=f"C{i}"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title("6. scaling (solid: time per job; dashed: peak RSS)", fontsize=9)
    ax.set_xlabel("jobs", fontsize=8)
    ax.set_ylabel("µs per job (log)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best")
    if rss:
        twin = ax.twinx()
        for i, (label, points) in enumerate(rss.items()):
            points.sort()
            twin.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                linestyle="--",
                marker=".",
                color=f"C{list(series).index(label) if label in series else i}",
            )
        twin.set_ylabel("peak RSS MB", fontsize=8)
        twin.tick_params(labelsize=7)
        twin.set_ylim(bottom=0)


_PLOTS: dict[str, Callable[[Any, list[dict[str, Any]]], None]] = {
    "token": _plot_token,
    "overhead": _plot_overhead,
    "executor": _plot_executor,
    "commands": _plot_commands,
    "scheduling": _plot_scheduling,
    "scaling": _plot_scaling,
}


def chart(results: dict[str, dict[str, Any]], path: Path) -> str:
    """Draw one PNG with a panel per section; a message saying what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            "chart skipped: matplotlib is not installed"
            " (pip install -e '.[plot]' or pip install matplotlib)"
        )
    keys = list(results)
    cols = 2
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(14, 4.2 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        doc = results[key]
        try:
            if doc.get("error"):
                raise ValueError(doc["error"])
            _PLOTS[key](ax, doc["rows"])
        except Exception as e:
            ax.clear()
            ax.set_axis_off()
            ax.set_title(_BY_KEY[key].title, fontsize=9)
            ax.text(
                0.5,
                0.5,
                f"no chart: {e}"[:120],
                ha="center",
                va="center",
                fontsize=8,
                wrap=True,
                transform=ax.transAxes,
            )
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_axis_off()
    fig.suptitle("makejobs benchmarks (orange: makejobs; red line: the target)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"chart written to {path}"


# -- report -------------------------------------------------------------------------------------


def report(
    results: dict[str, dict[str, Any]],
    all_targets: list[dict[str, Any]],
    info: dict[str, Any],
    command: str,
    quick: bool,
    seconds: float,
    chart_name: str | None,
) -> str:
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    passed = sum(1 for t in all_targets if t["ok"] is True)
    missed = sum(1 for t in all_targets if t["ok"] is False)
    out = [
        "# Benchmarks",
        "",
        f"Measured {date} in {seconds / 60:.1f} minutes{' (--quick run)' if quick else ''}."
        " Reproduce with:",
        "",
        "```sh",
        "pip install -e '.[bench,plot]'",
        command,
        "```",
        "",
        "Every comparison runs its contenders side by side in the same run on the same"
        " machine, in interleaved rounds (the order rotates from round to round); tables"
        " give medians over rounds, and ratios are medians of per-round ratios to the"
        " baseline measured in the same round. What each table measures is described in"
        " [benchmarks/README.md](benchmarks/README.md) and in each script's docstring.",
        "",
        "## Machine",
        "",
        machine_markdown(info),
        "",
        f"## Targets ({passed} met, {missed} missed)",
        "",
        targets_markdown(all_targets),
        "",
    ]
    if chart_name:
        out += [f"![benchmark chart]({chart_name})", ""]
    for key, doc in results.items():
        section = _BY_KEY[key]
        out += [f"## {section.title}", "", section.what, ""]
        if doc.get("error"):
            out += [f"Not measured: {doc['error']}", ""]
            continue
        wall = doc.get("wall", doc.get("seconds"))
        out += [doc.get("markdown") or "(no table)", ""]
        for note in doc.get("notes", []):
            out += [f"- {note}"]
        if wall is not None:
            out += [f"({section.module}.py, {wall:.0f} s)", ""]
    return "\n".join(out).rstrip() + "\n"


def _command_line(args: argparse.Namespace) -> str:
    words = ["python", "benchmarks/harness.py"]
    if args.quick:
        words.append("--quick")
    if args.only:
        words += ["--only", args.only]
    if args.skip:
        words += ["--skip", args.skip]
    if args.scaling_max:
        words += ["--scaling-max", str(args.scaling_max)]
    return shlex.join(words)


def _keys(text: str | None) -> list[str]:
    if not text:
        return []
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in _BY_KEY]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {[s.key for s in SECTIONS]}")
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds and smaller samples (about 1.5 min on 2 cores)",
    )
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    parser.add_argument("--skip", help="comma-separated sections to leave out")
    parser.add_argument(
        "--out",
        default=str(BENCH / "results"),
        help="directory for the JSON, Markdown and PNG (default: %(default)s)",
    )
    publish = parser.add_mutually_exclusive_group()
    publish.add_argument(
        "--publish",
        action="store_true",
        default=None,
        help="write BENCHMARKS.md/.png at the top (default for a full run)",
    )
    publish.add_argument("--no-publish", dest="publish", action="store_false")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    parser.add_argument(
        "--timeout",
        type=float,
        default=_TIMEOUT,
        help="seconds a section may take before it is killed (%(default)s)",
    )
    parser.add_argument(
        "--scaling-max",
        type=int,
        default=None,
        metavar="N",
        help="run every scaling contender up to N jobs (default: the executors to 10^5,"
        " Jobserver (fork) to 10^4; 10^5 fork jobs add 5-8 minutes on 2 cores)",
    )
    args = parser.parse_args(argv)
    only, skip = _keys(args.only), _keys(args.skip)
    chosen = [s for s in SECTIONS if (not only or s.key in only) and s.key not in skip]
    publish_md = (not args.quick) if args.publish is None else args.publish
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "harness-quick" if args.quick else "harness"

    sys.path[:0] = [str(BENCH), str(ROOT)]
    info = machine()
    info["git"] = _git()
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    all_targets: list[dict[str, Any]] = []
    scratch = tempfile.mkdtemp(prefix="makejobs-harness-")
    pycache = os.path.join(scratch, "pycache")
    try:
        for section in chosen:
            print(
                f"== {section.title} ({section.module}.py{', quick' if args.quick else ''})",
                file=sys.stderr,
                flush=True,
            )
            doc = _run_child(
                section, args.quick, args.timeout, {"scaling_max": args.scaling_max}, pycache
            )
            results[section.key] = doc
            found = targets(section.key, doc)
            all_targets += found
            print(f"\n## {section.title}\n")
            print(doc.get("markdown") or f"Not measured: {doc.get('error', 'no table')}")
            for t in found:
                print(f"  {_verdict(t['ok']):4s}  {t['what']}  {t['target']}  {t['measured']}")
            print(flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - started
    try:
        info["loadavg_end"] = os.getloadavg()
    except OSError:
        pass

    print("## Targets\n")
    print(targets_markdown(all_targets))
    print(f"\n({seconds:.0f} s in all)")

    png = out_dir / f"{stem}.png"
    chart_message = None if args.no_chart else chart(results, png)
    drawn = chart_message is not None and chart_message.startswith("chart written")
    if chart_message:
        print(chart_message)
    command = _command_line(args)
    doc = {
        "command": command,
        "quick": args.quick,
        "seconds": seconds,
        "machine": info,
        "targets": all_targets,
        "sections": results,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    (out_dir / f"{stem}.md").write_text(
        report(
            results, all_targets, info, command, args.quick, seconds, png.name if drawn else None
        )
    )
    print(f"results written to {out_dir / stem}.json and .md")
    if publish_md:
        if drawn:
            shutil.copyfile(png, ROOT / "BENCHMARKS.png")
        (ROOT / "BENCHMARKS.md").write_text(
            report(
                results,
                all_targets,
                info,
                command,
                args.quick,
                seconds,
                "BENCHMARKS.png" if drawn else None,
            )
        )
        print(f"published {ROOT / 'BENCHMARKS.md'}{' and BENCHMARKS.png' if drawn else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
