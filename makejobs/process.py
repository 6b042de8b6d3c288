"""Jobserver-aware subprocesses: run a command on one slot of a token pool.

:func:`run` and :func:`popen` take the same arguments as :func:`subprocess.run`
and :class:`subprocess.Popen`, plus the pool. They:

1. take one slot of the pool (blocking; ``slot_timeout=`` bounds the wait and
   raises :class:`~makejobs.errors.Blocked`);
2. start the command with the pool exported to it, in the form the command
   speaks (``style="auto"``, the default; see :mod:`makejobs.advertise`):
   ``env`` (default ``os.environ``) gets ``MAKEFLAGS``/``MFLAGS``/
   ``CARGO_MAKEFLAGS`` advertising the pool and, in pipe form, the pool's
   descriptors are added to ``pass_fds``. So make 4.3 gets pipe descriptors
   even from a fifo pool, and make >= 4.4 and ninja get a path even to a pipe
   pool (Linux). ``style="pipe"``/``"fifo"`` force a form, ``style=None``
   keeps the pool's own. The slot we hold is the child's implicit slot, so a
   ``make`` or ``ninja`` started this way runs its first job on it and takes
   further tokens from the pool, exactly as under a parent make;
3. give the slot back once the process has been reaped, never earlier: by
   ``wait()``, a ``poll()`` that sees the exit, ``communicate()`` or leaving the
   ``with`` block. It is given back exactly once.

Do not give a child that should join the pool its own ``-jN`` (``make -j8``,
``ninja -j8``): make and ninja then ignore the pool and start their own.
"""

from __future__ import annotations

import os
import subprocess
import threading
import warnings
from typing import TYPE_CHECKING, Any

from .advertise import Advertisement, advertise

if TYPE_CHECKING:
    from .advertise import StyleChoice
    from .pool import Token, TokenPool

__all__ = ["JobPopen", "popen", "run"]

# Serializes the spawns that must make the pool's descriptors inheritable for a
# moment (close_fds=False), so two of ours never undo each other's change.
_inheritable_lock = threading.Lock()


