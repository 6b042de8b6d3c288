"""Ways a build loses its jobserver, seen in a command line and an environment.

``serve`` and ``exec`` warn about them before they run a command; ``status``
and ``doctor`` use the same findings. Every message says what will happen
and how to fix it, in words a person can act on.
"""

from __future__ import annotations

import os

from ..protocol import make_jobs_option, parse_makeflags, unlimited_jobs

# Not typing's TYPE_CHECKING (see makejobs/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..protocol import MakeFlags

__all__ = [
    "Inherited",
    "exec_warnings",
    "inherited_pool",
    "jobs_option",
    "program_kind",
    "serve_warnings",
]

#: Where a pool is looked for, in order (the pool module's ENVIRON_VARIABLES;
#: repeated so that this module imports no pool).
_VARIABLES = ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS")
_NINJA_ARGUMENT_LETTERS = frozenset("Cfjkldtw")


def program_kind(argv0: str) -> str | None:
    """``"make"``, ``"ninja"`` or ``"cargo"`` for a program name or path, else None.

    Versioned and prefixed names count (``gmake``, ``make-4.4``,
    ``x86_64-linux-gnu-make`` are all make).
    """
    name = os.path.basename(argv0).lower()
    if name.endswith(".exe"):
        name = name[:-4]
    for kind, spellings in (("make", ("make", "gmake")), ("ninja", ("ninja",))):
        for spelling in spellings:
            if name == spelling or name.endswith("-" + spelling):
                return kind
            if name.startswith(spelling + "-") and name[len(spelling) + 1 :][:1].isdigit():
                return kind
    if name == "cargo":
        return "cargo"
    return None


def _ninja_jobs_option(args: Sequence[str]) -> str | None:
    """ninja's ``-j N``/``-jN`` (plain getopt: options with an argument take the rest)."""
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--" or not word.startswith("-") or word.startswith("--") or word == "-":
            i += 1
            if word == "--":
                return None
            continue
        for k, letter in enumerate(word[1:], start=1):
            if letter not in _NINJA_ARGUMENT_LETTERS:
                continue
            attached = word[k + 1 :]
            if letter == "j":
                if attached or i + 1 >= len(args):
                    return word
                return f"{word} {args[i + 1]}"
            if not attached:
                i += 1  # the argument is the next word
            break
        i += 1
    return None


def jobs_option(command: Sequence[str]) -> tuple[str, str] | None:
    """(kind, the ``-j`` words as written) when *command* runs make or ninja with a ``-j``."""
    if not command:
        return None
    kind = program_kind(command[0])
    if kind == "make":
        option = make_jobs_option(command[1:])
    elif kind == "ninja":
        option = _ninja_jobs_option(command[1:])
    else:
        return None
    return None if option is None else (kind, option)


class Inherited:
    """What the environment says about a pool a command would inherit.

    Attributes:
        state: ``"none"``, ``"usable"``, ``"disabled"`` (``-2,-2``) or ``"unusable"``.
        variable: the variable that advertises it (None for ``"none"``).
        flags: that variable's parsed value (MAKEFLAGS' for ``"none"``).
        reason: why it cannot be used (``"disabled"``/``"unusable"``).
    """

    def __init__(
        self, state: str, variable: str | None, flags: MakeFlags, reason: str | None = None
    ) -> None:
        self.state = state
        self.variable = variable
        self.flags = flags
        self.reason = reason

    @property
    def size(self) -> str:
        """The pool's ``-jN`` in words, for messages."""
        return f"-j{self.flags.jobs}" if self.flags.jobs else "its slots"


