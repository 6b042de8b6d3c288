"""What the bridge's relay costs against naming the pipe by ``/proc`` path.

``makejobs bridge --style fifo`` offers a pipe pool to a fifo-only consumer by
``/proc/PID/fd/N`` on Linux; systems without ``/proc`` get a relay: a private fifo
topped up from the pool (see makejobs/relay.py). ``--relay`` forces the relay, so both
can be measured here, in interleaved rounds of the same build:

    make 4.3 -jJ  ->  +makejobs bridge [--relay] --style fifo -- fifo_only_client.py

The client runs JOBS jobs of SECONDS each. Reported per mode: the median wall time of the
client's jobs (first start to last end, from their spans), the peak of overlapping jobs
(never above J), and the relay's ratio to /proc. Usage::

    python benchmarks/bridge_relay.py [--quick] [--json PATH]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "integration"))
sys.path.insert(0, str(REPO / "tests"))  # spans.py

from benchmarks._common import command_line, fmt, report  # noqa: E402
from peers import clean_environ, find_peer  # noqa: E402
from spans import peak_overlap, read_spans  # noqa: E402

CLIENT = REPO / "integration" / "fifo_only_client.py"
MODES = ("proc", "relay")


def one_build(make: str, mode: str, slots: int, jobs: int, seconds: float) -> tuple[float, int]:
    """(wall seconds of the client's jobs, their peak overlap) of one build."""
    with tempfile.TemporaryDirectory(prefix="bridge-relay-") as tmp:
        log = Path(tmp) / "spans.log"
        relay = "--relay " if mode == "relay" else ""
        bridge = f"{sys.executable} -m makejobs bridge {relay}--style fifo --"
        client = f"{sys.executable} {CLIENT} {log} job {jobs} {seconds}"
        (Path(tmp) / "Makefile").write_text(f"all:\n\t+@{bridge} {client}\n")
        proc = subprocess.run(
            [make, "-s", f"-j{slots}", "-C", tmp],
            env=clean_environ(PYTHONPATH=str(REPO)),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if proc.returncode != 0 or "INTERNAL" in proc.stderr:
            raise RuntimeError(f"{mode}: make failed ({proc.returncode}):\n{proc.stderr}")
        spans = read_spans(log)
    wall = (max(s.end for s in spans) - min(s.start for s in spans)) / 1e9
    return wall, peak_overlap(spans)


def run(quick: bool = False, rounds: int | None = None) -> list[dict[str, Any]]:
    make = find_peer("make43").path
    slots, jobs, seconds = 4, (12 if quick else 24), 0.05
    rounds = rounds or (3 if quick else 9)
    walls: dict[str, list[float]] = {mode: [] for mode in MODES}
    peaks: dict[str, int] = {mode: 0 for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:  # interleaved: machine noise hits both alike
            wall, peak = one_build(make, mode, slots, jobs, seconds)
            walls[mode].append(wall)
            peaks[mode] = max(peaks[mode], peak)
    ideal = jobs * seconds / slots
    base = statistics.median(walls["proc"])
    return [
        {
            "mode": mode,
            "median_s": statistics.median(walls[mode]),
            "ideal_s": ideal,
            "ratio_to_proc": statistics.median(walls[mode]) / base,
            "peak": peaks[mode],
            "slots": slots,
            "rounds": rounds,
        }
        for mode in MODES
    ]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| mode | median wall | ideal | ratio to /proc | peak of -j |"]
    lines.append("|---|---|---|---|---|")
    for row in rows:
        wall, ideal = fmt(row["median_s"], ".3f", " s"), fmt(row["ideal_s"], ".3f", " s")
        ratio = fmt(row["ratio_to_proc"], ".2f")
        peak = f"{row['peak']} of {row['slots']}"
        lines.append(f"| {row['mode']} | {wall} | {ideal} | {ratio} | {peak} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = command_line(__doc__, quick="fewer jobs and rounds").parse_args(argv)
    return report(
        args,
        "bridge_relay",
        lambda: run(args.quick),
        table,
        facts={"cwd": os.getcwd()},
        baseline="proc",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
