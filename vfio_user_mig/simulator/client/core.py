"""The vfio-user client as a sans-IO protocol core (no sockets, time passed in).

Use: ``msg_id = core.send(msg, fds)`` queues a message (a request gets a message id when it
has none, and is then awaited: :attr:`ClientCore.pending`); send what ``core.data_to_send()``
returns (parts for ``sendmsg`` with their fds). Feed what arrives with
``core.receive_data(bytes, fds)``, then call ``core.next_event(now)`` until it returns
``None``. Events:

* :class:`ReplyReceived`: the successful reply to a pending request (the caller owns its fds);
* :class:`ErrorReceived`: an error reply to a pending request (its fds, if any, are closed);
* :class:`ServerRequest`: a DMA_READ/DMA_WRITE (or any other request) from the server; answer
  it with ``core.send(answer_dma(request.message, memory))``: every server request needs one
  reply, and a client that waits for its own reply without answering deadlocks whenever the
  server needs DMA to finish that request;
* :class:`UnexpectedReply`: a reply, successful or not, to no pending request (the caller owns
  its fds).

A message that frames but does not decode raises its :class:`~vfio_user_mig.wire.WireError`
from :meth:`ClientCore.next_event` (its fds closed; a pending request it answers is no longer
awaited) and the stream goes on; after a framing error (impossible ``msg_size``) the stream is
unrecoverable and every later call raises it again.

The IO layer (:class:`.api.Client`) may receive straight into the
framer's buffers (``core.framer.recv_buffer``/``commit``) and may take a reply off the socket
itself on a fast path, then tells the core with :meth:`ClientCore.reply_consumed`.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vfio_user_mig import wire
from vfio_user_mig.simulator.transport import close_fds

Parts = list[bytes | memoryview]

#: Client-initiated message ids: 1..0x7FFF (the server uses 0x8000..0xFFFF for its DMA).
_ID_MASK = 0x7FFF


class DmaMemory(Protocol):
    """What :func:`answer_dma` needs of guest memory (e.g.
    :class:`~.api.GuestMemory`): accesses outside it raise
    ``ValueError``."""

    def read(self, iova: int, length: int) -> bytes: ...

    def write(self, iova: int, data: bytes | memoryview) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The successful reply to pending request ``msg_id``."""

    msg_id: int
    message: Any
    fds: list[int]


@dataclass(frozen=True, slots=True)
class ErrorReceived:
    """An error reply to pending request ``msg_id`` (``payload``: what the server echoed)."""

    msg_id: int
    command: int
    errno: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ServerRequest:
    """A request from the server (DMA_READ/DMA_WRITE); it needs a reply."""

    message: Any
    fds: list[int]


@dataclass(frozen=True, slots=True)
class UnexpectedReply:
    """A reply whose ``msg_id`` no pending request has (late, duplicated or made up)."""

    msg_id: int
    message: Any
    fds: list[int]


Event = ReplyReceived | ErrorReceived | ServerRequest | UnexpectedReply


def answer_dma(request: Any, memory: DmaMemory | None) -> Any:
    """The reply to server request ``request`` computed from guest ``memory``: DMA_READ ->
    the data, DMA_WRITE -> stored; an access outside guest memory (or no memory) -> an
    EFAULT error reply, any other command -> EINVAL."""
    try:
        if memory is None:
            raise ValueError("no guest memory")
        if isinstance(request, wire.DmaRead):
            return wire.DmaReadReply(
                addr=request.addr,
                count=request.count,
                data=memory.read(request.addr, request.count),
                msg_id=request.msg_id,
            )
        if isinstance(request, wire.DmaWrite):
            memory.write(request.addr, request.data)
            return wire.DmaWriteReply(addr=request.addr, count=request.count,
                                      msg_id=request.msg_id)
        return wire.error_reply(request, _errno.EINVAL)
    except ValueError:
        return wire.error_reply(request, _errno.EFAULT)


