"""Frames on the executor's worker pipes: a header (body length, kind), then a pickle.

A frame crosses each pipe with no copy of ours: the sender hands header and body
to ``writev()`` together (no concatenation), the receiver reads the header, then
the body straight into one buffer of the right size, and the executor unpickles
from that buffer. The kernel's copies and the pickle itself are all that a large
result costs.

The worker side (:func:`send`, :func:`receive`) uses blocking pipes; the
executor's manager thread multiplexes every worker's non-blocking result pipe
with a :class:`FrameReader` each.
"""

from __future__ import annotations

import os
import struct

from . import _outcomes

__all__ = [
    "DIED",
    "HEADER",
    "INIT_FAILED",
    "KEPT_BUFFER_MAX",
    "OK",
    "RAISED",
    "TASK",
    "FrameReader",
    "advance",
    "frame_parts",
    "receive",
    "send",
]

#: A frame's header: the length of the pickle that follows, and the frame's kind.
HEADER = struct.Struct(">QB")
#: The kind of every frame the executor sends (a task).
TASK = 0
#: Kinds of the frames a worker sends back (makejobs._outcomes). The kind travels
#: outside the pickle so that the manager knows the worker's fate (next task, or it
#: exits: DIED) before unpickling.
OK, RAISED, DIED, INIT_FAILED = (
    _outcomes.OK,
    _outcomes.RAISED,
    _outcomes.DIED,
    _outcomes.INIT_FAILED,
)


def advance(parts: list[memoryview], sent: int) -> list[memoryview]:
    """What is left of *parts* once their first *sent* bytes are written."""
    i = 0
    while i < len(parts) and sent >= len(parts[i]):
        sent -= len(parts[i])
        i += 1
    rest = parts[i:]
    if sent:
        rest[0] = rest[0][sent:]
    return rest


def frame_parts(kind: int, body: bytes | bytearray) -> list[memoryview]:
    """Header and body of one frame, ready for writev()."""
    return [memoryview(HEADER.pack(len(body), kind)), memoryview(body)]


def send(fd: int, kind: int, body: bytes) -> None:
    """Write one frame to the blocking *fd*, however many writes it takes."""
    parts = frame_parts(kind, body)
    while parts:
        # A blocking pipe writes it all unless a signal interrupts it part way.
        parts = advance(parts, os.writev(fd, parts))


def _fill(fd: int, view: memoryview) -> bool:
    """Fill *view* from the blocking *fd*; False at end-of-file before it is full."""
    got = 0
    while got < len(view):
        n = os.readv(fd, [view[got:]])
        if not n:
            return False
        got += n
    return True


def receive(fd: int) -> bytearray | None:
    """The body of the next frame on the blocking *fd*; None at end-of-file."""
    header = bytearray(HEADER.size)
    if not _fill(fd, memoryview(header)):
        return None
    body = bytearray(HEADER.unpack(header)[0])  # every frame a worker gets is a task
    with memoryview(body) as view:
        if not _fill(fd, view):
            return None
    return body


#: Bodies up to this size are read into a buffer that the reader keeps for the next frame.
KEPT_BUFFER_MAX = 4 << 20


class FrameReader:
    """Reassembles frames from a non-blocking pipe, whatever pieces they arrive in.

    The manager multiplexes every worker's result pipe, so it reads only what is
    there and comes back when poll() says there is more. A frame's header goes
    into a small buffer; once it is whole, the body is read straight into a
    buffer of at least its size (one copy: the kernel's), and nothing is joined
    or sliced afterwards. That buffer is kept for the next frame (up to
    :data:`KEPT_BUFFER_MAX`): a fresh one per frame would cost an allocation,
    zero-filling it and, for large ones, a page fault per page, every time.
    """

    __slots__ = ("_buffer", "_got", "_header", "_in_body", "_kind", "_view")

    def __init__(self) -> None:
        self._header = memoryview(bytearray(HEADER.size))
        self._buffer = bytearray()  # reused for bodies up to KEPT_BUFFER_MAX
        self._in_body = False
        self._kind = 0
        self._view = self._header  # what the current read fills
        self._got = 0  # bytes of it filled so far

    @property
    def partial(self) -> bool:
        """True between a frame's first byte and its last."""
        return self._got > 0 or self._in_body

    def read(self, fd: int) -> tuple[int, memoryview] | None:
        """Read from *fd* until a frame is whole or the pipe is empty.

        Returns the whole frame's kind and body, or None when more is to come.
        The body may be a view of the reader's own buffer: it is valid until the
        next call. Stops after one frame: a worker sends one per task, so
        nothing else is due (and if something is, poll() reports it again).

        Raises:
            EOFError: the writer closed the pipe (a partial frame is lost with it).
        """
        while True:
            want = len(self._view) - self._got
            if want:
                try:
                    n = os.readv(fd, [self._view[self._got :]])
                except BlockingIOError:
                    return None
                if not n:
                    raise EOFError
                self._got += n
                if n < want:
                    continue
            self._got = 0
            if not self._in_body:
                length, self._kind = HEADER.unpack(self._header)
                self._in_body = True
                self._view = self._body_view(length)
                continue  # an empty body is whole at once: the check above reads nothing
            body, self._view, self._in_body = self._view, self._header, False
            return self._kind, body

    def _body_view(self, length: int) -> memoryview:
        """A writable view of exactly *length* bytes for the next body."""
        if length > KEPT_BUFFER_MAX:
            return memoryview(bytearray(length))  # its own, dropped with the frame
        size = len(self._buffer)
        if size < length or size > max(1 << 16, 8 * length):
            # A new buffer, not a resize: the caller may still hold a view of the
            # old one. Powers of two, so that slowly growing results do not
            # reallocate every time; and a large buffer goes once results are
            # small again, so a worker keeps about the size it returns, no more.
            self._buffer = bytearray(1 << max(12, (length - 1).bit_length()))
        return memoryview(self._buffer)[:length]
