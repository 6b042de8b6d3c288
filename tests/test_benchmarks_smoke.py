"""Smoke test of benchmarks/token_roundtrip.py: it runs and reports sane rows.

No timing assertions: the numbers depend on the machine. What is checked is
that every implementation row is present, measured (or skipped with a reason),
positive, and that a run leaves no file descriptor behind.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "token_roundtrip.py"

EXPECTED = [
    "raw pipe",
    "raw fifo",
    "makejobs acquire",
    "makejobs try_acquire",
    "makejobs slot",
    "makejobs fifo acquire",
    "gnumake-tokenpool",
    "gnumake-tokenpool fifo",
]
# Rows that must always be measured; the peer's may be skipped (not installed,
# Python < 3.11) but must then say why.
ALWAYS = [name for name in EXPECTED if not name.startswith("gnumake")]

# gnumake-tokenpool cancels any ITIMER_REAL on every acquire, which would
# silently disarm pytest-timeout's default signal method for these tests.
pytestmark = pytest.mark.timeout(120, method="thread")


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("token_roundtrip", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def check_rows(rows: list[dict[str, Any]]) -> None:
    assert [row["name"] for row in rows] == EXPECTED
    for row in rows:
        if row["skipped"]:
            assert row["name"] not in ALWAYS, row
            assert row["ns_median"] is None and row["ratio"] is None
            continue
        for key in ("ns_median", "ns_min", "ns_max", "ratio", "ratio_of_medians"):
            value = row[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (key, row)
        assert row["ns_min"] <= row["ns_median"] <= row["ns_max"]
        assert row["rounds"] == 2 and row["iterations"] == 20
    assert rows[0]["ratio"] == 1.0


def test_run_reports_every_row(bench: ModuleType) -> None:
    rows = bench.run(quick=True, iterations=20, rounds=2)
    check_rows(rows)
    if sys.version_info >= (3, 11):
        pytest.importorskip("gnumake_tokenpool")
        assert not any(row["skipped"] for row in rows), rows
    json.dumps(rows)  # the later harness stores them as JSON
    table = bench.to_markdown(rows)
    for name in EXPECTED:
        assert f"| {name} |" in table


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_run_leaks_no_fds(bench: ModuleType) -> None:
    bench.run(quick=True, iterations=5, rounds=1)  # imports, caches
    before = open_fds()
    bench.run(quick=True, iterations=5, rounds=1)
    assert open_fds() == before


def test_peer_skipped_with_reason_off_the_main_thread(bench: ModuleType) -> None:
    result: list[list[dict[str, Any]]] = []
    thread = threading.Thread(
        target=lambda: result.append(bench.run(quick=True, iterations=20, rounds=2))
    )
    thread.start()
    thread.join()
    (rows,) = result
    check_rows(rows)
    for row in rows:
        if row["implementation"] == "gnumake-tokenpool":
            assert row["skipped"], row
        else:
            assert not row["skipped"], row


def test_main_writes_json(bench: ModuleType, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(bench, "_QUICK", (2, 0.0005, 1.0))
    out = tmp_path / "rows.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["baseline"] == "raw pipe"
    assert [row["name"] for row in doc["rows"]] == EXPECTED


def test_job_overhead_fork_smoke() -> None:
    """benchmarks/job_overhead.py, fork only, 3 jobs per sample: every row, positive numbers."""
    path = SCRIPT.with_name("job_overhead.py")
    spec = importlib.util.spec_from_file_location("job_overhead", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.run(quick=True, n=3, methods=["fork"], rounds=1)
    assert [(r["contender"], r["mode"]) for r in rows] == [
        ("raw fork+waitpid", "serial"),
        ("multiprocessing.Process", "serial"),
        ("makejobs", "serial"),
        ("makejobs", "throughput"),
        ("jobserver 3.0.1", "serial"),
        ("jobserver 3.0.1", "throughput"),
    ]
    for row in rows:
        assert row["method"] == "fork" and row["jobs"] == 3
        if row["skipped"]:  # the peer is optional (the bench extra)
            assert row["contender"] == "jobserver 3.0.1" and row["ms_median"] is None
            continue
        for key in ("ms_median", "ms_min", "ms_max", "ratio_raw"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    json.dumps(rows)
    assert "| fork | makejobs | serial (slots=1) |" in module.to_markdown(rows)


def test_executor_throughput_smoke() -> None:
    """benchmarks/executor_throughput.py with 5 tasks per sample: every row, positive numbers."""
    path = SCRIPT.with_name("executor_throughput.py")
    spec = importlib.util.spec_from_file_location("executor_throughput", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    rows = module.run(quick=True, n=5, rounds=1)
    assert [(r["mode"], r["contender"]) for r in rows] == [
        (mode, contender) for mode in module.MODES for contender in module.CONTENDERS
    ]
    for row in rows:
        assert row["name"] == f"{row['mode']}: {row['contender']}"
        if row["skipped"]:  # loky and jobserver 3.0.1 are optional (the bench extra)
            assert row["contender"] in ("loky", "jobserver 3.0.1"), row
            assert row["us_per_task"] is None and row["ratio"] is None
            continue
        assert 1 <= row["n"] <= 5 and row["rounds"] == 1
        for key in ("us_per_task", "us_min", "us_max", "ratio"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        if row["contender"] == module.BASELINE:
            assert row["ratio"] == 1.0
    json.dumps(rows)
    table = module.to_markdown(rows)
    assert "| submit | makejobs | 5 |" in table and "| 1MB | ProcessPoolExecutor | 5 |" in table


def _load_benchmark(name: str) -> ModuleType:
    path = SCRIPT.with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_command_runner_and_scheduling_smoke(tmp_path: Path) -> None:
    """command_runner.py (5 commands, N=2) and scheduling.py (tiny units): rows, tables, harness."""
    runner = _load_benchmark("command_runner")
    rows = runner.run(quick=True, jobs=[2], rounds=1, commands=5)
    assert [(r["workload"], r["contender"]) for r in rows] == [
        (w, c) for w in runner.WORKLOADS for c in runner.CONTENDERS
    ]
    for row in rows:
        assert row["jobs"] == 2 and row["name"] == f"{row['workload']} -j2: {row['contender']}"
        assert row["commands"] == (1 if row["workload"] == "startup" else 5)
        if row["skipped"]:  # make 4.4.1 comes with the test extra, xargs with findutils
            assert row["contender"] != runner.MAKEJOBS and row["s_median"] is None
            continue
        assert row["rounds"] == 1
        for key in ("s_median", "s_min", "s_max"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        if row["contender"] == runner.BASELINE:
            assert row["ratio"] == 1.0 and row["baseline"]
    table = runner.to_markdown(rows)
    assert "| noop | 2 | makejobs run | 5 |" in table
    assert all(v["ok"] in (True, False) for v in runner.verdicts(rows))

    sched = _load_benchmark("scheduling")
    srows = sched.run(quick=True, rounds=1, scale=0.1, makes=["make 4.3"])
    assert [(r["make"], r["variant"]) for r in srows] == [
        ("make 4.3", sched.POOL),
        ("make 4.3", sched.SERIAL),
    ]
    for row in srows:
        if row["skipped"]:
            continue
        assert row["rounds"] == 1 and 1 <= row["peak"] <= sched.SLOTS
        for key in ("makespan_s", "work_s", "ideal_s", "efficiency"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["ideal_s"] <= row["makespan_s"] * 1.5  # the ideal is a lower bound, roughly
    assert "| make 4.3 | makejobs pool |" in sched.to_markdown(srows)
    json.dumps(rows + srows)

    # The harness turns both into target lines and a report without running anything.
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        harness = _load_benchmark("harness")
        found = harness.targets("commands", {"rows": rows}) + harness.targets(
            "scheduling", {"rows": srows}
        )
        assert found and all(t["section"] in (4, 5) for t in found)
        docs = {
            "commands": {"rows": rows, "markdown": table},
            "scheduling": {"error": "left out"},
        }
        text = harness.report(
            docs, found, {"cpu": "test"}, "python benchmarks/harness.py", True, 1.0, None
        )
        assert "## 4. Command runner" in text and "Not measured: left out" in text
    finally:
        sys.path.remove(str(SCRIPT.parent))
