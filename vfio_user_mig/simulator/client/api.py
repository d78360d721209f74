"""The client (VMM side) of vfio-user: a library usable against any vfio-user server.

:class:`GuestMemory` is the VM's RAM (a memfd, shared with the server by passing its fd in
DMA_MAP, or reached by the server with DMA_READ/DMA_WRITE messages when mapped without fd).
:class:`Client` sends requests and waits for their replies while answering the server's
DMA_READ/DMA_WRITE requests at any time: a client that waits for a reply without serving the
server deadlocks whenever the server needs DMA to finish the request
(``serve_dma_while_waiting=False`` reproduces that, bounded by ``timeout``).

:class:`Client` is the IO layer over the sans-IO :class:`~.core.ClientCore` (message
ids, pending requests, framing, typed events, the DMA answers): it owns the socket, moves
bytes and fds between it and the core, and blocks. Replies to other requests that arrive
while it waits for one are kept until asked for; replies to no pending request are dropped
(fds closed) and counted in :attr:`Client.unexpected_replies`.

Pipelining (the protocol lets a client have several requests in flight; replies carry the
request's msg id): :meth:`Client.mig_data_read_stream` keeps ``depth`` MIG_DATA_READs in
flight and yields the chunks in order (each reply, when it is next on the socket, still takes
the zero-copy path); :meth:`Client.mig_data_write_nowait` sends a MIG_DATA_WRITE and returns
its id for :meth:`Client.wait_reply`, so a relay overlaps writing one chunk with reading the
next. Server DMA requests are served while waiting, as always. Requests given up
(:meth:`Client.abandon`, e.g. a stream closed early) have their replies dropped on arrival.
"""
from __future__ import annotations

import errno as _errno
import socket
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from vfio_user_mig import wire
from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.simulator.client.io import ClientIO, VfioUserError
from vfio_user_mig.simulator.transport import (
    close_fds,
    recv_into,
)
from vfio_user_mig.wire.capabilities import MIG_DATA_SOCKET_KEY, MIG_DATA_UNPADDED_KEY
from vfio_user_mig.wire.constants import DmaMapFlag, DmaUnmapFlag, FeatureIndex, FeatureOp
from vfio_user_mig.wire.layouts import DEVICE_FEATURE, FEATURE_MIG_STATE, HEADER, REGION_ACCESS
from vfio_user_mig.wire.msg_feature import MigDataSize

_REPLY_FLAGS = int(wire.MsgType.REPLY)
_MIG_DATA_READ = int(wire.Command.MIG_DATA_READ)
#: REGION_READs and REGION_WRITEs of at most this many bytes take the direct path (one
#: ``struct`` call and one ``sendall`` out, one receive back: :meth:`Client._direct_reply`).
_SMALL_READ = 4096
_RR_REPLY = REGION_ACCESS.with_prefix(HEADER)  # header, offset, region, count
_REGION_READ = int(wire.Command.REGION_READ)
_REGION_WRITE = int(wire.Command.REGION_WRITE)
_HEADER = HEADER.struct
_FEATURE = int(wire.Command.DEVICE_FEATURE)


T = TypeVar("T")


def _encoded(msg: Any) -> bytes:
    return b"".join(bytes(part) for part in wire.encode_parts(msg))


#: DEVICE_FEATURE MIG_DEVICE_STATE requests as the codec encodes them with msg_id 0: GET, and
#: SET by state number (filled on first use); the direct paths send them with their msg_id.
_STATE_GET = _encoded(wire.DeviceFeature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET))
_STATE_SET: dict[int, bytes] = {}
#: The GET reply: header, then argsz (its payload size) and flags as in the request, then
#: the state record (vfio-user.rst "VFIO_USER_DEVICE_FEATURE").
_STATE_GET_REPLY = _HEADER.size + DEVICE_FEATURE.size + FEATURE_MIG_STATE.size
_STATE_GET_PREFIX = DEVICE_FEATURE.pack(DEVICE_FEATURE.size + FEATURE_MIG_STATE.size,
                                        DEVICE_FEATURE.unpack_from(_STATE_GET, _HEADER.size)[1])


