"""Eight tests of a quarter of a second each: about 0.5 s of wall time on 4 slots."""

from __future__ import annotations

import time

import pytest


@pytest.mark.parametrize("n", range(8))
def test_takes_a_while(n: int) -> None:
    time.sleep(0.25)
    assert n * n >= 0
