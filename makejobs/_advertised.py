"""Which pool a process joins when several environment variables advertise one.

Three variables can name a jobserver pool: ``MAKEFLAGS`` (GNU make, ninja,
makejobs), ``CARGO_MAKEFLAGS`` (cargo, for its build scripts) and ``MFLAGS``
(make's older copy of its flags). Usually they agree or only one is set. When
they name different pools, the rule is:

1. **MAKEFLAGS first.** Every make rewrites it for the commands it starts, and
   GNU make and ninja read nothing else, so it names the pool that a ``make``
   or ``ninja`` started in the same place would join. Under
   ``cargo build`` → build script → ``make -j2`` → ``+python step.py`` it is
   the ``-j2`` pool of the make right above the step; ``CARGO_MAKEFLAGS``
   there still names cargo's pool, two levels up, which the make never saw.
   cargo, for its part, forwards the pool it joined in ``CARGO_MAKEFLAGS`` and
   leaves ``MAKEFLAGS`` alone, so when cargo joined make's pool both name the
   same one.
2. **Then CARGO_MAKEFLAGS**, for a build script that cargo started directly
   (cargo does not set ``MAKEFLAGS``).
3. **Then MFLAGS.**

A variable that advertises no pool is skipped. A variable whose pool cannot be
used (closed or stale descriptors, a fifo that is gone, ``-2,-2``) never hides
a usable pool named by a later one: make 4.3 leaves stale numbers in
``MAKEFLAGS`` for a recipe without ``+``, and cargo may have started a pool of
its own below it. When no advertised pool can be used, the error reported is
the first one's in the order above, since it is the pool that was most
likely meant.

Whether a pool can be used is found out by joining it: nothing less tells a
live fifo from a stale one, or make's pipe from a reused descriptor.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .errors import JobserverUnavailable
from .protocol import MakeFlags, parse_makeflags

# No typing at run time (see makejobs/__init__.py): every makejobs command imports this.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .pool import TokenPool

__all__ = ["ORDER", "Advertised", "choose"]

#: The variables that can advertise a pool, in order of preference.
ORDER = ("MAKEFLAGS", "CARGO_MAKEFLAGS", "MFLAGS")

_FIRST = (
    "MAKEFLAGS: it comes first, since every make rewrites it for the commands it starts and"
    " make and ninja read it, so it names the pool a make or ninja started here would join"
)


class Advertised:
    """Which advertised pool a process joins, and why (see ``pool.choose_advertised``).

    Attributes:
        variable: the variable whose pool is joined, or, when no advertised pool
            can be used, the one whose error is reported; None when no variable
            advertises a pool.
        flags: that variable's parsed value, or None.
        usable: True when that pool could be joined from here.
        reason: one sentence: why this variable (or why none).
        rejected: ``(variable, why)`` for every other variable whose advertised
            pool cannot be used, in order of preference.
        error: when no advertised pool can be used, the error to raise (that of
            :attr:`variable`, mentioning the others); else None.
    """

    __slots__ = ("error", "flags", "reason", "rejected", "usable", "variable")

    def __init__(
        self,
        variable: str | None,
        flags: MakeFlags | None,
        usable: bool,
        reason: str,
        rejected: tuple[tuple[str, str], ...] = (),
        error: JobserverUnavailable | None = None,
    ) -> None:
        self.variable = variable
        self.flags = flags
        self.usable = usable
        self.reason = reason
        self.rejected = rejected
        self.error = error

    def __repr__(self) -> str:
        return (
            f"Advertised(variable={self.variable!r}, usable={self.usable!r},"
            f" reason={self.reason!r}, rejected={self.rejected!r})"
        )


def choose(
    environ: Mapping[str, str], join: Callable[[MakeFlags, str], TokenPool]
) -> tuple[TokenPool | None, Advertised]:
    """Join the pool *environ* advertises by the rule in the module docstring.

    ``join(flags, variable)`` joins one variable's pool or raises
    :class:`~makejobs.errors.JobserverUnavailable`. Returns the joined pool
    (None when none could be joined) and the choice, whose ``error`` is set
    when pools are advertised but none can be used.
    """
    candidates: list[tuple[str, MakeFlags]] = []
    for variable in ORDER:
        value = environ.get(variable)
        if value:
            flags = parse_makeflags(value)
            if flags.advertises_pool():
                candidates.append((variable, flags))
    if not candidates:
        return None, Advertised(None, None, False, "no variable advertises a pool")
    failures: list[tuple[str, MakeFlags, JobserverUnavailable]] = []
    for variable, flags in candidates:
        try:
            pool = join(flags, variable)
        except JobserverUnavailable as e:
            failures.append((variable, flags, e))
            continue
        rejected = tuple((name, e.reason) for name, _, e in failures)
        return pool, Advertised(variable, flags, True, _why(variable, rejected), rejected)
    variable, flags, first = failures[0]
    rejected = tuple((name, e.reason) for name, _, e in failures[1:])
    reason = (
        f"{variable} is reported: no advertised pool can be used, and it comes first of"
        f" {', '.join(name for name, _ in candidates)}"
    )
    error = first
    if rejected:
        others = "; ".join(f"{name}: {why}" for name, why in rejected)
        error = JobserverUnavailable(
            f"{first.reason} (the other advertised pools cannot be used either: {others})",
            variable=variable,
            kind=first.kind,
        )
    return None, Advertised(variable, flags, False, reason, rejected, error)


def _why(variable: str, rejected: tuple[tuple[str, str], ...]) -> str:
    """Why *variable*'s pool was joined, the earlier ones in *rejected* being unusable."""
    if rejected:
        passed = "; ".join(f"the pool in {name} cannot be used ({why})" for name, why in rejected)
        return f"{variable}: {passed}; an unusable pool never hides a usable one"
    if variable == ORDER[0]:
        return _FIRST
    earlier = ORDER[: ORDER.index(variable)]
    if len(earlier) == 1:
        return f"{variable}: {earlier[0]} advertises no pool"
    return f"{variable}: neither {' nor '.join(earlier)} advertises a pool"
