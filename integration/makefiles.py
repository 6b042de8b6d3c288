"""Writing the Makefiles the integration tests run: words quoted for recipes, and rules.

A recipe line goes through make, which expands ``$``, and then through ``/bin/sh``:
:func:`mq` quotes a word for both, :func:`q` for the shell alone (a command line that
make does not read). :func:`write_makefile` writes one recipe line per target, with an
``all`` that builds the targets asked for.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

__all__ = ["mq", "q", "write_makefile"]


def q(word: object) -> str:
    """Quote *word* for a shell command line."""
    return shlex.quote(str(word))


def mq(word: object) -> str:
    """Quote *word* for a make recipe line (the shell's quoting, ``$`` doubled)."""
    return q(word).replace("$", "$$")


def write_makefile(
    path: Path, rules: dict[str, str], default: Sequence[str] | None = None
) -> None:
    """*rules*: target -> recipe line (the tab is added); ``all`` builds *default*
    (every target when None). Every target is phony."""
    goals = list(rules) if default is None else list(default)
    lines = [f".PHONY: all {' '.join(rules)}", f"all: {' '.join(goals)}"]
    for target, recipe in rules.items():
        lines += [f"{target}:", f"\t{recipe}"]
    path.write_text("\n".join(lines) + "\n")
