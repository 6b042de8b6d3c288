"""One job run directly by make or ninja: log a span in the shared log and exit.

Usage::

    python job.py LOG NAME SECONDS [TOUCH]

make/ninja hold the job's slot from before this process starts until after it exits, so
the span it logs lies inside the slot. TOUCH, if given, is created afterwards (a ninja
output). Only the standard library is imported, to keep start-up short.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # spans.py

import spans


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 4):
        print(__doc__, file=sys.stderr)
        return 2
    log, name, seconds = argv[0], argv[1], float(argv[2])
    spans.run_job(log, name, seconds)
    if len(argv) == 4:
        Path(argv[3]).touch()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
