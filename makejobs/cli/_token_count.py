"""The end of a pool a command created: close it and count the tokens that came back.

``serve`` and ``run`` (with a pool of its own) report a mismatch on stderr in
their own words, so the library's warnings are not shown as well.
"""

from __future__ import annotations

import warnings

from ..errors import TokenCountWarning
from ..pool import TokenPool

__all__ = ["close_counting"]


def close_counting(pool: TokenPool) -> int | None:
    """Close *pool*; the number of tokens it found (warnings are reported by the caller)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TokenCountWarning)
        warnings.simplefilter("ignore", ResourceWarning)
        return pool.close()
