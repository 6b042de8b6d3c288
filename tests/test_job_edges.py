"""Jobs that end strangely and admission that must not starve (issue 11, items 9 and 15).

* Item 9: a result whose unpickling in the parent raises a BaseException
  (``__setstate__`` raising KeyboardInterrupt or SystemExit) reaches its own future's
  ``result()``, and only there; the Jobserver keeps working and its books stay exact.
* Item 15: ``criteria.load_below`` admits a job whenever none of ours is running, as
  ``make -l`` always lets one job run. The load average is faked (monkeypatched reader),
  so the tests are deterministic on a loaded shared machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from makejobs import Blocked, Jobserver, criteria

METHODS = ["fork", "forkserver", "spawn"]


# -- job functions (module level so spawn can pickle them) --------------------------------


class ExplodesWhenUnpickled:
    """A value that pickles fine in the job and raises *kind* when unpickled in the parent."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __getstate__(self) -> dict[str, str]:
        return {"kind": self.kind}

    def __setstate__(self, state: dict[str, str]) -> None:
        kind = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[state["kind"]]
        raise kind(f"{state['kind']} raised by __setstate__")


def explosive(kind: str) -> ExplodesWhenUnpickled:
    return ExplodesWhenUnpickled(kind)


def identity(x: object) -> object:
    return x


def wait_for_release(fd: int) -> int:
    """Block until the test writes to the pipe *fd* reads from: a job that runs until told."""
    return len(os.read(fd, 1))


# -- item 9 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["KeyboardInterrupt", "SystemExit"])
@pytest.mark.parametrize("method", METHODS)
def test_result_raising_a_base_exception_when_unpickled_stays_in_its_future(
    method: str, kind: str
) -> None:
    expected = {"KeyboardInterrupt": KeyboardInterrupt, "SystemExit": SystemExit}[kind]
    with Jobserver(method, slots=2) as js:
        pool = js.pool
        bad = js.submit(explosive, (kind,))
        # Every call that may complete the job in passing must not raise its exception:
        # wait(), the next submit, reclaim_resources().
        assert bad.wait(60)
        good = js.submit(identity, ("after",))
        js.reclaim_resources()
        with pytest.raises(expected, match="raised by __setstate__"):
            bad.result()
        assert good.result(60) == "after"
        assert js.submit(identity, (7,)).result(60) == 7
        js.reclaim_resources()
        assert pool.implicit_free and pool.held == 0
        assert pool.available() == 1  # every token back, exactly once
    assert pool.closed  # close() went through: the pool the Jobserver created is gone


# -- item 15 ----------------------------------------------------------------------------------


@pytest.fixture
def high_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The 1-minute load average stays at 100 for the whole test."""
    monkeypatch.setattr(criteria, "_load_average", lambda: 100.0)
    yield


def test_load_below_admits_when_nothing_of_ours_runs(high_load: None) -> None:
    gate = criteria.load_below(4, retry=3)
    assert gate() is None  # make -l: one job always runs
    assert criteria.all_of(gate, criteria.load_below(2, retry=5))() is None


def test_load_below_waits_while_a_job_of_ours_runs(high_load: None) -> None:
    gate = criteria.load_below(4, retry=0.05)
    release_r, release_w = os.pipe()
    try:
        with Jobserver("fork", slots=3) as js:
            first = js.submit(wait_for_release, (release_r,), sleep_fn=gate, timeout=5)
            # The load is high and one job of ours runs: the next one waits for it.
            assert gate() == 0.05
            with pytest.raises(Blocked):
                js.submit(identity, (2,), sleep_fn=gate, timeout=0.2)
            assert js.pool.implicit_free is False and js.pool.held == 0
            os.write(release_w, b"x")
            # The first job ends while the second waits: it is admitted without the load
            # ever going down, and well before its deadline.
            second = js.submit(identity, (2,), sleep_fn=gate, timeout=30)
            assert first.result(30) == 1 and second.result(30) == 2
            assert gate() is None
    finally:
        os.close(release_r)
        os.close(release_w)
