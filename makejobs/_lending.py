"""Lend one process's pool slots to local processes that cannot inherit the pool.

pytest-xdist starts its workers through execnet, which closes every inherited
descriptor, so a worker never sees a pipe pool; and a worker that read a fifo
pool itself would take its tokens with it when it crashed. So the process that
joined the pool (the *lender*) keeps every token and lends slots over a
private Unix socket: a *borrower* asks for a slot, the lender takes one from
the pool (its implicit slot first) and says so, and the borrower later gives
it back. A token never leaves the lender's process.

Because the lender holds the tokens on the borrowers' behalf, a borrower that
dies (a crash, SIGKILL, ``os._exit``) closes its end of the connection and
whatever it held goes back to the pool at once; and closing the lender gives
back everything still lent. Pipe and fifo pools are served alike: borrowers
never touch the pool.

The protocol is one byte per message. Borrower to lender: ``A`` asks for a
slot, ``R`` gives one back. Lender to borrower: ``G`` grants a slot, ``E``
refuses because the pool is broken (end-of-file or full). Requests are granted
in the order they arrive, across all borrowers.

The socket lives in a fresh mode-0700 directory, so only this user's processes
can connect.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import socket
import tempfile
import threading
from collections import deque

from .errors import PoolBroken
from .pool import Token, TokenPool

TYPE_CHECKING = False  # not typing's: see makejobs/__init__.py
if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SlotBorrower", "SlotLender"]

_ASK = b"A"
_GIVE_BACK = b"R"
_GRANT = b"G"
_REFUSE = b"E"

# sun_path holds 108 bytes on Linux, 104 on the BSDs; keep below both.
_MAX_SOCKET_PATH = 100


class _Borrower:
    """The lender's record of one connection: what it holds and what it asked for."""

    __slots__ = ("held", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.held: list[Token] = []


class SlotLender:
    """Serve *pool*'s slots to borrowers over a Unix socket, from a background thread.

    The lender neither joins nor closes *pool*; :meth:`close` gives back every
    slot still lent. :attr:`address` is what borrowers connect to.
    """

    def __init__(self, pool: TokenPool) -> None:
        self._pool = pool
        self._dir = _private_dir()
        self.address = os.path.join(self._dir, "slots")
        self._waiting: deque[_Borrower] = deque()
        self._borrowers: dict[int, _Borrower] = {}
        #: Why the pool stopped serving (None while it serves).
        self.broken: str | None = None
        self._lent = 0
        self._count_lock = threading.Lock()
        try:
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(self.address)
            self._listener.listen(64)
            self._listener.setblocking(False)
            self._stop_r, self._stop_w = socket.socketpair()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._thread = threading.Thread(target=self._serve, name="makejobs-lender", daemon=True)
        self._thread.start()

    @property
    def lent(self) -> int:
        """Slots lent right now (racy; for display and tests)."""
        with self._count_lock:
            return self._lent

    def close(self) -> None:
        """Stop serving and give back every slot still lent. Idempotent.

        Borrowers still connected see the connection close: their next
        request fails instead of waiting forever.
        """
        if self._thread.is_alive():
            with contextlib.suppress(OSError):
                self._stop_w.send(b"x")
            self._thread.join()
        for sock in (self._stop_r, self._stop_w):
            sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SlotLender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the serving thread (the only one that touches borrowers and tokens) --------------

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._stop_r, selectors.EVENT_READ)
        pool_fd = -1
        try:
            while True:
                # Watch the pool only while someone waits: it is readable whenever
                # tokens are free, and nobody may be asking for one.
                want = -1
                if self._waiting and not self.broken:
                    try:
                        want = self._pool.fileno()
                    except (PoolBroken, ValueError) as e:  # closed by another thread
                        self._break(str(e))
                if want != pool_fd:
                    if pool_fd >= 0:
                        selector.unregister(pool_fd)
                    if want >= 0:
                        selector.register(want, selectors.EVENT_READ)
                    pool_fd = want
                for key, _events in selector.select():
                    if key.fileobj is self._stop_r:
                        return
                    if key.fileobj is self._listener:
                        self._accept(selector)
                    elif key.fd != pool_fd:
                        borrower = self._borrowers.get(key.fd)
                        if borrower is not None:  # else dropped earlier in this batch
                            self._receive(selector, borrower)
                self._grant()
        finally:
            for borrower in list(self._borrowers.values()):
                self._drop(selector, borrower)
            self._listener.close()
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        sock.setblocking(False)
        borrower = _Borrower(sock)
        self._borrowers[sock.fileno()] = borrower
        selector.register(sock, selectors.EVENT_READ)

    def _receive(self, selector: selectors.BaseSelector, borrower: _Borrower) -> None:
        try:
            data = borrower.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the borrower is gone: exited, crashed or killed
            self._drop(selector, borrower)
            return
        for byte in data:
            if byte == _ASK[0] and self.broken is None:
                self._waiting.append(borrower)
            elif byte == _ASK[0]:
                try:
                    borrower.sock.send(_REFUSE)
                except OSError:
                    self._drop(selector, borrower)
                    return
            elif byte == _GIVE_BACK[0] and borrower.held:
                self._give_back(borrower.held.pop())
            else:  # a slot it does not hold, or not our protocol: stop talking to it
                self._drop(selector, borrower)
                return

    def _grant(self) -> None:
        while self._waiting and self.broken is None:
            try:
                token = self._pool.try_acquire()
            except (PoolBroken, ValueError) as e:
                self._break(str(e))
                return
            if token is None:
                return
            borrower = self._waiting.popleft()
            borrower.held.append(token)
            with self._count_lock:
                self._lent += 1  # before the grant: a borrower holding it sees it counted
            try:
                borrower.sock.send(_GRANT)
            except OSError:
                # Gone since it asked: the token goes back, the connection's end
                # of file drops the borrower on the next turn of the loop.
                self._give_back(borrower.held.pop())

    def _give_back(self, token: Token) -> None:
        with self._count_lock:
            self._lent -= 1
        try:
            self._pool.release(token)
        except (PoolBroken, ValueError) as e:
            self._break(str(e))

    def _break(self, why: str) -> None:
        """The pool failed: refuse every waiting and future request instead of hanging."""
        self.broken = why
        while self._waiting:
            borrower = self._waiting.popleft()
            with contextlib.suppress(OSError):
                borrower.sock.send(_REFUSE)

    def _drop(self, selector: selectors.BaseSelector, borrower: _Borrower) -> None:
        """Forget a borrower: its waiting requests go, its slots go back to the pool."""
        if self._borrowers.pop(borrower.sock.fileno(), None) is None:
            return
        if borrower in self._waiting:
            self._waiting = deque(b for b in self._waiting if b is not borrower)
        while borrower.held:
            self._give_back(borrower.held.pop())
        selector.unregister(borrower.sock)
        borrower.sock.close()