class Client(ClientIO):
    """A synchronous vfio-user client over a connected socket (see module docstring)."""

    #: The experimental migration-data channel (:meth:`negotiate` with
    #: ``mig_data_socket=True`` and a server that agreed), a client of the same class.
    mig_channel: Client | None = None
    #: Small requests may take the direct path: no subclass overrides :meth:`send` (one that
    #: does, e.g. to watch every message, gets them all through it) or reads the socket
    #: elsewhere (a receiver thread).
    _direct: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._direct = cls.send is Client.send and cls._bulk_ok is Client._bulk_ok

    def send(self, msg: Any, fds: Sequence[int] = ()) -> None:
        """Send one message (no waiting), after :meth:`_before_send`."""
        self._before_send()
        ClientIO.send(self, msg, fds)

    def _direct_ok(self) -> bool:
        """The direct path is open: see :attr:`_direct`; receives bounded by the kernel
        (SO_RCVTIMEO); nothing received is pending (the next bytes start a message)."""
        return self._direct and self._kernel_timeout and self.core.idle and not self._early

    def _send_direct(self, command: int, request: bytes, msg_id: int = 0) -> int:
        """Send ``request`` (an encoded request; its msg_id field is overwritten unless
        ``msg_id`` is given, already in it) as :meth:`request` does: a fresh id, then
        :meth:`_before_send`, then pending until its reply, then sent. Returns the id."""
        if not msg_id:
            msg_id = self.core.next_id()
            request = msg_id.to_bytes(2, "little") + request[2:]
        self._before_send()
        self.core.pending[msg_id] = command
        self.sock.sendall(request)
        return msg_id

    def _direct_reply(self, msg_id: int, command: int, size: int,
                      prefix: bytes = b"") -> memoryview | None:
        """The payload of the reply to request ``msg_id`` when the next receive is exactly
        that whole plain reply, ``size`` bytes with the header, its payload starting with
        ``prefix`` (the common case): no framer, no decode; valid until the next receive.
        Otherwise None, and the bytes received are in the framer for the generic path
        (:meth:`_wait_reply`), which decides about them as it always did."""
        view = self._view
        try:
            n, fds = recv_into(self.sock, view)
        except BlockingIOError:
            raise self._timed_out() from None
        if n == size and not fds:
            rid, cmd, msg_size, flags, err = _HEADER.unpack_from(view)
            if rid == msg_id and cmd == command and msg_size == n and flags == _REPLY_FLAGS \
                    and not err and view[_HEADER.size : _HEADER.size + len(prefix)] == prefix:
                self.core.reply_consumed(msg_id)
                return view[_HEADER.size : n]
        self.core.receive_data(view[:n], fds)
        return None

    def close(self) -> None:
        """Close the connection (and the migration-data channel, if any)."""
        if self.mig_channel is not None:
            self.mig_channel.close()
            self.mig_channel = None
        super().close()

    @property
    def data_client(self) -> Client:
        """Where MIG_DATA_READ/WRITE go: the migration-data channel when one is open, else
        this client (the main socket)."""
        return self.mig_channel if self.mig_channel is not None else self

    def _channel_client(self, sock: socket.socket) -> Client:
        """A client for the migration-data channel socket (no VERSION on it)."""
        return Client(sock, timeout=self.timeout, max_data_xfer_size=self.max_data_xfer_size,
                      max_msg_fds=self.max_msg_fds)

    # ----- protocol operations ---------------------------------------------------------------
    def negotiate(
        self, minor: int = 2, *, mig_data_socket: bool = False, unpadded_mig_data: bool = True
    ) -> wire.VersionReply:
        """VERSION: offer our limits, learn the server's.

        ``mig_data_socket``: also offer the experimental migration-data socket
        (:mod:`~vfio_user_mig.simulator.server.mig_channel`); when the server agrees, the socket it
        sends becomes :attr:`mig_channel` and :attr:`data_client` uses it.
        ``unpadded_mig_data``: say that this client takes MIG_DATA_READ replies without zero
        padding (``x-mig-data-unpadded``; it takes padded ones too, from servers that ignore
        the key, such as libvfio-user)."""
        extra: dict[str, Any] = {}
        if mig_data_socket:
            extra[MIG_DATA_SOCKET_KEY] = {"supported": True}
        if unpadded_mig_data:
            extra[MIG_DATA_UNPADDED_KEY] = True
        caps = wire.Capabilities.make(
            max_msg_fds=self.max_msg_fds, max_data_xfer_size=self.max_data_xfer_size,
            extra=extra or None,
        )
        reply, fds = self.request(
            wire.Version(major=0, minor=minor, capabilities=caps, msg_id=self._new_id())
        )
        self.server_caps = server_caps = reply.capabilities or wire.Capabilities.make()
        index = server_caps.mig_data_socket_fd_index if mig_data_socket else None
        if index is not None and index < len(fds):
            channel_fd = fds.pop(index)
            self.mig_channel = self._channel_client(socket.socket(fileno=channel_fd))
        close_fds(fds)
        return reply  # type: ignore[no-any-return]

    def device_info(self) -> Any:
        return self.request(wire.DeviceGetInfo(msg_id=self._new_id()))[0]

    def region_info(self, index: int, argsz: int | None = None) -> tuple[Any, list[int]]:
        """GET_REGION_INFO; without ``argsz``, asks again with the argsz the server says it
        needs when the capability chain did not fit (vfio-user.rst "Region info")."""
        asked = argsz if argsz is not None else wire.RegionInfo(index=index).argsz
        reply, fds = self.request(wire.RegionInfo(index=index, argsz=asked, msg_id=self._new_id()))
        if argsz is None and reply.argsz > asked:
            close_fds(fds)
            return self.request(
                wire.RegionInfo(index=index, argsz=reply.argsz, msg_id=self._new_id()))
        return reply, fds

    def irq_info(self, index: int) -> Any:
        return self.request(wire.IrqInfo(index=index, msg_id=self._new_id()))[0]

    def set_irq_eventfds(self, index: int, fds: Sequence[int], start: int = 0) -> None:
        from vfio_user_mig.wire.constants import IrqSetFlag

        flags = IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER
        self.request(
            wire.IrqSet(
                flags=int(flags), index=index, start=start, count=len(fds), msg_id=self._new_id()
            ),
            fds,
        )

    def region_read(self, region: int, offset: int, count: int) -> bytes:
        if count <= _SMALL_READ and self._direct_ok():
            msg_id = self.core.next_id()
            self._send_direct(_REGION_READ, _RR_REPLY.pack(
                msg_id, _REGION_READ, _RR_REPLY.size, 0, 0, offset, region, count), msg_id)
            got = self._direct_reply(msg_id, _REGION_READ, _RR_REPLY.size + count,
                                     REGION_ACCESS.pack(offset, region, count))
            if got is not None:
                return bytes(got[REGION_ACCESS.size :])
            reply, _ = self._wait_reply(msg_id)
        else:
            reply, _ = self.request(
                wire.RegionRead(offset=offset, region=region, count=count, msg_id=self._new_id()))
        return bytes(reply.data)

    def region_write(self, region: int, offset: int, data: bytes) -> None:
        count = len(data)
        if count <= _SMALL_READ and self._direct_ok():
            msg_id = self.core.next_id()
            size = _RR_REPLY.size + count  # the request: header, offset, region, count, data
            self._send_direct(_REGION_WRITE, _RR_REPLY.pack(
                msg_id, _REGION_WRITE, size, 0, 0, offset, region, count) + data, msg_id)
            if self._direct_reply(msg_id, _REGION_WRITE, _RR_REPLY.size) is None:
                self._wait_reply(msg_id)
            return
        self.request(
            wire.RegionWrite(
                offset=offset, region=region, count=len(data), data=data, msg_id=self._new_id()
            )
        )

    def dma_map(
        self,
        iova: int,
        size: int,
        *,
        fd: int | None = None,
        offset: int = 0,
        readable: bool = True,
        writable: bool = True,
    ) -> None:
        flags = (DmaMapFlag.READ if readable else 0) | (DmaMapFlag.WRITE if writable else 0)
        self.request(
            wire.DmaMap(
                addr=iova, size=size, offset=offset, flags=int(flags), msg_id=self._new_id()
            ),
            [fd] if fd is not None else [],
        )

    def dma_unmap(self, iova: int = 0, size: int = 0, *, all_regions: bool = False) -> None:
        flags = int(DmaUnmapFlag.ALL) if all_regions else 0
        self.request(wire.DmaUnmap(addr=iova, size=size, flags=flags, msg_id=self._new_id()))

    def reset(self) -> None:
        self.request(wire.DeviceReset(msg_id=self._new_id()))

    def feature(self, feature: FeatureIndex, ops: FeatureOp, data: Any = None) -> Any:
        return self.request(
            wire.DeviceFeature(feature=feature, ops=ops, data=data, msg_id=self._new_id())
        )[0]

    def migration_caps(self) -> MigrationCaps:
        info = self.feature(FeatureIndex.MIGRATION, FeatureOp.GET).data
        return MigrationCaps(int(info.flags))

    def mig_data_size(self) -> int:
        """DEVICE_FEATURE MIG_DATA_SIZE GET (experimental, not in the spec): the bytes the
        device would still send if switched to STOP_COPY now. Raises :class:`VfioUserError`
        (ENOTSUP) when the server does not offer it."""
        data = self.feature(FeatureIndex.MIG_DATA_SIZE, FeatureOp.GET).data
        if not isinstance(data, MigDataSize):
            raise VfioUserError(wire.Command.DEVICE_FEATURE, _errno.EPROTO)
        return data.stop_copy_length

    def get_state(self) -> State:
        if self._direct_ok():
            msg_id = self._send_direct(_FEATURE, _STATE_GET)
            got = self._direct_reply(msg_id, _FEATURE, _STATE_GET_REPLY, _STATE_GET_PREFIX)
            if got is not None:
                return State(FEATURE_MIG_STATE.unpack_from(got, DEVICE_FEATURE.size)[0])
            data = self._wait_reply(msg_id)[0].data
        else:
            data = self.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET).data
        return State(int(data.device_state))

    def set_state(self, state: State | int) -> None:
        if not self._direct_ok():
            self.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                         wire.MigDeviceState(state, 0))
            return
        msg_id = self.core.next_id()
        request = _STATE_SET.get(int(state))
        if request is None:
            request = _STATE_SET[int(state)] = _encoded(wire.DeviceFeature.set_state(state))
        request = msg_id.to_bytes(2, "little") + request[2:]
        self._send_direct(_FEATURE, request, msg_id)
        # The reply echoes the request's payload (vfio-user.rst "VFIO_USER_DEVICE_FEATURE").
        if self._direct_reply(msg_id, _FEATURE, len(request), request[_HEADER.size :]) is None:
            self._wait_reply(msg_id)

    def mig_data_read(self, size: int) -> bytes:
        msg = wire.MigDataRead(size=size, msg_id=self._new_id())
        self.send(msg)
        if self._bulk_ok(size):
            bulk = self._bulk_mig_data(msg.msg_id, size)
            if bulk is not None:
                dsize, pad = bulk
                data = self._recv_data(dsize) if dsize else b""
                if pad:
                    self._recv_padding(pad)
                return data
        reply, fds = self._wait_reply(msg.msg_id)
        close_fds(fds)
        return bytes(reply.data)

    def mig_data_read_into(self, buf: memoryview | bytearray) -> int:
        """MIG_DATA_READ of up to ``len(buf)`` bytes, received straight into ``buf`` (no
        allocation, no copy on the bulk path); returns the byte count (short: see
        :meth:`mig_data_read`)."""
        view = buf if isinstance(buf, memoryview) else memoryview(buf)
        size = len(view)
        msg = wire.MigDataRead(size=size, msg_id=self._new_id())
        self.send(msg)
        if self._bulk_ok(size):
            bulk = self._bulk_mig_data(msg.msg_id, size)
            if bulk is not None:
                dsize, pad = bulk
                self._recv_data_into(view[:dsize])
                if pad:
                    self._recv_padding(pad)
                return dsize
        reply, fds = self._wait_reply(msg.msg_id)
        close_fds(fds)
        n = len(reply.data)
        if n > size:
            raise VfioUserError(int(wire.Command.MIG_DATA_READ), _errno.EINVAL)
        view[:n] = reply.data
        return n

    def _mig_reply(self, msg_id: int, size: int, view: memoryview | None) -> bytes | memoryview:
        """The data of MIG_DATA_READ reply ``msg_id`` (a request of ``size`` bytes): into
        ``view`` (returns the filled slice) or a new ``bytes``."""
        if self._bulk_ok(size):
            bulk = self._bulk_mig_data(msg_id, size)
            if bulk is not None:
                dsize, pad = bulk
                data: bytes | memoryview
                if view is None:
                    data = self._recv_data(dsize) if dsize else b""
                else:
                    self._recv_data_into(view[:dsize])
                    data = view[:dsize]
                if pad:
                    self._recv_padding(pad)
                return data
        reply, fds = self._wait_reply(msg_id)
        close_fds(fds)
        n = len(reply.data)
        if n > size:
            raise VfioUserError(_MIG_DATA_READ, _errno.EINVAL)
        if view is None:
            return bytes(reply.data)
        view[:n] = reply.data
        return view[:n]

    def mig_data_read_stream(
        self,
        chunk: int,
        depth: int = 2,
        *,
        into: memoryview | bytearray | None = None,
        max_bytes: int | None = None,
    ) -> Generator[bytes | memoryview, None, None]:
        """The device's migration data in ``chunk``-byte MIG_DATA_READs, ``depth`` of them in
        flight, yielded in order until a short read (STOP_COPY: the end of the stream;
        PRE_COPY: caught up for now). After the first short reply no new request is sent and
        the ones still in flight are drained (their data, if any, is yielded too; usually they
        are empty). Empty replies are not yielded.

        ``into``: a buffer of at least ``chunk`` bytes each chunk is received into; the
        memoryview yielded is valid until the next iteration (without it: a new ``bytes``
        per chunk). ``max_bytes``: stop requesting once this many bytes were asked for (a
        round budget: nothing is read from the device beyond it).

        An error reply raises :class:`VfioUserError` when its chunk's turn comes; requests
        still in flight then (or when the iterator is closed early) are abandoned: their
        replies are dropped on arrival and the data they carried is lost (a migration stream
        is then broken, as it is by any failed read)."""
        view: memoryview | None = None
        if into is not None:
            view = into if isinstance(into, memoryview) else memoryview(into)
            if len(view) < chunk:
                raise ValueError("buffer smaller than chunk")

        def take(msg_id: int) -> tuple[int, bytes | memoryview]:
            data = self._mig_reply(msg_id, chunk, view)
            return len(data), data

        for _n, data in self.pipelined_reads(chunk, depth, take, max_bytes=max_bytes):
            yield data

    def pipelined_reads(self, chunk: int, depth: int, take: Callable[[int], tuple[int, T]],
                        *, max_bytes: int | None = None, ask_early: bool = False
                        ) -> Generator[tuple[int, T], None, None]:
        """``chunk``-byte MIG_DATA_READs, ``depth`` in flight, each reply taken by
        ``take(msg_id)`` -> (data bytes, what to yield), in order until a short one (then the
        ones in flight are drained); empty replies are not yielded. The next reads are asked
        for when the caller asks for the next chunk, or with ``ask_early`` as soon as a reply is
        in, before it is yielded (the device prepares them while the caller passes the chunk
        on). Reads still in flight when it ends early (an error, the iterator closed) are
        abandoned (:meth:`mig_data_read_stream`)."""
        if depth < 1:
            raise ValueError("depth must be at least 1")
        inflight: deque[int] = deque()
        asked = 0
        more = True

        def top_up() -> None:
            nonlocal asked
            while more and len(inflight) < depth and (max_bytes is None or asked < max_bytes):
                msg = wire.MigDataRead(size=chunk, msg_id=self._new_id())
                self.send(msg)
                inflight.append(msg.msg_id)
                asked += chunk

        try:
            top_up()
            while inflight:
                n, item = take(inflight[0])
                inflight.popleft()
                if n < chunk:
                    more = False
                if ask_early:
                    top_up()
                if n:
                    yield n, item
                if not ask_early:
                    top_up()
        finally:
            if inflight:
                self.abandon(inflight)

    def mig_data_write(self, data: bytes | memoryview) -> None:
        self.request(wire.MigDataWrite(data=data, msg_id=self._new_id()))

    def mig_data_write_nowait(self, data: bytes | memoryview) -> int:
        """Send MIG_DATA_WRITE of ``data`` without waiting; returns its msg id for
        :meth:`wait_reply` (every id must be waited for or :meth:`abandon`-ed). ``data`` may
        be reused once this returns (it is in the socket)."""
        msg = wire.MigDataWrite(data=data, msg_id=self._new_id())
        self.send(msg)
        return int(msg.msg_id)

    def dma_logging_start(self, page_size: int, ranges: Sequence[tuple[int, int]] = ()) -> int:
        """DMA_LOGGING_START with the ``page_size`` hint; returns the page size the device
        selected, from the reply (vfio-user.rst: "On output the device will return the page
        size it selected"; a reply that echoes the hint selects the hint, as libvfio-user's).
        EPROTO for a reply whose page size is not a power of two."""
        control = wire.DmaLoggingControl(page_size, tuple(wire.DmaRange(i, n) for i, n in ranges))
        data = self.feature(FeatureIndex.DMA_LOGGING_START, FeatureOp.SET, control).data
        selected = data.page_size if isinstance(data, wire.DmaLoggingControl) else page_size
        if selected <= 0 or selected & (selected - 1):
            raise VfioUserError(wire.Command.DEVICE_FEATURE, _errno.EPROTO)
        return int(selected)

    def dma_logging_stop(self) -> None:
        self.feature(FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET, wire.DmaLoggingControl(0, ()))

    def dma_logging_report(self, iova: int, length: int, page_size: int) -> list[int]:
        """Dirty page numbers (relative to ``iova``) since the last report (read-and-clear)."""
        data = self.feature(
            FeatureIndex.DMA_LOGGING_REPORT,
            FeatureOp.GET,
            wire.DmaLoggingReport(iova, length, page_size),
        ).data
        bitmap = wire.DirtyBitmap(iova, length, page_size, bytearray(data.bitmap))
        return list(bitmap.pages())


__all__ = ["Client"]
