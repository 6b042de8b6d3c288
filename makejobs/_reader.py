"""Reading tokens from a shared pipe that may block, without ever blocking a caller.

An inherited pipe's open file description is shared with make and every
sibling, and its ``O_NONBLOCK`` flag must not be changed (see
:mod:`makejobs._posix`). On Linux the pool reopens ``/proc/self/fd/N`` for a
private description, and where that fails splice(2) still moves a token
without blocking whatever the flag says. Elsewhere (macOS, the BSDs) with a
*blocking* description (make 3.81 and 4.2 hand out one), a read after a
readable poll blocks until the next token whenever another client took the
token first. No caller with a timeout may wait that long.

So there, as jobserver-rs does, one helper thread per pool does the reads
that may block, and only while somebody wants a token: every token it reads
goes into a private non-blocking pipe, from which callers take it as they
would from the pool itself. A token read when nobody wants one any more goes
straight back to the pool, so the process never hoards. The private pipe is
an escrow of the process (known to its guardian), so a token waiting there
is never lost if the process is killed.
"""

from __future__ import annotations

import os
import threading

from . import _posix

__all__ = ["BlockingSource"]

#: How long try_acquire() waits for a token the pool showed to be there.
PROMPT = 0.01


class BlockingSource:
    """Tokens of the shared pipe *shared*, relayed into :attr:`r` on demand."""

    def __init__(self, shared: int, writer: int) -> None:
        # The thread's own copies: it may still be in a read when the pool
        # closes its descriptors, and it gives that token back through these.
        self.shared = _posix.dup_cloexec(shared)
        self.writer = _posix.dup_cloexec(writer)
        self.r, self.w = _posix.private_pipe()
        self._cond = threading.Condition(threading.Lock())
        self._wanted = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def want(self) -> None:
        """Somebody waits for a token: keep reading until :meth:`unwant`."""
        with self._cond:
            self._wanted += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._relay, name="makejobs-token-reader", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def unwant(self) -> None:
        with self._cond:
            self._wanted = max(0, self._wanted - 1)
            if self._wanted == 0:
                self._give_back_waiting()

    def shows_a_token(self) -> bool:
        """True when the shared pipe holds a token (or one waits here already)."""
        return bool(_posix.available_tokens(self.r) or _posix.available_tokens(self.shared))

    def wait_briefly(self) -> None:
        """For a caller that may not wait (wanting): give the thread a moment to fetch."""
        _posix.wait_readable(self.r, PROMPT)

    def _give_back_waiting(self) -> None:
        # Caller holds the condition's lock.
        while True:
            try:
                if _posix.move(self.r, self.writer) == 0:
                    return
            except (OSError, EOFError):
                return

    def _relay(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._wanted and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                try:
                    byte = os.read(self.shared, 1)  # may block: only this thread waits here
                except OSError:
                    return
                if not byte:
                    return  # end-of-file: callers find the pool broken themselves
                with self._cond:
                    target = self.w if self._wanted and not self._closed else self.writer
                    try:
                        os.write(target, byte)
                    except OSError:
                        return
        finally:
            _posix.close_quietly(self.shared, self.writer)

    def close(self) -> None:
        """Stop relaying. A read in progress ends with the next token, which goes back."""
        with self._cond:
            self._closed = True
            self._give_back_waiting()
            self._cond.notify_all()
            started = self._thread is not None
            r, w = self.r, self.w
            self.r = self.w = -1
        _posix.close_quietly(r, w)
        if not started:
            _posix.close_quietly(self.shared, self.writer)