class SlotBorrower:
    """A connection to a :class:`SlotLender`, used by one thread at a time."""

    def __init__(self, address: str) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.connect(address)
        except OSError as e:
            self._sock.close()
            raise ConnectionError(f"cannot reach the slot lender at {address}: {e}") from None
        self.held = 0

    def acquire(self) -> None:
        """Wait for a slot; the lender holds its token until :meth:`release`.

        Raises:
            PoolBroken: the lender's pool is broken.
            ConnectionError: the lender went away.
        """
        try:
            self._sock.sendall(_ASK)
            reply = self._sock.recv(1)
        except OSError as e:
            raise ConnectionError(f"lost the slot lender: {e}") from None
        if reply == _GRANT:
            self.held += 1
            return
        if reply == _REFUSE:
            raise PoolBroken("the jobserver pool that slots are lent from is broken")
        raise ConnectionError("lost the slot lender: it closed the connection")

    def release(self) -> None:
        """Give a slot back. A lender already gone took it back itself."""
        if self.held <= 0:
            raise ValueError("no slot is held")
        self.held -= 1
        with contextlib.suppress(OSError):
            self._sock.sendall(_GIVE_BACK)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one slot for the duration of a ``with`` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        """Disconnect; the lender gives back whatever this borrower still holds."""
        self._sock.close()


def _private_dir() -> str:
    """A fresh mode-0700 directory whose ``slots`` path fits in a socket address."""
    path = tempfile.mkdtemp(prefix="makejobs-lend-")
    if len(os.fsencode(path)) + len("/slots") <= _MAX_SOCKET_PATH:
        return path
    os.rmdir(path)  # TMPDIR is too deep for a socket address
    return tempfile.mkdtemp(prefix="makejobs-lend-", dir="/tmp")
