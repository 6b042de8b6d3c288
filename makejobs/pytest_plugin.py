"""pytest plugin: pytest-xdist runs its tests on make's jobserver slots.

Installing makejobs registers this module with pytest (entry point group
``pytest11``, name ``makejobs``; disable it with ``-p no:makejobs``). It acts
only when a jobserver pool is advertised (``MAKEFLAGS``, ``CARGO_MAKEFLAGS``,
``MFLAGS``) and pytest-xdist distributes the tests:

* ``-n auto`` (and ``-n logical``) start as many workers as the pool has
  slots: the ``-jN`` it advertises, or the usable CPUs when it gives none.
  ``PYTEST_XDIST_AUTO_NUM_WORKERS``, when set, still wins.
* The controller (the pytest process make started) joins the pool and lends
  its slots to the workers (see :mod:`makejobs._lending`): a worker holds one
  slot while it collects and while it runs each test, and none while idle.
  The controller's own implicit slot is the first one lent, so under ``-j1``
  (a pool of one slot) the tests still run, one at a time. Tests of all
  workers together never hold more slots than the pool has.
* Workers never touch the pool, so pipe pools work although xdist's workers
  inherit no descriptors; and a worker that crashes or is SIGKILLed gives its
  slot back through its closed connection. When pytest ends, however it ends
  (``^C`` included), every slot goes back.

A serial run (no xdist, ``-n 0``) does nothing at all: it runs on the
implicit slot make started it on and takes no token. A pool that is advertised
but unusable (for instance a recipe without ``+`` under make 4.3) gives a
:class:`~makejobs.JobserverUnavailable` warning, and the workers then run one
test at a time, as make itself falls back to ``-j1``.

pytest imports this module; ``import makejobs`` never does.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import pytest

from .errors import JobserverUnavailable

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from .pool import TokenPool

__all__ = [
    "pytest_configure",
    "pytest_unconfigure",
    "pytest_xdist_auto_num_workers",
]

_F = TypeVar("_F", bound=Callable[..., object])
# pytest.hookimpl with a type: mypy does not follow pytest (see pyproject.toml).
_hookimpl: Callable[..., Callable[[_F], _F]] = pytest.hookimpl

#: Other plugins that take a jobserver token per test, by module, with the name that
#: ``-p no:NAME`` disables them by. Beside ours, each test would need a slot from both,
#: and workers would wait for each other's tokens forever.
RIVALS = {
    "pytest_jobserver.plugin": ("pytest-jobserver", "jobserver"),
    "pytest_xdist_gnumake.plugin": ("pytest-xdist-gnumake", "tracker"),
}

#: The key of xdist's ``workerinput`` that carries the lender's address.
WORKERINPUT_KEY = "makejobs_lender"


class _Plan:
    """The controller's pool, decided once per run."""

    __slots__ = ("owned", "pool", "warning", "workers")

    def __init__(
        self, pool: TokenPool, *, owned: bool, workers: int, warning: Warning | None
    ) -> None:
        self.pool = pool
        self.owned = owned  # a private pool of one slot, standing in for an unusable one
        self.workers = workers
        self.warning = warning

    def close(self) -> None:
        if not self.pool.closed:
            self.pool.close()


_PLAN = pytest.StashKey["_Plan | None"]()


def _plan(config: pytest.Config) -> _Plan | None:
    """Join the advertised pool (once per run); None when there is none."""
    if _PLAN in config.stash:
        known: _Plan | None = config.stash[_PLAN]
        return known
    # Imported here: every pytest run imports this module, few of them under make.
    from . import usable_cpus
    from .pool import TokenPool

    plan: _Plan | None = None
    try:
        pool = TokenPool.from_environ()
    except JobserverUnavailable as e:
        warning = JobserverUnavailable(f"{e}; pytest-xdist workers run one test at a time")
        plan = _Plan(TokenPool.create(1), owned=True, workers=1, warning=warning)
    else:
        if pool is not None:
            plan = _Plan(pool, owned=False, workers=pool.slots or usable_cpus(), warning=None)
    config.stash[_PLAN] = plan
    return plan


def _advertised() -> bool:
    # Cheap test before importing anything: a run outside make pays for no join.
    return any(os.environ.get(v) for v in ("CARGO_MAKEFLAGS", "MAKEFLAGS", "MFLAGS"))


@_hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``: one worker per slot of the advertised pool."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS") or not _advertised():
        return None  # the user's explicit choice, or no pool: xdist decides
    plan = _plan(config)
    return None if plan is None else plan.workers


@_hookimpl(trylast=True)  # after xdist's, which registers its "dsession"
def pytest_configure(config: pytest.Config) -> None:
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None:
        address = workerinput.get(WORKERINPUT_KEY)
        if address:
            config.pluginmanager.register(_WorkerSlots(address), "makejobs-worker")
        return
    # Only an xdist controller lends slots; a serial run stays on its implicit slot
    # (but -n auto may have joined already, see pytest_xdist_auto_num_workers).
    distributing = config.pluginmanager.has_plugin("dsession")
    if distributing and _advertised():
        plan = _plan(config)
    else:
        plan = config.stash.get(_PLAN, None)
    if plan is None:
        return
    if plan.warning is not None:
        config.issue_config_time_warning(plan.warning, stacklevel=2)
    if distributing:
        _refuse_rivals(config)
        config.pluginmanager.register(_ControllerSlots(plan), "makejobs-controller")


def _refuse_rivals(config: pytest.Config) -> None:
    for _name, plugin in config.pluginmanager.list_name_plugin():
        rival = RIVALS.get(getattr(plugin, "__name__", ""))
        if rival is not None:
            project, name = rival
            raise pytest.UsageError(
                f"{project} is active too: it and makejobs would both take a jobserver"
                f" token for every test, and the workers would wait for each other's"
                f" tokens. Disable one of them: -p no:{name} or -p no:makejobs"
            )


def pytest_unconfigure(config: pytest.Config) -> None:
    # By now xdist has stopped its workers; whatever a killed or stuck one still
    # held comes back when the lender closes, and only then may the pool close.
    controller = config.pluginmanager.get_plugin("makejobs-controller")
    if controller is not None:
        controller.close()
    # The pool may also have been joined for -n auto in a run that then
    # distributed nothing (--collect-only).
    plan = config.stash.get(_PLAN, None)
    if plan is not None:
        plan.close()


class _ControllerSlots:
    """In the xdist controller: lend the pool's slots to the workers."""

    def __init__(self, plan: _Plan) -> None:
        from ._lending import SlotLender

        self._lender = SlotLender(plan.pool)
        self._warned_remote = False

    @_hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        spec = node.gateway.spec
        if spec.popen and not spec.via:
            node.workerinput[WORKERINPUT_KEY] = self._lender.address
        elif not self._warned_remote:
            self._warned_remote = True
            warnings.warn(
                f"makejobs: worker {spec!r} is not a local process and runs outside"
                " the jobserver pool",
                JobserverUnavailable,
                stacklevel=1,
            )

    def close(self) -> None:
        self._lender.close()


class _WorkerSlots:
    """In an xdist worker: hold a lent slot while collecting and while running each test."""

    def __init__(self, address: str) -> None:
        from ._lending import SlotBorrower

        self._borrower = SlotBorrower(address)

    # tryfirst: the outermost wrapper, so other plugins' wrappers run inside the slot.
    @_hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_collection(self) -> Generator[None, Any, None]:
        with self._borrower.slot():
            yield

    @_hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self) -> Generator[None, Any, None]:
        with self._borrower.slot():
            yield

    def pytest_unconfigure(self) -> None:
        self._borrower.close()