def _child_kwargs(adv: Advertisement, kwargs: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Popen keyword arguments that export the pool as *adv* says; and whether
    its fds must be made inheritable.

    ``env`` becomes ``adv.environ``. With ``close_fds`` true (the default) the
    advertised descriptors join ``pass_fds``. With ``close_fds=False`` adding
    ``pass_fds`` would silently turn ``close_fds`` back on (subprocess warns and
    closes everything else), so instead the caller makes the descriptors
    inheritable for the duration of the spawn.
    """
    out = dict(kwargs)
    out["env"] = adv.environ
    fds = adv.pass_fds
    if not fds:
        return out, False
    if out.get("close_fds", True) is False and not out.get("pass_fds"):
        return out, True
    given = tuple(out.get("pass_fds") or ())
    out["pass_fds"] = given + tuple(fd for fd in fds if fd not in given)
    return out, False


class JobPopen(subprocess.Popen[Any]):
    """A :class:`subprocess.Popen` that holds one jobserver slot until it is reaped.

    Construct it through :func:`popen` (or :meth:`TokenPool.popen
    <makejobs.pool.TokenPool.popen>`). The object owns *token* from the start
    of ``__init__``: if starting the process fails, the slot is given back
    before the exception propagates.

    The slot goes back exactly once, as soon as :attr:`returncode` is known:
    after :meth:`wait`, a :meth:`poll` that sees the exit, :meth:`communicate`,
    :meth:`send_signal`/:meth:`terminate`/:meth:`kill` (they poll first) or the
    end of a ``with`` block. A process that is garbage-collected without ever
    being waited for gives its slot back then, with a :class:`ResourceWarning`
    (it may still be running: that is oversubscription, but a slot lost for
    the rest of the build would be worse).

    If the pool cannot take the token back (it is broken or closed), a
    :class:`~makejobs.errors.PoolBroken` warning is emitted instead of making
    ``wait()`` fail.
    """

    def __init__(
        self,
        args: Any,
        *,
        pool: TokenPool,
        token: Token,
        style: StyleChoice = "auto",
        **kwargs: Any,
    ) -> None:
        # Set before Popen.__init__, which may raise: __del__ and the release
        # logic must find them on a half-built object too.
        self._slot_lock = threading.Lock()
        self._slot_pool: TokenPool | None = pool
        self._slot_token: Token | None = token
        try:
            command = kwargs.get("executable") or args
            with advertise(pool, style, command=command, base=kwargs.get("env")) as adv:
                child_kwargs, inherit = _child_kwargs(adv, kwargs)
                if inherit:
                    with _inheritable_lock:
                        fds = adv.pass_fds
                        before = [os.get_inheritable(fd) for fd in fds]
                        for fd in fds:
                            os.set_inheritable(fd, True)
                        try:
                            super().__init__(args, **child_kwargs)
                        finally:
                            for fd, was in zip(fds, before):
                                os.set_inheritable(fd, was)
                else:
                    super().__init__(args, **child_kwargs)
        except BaseException:
            self._give_slot_back()
            raise

    @property
    def slot_token(self) -> Token | None:
        """The slot this process runs on, or None once it has been given back."""
        return self._slot_token

    def _give_slot_back(self) -> None:
        # The lock makes "exactly once" hold when several threads wait/poll.
        with self._slot_lock:
            token, self._slot_token = self._slot_token, None
            pool, self._slot_pool = self._slot_pool, None
        if token is None or pool is None:
            return
        try:
            pool.release(token, warn_if_broken=True)
        except ValueError:
            # The pool was closed while the process ran: close() already wrote
            # back the tokens this process held, ours included.
            if not pool.closed:
                raise

    def _release_if_reaped(self) -> None:
        if self.returncode is not None and self._slot_token is not None:
            self._give_slot_back()

    def poll(self) -> int | None:
        """As :meth:`subprocess.Popen.poll`; gives the slot back once the exit is seen."""
        try:
            return super().poll()
        finally:
            self._release_if_reaped()

    def wait(self, timeout: float | None = None) -> int:
        """As :meth:`subprocess.Popen.wait`; gives the slot back once the process is reaped."""
        try:
            return super().wait(timeout)
        finally:
            self._release_if_reaped()

    def __exit__(self, exc_type: Any, value: Any, traceback: Any) -> None:
        try:
            super().__exit__(exc_type, value, traceback)
        finally:
            # On KeyboardInterrupt Popen.__exit__ waits only briefly; a child
            # still running keeps its slot (the last resort is __del__).
            self._release_if_reaped()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_slot_token", None) is not None:
            _warn(
                f"subprocess {getattr(self, 'pid', '?')} was never waited for; its jobserver"
                " slot is given back by garbage collection",
                ResourceWarning,
                source=self,
            )
            try:
                self._give_slot_back()
            except Exception:
                pass
        super().__del__()


def popen(
    pool: TokenPool,
    args: Any,
    *,
    slot_timeout: float | None = None,
    style: StyleChoice = "auto",
    **kwargs: Any,
) -> JobPopen:
    """Take a slot of *pool* and start ``subprocess.Popen(args, **kwargs)`` on it.

    Args:
        pool: the token pool; the child joins it (see the module docstring).
        args, kwargs: as for :class:`subprocess.Popen`. ``env`` is the base
            environment the pool is exported into; ``pass_fds`` is extended
            with the pool's descriptors; ``close_fds=False`` is honoured.
        slot_timeout: seconds to wait for a slot (None: forever, 0: only if
            one is free right now).
        style: the form the child gets the pool in: ``"auto"`` (from the
            command, see :func:`makejobs.advertise.command_style`), ``"pipe"``,
            ``"fifo"``, or None for the pool's own.

    Returns:
        A :class:`JobPopen` holding the slot until it is reaped.

    Raises:
        Blocked: no slot within *slot_timeout* (nothing was started).
        PoolBroken: the pool returned end-of-file.
        CannotAdvertise: *style* asks for a form this pool cannot be offered
            in here (a pipe pool as a fifo without ``/proc``).
        OSError, ValueError, ...: as :class:`subprocess.Popen` (the slot is
            given back first).
    """
    token = pool.acquire(slot_timeout)
    return JobPopen(args, pool=pool, token=token, style=style, **kwargs)


def run(
    pool: TokenPool,
    args: Any,
    *,
    input: Any = None,
    capture_output: bool = False,
    timeout: float | None = None,
    check: bool = False,
    slot_timeout: float | None = None,
    style: StyleChoice = "auto",
    **kwargs: Any,
) -> subprocess.CompletedProcess[Any]:
    """Like :func:`subprocess.run`, holding one slot of *pool* for the life of the process.

    Arguments are those of :func:`subprocess.run` (``input``, ``capture_output``,
    ``timeout``, ``check`` and every :class:`subprocess.Popen` argument), plus
    *slot_timeout*: seconds to wait for the slot before raising
    :class:`~makejobs.errors.Blocked` (``timeout`` only covers the process, as
    in :mod:`subprocess`), and *style*, as for :func:`popen`.

    The slot is given back only after the process has been reaped, on every
    path: on ``timeout`` the child is killed and reaped before
    :class:`subprocess.TimeoutExpired` propagates; on any other exception
    (``KeyboardInterrupt`` included) it is killed and reaped too.

    Returns:
        :class:`subprocess.CompletedProcess`.

    Raises:
        Blocked: no slot within *slot_timeout*.
        subprocess.TimeoutExpired, subprocess.CalledProcessError: as
            :func:`subprocess.run`.
    """
    if input is not None:
        if kwargs.get("stdin") is not None:
            raise ValueError("stdin and input arguments may not both be used.")
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        if kwargs.get("stdout") is not None or kwargs.get("stderr") is not None:
            raise ValueError("stdout and stderr arguments may not be used with capture_output.")
        kwargs["stdout"] = subprocess.PIPE
        kwargs["stderr"] = subprocess.PIPE
    with popen(pool, args, slot_timeout=slot_timeout, style=style, **kwargs) as process:
        try:
            stdout, stderr = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            process.kill()
            # Collect what the child wrote before it was killed; this also
            # reaps it, so the slot is back before the exception leaves.
            exc.stdout, exc.stderr = process.communicate()
            raise
        except BaseException:
            # The slot must outlive the child: kill it and reap it, even on ^C.
            process.kill()
            process.wait()
            raise
        returncode = process.poll()
        assert returncode is not None  # communicate() returns only after the exit
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, process.args, stdout, stderr)
    return subprocess.CompletedProcess(process.args, returncode, stdout, stderr)
