"""``python -m makejobs``: the same command line as the ``makejobs`` console script."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m makejobs"))
