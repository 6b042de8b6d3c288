"""A storm of SIGINTs at random moments: the books stay exact (issue 11, item 2).

benchmarks/storm.py runs a worker that submits and collects Jobserver jobs, catching every
KeyboardInterrupt, while SIGINTs arrive every 0.5-20 ms; then it checks its books. CI runs
a few seconds per start method; ``python benchmarks/storm.py --seconds 20`` is the long
run. No peer is involved, but the run belongs with the slow, whole-system tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.storm import METHODS, storm

SECONDS = 3.0


@pytest.mark.parametrize("method", METHODS)
def test_random_sigints_never_corrupt_the_books(method: str) -> None:
    report = storm(method, SECONDS)
    print(
        f"{method}: {report['sent']} SIGINTs sent, {report['interrupts']} caught,"
        f" {report['collected']} jobs collected, peak {report['peak']}/{report['slots']}"
    )
    assert report["exit"] == 0, report
    assert report["interrupts"] > 0, report  # the storm did land
    assert report["error_count"] == 0, report["errors"]
    assert report["wrong_count"] == 0, report["wrong"]
    assert report["peak"] <= report["slots"], report
    assert report["implicit_free"] and report["held_at_end"] == 0, report
    assert report["available_at_end"] == report["slots"] - 1, report
    assert report["counted_at_close"] == report["slots"] - 1, report
