"""A C compiler driver that logs a span around the real one, to measure parallel builds.

Usage (as setuptools' ``CC``, which it also uses to link)::

    CC="python cc_span.py LOG" python setup.py build_ext

runs ``cc ARGS...`` (or ``$CC_SPAN_REAL``) and logs one span in LOG (``spans.py``),
named ``compile-OUTPUT-PID`` for a ``-c`` command and ``link-OUTPUT-PID`` otherwise. The
compiler runs as a child, inside the span, so the span covers all of its work. With
``$CC_SPAN_MAKEFLAGS`` set, the ``MAKEFLAGS`` the compiler was started with is appended to
that file, one line per command: it shows which pool the build's jobs were on.
Only the standard library is imported, to keep start-up short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))  # spans.py

import spans


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    log, args = argv[0], argv[1:]
    kind = "compile" if "-c" in args else "link"
    output = os.path.basename(args[args.index("-o") + 1]) if "-o" in args[:-1] else "a.out"
    name = f"{kind}-{output}-{os.getpid()}"
    flags_log = os.environ.get("CC_SPAN_MAKEFLAGS")
    if flags_log:
        with open(flags_log, "a", encoding="utf-8") as f:
            f.write(os.environ.get("MAKEFLAGS", "") + "\n")
    spans.append_event(log, "S", name)
    try:
        return subprocess.call([os.environ.get("CC_SPAN_REAL", "cc"), *args])
    finally:
        spans.append_event(log, "E", name)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
