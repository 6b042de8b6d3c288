"""``serve --trace FILE`` and ``makejobs plot FILE`` (issue 15 item 2).

The trace of a small build (``makejobs run`` of three 0.4 s sleeps under ``serve -j3``) is
checked against what the build did: busy slots never above N and reaching it, one span
per process with its command line, the sleeps' spans overlapping and at least as long
as the sleeps. The same build under real make is in integration/test_observe_peers.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from makejobs.cli._trace import lanes
from makejobs.cli.plot import TraceError, summarize

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
SLEEP = 0.4


def _env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL", "MAKEJOBS_LEDGER")
    }
    env["PYTHONPATH"] = str(REPO)
    return env


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("trace") / "build.json"
    commands = f"sleep {SLEEP}\n" * 3
    serve = [PY, "-m", "makejobs", "serve", "-j3", "--trace", str(path), "--"]
    done = _run([*serve, PY, "-m", "makejobs", "run", "-j3"], input=commands)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(path.read_text())
    document["path"] = str(path)
    return document


def test_the_trace_is_chrome_trace_json(trace: dict[str, Any]) -> None:
    assert isinstance(trace["traceEvents"], list)
    other = trace["otherData"]
    assert other["makejobs_trace"] == 1 and other["slots"] == 3
    assert other["command"][-2:] == ["run", "-j3"]
    assert other["recorder_cpu_s"] >= 0 and other["duration_us"] > SLEEP * 1e6
    for event in trace["traceEvents"]:
        assert event["ph"] in ("M", "C", "X") and isinstance(event["pid"], int)


def test_busy_slots_stay_within_n_and_reach_it(trace: dict[str, Any]) -> None:
    busy = [e["args"]["busy"] for e in trace["traceEvents"] if e["ph"] == "C"]
    assert busy and max(busy) == 3 and min(busy) >= 1, busy
    for event in trace["traceEvents"]:
        if event["ph"] == "C":
            assert event["args"]["busy"] + event["args"]["idle"] == 3


def test_one_span_per_process_with_its_command_line(trace: dict[str, Any]) -> None:
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    sleeps = [e for e in spans if e["args"]["cmdline"] == ["sleep", str(SLEEP)]]
    assert len(sleeps) == 3, [e["args"]["cmdline"] for e in spans]
    runner = [e for e in spans if "run" in e["args"]["cmdline"]]
    assert len(runner) == 1
    for span in sleeps:
        assert span["dur"] >= SLEEP * 1e6 - 20_000  # start times are exact to a 10 ms tick
        assert span["dur"] <= (SLEEP + 1.0) * 1e6
        assert span["args"]["pid"] > 0 and span["args"]["ppid"] > 0
        # Each sleep lies within the run process's span.
        assert runner[0]["ts"] <= span["ts"] + 10_000
        assert span["ts"] + span["dur"] <= runner[0]["ts"] + runner[0]["dur"] + 30_000
    # The three ran at once (run -j3 on serve's three slots).
    assert max(s["ts"] for s in sleeps) < min(s["ts"] + s["dur"] for s in sleeps)
    # Spans that overlap never share a lane.
    by_lane: dict[int, list[tuple[int, int]]] = {}
    for span in spans:
        by_lane.setdefault(span["tid"], []).append((span["ts"], span["ts"] + span["dur"]))
    for placed in by_lane.values():
        placed.sort()
        assert all(a[1] <= b[0] for a, b in zip(placed, placed[1:])), placed


def test_lanes() -> None:
    # A parent first, overlapping children (the longer first), then one that fits after
    # the first child.
    assert lanes([(0, 10), (0, 2), (1, 3), (1, 4), (2.5, 5)]) == [0, 1, 3, 2, 1]


def test_summary_counts_idle_slot_time() -> None:
    document = {
        "traceEvents": [
            {"ph": "C", "name": "busy slots", "pid": 1, "ts": 0, "args": {"busy": 1}},
            {"ph": "C", "name": "busy slots", "pid": 1, "ts": 1_000_000, "args": {"busy": 4}},
            {"ph": "C", "name": "busy slots", "pid": 1, "ts": 3_000_000, "args": {"busy": 2}},
            {
                "ph": "X",
                "name": "cc",
                "pid": 1,
                "tid": 1,
                "ts": 0,
                "dur": 4_000_000,
                "args": {"cmdline": ["/usr/bin/cc", "-c"]},
            },
        ],
        "otherData": {"makejobs_trace": 1, "slots": 4, "duration_us": 4_000_000},
    }
    summary = summarize(document)
    # idle: 3 slots for 1 s, 0 for 2 s, 2 for 1 s.
    assert summary.idle == pytest.approx(5.0) and summary.capacity == pytest.approx(16.0)
    assert summary.spans == [(1, 0.0, 4.0, "cc", "cc")]
    for bad in ({}, {"traceEvents": []}, {"traceEvents": [], "otherData": {}}):
        with pytest.raises(TraceError):
            summarize(bad)


def test_plot_draws_the_trace_or_says_what_is_missing(
    trace: dict[str, Any], tmp_path: Path
) -> None:
    # SVG here; integration/test_observe_peers.py draws a PNG of a real make build.
    out = tmp_path / "build.svg"
    done = _run([PY, "-m", "makejobs", "plot", trace["path"], "-o", str(out)])
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode == 1 and "makejobs[plot]" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert "idle slot-time" in done.stdout
    text = out.read_text()
    assert "<svg" in text[:500] and "idle slot-time" in text


def test_plot_without_matplotlib_says_how_to_get_it(trace: dict[str, Any], tmp_path: Path) -> None:
    # sys.modules[name] = None makes `import name` fail, as when it is not installed.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from makejobs.cli import main;"
        f" sys.exit(main(['plot', {trace['path']!r}, '-o', {str(tmp_path / 'x.png')!r}]))"
    )
    done = _run([PY, "-c", code])
    assert done.returncode == 1 and "pip install 'makejobs[plot]'" in done.stderr, done.stderr


def test_plot_refuses_what_it_cannot_draw(tmp_path: Path) -> None:
    not_json = tmp_path / "x.json"
    not_json.write_text("{")
    foreign = tmp_path / "chrome.json"
    foreign.write_text('{"traceEvents": []}')
    cases = [
        ([str(tmp_path / "missing.json")], "cannot read"),
        ([str(not_json)], "x.json"),
        ([str(foreign)], "not written by `makejobs serve --trace`"),
        ([str(foreign), "-o", str(tmp_path / "x.pdf")], ".png or .svg"),
    ]
    for args, words in cases:
        done = _run([PY, "-m", "makejobs", "plot", *args])
        assert done.returncode == 1 and words in done.stderr, (args, done.stderr)


def test_an_unwritable_trace_stops_serve_before_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    trace = str(tmp_path / "no" / "x.json")
    done = _run([PY, "-m", "makejobs", "serve", "--trace", trace, "--", "touch", str(marker)])
    assert done.returncode == 125 and "cannot write the trace" in done.stderr, done.stderr
    assert not marker.exists()