class ClientCore:
    """Protocol state of one client connection (see module docstring)."""

    def __init__(
        self,
        *,
        max_data_xfer_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE,
        max_msg_fds: int = 8,
    ) -> None:
        self.max_data_xfer_size = max_data_xfer_size
        self.max_msg_fds = max_msg_fds
        self.framer = wire.Framer(max_size=max_data_xfer_size + wire.HEADER_SIZE + 64)
        #: msg_id -> command of every request sent that still awaits its reply.
        self.pending: dict[int, int] = {}
        self._out: list[tuple[Parts, list[int]]] = []
        self._next_id = 0

    # ----- sending -----------------------------------------------------------------------------
    def next_id(self) -> int:
        """A fresh message id (1..0x7FFF, cycling; never one still pending)."""
        for _ in range(_ID_MASK):
            self._next_id = (self._next_id & _ID_MASK) % _ID_MASK + 1
            if self._next_id not in self.pending:
                return self._next_id
        raise RuntimeError("every message id awaits a reply")

    def with_id(self, msg: Any) -> Any:
        """``msg`` itself, or a copy with a fresh id when it is a request with id 0."""
        if msg.msg_id == 0 and not msg.is_reply:
            return dataclasses.replace(msg, msg_id=self.next_id())
        return msg

    def send(self, msg: Any, fds: Sequence[int] = ()) -> int:
        """Queue ``msg`` (and ``fds``, sent with its first byte); returns its msg_id.

        A request without an id (0) gets a fresh one; a request that wants a reply is then
        pending until its reply arrives. Raises ValueError for a request whose id is already
        pending (its reply could not be told apart)."""
        if msg.is_reply:
            self._out.append((wire.encode_parts(msg), list(fds)))
            return int(msg.msg_id)
        msg = self.with_id(msg)
        msg_id: int = msg.msg_id
        if msg_id in self.pending:
            raise ValueError(f"message id {msg_id} already awaits a reply")
        parts = wire.encode_parts(msg)
        if not getattr(msg, "no_reply", False):
            self.pending[msg_id] = msg.command
        self._out.append((parts, list(fds)))
        return msg_id

    def data_to_send(self) -> list[tuple[Parts, list[int]]]:
        """Take the messages to send, in order, each as (parts, fds)."""
        out, self._out = self._out, []
        return out

    # ----- receiving ---------------------------------------------------------------------------
    def receive_data(self, data: bytes | memoryview, fds: Sequence[int] = ()) -> None:
        """Feed received bytes (and the fds that came with them). After a framing error the
        fds are closed and the error is raised again."""
        try:
            self.framer.feed(data, fds)
        except wire.WireError:
            close_fds(fds)
            raise

    def reply_consumed(self, msg_id: int) -> None:
        """The IO layer took the reply to ``msg_id`` without :meth:`receive_data`."""
        self.pending.pop(msg_id, None)

    def next_event(self, now: float = 0.0) -> Event | None:
        """The next event from the bytes received, or ``None`` when more bytes are needed.

        ``now`` is the caller's clock (unused: the client core has no timers yet)."""
        try:
            item = self.framer.next_message()
        except wire.WireError as exc:
            close_fds(exc.fds)
            exc.fds.clear()  # the framer may still hold this list: never close them twice
            header = exc.header
            if header is not None and header.is_reply:
                self.pending.pop(header.msg_id, None)
            raise
        if item is None:
            return None
        msg, fds = item
        if not msg.is_reply:
            return ServerRequest(msg, fds)
        msg_id: int = msg.msg_id
        if self.pending.pop(msg_id, None) is None:
            return UnexpectedReply(msg_id, msg, fds)
        if isinstance(msg, wire.ErrorReply):
            close_fds(fds)
            return ErrorReceived(msg_id, int(msg.cmd), msg.errno, bytes(msg.payload))
        return ReplyReceived(msg_id, msg, fds)

    def events(self, now: float = 0.0) -> list[Event]:
        """Every event :meth:`next_event` has now."""
        out: list[Event] = []
        while (event := self.next_event(now)) is not None:
            out.append(event)
        return out

    @property
    def idle(self) -> bool:
        """Nothing received is buffered: no partial message, none waiting for
        :meth:`next_event` (so the next bytes on the stream start a message)."""
        framer = self.framer
        return framer.at_boundary and not framer.pending


__all__ = [
    "ClientCore",
    "DmaMemory",
    "ErrorReceived",
    "Event",
    "ReplyReceived",
    "ServerRequest",
    "UnexpectedReply",
    "answer_dma",
]
