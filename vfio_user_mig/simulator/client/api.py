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
from collections.abc import Generator, Sequence
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.simulator.client.io import ClientIO, VfioUserError
from vfio_user_mig.simulator.transport import (
    close_fds,
    recv_into,
)
from vfio_user_mig.wire.capabilities import MIG_DATA_SOCKET_KEY, MIG_DATA_UNPADDED_KEY
from vfio_user_mig.wire.constants import DmaMapFlag, DmaUnmapFlag, FeatureIndex, FeatureOp
from vfio_user_mig.wire.layouts import HEADER, REGION_ACCESS
from vfio_user_mig.wire.msg_feature import MigDataSize

_REPLY_FLAGS = int(wire.MsgType.REPLY)
_MIG_DATA_READ = int(wire.Command.MIG_DATA_READ)
#: REGION_READs of at most this many bytes take the one-receive path (see ``region_read``).
_SMALL_READ = 4096
_RR_REPLY = REGION_ACCESS.with_prefix(HEADER)  # header, offset, region, count
_REGION_READ = int(wire.Command.REGION_READ)
#: ``Client.send`` as defined here: a subclass overriding it (fault injection) sees every
#: message, so small REGION_READs go through it instead of being sent directly.
_PLAIN_SEND = ClientIO.send


class Client(ClientIO):
    """A synchronous vfio-user client over a connected socket (see module docstring)."""

    #: The experimental migration-data channel (:meth:`negotiate` with
    #: ``mig_data_socket=True`` and a server that agreed), a client of the same class.
    mig_channel: Client | None = None

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
        if count <= _SMALL_READ and self._kernel_timeout and self.core.idle and not self._early:
            if type(self).send is _PLAIN_SEND:  # no subclass watches each message sent
                msg_id, request = self.core.region_read_request(offset, region, count)
                self.sock.sendall(request)
            else:
                msg_id = self._new_id()
                self.send(wire.RegionRead(offset=offset, region=region, count=count,
                                          msg_id=msg_id))
            data = self._small_region_reply(msg_id, count)
            if data is not None:
                self.core.reply_consumed(msg_id)
                return data
            reply, _ = self._wait_reply(msg_id)
        else:
            reply, _ = self.request(
                wire.RegionRead(offset=offset, region=region, count=count, msg_id=self._new_id()))
        return bytes(reply.data)

    def _small_region_reply(self, msg_id: int, count: int) -> bytes | None:
        """The data of REGION_READ reply ``msg_id`` when the next receive is exactly that
        whole, plain reply (the common case): no framer, no decode. Otherwise None, and the
        bytes received are in the framer for the generic path."""
        view = self._view
        try:
            n, fds = recv_into(self.sock, view)
        except BlockingIOError:
            raise self._timed_out() from None
        if n == _RR_REPLY.size + count and not fds:
            rid, cmd, size, flags, err, _off, _region, rcount = _RR_REPLY.unpack_from(view)
            if (
                rid == msg_id
                and cmd == _REGION_READ
                and size == n
                and flags == _REPLY_FLAGS
                and not err
                and rcount == count
            ):
                return bytes(view[_RR_REPLY.size : n])
        self.core.receive_data(view[:n], fds)
        return None

    def region_write(self, region: int, offset: int, data: bytes) -> None:
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
        data = self.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET).data
        return State(int(data.device_state))

    def set_state(self, state: State | int) -> None:
        self.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET, wire.MigDeviceState(state, 0))

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
        if depth < 1:
            raise ValueError("depth must be at least 1")
        view: memoryview | None = None
        if into is not None:
            view = into if isinstance(into, memoryview) else memoryview(into)
            if len(view) < chunk:
                raise ValueError("buffer smaller than chunk")
        inflight: deque[int] = deque()
        asked = 0
        more = True
        try:
            while True:
                while more and len(inflight) < depth and (max_bytes is None or asked < max_bytes):
                    msg = wire.MigDataRead(size=chunk, msg_id=self._new_id())
                    self.send(msg)
                    inflight.append(msg.msg_id)
                    asked += chunk
                if not inflight:
                    return
                data = self._mig_reply(inflight[0], chunk, view)
                inflight.popleft()
                if len(data) < chunk:
                    more = False
                if data:
                    yield data
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