def inherited_pool(environ: Mapping[str, str]) -> Inherited:
    """Look at the pool *environ* advertises; joins it for a moment to see if it is usable."""
    for variable in _VARIABLES:
        value = environ.get(variable)
        if not value:
            continue
        flags = parse_makeflags(value)
        if not flags.advertises_pool():
            continue
        if flags.disabled:
            return Inherited("disabled", variable, flags)
        from ..errors import JobserverUnavailable
        from ..pool import TokenPool

        try:
            pool = TokenPool.from_makeflags(flags, variable=variable)
        except JobserverUnavailable as e:
            return Inherited("unusable", variable, flags, e.reason)
        pool.close()
        return Inherited("usable", variable, flags)
    return Inherited("none", None, parse_makeflags(environ.get("MAKEFLAGS") or ""))


def _jobs_phrase(option: str) -> str:
    """How many jobs a ``-j`` option lets a program run, in words."""
    digits = "".join(c for c in option.split("j")[-1] if c.isdigit())
    if option.strip() in ("-j", "--jobs") or (option.endswith("j") and not digits):
        return "with no limit at all"
    return f"up to {digits} jobs" if digits else "its own number of jobs"


def serve_warnings(command: Sequence[str], environ: Mapping[str, str], slots: int) -> list[str]:
    """What ``serve -j SLOTS -- COMMAND`` should warn about, one message each."""
    messages = []
    found = jobs_option(command)
    if found is not None:
        kind, option = found
        if kind == "make":
            messages.append(
                f"{command[0]} is given {option!r}: a make given -j on its command line leaves"
                f" the pool it inherits (it says '-jN forced in submake: resetting jobserver"
                f" mode') and runs {_jobs_phrase(option)} beside serve's {slots} slots. Drop"
                f" {option!r} from the command and give serve -j instead"
            )
        else:
            messages.append(
                f"{command[0]} is given {option!r}: ninja with -j does not use the pool and runs"
                f" {_jobs_phrase(option)} beside serve's {slots} slots. Drop {option!r} from"
                f" the command and give serve -j instead"
            )
    inherited = inherited_pool(environ)
    if inherited.state == "usable":
        messages.append(
            f"a jobserver pool is already shared here ({inherited.variable}, {inherited.size});"
            f" serve's new pool of {slots} slots does not draw from it, so the command's jobs"
            f" come on top of everything that pool runs. To stay within it, run the command"
            f" without serve: make, ninja and cargo join the inherited pool themselves"
        )
    elif inherited.state == "disabled":
        messages.append(
            "the parent make withheld its pool from this command (--jobserver-auth=-2,-2: make"
            " >= 4.4 in pipe mode marks a recipe line that is not recursive this way), so"
            f" serve's pool of {slots} slots comes on top of the parent's jobs. To share the"
            " parent's pool instead, start the recipe line with '+' (or use $(MAKE) in it)"
            " and run the command without serve"
        )
    elif inherited.state == "unusable":
        messages.append(
            f"a pool is advertised ({inherited.variable}) but cannot be used here"
            f" ({inherited.reason}); serve's pool of {slots} slots comes on top of the"
            " parent's jobs"
        )
    elif unlimited_jobs(environ.get("MAKEFLAGS") or ""):
        messages.append(
            "the parent make was started with a bare -j (no limit and no jobserver): it runs"
            f" as many jobs as it likes beside serve's {slots} slots; give it -jN instead"
        )
    return messages


def _names_a_variable(option: str, names: Sequence[str]) -> bool:
    return any(f"${name}" in option or "${" + name + "}" in option for name in names)


def exec_warnings(command: Sequence[str], names: Sequence[str], slots: int) -> list[str]:
    """What ``exec -- COMMAND`` should warn about once it holds *slots* slots of a pool."""
    found = jobs_option(command)
    if found is None or _names_a_variable(found[1], names):
        return []
    kind, option = found
    runs = f"it runs {_jobs_phrase(option)} on the {slots} slot(s) exec holds"
    if kind == "make":
        return [
            f"{command[0]} is given {option!r}, which overrides the -j{slots} exec hands it in"
            f" MAKEFLAGS: {runs}. Drop {option!r} (make then runs {slots})"
        ]
    return [
        f"{command[0]} is given {option!r}: {runs}. Write -j '${names[0]}' instead (exec puts"
        " the number it holds there)"
    ]
