"""A fifo that relays a pipe pool's tokens, where a pipe cannot be opened by path.

On Linux a pipe pool is offered to fifo-only consumers by ``/proc/PID/fd/N``
(see :mod:`makejobs.advertise`). Elsewhere (macOS, whose make 3.81 speaks only
pipes, under which upstream ninja 1.13 runs outside the pool) a pipe has no
path, so :class:`Relay` makes a private fifo and moves tokens between it and
the pool:

* it keeps :data:`WAITING` token(s) waiting in the fifo, taken from the pool,
  so that a consumer reading the fifo finds one at once;
* when a consumer takes it, the relay sees the fifo empty and takes another
  from the pool (it looks every :data:`INTERVAL` seconds: nothing tells a
  fifo's writer that a reader is waiting);
* when consumers write tokens back and more than :data:`WAITING` wait, the
  extra ones go back to the pool at once.

The cost, measured in the README: one token of the pool sits in the fifo
while nobody uses it (siblings run one job fewer while the command idles),
and a consumer needing several tokens gets them one per interval. Tokens are
never duplicated: every byte in the fifo, or held by a consumer, stands for a
token the relay holds in the pool, so the pool's limit still holds.

The relay holds this process's implicit slot for the command's implicit slot:
the command runs on it, as it would under make.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import tempfile
import threading

from . import _posix
from .advertise import _records
from .protocol import FifoAuth, replace_auth

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .pool import Token, TokenPool

__all__ = ["INTERVAL", "WAITING", "Relay"]

#: Tokens kept waiting in the fifo for a consumer.
WAITING = 1
#: Seconds between looks at the fifo while a token waits in it.
INTERVAL = 0.01

_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD}


class Relay:
    """A private fifo standing for a pipe *pool*, while the relay runs.

    Use it as a context manager: on entry the fifo exists and tokens flow;
    :meth:`environ` is the environment of a child that should use it. On exit
    every token comes back to the pool: those in the fifo, and (with a count
    in :attr:`lost`) those consumers never wrote back, which the relay still
    holds in the pool; then the fifo is removed.
    """

    def __init__(self, pool: TokenPool, *, dir: str | None = None) -> None:
        if pool.closed:
            raise ValueError("the token pool is closed")
        self.pool = pool
        self.lost = 0
        self._dir = tempfile.mkdtemp(prefix="makejobs-relay-", dir=dir)
        self.path = os.path.join(self._dir, "fifo")
        self._lent: list[Token] = []
        self._implicit: Token | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        try:
            os.mkfifo(self.path, 0o600)
            self._reader, self._writer = _posix.open_new_fifo_ends(self.path)
        except BaseException:
            self._remove()
            raise

    def environ(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """*pool*'s environment (``pool.environ(base)``), naming the fifo instead."""
        env = self.pool.environ(base)
        for variable in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS"):
            value = env.get(variable)
            if value:
                env[variable] = replace_auth(value, FifoAuth(self.path), jobs=self.pool.slots)
        return env

    # -- running --------------------------------------------------------------------

    def __enter__(self) -> Relay:
        # The command runs on this process's implicit slot: hold it for it, so
        # that what the relay takes from the pool are tokens.
        self._implicit = self.pool.try_acquire()
        if self._implicit is not None and not self._implicit.implicit:
            self.pool.release(self._implicit)  # the slot was in use: there is none to give
            self._implicit = None
        self._thread = threading.Thread(target=self._run, name="makejobs-relay", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pass_fds(self) -> tuple[int, ...]:
        """What a child of the relay inherits: a token ledger's records, no pipe."""
        return _records(self.pool)

    def _level(self) -> int:
        """Tokens waiting in the fifo."""
        return _posix.available_tokens(self._reader) or 0

    def _run(self) -> None:
        # The command's signals are for the main thread (see cli._supervise).
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            poller = select.poll()
            poller.register(self._stop_r, select.POLLIN)
            wake = self.pool.fileno()
            watching = False
            while True:
                waiting = self._level()
                if waiting > WAITING:
                    self._give_back(waiting - WAITING)
                elif waiting < WAITING:
                    token = self.pool.try_acquire()
                    if token is not None:
                        self._lent.append(token)
                        os.write(self._writer, b"+")
                        continue
                # Wait for a token of the pool when the fifo lacks one, else for
                # the next look at the fifo.
                if waiting < WAITING and not watching:
                    poller.register(wake, select.POLLIN)
                    watching = True
                elif waiting >= WAITING and watching:
                    poller.unregister(wake)
                    watching = False
                events = poller.poll(INTERVAL * 1000)
                if any(fd == self._stop_r for fd, _ in events):
                    return
        except BaseException as e:  # pragma: no cover - reported by close()
            self._failure = e

    def _give_back(self, count: int) -> None:
        """Read *count* bytes consumers wrote back; give as many tokens to the pool."""
        try:
            data = os.read(self._reader, count)
        except BlockingIOError:
            return
        for _ in data:
            if self._lent:
                self.pool.release(self._lent.pop())

    def close(self) -> None:
        """Stop relaying; every token back to the pool; remove the fifo. Idempotent."""
        thread, self._thread = self._thread, None
        if thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._stop_w, b"x")
            thread.join()
        if self._reader >= 0:
            while True:
                try:
                    data = os.read(self._reader, 4096)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    break
                if not data:
                    break
                for _ in data:
                    if self._lent:
                        self.pool.release(self._lent.pop())
        # What consumers never wrote back: they are gone (the command has
        # exited), so the tokens they held are free again.
        self.lost += len(self._lent)
        while self._lent:
            self.pool.release(self._lent.pop())
        if self._implicit is not None:
            self.pool.release(self._implicit)
            self._implicit = None
        self._remove()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError(f"the relay stopped: {failure!r}") from failure

    def _remove(self) -> None:
        for fd in (
            getattr(self, "_reader", -1),
            getattr(self, "_writer", -1),
            self._stop_r,
            self._stop_w,
        ):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._reader = self._writer = self._stop_r = self._stop_w = -1
        import shutil

        shutil.rmtree(self._dir, ignore_errors=True)
