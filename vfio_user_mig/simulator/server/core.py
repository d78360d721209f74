"""The vfio-user server as a sans-IO protocol core (no sockets, time passed in).

Use: ``core.receive_data(bytes, fds)``, then call ``core.next_event(now)`` until it returns
``None``; send what ``core.data_to_send()`` returns (parts for ``sendmsg`` with their fds).
``core.connection_lost()`` on disconnect: client memory is unmapped and every fd the client
gave is closed, while the device and its migration state are kept for a reconnect
(vfio-user.rst "Connection drop").

Every request gets exactly one reply (unless it set no-reply), an error reply carrying the
errno when it is malformed, illegal in the current migration state (:mod:`protocol.gating`), or
refused by the device; the core keeps serving after any of them. Migration state changes walk
the model's generated path on :class:`~vfio_user_mig.model.DeviceFSM`, one device action per
arc. Device-initiated DMA jobs run here: ops on fd-backed mappings directly, others as
DMA_READ/DMA_WRITE requests to the client, interleaved with the client's requests.

Hardening (docs/SECURITY.md): every limit of :class:`ServerConfig` is checked before
the server buffers or allocates anything sized by the client: ``msg_size`` by the framer as soon
as the header is in, fd counts before any fd is used (extra fds are closed, the request is
refused), chunk/bitmap/range sizes before the device is asked. DMA_MAP ranges that are empty,
wrap past 2**64 or overlap are refused, as are fd mappings past the end of the file or at an
unaligned offset; region accesses past the region end are refused by the device.

The core is assembled from one module per job: :mod:`.types` (config, outcome),
:mod:`.state` (session state and lifetime), the handler families
:mod:`.setup`, :mod:`.access`, :mod:`.feature`, the device-initiated DMA
:mod:`.dma`; this module frames, gates and dispatches each request.
"""

from __future__ import annotations

import errno as _errno
import logging
from collections.abc import Callable
from typing import Any, cast

from vfio_user_mig import wire
from vfio_user_mig.protocol.gating import gate_table
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.access import AccessHandlers
from vfio_user_mig.simulator.server.dma import DmaInitiator
from vfio_user_mig.simulator.server.feature import FeatureHandlers
from vfio_user_mig.simulator.server.irqs import EventfdTable
from vfio_user_mig.simulator.server.mig_write import (
    ABORT_FDS,
    ABORT_LOST,
    SCRATCH,
    InPlaceDevice,
    InPlaceWrite,
)
from vfio_user_mig.simulator.server.setup import SetupHandlers
from vfio_user_mig.simulator.server.socket_end import Parts, SocketEnd
from vfio_user_mig.simulator.server.types import (
    CHANNEL_COMMANDS,
    Handled,
    Refusal,
    ServerConfig,
)
from vfio_user_mig.simulator.transport import close_fds
from vfio_user_mig.wire.constants import Command
from vfio_user_mig.wire.framer import PayloadSink
from vfio_user_mig.wire.layouts import HEADER, MIG_DATA, REGION_ACCESS

log = logging.getLogger("vfio_user_mig.server")

#: REGION_READ request, and its reply before the data: header + REGION_ACCESS.
_RR = REGION_ACCESS.with_prefix(HEADER)
_RR_SIZE = _RR.size
_RR_COMMAND = int(Command.REGION_READ)
_REPLY = int(wire.MsgType.REPLY)
#: MIG_DATA_WRITE request head: header + ``struct vfio_user_mig_data`` without the data.
_MW = MIG_DATA.with_prefix(HEADER)
_MW_COMMAND = int(Command.MIG_DATA_WRITE)


def _unknown_command_errno(exc: wire.WireError) -> int:
    """The errno replied for a request the codec refused: EINVAL for an unknown or reserved
    command (libvfio-user's ``handle_request`` default case; the codec says ENOTSUP,
    docs/wire-compat.md row 15), the codec's errno otherwise."""
    if exc.field == "header.command" and exc.errno == _errno.ENOTSUP:
        return _errno.EINVAL
    return exc.errno


