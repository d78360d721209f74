"""The blocking IO layer of the vfio-user client (:mod:`.api` has the operations): owns the
socket, moves bytes and fds between it and the sans-IO :class:`~.core.ClientCore`,
waits for replies while serving the server's DMA_READ/DMA_WRITE requests, keeps replies that
arrive early and drops (and counts) replies to no pending request.

Receiving: on a socket in blocking mode the client bounds each receive with SO_RCVTIMEO set to
``timeout`` (one system call per receive, no ``select`` first; the option stays set on the
socket); a socket with its own Python timeout is polled with ``select``. Small messages are
received into a reused buffer, the rest of a large one straight into its own buffer. A
MIG_DATA_READ reply of at least :data:`BULK_REPLY` bytes is received header and fixed part
first, then its data with one ``MSG_WAITALL`` receive into the ``bytes`` returned or the
caller's buffer (:meth:`Client.mig_data_read_into`): no copy; a short reply padded to the
size asked for takes the same path, its padding received into a reused buffer and checked to
be zero (as the decoder does); anything unexpected
in its header (an error, another message first, padding) goes through the framer as usual.
Likewise a small REGION_READ reply that arrives whole, alone, is taken from the receive buffer
without the framer. A relaying client may instead move a MIG_DATA_READ reply's data into a
:class:`SplicePipe` and send it on as a MIG_DATA_WRITE from there (``splice(2)``: the data never
enters this process). The socket's send buffer is widened (``transport.widen_send_buffer``).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import os
import select
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.simulator.client.core import (
    ClientCore,
    ErrorReceived,
    Event,
    ReplyReceived,
    ServerRequest,
    answer_dma,
)
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.transport import (
    PeerClosed,
    close_fds,
    recv_into,
    send_parts,
    set_recv_timeout,
    widen_send_buffer,
)
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layouts import HEADER, MIG_DATA

#: A message still missing at least this many bytes is received straight into its buffer;
#: MIG_DATA_READ replies this large take the zero-copy path (see module docstring).
BULK_REPLY = 64 * 1024
#: The reused receive buffer: smaller messages (and several at once) land there, a larger
#: one's rest goes straight into its own buffer (:data:`BULK_REPLY`). Kept small: a client is
#: made per connection, and a fresh buffer is zeroed (and faulted in) page by page.
RECV_BUFFER = BULK_REPLY
#: Header + {argsz, size}: a MIG_DATA_READ reply's and a MIG_DATA_WRITE's head (the data
#: follows; :meth:`ClientIO.mig_data_write_from_pipe`), from the declared layouts.
_MIG_HEAD = MIG_DATA.with_prefix(HEADER)
_MIG_DATA_WRITE = int(wire.Command.MIG_DATA_WRITE)
_REPLY_FLAGS = int(wire.MsgType.REPLY)
_MIG_DATA_READ = int(wire.Command.MIG_DATA_READ)


class SplicePipe:
    """A pipe that carries MIG_DATA_READ reply data from one socket to another without it
    entering user space (``splice(2)``: the kernel moves page references), for a client that
    relays a migration stream (:meth:`ClientIO.mig_reply_to_pipe`,
    :meth:`ClientIO.mig_data_write_from_pipe`). ``held``: bytes in the pipe (a pipe left
    holding bytes by an error is closed: they are dropped)."""

    def __init__(self, capacity: int) -> None:
        self._want = capacity
        self.held = 0
        self._r, self._w = self._open()
        self.capacity = fcntl.fcntl(self._w, fcntl.F_GETPIPE_SZ)

    def _open(self) -> tuple[int, int]:
        r, w = os.pipe2(os.O_CLOEXEC)
        # Above fs.pipe-max-size the default stays: a reply larger than the pipe is received
        # the usual way.
        with contextlib.suppress(OSError):
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self._want)
        return r, w

    def fill(self, sock: socket.socket, n: int, timeout: float | None) -> int:
        """Move up to ``n`` bytes from ``sock`` into the pipe, waiting at most ``timeout`` s
        for each piece; returns the bytes moved, short only when the pipe is full."""
        fd = sock.fileno()
        got = 0
        ms = -1 if timeout is None else int(timeout * 1000)
        waited = False
        while got < n:
            try:
                k = os.splice(fd, self._w, n - got, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:  # nothing to read yet, or the pipe is full
                if waited:
                    break  # the socket was readable: the pipe is full
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                if not poller.poll(ms):
                    raise TimeoutError(f"MIG_DATA_READ data stalled for {timeout} s") from None
                waited = True
                continue
            if not k:
                raise PeerClosed("peer closed the connection")
            got += k
            self.held += k
            waited = False
        return got

    def drain_to(self, sock: socket.socket, n: int) -> None:
        """Move ``n`` bytes from the pipe to ``sock`` (blocking like ``sendall``)."""
        fd = sock.fileno()
        while n:
            k = os.splice(self._r, fd, n)
            n -= k
            self.held -= k

    def read_into(self, view: memoryview) -> None:
        """Take ``len(view)`` bytes out of the pipe into ``view``."""
        got = 0
        while got < len(view):
            k = os.readv(self._r, [view[got:]])
            got += k
            self.held -= k

    def close(self) -> None:
        """Close the pipe."""
        for fd in (self._r, self._w):
            os.close(fd)
        self.held = 0


class VfioUserError(OSError):
    """The server answered a request with an error reply (``errno`` from the header)."""

    def __init__(self, command: int, errno: int, payload: bytes = b"") -> None:
        super().__init__(errno, f"{wire.Command(command).name} failed: {os.strerror(errno)}")
        self.command = command
        self.payload = payload



class ClientIO:
    """Sending, receiving and waiting on one connected socket (see module docstring);
    :class:`~.api.Client` adds the protocol operations."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        memory: GuestMemory | None = None,
        serve_dma_while_waiting: bool = True,
        timeout: float | None = 30.0,
        max_data_xfer_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE,
        max_msg_fds: int = 8,
    ) -> None:
        self.sock = sock
        widen_send_buffer(sock)
        self.memory = memory
        self.serve_dma_while_waiting = serve_dma_while_waiting
        self._timeout: float | None = None
        self._kernel_timeout = False
        self.timeout = timeout
        self.max_data_xfer_size = max_data_xfer_size
        self.max_msg_fds = max_msg_fds
        self.core = ClientCore(max_data_xfer_size=max_data_xfer_size, max_msg_fds=max_msg_fds)
        self.server_caps: wire.Capabilities | None = None
        self._buf = bytearray(RECV_BUFFER)
        self._view = memoryview(self._buf)
        self._head = memoryview(bytearray(_MIG_HEAD.size))
        self._pad = memoryview(bytearray(0))
        self._zeros = b""
        #: Replies (or error replies) that arrived while waiting for another one.
        self._early: dict[int, ReplyReceived | ErrorReceived] = {}
        #: Server requests received while waiting with ``serve_dma_while_waiting=False``:
        #: (message, fds), never answered.
        self.deferred_requests: list[Any] = []
        self.dma_served = 0
        #: Replies to no pending request (dropped, their fds closed).
        self.unexpected_replies = 0
        #: Pending requests given up (:meth:`abandon`): their replies are dropped on arrival.
        self._abandoned: set[int] = set()
        #: The experimental migration-data channel (:meth:`negotiate` with
        #: ``mig_data_socket=True`` and a server that agreed), a client of the same class.

    @property
    def framer(self) -> wire.Framer:
        """The core's framer (what was received and not yet taken as a message)."""
        return self.core.framer

    @property
    def timeout(self) -> float | None:
        """Seconds to wait for a message from the server (``None``: forever)."""
        return self._timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout = value
        self._kernel_timeout = self.sock.gettimeout() is None and set_recv_timeout(
            self.sock, value
        )

    # ----- plumbing -------------------------------------------------------------------------
    def _new_id(self) -> int:
        return self.core.next_id()

    def send(self, msg: Any, fds: Sequence[int] = ()) -> None:
        """Send one message (no waiting); a request with id 0 gets a fresh one."""
        core = self.core
        core.send(msg, fds)
        sock = self.sock
        for parts, part_fds in core.data_to_send():
            send_parts(sock, parts, part_fds)

    def _timed_out(self) -> TimeoutError:
        return TimeoutError(f"no message from the server within {self._timeout} s")

    def _receive(self) -> None:
        framer = self.framer
        try:
            if not self._kernel_timeout and self._timeout is not None:
                ready, _, _ = select.select([self.sock], [], [], self._timeout)
                if not ready:
                    raise self._timed_out()
            needed = framer.needed
            if needed >= BULK_REPLY and not framer.at_boundary:
                n, fds = recv_into(self.sock, framer.recv_buffer(needed))
                framer.commit(n, fds)
            else:
                n, fds = recv_into(self.sock, self._view)
                self.core.receive_data(self._view[:n], fds)
        except BlockingIOError:
            raise self._timed_out() from None

    def request(self, msg: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        """Send ``msg`` and wait for its reply (answering server DMA meanwhile); returns
        (reply, fds received with it). Raises :class:`VfioUserError` on an error reply."""
        msg = self.core.with_id(msg)
        self.send(msg, fds)
        return self._wait_reply(msg.msg_id)

    def _wait_reply(self, msg_id: int) -> tuple[Any, list[int]]:
        early = self._early
        core = self.core
        got = early.pop(msg_id, None) if early else None
        while got is None:
            event = core.next_event()
            if event is None:
                self._receive()
                continue
            if type(event) is ReplyReceived or type(event) is ErrorReceived:
                if event.msg_id == msg_id:
                    got = event
                else:
                    self._keep(event)
            elif type(event) is ServerRequest:
                if self.serve_dma_while_waiting:
                    self.serve(event.message, event.fds)
                else:
                    self.deferred_requests.append((event.message, event.fds))
            else:
                self._other_event(event)
        if isinstance(got, ErrorReceived):
            raise VfioUserError(got.command, got.errno, got.payload)
        return got.message, got.fds

    def _keep(self, event: ReplyReceived | ErrorReceived) -> None:
        """A reply that arrived while waiting for another: kept, or dropped if abandoned."""
        if self._abandoned and event.msg_id in self._abandoned:
            self._abandoned.discard(event.msg_id)
            close_fds(getattr(event, "fds", ()))
        else:
            self._early[event.msg_id] = event

    def abandon(self, msg_ids: Iterable[int]) -> None:
        """Give up waiting for the replies to ``msg_ids`` (requests sent, still pending):
        replies already kept are dropped, later ones are dropped on arrival. Never blocks."""
        pending = self.core.pending
        for msg_id in msg_ids:
            got = self._early.pop(msg_id, None)
            if got is not None:
                close_fds(getattr(got, "fds", ()))
            elif msg_id in pending:
                self._abandoned.add(msg_id)

    def wait_reply(self, msg_id: int) -> tuple[Any, list[int]]:
        """Wait for the reply to request ``msg_id`` sent earlier (e.g. by
        :meth:`mig_data_write_nowait`), answering server DMA meanwhile; returns (reply, fds).
        Raises :class:`VfioUserError` on an error reply."""
        return self._wait_reply(msg_id)

    def _other_event(self, event: Event) -> None:
        """An event nobody waits for: a reply to no pending request."""
        self.unexpected_replies += 1
        close_fds(getattr(event, "fds", ()))

    def _bulk_mig_data(self, msg_id: int, size: int) -> tuple[int, int] | None:
        """(data size, padding) of the MIG_DATA_READ reply ``msg_id`` after its header and
        fixed part were received (the data is next on the socket, then the padding of a short
        reply padded to the size asked for: :meth:`_recv_padding`); or None when the next
        message is anything else, or too small to be worth it (its bytes are then in the
        framer).

        One receive of at most 24 bytes: the server writes header and fixed part with one
        ``sendmsg``, so they arrive together; anything shorter takes the generic path."""
        head = self._head
        try:
            n, fds = recv_into(self.sock, head)
        except BlockingIOError:
            raise self._timed_out() from None
        if n == len(head) and not fds:
            rid, cmd, msg_size, flags, err, argsz, dsize = _MIG_HEAD.unpack_from(head)
            if (
                rid == msg_id
                and cmd == _MIG_DATA_READ
                and flags == _REPLY_FLAGS
                and not err
                and argsz == MIG_DATA.size + dsize
                and BULK_REPLY <= msg_size - n <= size
                and msg_size - n >= dsize
                and msg_size <= self.framer.max_size
            ):
                self.core.reply_consumed(msg_id)
                return int(dsize), int(msg_size - n - dsize)
        self.core.receive_data(head[:n], fds)  # not the expected reply: the generic path
        return None

    def _bulk_ok(self, size: int) -> bool:
        """A reply of ``size`` data bytes may take the bulk path (see module docstring)."""
        return size >= BULK_REPLY and self._kernel_timeout and self.core.idle and not self._early

    def mig_reply_to_pipe(
        self, msg_id: int, size: int, pipe: SplicePipe, buffer: Callable[[], memoryview]
    ) -> tuple[int, memoryview | None]:
        """The data of the reply to MIG_DATA_READ ``msg_id`` (a request of ``size`` bytes)
        moved into ``pipe`` without entering user space: returns (data bytes, None). When
        that is not possible the data is returned instead, (data bytes, the data): a reply
        that is not on the bulk path (small, or not next on the socket) in its own message
        buffer; one the pipe cannot take whole received into ``buffer()`` (a buffer of at
        least ``size`` bytes, asked for only then). Raises :class:`VfioUserError` on an error
        reply."""
        if self._bulk_ok(size):
            bulk = self._bulk_mig_data(msg_id, size)
            if bulk is not None:
                dsize, pad = bulk
                moved = pipe.fill(self.sock, dsize, self._timeout) if dsize <= pipe.capacity else 0
                data = None
                if moved < dsize:  # the pipe is full: the rest the usual way
                    view = buffer()
                    pipe.read_into(view[:moved])
                    self._recv_data_into(view[moved:dsize])
                    data = view[:dsize]
                if pad:
                    self._recv_padding(pad)
                return dsize, data
        reply, fds = self._wait_reply(msg_id)
        close_fds(fds)
        n = len(reply.data)
        if n > size:
            raise VfioUserError(_MIG_DATA_READ, _errno.EINVAL)
        return n, memoryview(reply.data)  # the reply's own buffer: no copy

    def _before_send(self) -> None:
        """Called before every message the client sends, on the generic, the direct and the
        spliced paths alike (fault injection overrides it)."""

    def mig_data_write_from_pipe(self, pipe: SplicePipe, size: int) -> int:
        """Send MIG_DATA_WRITE of the ``size`` bytes ``pipe`` holds (its header, then the
        data spliced from the pipe) without waiting; returns its msg id, as
        :meth:`~.api.Client.mig_data_write_nowait` does."""
        self._before_send()
        msg_id = self.core.next_id()
        head = _MIG_HEAD.pack(msg_id, _MIG_DATA_WRITE, _MIG_HEAD.size + size, 0, 0,
                               MIG_DATA.size + size, size)
        self.core.pending[msg_id] = _MIG_DATA_WRITE
        self.sock.sendall(head)
        pipe.drain_to(self.sock, size)
        return msg_id

    def _recv_padding(self, pad: int) -> None:
        """Receive the ``pad`` bytes after a MIG_DATA_READ reply's data (a short reply padded
        to the size asked for) and check they are zero, as the decoder does."""
        if len(self._pad) < pad:
            self._pad = memoryview(bytearray(pad))
            self._zeros = bytes(pad)
        view = self._pad[:pad]
        self._recv_data_into(view)
        zeros = self._zeros
        if view.tobytes() != (zeros if pad == len(zeros) else zeros[:pad]):
            raise invalid("MIG_DATA_READ.reply.padding", "padding after the data is not zero")

    def _recv_data(self, size: int) -> bytes:
        pieces: list[bytes] = []
        got = 0
        try:
            while got < size:
                piece = self.sock.recv(size - got, socket.MSG_WAITALL)
                if not piece:
                    raise PeerClosed("peer closed the connection")
                if len(piece) == size:
                    return piece
                pieces.append(piece)
                got += len(piece)
        except BlockingIOError:
            raise TimeoutError(f"MIG_DATA_READ data stalled for {self._timeout} s") from None
        return b"".join(pieces)

    def _recv_data_into(self, view: memoryview) -> None:
        got, size = 0, len(view)
        try:
            while got < size:
                k = self.sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
                if not k:
                    raise PeerClosed("peer closed the connection")
                got += k
        except BlockingIOError:
            raise TimeoutError(f"MIG_DATA_READ data stalled for {self._timeout} s") from None

    def serve(self, msg: Any, fds: Sequence[int] = ()) -> None:
        """Answer one server request (DMA_READ/DMA_WRITE) from guest memory."""
        close_fds(list(fds))
        reply = answer_dma(msg, self.memory)
        self.dma_served += 1
        self.send(reply)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve server requests that arrive within ``timeout``; returns how many."""
        served = 0
        while True:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return served
            n, fds = recv_into(self.sock, self._view)
            self.core.receive_data(self._view[:n], fds)
            while (event := self.core.next_event()) is not None:
                if isinstance(event, ReplyReceived | ErrorReceived):
                    self._keep(event)
                elif isinstance(event, ServerRequest):
                    self.serve(event.message, event.fds)
                    served += 1
                else:
                    self._other_event(event)
            timeout = 0.0

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


__all__ = ["BULK_REPLY", "ClientIO", "SplicePipe", "VfioUserError"]
