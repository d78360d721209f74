"""One checker connection to a server under test: raw messages in, replies out, with deadlines.

The checker must see exactly what a server sends and must never hang, so this is not the
simulator's client: it sends whole messages as bytes (well-formed or not) with the fds given,
and reads replies with a deadline, keeping each reply's raw header and payload.
(Protocol facts: PROTOCOL.md section 1 for the header; sections 2 for the server's DMA_READ and
DMA_WRITE requests, which are answered from :class:`GuestSpace` while a reply is awaited, as
a VMM must.)

:meth:`Conn.request` returns the :class:`Reply` to the message's ``msg_id``, ``None`` when the
server closed the connection, and raises :class:`ReplyTimeout` when no reply came in time,
:class:`BadFrame` when the server sent bytes that cannot be a message, or :class:`WrongReplyId`
as soon as a reply comes whose ``msg_id`` is neither the awaited one nor that of an earlier
message still unanswered (vfio-user.rst "Header": a reply carries the id of its request) --
at once, not as a hang after the timeout. Replies to earlier unanswered messages (sent with
:meth:`Conn.send` alone, e.g. reply-typed or no-reply messages) are kept in
:attr:`Conn.stray`.
"""

from __future__ import annotations

import array
import contextlib
import errno as _errno
import mmap
import os
import select
import socket
import struct
import time
from dataclasses import dataclass, field

from vfio_user_mig import wire

_HEADER = struct.Struct("<HHIII")
HEADER_SIZE = _HEADER.size
#: Largest message the checker accepts from a server (a 1 MiB transfer plus headers, with room).
MAX_REPLY_SIZE = 64 * 1024 * 1024
_MAX_FDS = 64
_REPLY_FLAG = 1
_ERROR_FLAG = 0x20


class ReplyTimeout(TimeoutError):
    """No reply within the deadline (the checker's ``hang`` finding)."""


class BadFrame(ValueError):
    """The server sent bytes that cannot be a vfio-user message (e.g. ``msg_size`` < 16)."""


@dataclass
class Reply:
    """A message received from the server, raw: header fields, payload bytes and fds."""

    msg_id: int
    command: int
    msg_size: int
    flags: int
    error: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.flags & 0x0F == _REPLY_FLAG

    @property
    def is_error(self) -> bool:
        return bool(self.flags & _ERROR_FLAG)

    @property
    def errno(self) -> int:
        return self.error if self.is_error else 0

    @property
    def raw(self) -> bytes:
        return _HEADER.pack(self.msg_id, self.command, self.msg_size, self.flags,
                            self.error) + self.payload

    def decoded(self) -> wire.Message | None:
        """The reply decoded by our codecs, or ``None`` when they refuse it."""
        try:
            return wire.decode(self.raw)
        except wire.WireError:
            return None

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


class WrongReplyId(ValueError):
    """A reply whose msg id matches no message sent and unanswered on this connection."""

    def __init__(self, got: int, want: int) -> None:
        super().__init__(f"a reply with message id {got:#x} while awaiting the reply to "
                         f"{want:#x} (no message with that id is unanswered)")
        self.got = got
        self.want = want


class GuestSpace:
    """The checker's guest memory: DMA regions by IOVA, each backed by a memfd mapping (so the
    device can write through it) or by plain memory (regions mapped without an fd)."""

    def __init__(self) -> None:
        self.regions: dict[int, tuple[int, mmap.mmap | bytearray]] = {}

    def add(self, iova: int, size: int, fd: int | None) -> None:
        if fd is not None:
            self.regions[iova] = (size, mmap.mmap(fd, size))
        else:
            self.regions[iova] = (size, bytearray(size))

    def remove(self, iova: int) -> None:
        entry = self.regions.pop(iova, None)
        if entry is not None and isinstance(entry[1], mmap.mmap):
            entry[1].close()

    def clear(self) -> None:
        for iova in list(self.regions):
            self.remove(iova)

    def _find(self, iova: int, length: int) -> tuple[mmap.mmap | bytearray, int]:
        for base, (size, mem) in self.regions.items():
            if base <= iova and iova + length <= base + size:
                return mem, iova - base
        raise ValueError(f"{iova:#x}+{length:#x} is not in guest memory")

    def track(self, data: bytes, fds: list[int], refused: bool) -> None:
        """Follow a DMA_MAP/DMA_UNMAP request ``data`` the server accepted (not ``refused``),
        so that guest memory is what the server believes is mapped."""
        if refused or len(data) < HEADER_SIZE:
            return
        command = struct.unpack_from("<H", data, 2)[0]
        if command == wire.Command.DMA_MAP and len(data) >= HEADER_SIZE + 32:
            _argsz, _flags, _off, addr, size = struct.unpack_from("<IIQQQ", data, HEADER_SIZE)
            self.add(addr, size, fds[0] if fds else None)
        elif command == wire.Command.DMA_UNMAP and len(data) >= HEADER_SIZE + 24:
            _argsz, flags, addr, _size = struct.unpack_from("<IIQQ", data, HEADER_SIZE)
            if flags & wire.DmaUnmapFlag.ALL:
                self.clear()
            else:
                self.remove(addr)

    def read(self, iova: int, length: int) -> bytes:
        mem, off = self._find(iova, length)
        return bytes(mem[off:off + length])

    def write(self, iova: int, data: bytes | memoryview) -> None:
        mem, off = self._find(iova, len(data))
        mem[off:off + len(data)] = data


