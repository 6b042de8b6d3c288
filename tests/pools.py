"""Pools in the tests: closing one with its books checked, and a client that joins one.

:func:`close_clean` closes a pool the test created and fails the test on any
:class:`~makejobs.TokenCountWarning` (a token missing or extra) or ``ResourceWarning``
(a token dropped unreleased). :data:`GREEDY` is a Python program that joins the pool its
environment advertises, takes every slot it can get, prints what it found as one JSON
line and gives everything back.
"""

from __future__ import annotations

import textwrap
import warnings

from makejobs import TokenCountWarning, TokenPool

__all__ = ["GREEDY", "close_clean"]


def close_clean(pool: TokenPool) -> int | None:
    """``pool.close()``, failing on a TokenCountWarning or ResourceWarning; its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = pool.close()
    bad = [w for w in caught if issubclass(w.category, (TokenCountWarning, ResourceWarning))]
    assert not bad, [str(w.message) for w in bad]
    return found


#: Prints ``{"style", "slots" (the slots it got), "jobs" (the pool's -jN), "makeflags",
#: "cargo" (CARGO_MAKEFLAGS)}``.
GREEDY = textwrap.dedent(
    """
    import json, os
    from makejobs import TokenPool
    pool = TokenPool.from_environ()
    tokens = []
    while (token := pool.try_acquire()) is not None:
        tokens.append(token)
    print(json.dumps({"style": pool.style, "slots": len(tokens), "jobs": pool.slots,
                      "makeflags": os.environ.get("MAKEFLAGS"),
                      "cargo": os.environ.get("CARGO_MAKEFLAGS")}))
    for token in tokens:
        pool.release(token)
    pool.close()
    """
)
