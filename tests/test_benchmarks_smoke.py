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