class ServerCore(SetupHandlers, AccessHandlers, FeatureHandlers, DmaInitiator):
    """Protocol state of one server hosting one device (see module docstring)."""

    def __init__(
        self, device: Device, config: ServerConfig | None = None, irqs: EventfdTable | None = None
    ) -> None:
        super().__init__(device, config, irqs)
        self._gates = gate_table(device.migration_caps)
        self.internal_errors: list[str] = []
        self._handlers: dict[Command, Callable[[Any, list[int]], Any]] = {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_info,
            Command.DEVICE_GET_REGION_INFO: self._region_info,
            Command.DEVICE_GET_REGION_IO_FDS: self._region_io_fds,
            Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._reset,
            Command.REGION_WRITE_MULTI: self._region_write_multi,
            Command.DEVICE_FEATURE: self._feature,
            Command.MIG_DATA_READ: self._mig_data_read,
            Command.MIG_DATA_WRITE: self._mig_data_write,
        }
        self._in_place: InPlaceWrite | None = None
        self._scratch: memoryview | None = None
        self._after_in_place = False

    # ----- sans-IO surface ------------------------------------------------------------------
    def next_event(self, now: float = 0.0) -> Handled | None:
        """Process one whole received message, if any; ``None`` when more bytes are needed."""
        return self.next_event_on(self, now)

    def next_event_on(self, end: SocketEnd, now: float) -> Handled | None:
        """:meth:`next_event` for the messages received on ``end`` (this core's main socket
        or its migration-data channel); replies go to ``end``'s queue."""
        try:
            item = end.framer.next_message()
        except wire.WireError as exc:
            if exc is end._framing_error:
                # msg_size was impossible: the stream cannot be resynchronised. The error reply
                # goes out first: "no event" until the caller took it with data_to_send().
                if end._out:
                    return None
                raise ConnectionError(f"unrecoverable framing error: {exc}") from exc
            end._framing_error = exc
            close_fds(exc.fds)
            exc.fds.clear()  # the framer may still hold this list: never close them twice
            header = exc.header
            err = _unknown_command_errno(exc)
            if header is None or header.is_reply:
                return Handled(
                    header.command if header else 0,
                    header.msg_id if header else 0,
                    True,
                    exc.errno,
                    str(exc),
                )
            self._send_error(header, err, None, header.no_reply, end._out)
            return Handled(header.command, header.msg_id, False, err, str(exc))
        end._framing_error = None
        if item is None:
            self._tick(now)
            return None
        msg, fds = item
        if self._in_place is not None and msg is self._in_place.request:
            return self._in_place_done(fds, now)
        self._after_in_place = False
        if msg.is_reply:
            close_fds(fds)
            if end is not self:  # the server sends no requests on the channel
                return Handled(msg.command, msg.msg_id, True, _errno.EINVAL, "unexpected reply")
            return self._client_reply(msg)
        result = self._dispatch(msg, fds, now, end)
        self._tick(now)
        return result
    # ----- dispatch ------------------------------------------------------------------------
    def _gate(self, command: Command) -> int | None:
        """The errno refusing ``command`` in the current migration state (None: allowed), from
        the gate table (:mod:`protocol.gating`); unknown pairs are EINVAL."""
        return self._gates.get((self.state, command), _errno.EINVAL)

    def _dispatch(self, msg: Any, fds: list[int], now: float, end: SocketEnd) -> Handled:
        self.stats["requests"] += 1
        command = msg.command
        out = end._out
        try:
            if not self.negotiated and command != Command.VERSION:
                raise Refusal(_errno.EINVAL, "VERSION must be negotiated first")
            if end is not self:
                if command not in CHANNEL_COMMANDS:
                    raise Refusal(_errno.EINVAL, f"{command.name} is not carried by the "
                                   "migration-data socket")
            elif command in CHANNEL_COMMANDS and self.mig_channel is not None:
                raise Refusal(_errno.EINVAL, f"{command.name} goes on the migration-data "
                               "socket while it is open")
            if command in (Command.DMA_READ, Command.DMA_WRITE):
                raise Refusal(_errno.EINVAL, f"{command.name} is a server-to-client command")
            refused = self._gate(command)
            if refused is not None:
                raise Refusal(refused, f"{command.name} not allowed in {self.state.name}")
            if fds:
                self._check_fds(command, len(fds))
            self._now = now
            try:
                reply, reply_fds = self._handlers[command](msg, fds)
                if fds:  # a handler keeps (and clears) the fds it uses: never leak the rest
                    close_fds(fds)
            except (Refusal, wire.WireError):
                raise
            except Exception as exc:  # a bug must cost one request, never the server
                raise self._internal_error(command, exc) from exc
        except (wire.WireError, Refusal) as failure:
            close_fds(fds)
            return self._refuse(msg, failure, out)
        if not msg.no_reply:
            out.append((wire.encode_parts(reply, strict_spec=self.config.strict_spec), reply_fds))
        return Handled(command, msg.msg_id, False, None)

    def _internal_error(self, command: Command, exc: Exception) -> Refusal:
        """A handler's bug, logged and kept in :attr:`internal_errors`: the request fails
        with EIO and the server carries on."""
        log.exception("internal error handling %s", command.name)
        self.internal_errors.append(f"{command.name}: {exc!r}")
        return Refusal(_errno.EIO, f"internal error: {exc!r}")

    def _refuse(self, msg: Any, failure: wire.WireError | Refusal, out: list[Any]) -> Handled:
        """Queue the error reply to request ``msg`` (its fds are already closed)."""
        if isinstance(failure, Refusal):
            echo = self._echo_payload(msg) if failure.echo else failure.payload
        else:
            echo = None
        self._send_error(msg, failure.errno, echo, msg.no_reply, out)
        return Handled(msg.command, msg.msg_id, False, failure.errno, str(failure))

    # ----- MIG_DATA_WRITE received in place (:mod:`.mig_write`) ---------------------------
    def _new_framer(self, max_size: int, trim_trailing: bool) -> wire.Framer:
        return wire.Framer(max_size=max_size, trim_trailing=trim_trailing,
                           claim=self._claim_write, claim_head=_MW.size)

    def _claim_write(self, head: memoryview, fds: list[int]) -> PayloadSink | None:
        """The sink of a MIG_DATA_WRITE whose head is ``head``, when :meth:`next_event` would
        hand it to the device whole (the same checks, :mod:`.mig_write`); None otherwise."""
        msg_id, command, size, flags, error, argsz, data_size = _MW.unpack_from(head)
        if (command != _MW_COMMAND or flags or error or fds or data_size != size - _MW.size
                or argsz < MIG_DATA.size + data_size or self.framer.pending
                or not self.negotiated or self.mig_channel is not None
                or data_size > self.config.max_data_xfer_size
                or self._gate(Command.MIG_DATA_WRITE) is not None
                or not hasattr(self.device, "mig_data_write_buffers")):
            return None
        if self._scratch is None:
            self._scratch = memoryview(bytearray(SCRATCH))
        request = wire.MigDataWrite(b"", argsz, msg_id=msg_id)
        device = cast(InPlaceDevice, self.device)  # it has the methods (checked above)
        self._in_place = InPlaceWrite(device, request, self._scratch)
        return self._in_place

    def _in_place_done(self, fds: list[int], now: float) -> Handled:
        """Answer the claimed MIG_DATA_WRITE now whole, as :meth:`_dispatch` would have."""
        sink, self._in_place = self._in_place, None
        assert sink is not None
        self._after_in_place = True
        self.stats["requests"] += 1
        self.stats["mig_writes_in_place"] += 1
        self._now = now
        msg = sink.request
        failure: Exception | None = sink.failure
        if fds:
            close_fds(fds)
            sink.abort(ABORT_FDS)
            try:
                self._check_fds(Command.MIG_DATA_WRITE, len(fds))
            except Refusal as fd_refusal:
                failure = fd_refusal
        if failure is None:
            reply = wire.MigDataWriteReply(msg_id=msg.msg_id)
            self._out.append((wire.encode_parts(reply, strict_spec=self.config.strict_spec), []))
            handled = Handled(Command.MIG_DATA_WRITE, msg.msg_id, False, None)
        else:
            if isinstance(failure, Refusal):
                refusal = failure
            elif isinstance(failure, DeviceError):
                refusal = Refusal(failure.errno, str(failure))
            else:
                refusal = self._internal_error(Command.MIG_DATA_WRITE, failure)
            handled = self._refuse(msg, refusal, self._out)
        self._tick(now)
        return handled

    def _reset_socket_state(self) -> None:
        if self._in_place is not None:  # cut before it was answered: see .mig_write
            self._in_place.abort(ABORT_LOST)
        self._in_place = None
        self._after_in_place = False
        super()._reset_socket_state()

    def recv_limit(self) -> int | None:
        """How many bytes the IO layer should receive into its own buffer now: None (all it
        can), or after a MIG_DATA_WRITE received in place, the next one's head and what the
        device takes before it may have a view of its memory (the data after that is then
        received in place, not copied out of that buffer)."""
        if not self._after_in_place:
            return None
        try:
            return _MW.size + cast(InPlaceDevice, self.device).mig_data_write_feed_size()
        except Exception:  # not restoring any more: no hint
            return None

    # ----- REGION_READ fast path ------------------------------------------------------------
    def region_read_fast(self, data: memoryview, now: float) -> Handled | None:
        """Answer ``data`` (bytes just received on the main socket, no fds) when it is exactly
        one plain REGION_READ request of 1 byte or more that :meth:`next_event` would serve
        now: nothing else received or queued, VERSION done, REGION_READ allowed in the
        current migration state (the same gate table), the access valid (the same
        ``_check_access``). The reply is queued for :meth:`data_to_send` and is byte for byte
        the generic path's (success, or the same error reply when the device refuses); the
        device is asked once (a device answering the wrong length is an internal error: EIO),
        timers run after it as after any message. Returns ``None``
        without consuming anything otherwise: feed ``data`` to :meth:`receive_data`.

        The layout comes from :mod:`wire.layouts` (header + REGION_ACCESS, PROTOCOL.md
        section 1 and vfio-user.rst "VFIO_USER_REGION_READ"); it saves the framer, the
        decode, the dispatch and the reply objects of the hottest request."""
        if len(data) != _RR_SIZE or self._out or self._framing_error is not None:
            return None
        framer = self.framer
        if framer.pending or not framer.at_boundary or not self.negotiated:
            return None
        msg_id, command, size, flags, error, offset, region, count = _RR.unpack_from(data)
        if command != _RR_COMMAND or size != _RR_SIZE or flags or error or not count:
            return None
        if self._gate(Command.REGION_READ) is not None:
            return None
        try:
            self._check_access(region, offset, count, "REGION_READ")
        except Refusal:
            return None  # the generic path refuses it, with the same checks
        self.stats["requests"] += 1
        self._now = now
        try:
            payload = self._device_read(region, offset, count)
            if len(payload) != count:
                raise ValueError(f"device returned {len(payload)} bytes for {count}")
        except Exception as exc:
            failure = exc if isinstance(exc, Refusal) else self._internal_error(
                Command.REGION_READ, exc)
            msg = wire.RegionRead(offset=offset, region=region, count=count, msg_id=msg_id)
            handled = self._refuse(msg, failure, self._out)
        else:
            reply = _RR.pack(msg_id, _RR_COMMAND, _RR_SIZE + count, _REPLY, 0, offset, region,
                             count)
            self._out.append(([reply + payload], []))
            handled = Handled(Command.REGION_READ, msg_id, False, None)
        self._tick(now)
        return handled

    def _check_fds(self, command: Command, count: int) -> None:
        if command not in (Command.DMA_MAP, Command.DEVICE_SET_IRQS):
            raise Refusal(_errno.EINVAL, f"{command.name} takes no file descriptors")
        if count > self.config.max_msg_fds:
            limit = self.config.max_msg_fds
            raise Refusal(_errno.EINVAL, f"{count} fds with one message > max_msg_fds {limit}")

    def _send_error(
        self,
        request: Any,
        errno: int,
        echo: bytes | None,
        no_reply: bool,
        out: list[tuple[Parts, list[int]]] | None = None,
    ) -> None:
        self.stats["errors"] += 1
        if no_reply:
            return
        if out is None:
            out = self._out
        if int(request.command) not in wire.Command._value2member_map_:
            # Unknown or reserved command: answer with a bare error header echoing it.
            flags = int(wire.MsgType.REPLY | wire.HeaderFlag.ERROR)
            head = wire.Header(request.msg_id, int(request.command), wire.HEADER_SIZE, flags, errno)
            out.append(([head.pack()], []))
            return
        reply = wire.error_reply(request, errno, echo)
        out.append((wire.encode_parts(reply, strict_spec=self.config.strict_spec), []))

    def _echo_payload(self, msg: Any) -> bytes:
        parts = wire.encode_parts(msg)
        return b"".join(bytes(p) for p in parts)[wire.HEADER_SIZE :]


__all__ = ["ServerCore"]
