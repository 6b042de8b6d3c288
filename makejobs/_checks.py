"""Checks of the numbers callers pass: one place, one wording.

A timeout is None (wait forever) or a non-negative int or float that is a
number (not NaN); a count is an int (not a bool) at least some minimum. Wrong
types are TypeError, wrong values ValueError, and the message names the
argument and what it was.
"""

from __future__ import annotations

__all__ = ["check_buffersize", "check_count", "check_positive_number", "check_timeout"]


def check_timeout(timeout: object, name: str = "timeout") -> None:
    """*timeout* must be None or a non-negative number of seconds."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {timeout!r}")
    if timeout != timeout or timeout < 0:
        raise ValueError(
            f"{name} must be a non-negative number of seconds or None, not {timeout!r}"
        )


def check_count(value: object, name: str, minimum: int) -> int:
    """*value* must be an int (a bool is not one) of at least *minimum*; returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value!r}")
    return value


def check_positive_number(value: object, name: str) -> float:
    """*value* must be a number greater than 0 (not NaN); returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be a number greater than 0, not {value!r}")
    return float(value)


def check_buffersize(buffersize: object) -> None:
    """Refuse a *buffersize* that Python 3.14's ``Executor.map`` refuses, with its errors."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")
