"""What every benchmark script shares: number formatting and its ``--json`` document.

Each script runs on its own (``python benchmarks/NAME.py``) and is imported by
``harness.py``; both put the repository root on ``sys.path`` first, so this
module is ``benchmarks._common``. Only the standard library is imported here:
``scheduling.py`` re-imports its own file in every Python recipe.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

__all__ = ["environment", "fmt", "write_json"]


def fmt(value: float | None, spec: str, suffix: str = "", *, missing: str = "n/a") -> str:
    """*value* formatted by *spec* with *suffix*, or *missing* for a row not measured."""
    return missing if value is None else f"{value:{spec}}{suffix}"


def environment(**extra: Any) -> dict[str, Any]:
    """The machine and interpreter a run measured, plus the script's own *extra* facts."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **extra,
    }


def write_json(
    path: str,
    benchmark: str,
    *,
    quick: bool,
    seconds: float,
    rows: list[dict[str, Any]],
    environment: dict[str, Any],
    **fields: Any,
) -> None:
    """Write a run to *path* as ``{"benchmark", "quick", **fields, "seconds", ...}``.

    The document ends with ``"environment"`` and ``"rows"``; *fields* are the
    script's own (its baseline, its target).
    """
    doc = {
        "benchmark": benchmark,
        "quick": quick,
        **fields,
        "seconds": seconds,
        "environment": environment,
        "rows": rows,
    }
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
