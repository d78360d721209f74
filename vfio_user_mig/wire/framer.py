"""Sans-IO message framing for a vfio-user byte stream (PROTOCOL.md section 1: ``msg_size``
delimits messages; file descriptors travel as SCM_RIGHTS ancillary data).

Contract of :class:`Framer`:

* Input: bytes in arbitrary pieces, either copied in with :meth:`Framer.feed` or received in
  place with :meth:`Framer.recv_buffer` + :meth:`Framer.commit` (``sock.recv_into(buf)``: no
  copy at all, each message gets its own buffer). File descriptors received with a piece are
  attached to the message that the piece's first byte belongs to (the message in progress,
  or the next one when the piece starts at a message boundary), which is where ``sendmsg``
  puts them: with the first byte of the message.
* Output: :meth:`Framer.next_message` returns ``(message, fds)`` for each whole message in
  order, or ``None`` when none is complete. Data fields of the messages are memoryviews into a
  buffer the framer never touches again.
* Limits: ``msg_size`` is checked as soon as the 16 header bytes are in, before any payload
  is buffered: below 16 -> WireError EINVAL, above ``max_size`` -> WireError E2BIG. Such a
  framing error desynchronizes the stream: it is raised by ``next_message`` after the messages
  before it, and every later ``feed``/``commit``/``next_message`` raises it again.
* A message that frames correctly but does not decode raises its :class:`WireError` from
  ``next_message`` (with ``.header`` and ``.fds`` set; the caller owns those fds); the stream
  stays usable and the next call continues with the following message.
* Claiming (optional, for a receiver that consumes a large message's payload as it arrives,
  e.g. migration data received into device memory): with ``claim`` given, a message of at
  least ``claim_min`` bytes that arrives in pieces is first received up to its first
  ``claim_head`` bytes (header included); ``claim(head, fds)`` then either declines (None: the
  message is framed as any other) or returns a :class:`PayloadSink` that takes the rest of the
  message: bytes fed go to ``sink.write``, :meth:`Framer.recv_buffers` returns
  ``sink.buffers(n)`` and :meth:`Framer.commit` calls ``sink.received(n)``. Once the message is
  whole, :meth:`Framer.next_message` returns ``(sink.message(), fds)`` in its place. The
  framer never buffers the claimed bytes. A message that arrives whole in one piece is never
  claimed.
* ``trim_trailing``: a request that does not decode because bytes follow its fixed-size
  payload is decoded without them (:mod:`.trailing`; what libvfio-user does). Off by default:
  the codec alone refuses them.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from vfio_user_mig.wire.codec import check_header, decode
from vfio_user_mig.wire.constants import DEFAULT_MAX_MSG_SIZE, HEADER_SIZE
from vfio_user_mig.wire.errors import WireError
from vfio_user_mig.wire.header import Header
from vfio_user_mig.wire.msg_base import Buffer, Message
from vfio_user_mig.wire.trailing import trim_request


class PayloadSink(Protocol):
    """Takes the rest of a claimed message (module docstring); never raises."""

    def write(self, data: memoryview) -> None:
        """The next bytes of the message (received elsewhere)."""

    def buffers(self, n: int) -> list[memoryview]:
        """Writable views of 1 to ``n`` bytes in all where the next bytes may be received, in
        order."""

    def received(self, n: int) -> None:
        """``n`` bytes were received into the last :meth:`buffers` (in order)."""

    def message(self) -> Message:
        """What :meth:`Framer.next_message` returns for the message once it is whole."""


#: ``claim(head, fds)``: a sink for the message whose first ``claim_head`` bytes are
#: ``head`` (``fds``: the fds received with it so far), or None.
Claim = Callable[[memoryview, list[int]], PayloadSink | None]
_Item = tuple[bytearray | WireError | PayloadSink, list[int]]
_MSG_SIZE = struct.Struct("<I")  # header.msg_size, at offset 4


class Framer:
    """Reassemble whole messages (and their fds) from a received byte stream.

    ``max_size`` bounds ``msg_size``; ``expect_reply`` is passed to :func:`decode` (``False``
    on a server's command socket, ``True`` for a client reading replies, ``None`` for both).
    """

    __slots__ = (
        "_body",
        "_broken",
        "_fds",
        "_fill",
        "_hdr",
        "_hdr_fill",
        "_ready",
        "_sink",
        "_sink_left",
        "claim",
        "claim_head",
        "claim_min",
        "expect_reply",
        "max_size",
        "trim_trailing",
    )

    def __init__(
        self, *, max_size: int = DEFAULT_MAX_MSG_SIZE, expect_reply: bool | None = None,
        trim_trailing: bool = False, claim: Claim | None = None, claim_head: int = HEADER_SIZE,
        claim_min: int = 1 << 16,
    ) -> None:
        self.claim = claim
        self.claim_head = max(claim_head, HEADER_SIZE)
        self.claim_min = claim_min
        self._sink: PayloadSink | None = None
        self._sink_left = 0
        self.max_size = max_size
        self.expect_reply = expect_reply
        self.trim_trailing = trim_trailing
        self._hdr = bytearray(HEADER_SIZE)
        self._hdr_fill = 0
        self._body: bytearray | None = None
        self._fill = 0
        self._fds: list[int] = []
        self._ready: deque[_Item] = deque()
        self._broken: WireError | None = None

    # ------------------------------------------------------------------ input

    def feed(self, data: Buffer, fds: Sequence[int] = ()) -> None:
        """Append received bytes (any size, possibly spanning messages) and their fds."""
        self._check_broken()
        self._fds.extend(fds)
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.format != "B":
            mv = mv.cast("B")
        pos, n = 0, len(mv)
        max_size = self.max_size
        while pos < n and self._broken is None:
            sink = self._sink
            if sink is not None:
                k = min(self._sink_left, n - pos)
                sink.write(mv[pos : pos + k])
                pos += k
                self._sink_advance(k)
                continue
            if self._body is None and self._hdr_fill == 0 and n - pos >= HEADER_SIZE:
                # Fast path: a whole, well-sized message at a boundary is copied in one go.
                size = _MSG_SIZE.unpack_from(mv, pos + 4)[0]
                if HEADER_SIZE <= size <= max_size and size <= n - pos:
                    self._ready.append((bytearray(mv[pos : pos + size]), self._fds))
                    self._fds = []
                    pos += size
                    continue
            buf = self.recv_buffer(n - pos)
            k = len(buf)
            buf[:] = mv[pos : pos + k]
            self._advance(k)
            pos += k

    def recv_buffer(self, n: int) -> memoryview:
        """A writable view of at most ``n`` bytes where the next stream bytes belong.

        Receive into it (``sock.recv_into(view)`` / ``recvmsg_into``), then call
        :meth:`commit` with the byte count. The view never spans two messages: it covers the
        rest of the header, or the rest of the current message's payload (so a large message
        is received straight into its own buffer, without copies).
        """
        self._check_broken()
        if self._sink is not None:
            raise ValueError("a claimed message is received with recv_buffers")
        if self._body is None:
            return memoryview(self._hdr)[self._hdr_fill : self._hdr_fill + n]
        return memoryview(self._body)[self._fill : self._fill + n]

    def recv_buffers(self, n: int) -> list[memoryview]:
        """:meth:`recv_buffer` as a list of views (``recvmsg_into`` scatter), at most ``n``
        bytes in all: a claimed message's sink may give several."""
        if self._sink is not None:
            self._check_broken()
            return self._sink.buffers(min(n, self._sink_left))
        return [self.recv_buffer(n)]

    def commit(self, n: int, fds: Sequence[int] = ()) -> None:
        """Account for ``n`` bytes written into the last :meth:`recv_buffer` view (or
        :meth:`recv_buffers` views)."""
        self._check_broken()
        self._fds.extend(fds)
        if n < 0 or n > self.needed:
            raise ValueError(f"commit({n}) outside 0..{self.needed}")
        if self._sink is not None:
            self._sink.received(n)
            self._sink_advance(n)
            return
        self._advance(n)

    def _sink_advance(self, n: int) -> None:
        self._sink_left -= n
        if not self._sink_left:
            assert self._sink is not None
            self._ready.append((self._sink, self._fds))
            self._sink = None
            self._fds = []

    def _advance(self, n: int) -> None:
        if self._body is None:
            self._hdr_fill += n
            if self._hdr_fill == HEADER_SIZE:
                self._start_message()
            return
        self._fill += n
        if self._fill == len(self._body):
            if self._fill < _MSG_SIZE.unpack_from(self._body, 4)[0]:
                self._claim_head()
            else:
                self._finish()

    def _claim_head(self) -> None:
        """The head of a claimable message is in: claimed, or framed as any other."""
        assert self._body is not None and self.claim is not None
        head = self._body
        sink = self.claim(memoryview(head), self._fds)
        size = _MSG_SIZE.unpack_from(head, 4)[0]
        if sink is None:
            body = bytearray(size)
            body[: len(head)] = head
            self._body = body
            return
        self._body = None
        self._fill = 0
        self._sink = sink
        self._sink_left = size - len(head)

    def _start_message(self) -> None:
        header = Header.unpack(self._hdr)
        size = header.msg_size
        self._hdr_fill = 0
        try:
            if size < HEADER_SIZE or size > self.max_size:
                check_header(
                    header.msg_id, header.command, size, header.flags, header.error,
                    max_size=self.max_size,
                )
        except WireError as exc:
            exc.header = header
            exc.fds, self._fds = self._fds, []
            self._broken = exc
            self._ready.append((exc, exc.fds))
            return
        claimable = self.claim is not None and size >= self.claim_min and size > self.claim_head
        body = bytearray(self.claim_head if claimable else size)
        body[:HEADER_SIZE] = self._hdr
        self._body = body
        self._fill = HEADER_SIZE
        if claimable and self.claim_head == HEADER_SIZE:
            self._claim_head()
        elif size == HEADER_SIZE:
            self._finish()

    def _finish(self) -> None:
        assert self._body is not None
        self._ready.append((self._body, self._fds))
        self._body = None
        self._fill = 0
        self._fds = []

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise self._broken

    # ------------------------------------------------------------------ output

    def next_message(self) -> tuple[Message, list[int]] | None:
        """The next whole message and its fds, or ``None``. Raises WireError (see module)."""
        if not self._ready:
            if self._broken is not None:
                raise self._broken
            return None
        item, fds = self._ready.popleft()
        if isinstance(item, WireError):
            self._ready.appendleft((item, fds))
            raise item
        if not isinstance(item, bytearray):  # a claimed message
            return item.message(), fds
        try:
            msg = decode(memoryview(item), max_size=self.max_size, expect_reply=self.expect_reply)
        except WireError as exc:
            trimmed = trim_request(item) if self.trim_trailing else None
            if trimmed is not None:
                try:
                    return decode(memoryview(trimmed), max_size=self.max_size,
                                  expect_reply=self.expect_reply), fds
                except WireError:
                    pass
            exc.fds = fds
            raise
        return msg, fds

    def messages(self) -> Iterator[tuple[Message, list[int]]]:
        """Iterate :meth:`next_message` until no whole message is left."""
        while (item := self.next_message()) is not None:
            yield item

    # ------------------------------------------------------------------ state

    @property
    def needed(self) -> int:
        """Bytes still missing from the header or message in progress."""
        if self._sink is not None:
            return self._sink_left
        if self._body is None:
            return HEADER_SIZE - self._hdr_fill
        return len(self._body) - self._fill

    @property
    def at_boundary(self) -> bool:
        """True when no partial message is buffered (a clean place for EOF)."""
        return self._body is None and self._hdr_fill == 0 and self._sink is None

    @property
    def claimed(self) -> PayloadSink | None:
        """The sink of the claimed message in progress, if any."""
        return self._sink

    @property
    def pending(self) -> int:
        """Whole messages (or a framing error) waiting in :meth:`next_message`."""
        return len(self._ready)