class Conn:
    """A connected socket to the server under test (module docstring)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.timeout = timeout
        self.memory = GuestSpace()
        self._buf = bytearray()
        self._fds: list[int] = []
        self.closed = False
        #: Server requests (DMA_READ/DMA_WRITE) answered while waiting: (command, addr, count).
        self.server_requests: list[tuple[int, int, int]] = []
        #: Replies to messages sent earlier and not awaited (msg ids).
        self.stray: list[int] = []
        #: Ids of messages sent whose reply has not come (a reply to one is no wrong id).
        self.unanswered: set[int] = set()

    def close(self) -> None:
        self.memory.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
        with contextlib.suppress(OSError):
            self.sock.close()
        self.closed = True

    def send(self, data: bytes, fds: list[int] | None = None) -> bool:
        """Send one message; ``False`` when the server has closed the connection."""
        if len(data) >= HEADER_SIZE:
            self.unanswered.add(_HEADER.unpack_from(data)[0])
        return self._send(data, fds)

    def _send(self, data: bytes, fds: list[int] | None = None) -> bool:
        try:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                self.sock.sendmsg([data], anc)
            else:
                self.sock.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            return False
        except OSError as exc:
            if exc.errno in (_errno.EPIPE, _errno.ECONNRESET, _errno.ENOTCONN, _errno.EBADF):
                return False
            raise

    def _fill(self, deadline: float) -> bool:
        """Receive more bytes before ``deadline``; ``False`` at end of stream."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ReplyTimeout(f"no reply within {self.timeout:g} s")
            ready, _, _ = select.select([self.sock], [], [], left)
            if not ready:
                continue
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(
                    1 << 20, socket.CMSG_SPACE(_MAX_FDS * 4))
            except (ConnectionResetError, ConnectionAbortedError):
                return False
            except BlockingIOError:
                continue
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(payload[: len(payload) - len(payload) % 4])
                    self._fds.extend(fds)
            if not data:
                return False
            self._buf += data
            return True

    def receive(self, deadline: float) -> Reply | None:
        """The next whole message from the server, ``None`` at end of stream."""
        while len(self._buf) < HEADER_SIZE:
            if not self._fill(deadline):
                return None
        msg_id, command, size, flags, error = _HEADER.unpack_from(self._buf)
        if size < HEADER_SIZE or size > MAX_REPLY_SIZE:
            raise BadFrame(f"msg_size {size} in a message from the server")
        while len(self._buf) < size:
            if not self._fill(deadline):
                return None
        with memoryview(self._buf) as view:  # one copy, and the view gone before the del
            payload = bytes(view[HEADER_SIZE:size])
        del self._buf[:size]
        fds, self._fds = self._fds, []
        return Reply(msg_id, command, size, flags, error, payload, fds)

    def request(self, data: bytes, fds: list[int] | None = None,
                timeout: float | None = None) -> Reply | None:
        """Send ``data`` and wait for the reply to its msg id, answering server DMA meanwhile.

        ``None``: the connection closed (before or instead of the reply)."""
        msg_id = _HEADER.unpack_from(data)[0] if len(data) >= HEADER_SIZE else None
        if not self.send(data, fds):
            return None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            msg = self.receive(deadline)
            if msg is None:
                self.closed = True
                return None
            if not msg.is_reply:
                self._answer(msg)
                continue
            if msg.msg_id == msg_id or msg_id is None:  # a message too short for an id
                self.unanswered.discard(msg.msg_id)
                return msg
            msg.close_fds()
            if msg.msg_id not in self.unanswered:
                raise WrongReplyId(msg.msg_id, msg_id)
            self.unanswered.discard(msg.msg_id)
            self.stray.append(msg.msg_id)

    def drain(self, wait: float) -> list[Reply]:
        """Messages that arrive within ``wait`` seconds (server requests are answered)."""
        out: list[Reply] = []
        deadline = time.monotonic() + wait
        while True:
            try:
                msg = self.receive(deadline)
            except ReplyTimeout:
                return out
            if msg is None:
                self.closed = True
                return out
            if not msg.is_reply:
                self._answer(msg)
            else:
                self.unanswered.discard(msg.msg_id)
                out.append(msg)

    def _answer(self, msg: Reply) -> None:
        """Reply to a server request: DMA_READ/DMA_WRITE from guest memory, else EINVAL."""
        msg.close_fds()
        reply_flags = _REPLY_FLAG
        payload = b""
        err = 0
        addr = count = 0
        try:
            if msg.command in (wire.Command.DMA_READ, wire.Command.DMA_WRITE):
                addr, count = struct.unpack_from("<QQ", msg.payload)
                if msg.command == wire.Command.DMA_READ:
                    payload = msg.payload[:16] + self.memory.read(addr, count)
                else:
                    self.memory.write(addr, msg.payload[16:16 + count])
                    payload = msg.payload[:16]
            else:
                err = _errno.EINVAL
        except (ValueError, struct.error):
            err = _errno.EFAULT
        self.server_requests.append((msg.command, addr, count))
        if err:
            reply_flags |= _ERROR_FLAG
            payload = b""
        head = _HEADER.pack(msg.msg_id, msg.command, HEADER_SIZE + len(payload), reply_flags,
                            err)
        self._send(head + payload)
