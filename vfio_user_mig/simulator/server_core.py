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

Hardening (issue #8, docs/SECURITY.md): every limit of :class:`ServerConfig` is checked before
the server buffers or allocates anything sized by the client: ``msg_size`` by the framer as soon
as the header is in, fd counts before any fd is used (extra fds are closed, the request is
refused), chunk/bitmap/range sizes before the device is asked. DMA_MAP ranges that are empty,
wrap past 2**64 or overlap are refused, as are fd mappings past the end of the file or at an
unaligned offset; region accesses past the region end are refused by the device.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import logging
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import DeviceFSM, InvalidTransition, State
from vfio_user_mig.model.paths import path_table
from vfio_user_mig.protocol.gating import gate_table
from vfio_user_mig.simulator.device.base import Device, DeviceError, RegionFlag
from vfio_user_mig.simulator.device.dma import (
    DmaFault,
    DmaJob,
    DmaKind,
    DmaMapError,
    DmaMapping,
    DmaOp,
    DmaSpace,
    FdMemory,
    Route,
)
from vfio_user_mig.simulator.irqs import EventfdTable, validate_set_irqs
from vfio_user_mig.simulator.mig_channel import MigDataChannel, NewChannel, open_channel
from vfio_user_mig.simulator.socket_end import Parts, SocketEnd
from vfio_user_mig.simulator.transport import close_fds
from vfio_user_mig.wire.capabilities import MIG_DATA_SOCKET_KEY, MIG_DATA_UNPADDED_KEY
from vfio_user_mig.wire.constants import (
    U64_MAX,
    Command,
    DeviceInfoFlag,
    DmaMapFlag,
    DmaUnmapFlag,
    FeatureIndex,
    FeatureOp,
    IrqSetFlag,
    RegionInfoFlag,
)
from vfio_user_mig.wire.layouts import (
    DEVICE_FEATURE,
    DEVICE_INFO,
    FEATURE_LOGGING_REPORT,
    REGION_ACCESS,
    REGION_INFO,
)
from vfio_user_mig.wire.msg_feature import MigDataSize

log = logging.getLogger("vfio_user_mig.server")

#: Highest protocol minor version spoken (libvfio-user speaks 0.2).
SERVER_MINOR = 2

#: The largest IOVA + 1 (DMA_MAP ranges must end at or below it).
IOVA_LIMIT = 1 << 64

#: The commands a migration-data channel carries (and the main socket then refuses).
_CHANNEL_COMMANDS = frozenset({Command.MIG_DATA_READ, Command.MIG_DATA_WRITE})


#: Server-initiated DMA message ids live in 0x8000..0xFFFF; one op never uses more than half of
#: them, so no two chunks in flight can share an id.
MAX_DMA_CHUNKS_PER_OP = 0x4000


@dataclass
class ServerConfig:
    """Limits and behaviour switches; defaults follow libvfio-user (PROTOCOL.md section 2).

    Limits (docs/SECURITY.md has the table; each is refused one past it):

    * ``max_data_xfer_size``: largest REGION_READ/WRITE count and MIG_DATA_READ/WRITE chunk
      (EINVAL); also sets :attr:`max_msg_size` (E2BIG at framing, then the connection closes).
    * ``max_msg_fds``: fds accepted with one message (EINVAL, all of them closed).
    * ``max_dma_maps``: DMA regions mapped at once (ENOSPC).
    * ``max_bitmap_size``: bytes of one DMA_LOGGING_REPORT bitmap (E2BIG); never more than
      the client's own ``max_data_xfer_size``, so the reply always fits what it accepts.
    * ``max_logging_ranges``: ranges in one DMA_LOGGING_START (E2BIG, the kernel's
      ``LOG_MAX_RANGES``).
    * ``max_region_caps``: capabilities in a region-info chain the server sends, counting each
      sparse-mmap area (EIO: the device is misconfigured; the chain is never sent).
    * ``max_version_json``: bytes of the client's VERSION capabilities JSON (E2BIG).
    * ``min_client_xfer_size``: smallest ``max_data_xfer_size`` a client may announce (EINVAL),
      so that one device DMA op never turns into thousands of DMA_READ/WRITE messages.
    * ``require_sealed_dma_fds``: refuse (EPERM) DMA_MAP fds that the client could still
      shrink (no ``F_SEAL_SHRINK``). Not needed for safety: DMA_MAP memory is reached with
      pread/pwrite, never mmap, so a client truncating its file after DMA_MAP only makes the
      DMA ops past the new end fault. Off by default (libvfio-user and QEMU do not seal).

    ``experimental_mig_data_size``: answer DEVICE_FEATURE MIG_DATA_SIZE (9) GET with the
    device's ``pending_bytes()`` (an extension, not in the spec nor libvfio-user: the kernel's
    ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``; docs/wire-compat.md). Off by default: EINVAL, like
    any unknown feature; also EINVAL when the device has no ``pending_bytes``.

    ``experimental_mig_data_socket``: agree to a client's ``x-mig-data-socket`` VERSION
    capability (:mod:`.mig_channel`): a second socket that carries MIG_DATA_READ/WRITE only.
    Off by default: the capability is ignored, as by any server that does not know it.
    """

    max_data_xfer_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE
    max_msg_fds: int = 8
    max_dma_maps: int = 65535
    migration_pgsize: int = 4096
    strict_spec: bool = False
    keep_mig_state_on_reset: bool = False
    max_bitmap_size: int = wire.DEFAULT_MAX_DATA_XFER_SIZE
    max_logging_ranges: int = 256
    max_region_caps: int = 16
    max_version_json: int = 4096
    min_client_xfer_size: int = 512
    require_sealed_dma_fds: bool = False
    experimental_mig_data_size: bool = False
    experimental_mig_data_socket: bool = False

    @property
    def max_msg_size(self) -> int:
        """Largest message accepted: the data limit plus the largest fixed part."""
        return self.max_data_xfer_size + wire.HEADER_SIZE + 16


@dataclass(frozen=True, slots=True)
class Handled:
    """One processed message: what it was and how it ended (``errno`` None = success)."""

    command: int
    msg_id: int
    is_reply: bool
    errno: int | None
    detail: str = ""


class _Failure(Exception):
    """Internal: reply with ``errno``; ``echo`` the request payload when set."""

    def __init__(
        self, errno: int, detail: str, echo: bool = False, payload: bytes | None = None
    ) -> None:
        super().__init__(detail)
        self.errno = errno
        self.echo = echo
        self.payload = payload


def _access_echo(msg: Any, data_bytes: int) -> bytes:
    """The payload of libvfio-user's error reply when the device refused a REGION_READ or
    REGION_WRITE that passed validation: {offset, region, count} and ``data_bytes`` zeros
    (its ``handle_region_access`` builds the reply before the access). Like any error payload
    it is dropped with ``strict_spec`` (docs/wire-compat.md row 2)."""
    return REGION_ACCESS.pack(msg.offset, msg.region, msg.count) + bytes(data_bytes)


def _unknown_command_errno(exc: wire.WireError) -> int:
    """The errno replied for a request the codec refused: EINVAL for an unknown or reserved
    command (libvfio-user's ``handle_request`` default case; the codec says ENOTSUP,
    docs/wire-compat.md row 15), the codec's errno otherwise."""
    if exc.field == "header.command" and exc.errno == _errno.ENOTSUP:
        return _errno.EINVAL
    return exc.errno


@dataclass
class _PendingOp:
    """A DMA op carried out by messages: the chunk requests still unanswered."""

    op: DmaOp
    waiting: dict[int, tuple[int, int]] = field(default_factory=dict)  # msg_id -> (off, len)
    buffer: bytearray = field(default_factory=bytearray)
    fault: DmaFault | None = None


class _DeviceActions:
    """Adapts a :class:`Device` to the executor's ``ArcActions``."""

    def __init__(self, device: Device, keep_mig_state: bool) -> None:
        self.device = device
        self.keep_mig_state = keep_mig_state

    def on_arc(self, src: State, dst: State) -> None:
        self.device.on_arc(src, dst)

    def on_reset(self) -> None:
        self.device.reset(keep_mig_state=self.keep_mig_state)


class ServerCore(SocketEnd):
    """Protocol state of one server hosting one device (see module docstring)."""

    def __init__(
        self, device: Device, config: ServerConfig | None = None, irqs: EventfdTable | None = None
    ) -> None:
        self.device = device
        self.config = config or ServerConfig()
        super().__init__(self.config.max_msg_size)
        self.irqs = irqs if irqs is not None else EventfdTable(device.irqs)
        self._gates = gate_table(device.migration_caps)
        path_table(device.migration_caps)  # precompute every complex path once, not on SET
        self.fsm = DeviceFSM(
            device.migration_caps,
            _DeviceActions(device, self.config.keep_mig_state_on_reset),
            initial=device.mig_state,
        )
        self.dma = DmaSpace()
        self.client_caps: wire.Capabilities | None = None
        self.negotiated = False
        self._job: DmaJob | None = None
        self._pending: _PendingOp | None = None
        self._next_id = 0x8000
        self._now = 0.0
        #: Pad short MIG_DATA_READ replies to the size asked for (libvfio-user's behaviour)
        #: unless the client said it takes them unpadded (``x-mig-data-unpadded``).
        self._pad_mig_data = True
        #: The open migration-data channel (experimental), and one made by VERSION that the
        #: IO layer has not taken yet (:meth:`take_new_channel`).
        self.mig_channel: MigDataChannel | None = None
        self._new_channel: NewChannel | None = None
        self.stats: dict[str, int] = {"requests": 0, "errors": 0, "dma_messages": 0}
        #: One line per handler exception turned into an EIO reply (a bug in this server or in
        #: the device, never the client's fault): empty in a correct run. Fuzz oracles and
        #: tests assert it stays empty; it is never cleared by the core.
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

    # ----- sans-IO surface ------------------------------------------------------------------
    @property
    def state(self) -> State:
        """The device's migration state."""
        return self.fsm.state

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
        if msg.is_reply:
            close_fds(fds)
            if end is not self:  # the server sends no requests on the channel
                return Handled(msg.command, msg.msg_id, True, _errno.EINVAL, "unexpected reply")
            return self._client_reply(msg)
        result = self._dispatch(msg, fds, now, end)
        self._tick(now)
        return result

    def take_new_channel(self) -> NewChannel | None:
        """The migration-data channel VERSION just agreed to, for the IO layer to serve (once):
        the server's socket, its :class:`MigDataChannel`, and the client's end, which the IO
        layer closes once the VERSION reply carrying it was sent."""
        new, self._new_channel = self._new_channel, None
        return new

    def connection_lost(self) -> None:
        """Client gone: abort its DMA, unmap its memory, close its fds and its migration-data
        channel; keep the device."""
        self._job = None
        self._pending = None
        for mapping in self.dma.unmap_all():
            self._release(mapping)
        self.irqs.clear()
        self._reset_socket_state()
        self.negotiated = False
        self.client_caps = None
        self._pad_mig_data = True
        self._drop_channel()

    def _drop_channel(self) -> None:
        new, self._new_channel = self._new_channel, None
        if new is not None:
            new.close()
        self.mig_channel = None

    def channel_closed(self, channel: MigDataChannel) -> None:
        """The IO layer saw ``channel``'s socket close: migration data goes back to the main
        socket."""
        if self.mig_channel is channel:
            self.mig_channel = None

    def close(self) -> None:
        """Release everything (the device itself is closed by its owner)."""
        self.connection_lost()

    # ----- dispatch ------------------------------------------------------------------------
    def _dispatch(self, msg: Any, fds: list[int], now: float, end: SocketEnd) -> Handled:
        self.stats["requests"] += 1
        command = msg.command
        out = end._out
        try:
            if not self.negotiated and command != Command.VERSION:
                raise _Failure(_errno.EINVAL, "VERSION must be negotiated first")
            if end is not self:
                if command not in _CHANNEL_COMMANDS:
                    raise _Failure(_errno.EINVAL, f"{command.name} is not carried by the "
                                   "migration-data socket")
            elif command in _CHANNEL_COMMANDS and self.mig_channel is not None:
                raise _Failure(_errno.EINVAL, f"{command.name} goes on the migration-data "
                               "socket while it is open")
            if command in (Command.DMA_READ, Command.DMA_WRITE):
                raise _Failure(_errno.EINVAL, f"{command.name} is a server-to-client command")
            refused = self._gates.get((self.state, command), _errno.EINVAL)
            if refused is not None:
                raise _Failure(refused, f"{command.name} not allowed in {self.state.name}")
            if fds:
                self._check_fds(command, len(fds))
            self._now = now
            try:
                reply, reply_fds = self._handlers[command](msg, fds)
                if fds:  # a handler keeps (and clears) the fds it uses: never leak the rest
                    close_fds(fds)
            except (_Failure, wire.WireError):
                raise
            except Exception as exc:  # a bug must cost one request, never the server
                log.exception("internal error handling %s", command.name)
                self.internal_errors.append(f"{command.name}: {exc!r}")
                raise _Failure(_errno.EIO, f"internal error: {exc!r}") from exc
        except wire.WireError as exc:
            close_fds(fds)
            self._send_error(msg, exc.errno, None, msg.no_reply, out)
            return Handled(command, msg.msg_id, False, exc.errno, str(exc))
        except _Failure as failure:
            close_fds(fds)
            echo = self._echo_payload(msg) if failure.echo else failure.payload
            self._send_error(msg, failure.errno, echo, msg.no_reply, out)
            return Handled(command, msg.msg_id, False, failure.errno, str(failure))
        if not msg.no_reply:
            out.append((wire.encode_parts(reply, strict_spec=self.config.strict_spec), reply_fds))
        return Handled(command, msg.msg_id, False, None)

    def _check_fds(self, command: Command, count: int) -> None:
        if command not in (Command.DMA_MAP, Command.DEVICE_SET_IRQS):
            raise _Failure(_errno.EINVAL, f"{command.name} takes no file descriptors")
        if count > self.config.max_msg_fds:
            limit = self.config.max_msg_fds
            raise _Failure(_errno.EINVAL, f"{count} fds with one message > max_msg_fds {limit}")

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

    # ----- handlers: setup -------------------------------------------------------------------
    def _version(self, msg: wire.Version, fds: list[int]) -> tuple[Any, list[int]]:
        if self.negotiated:
            raise _Failure(_errno.EINVAL, "VERSION already negotiated")
        if msg.major != 0:
            raise _Failure(_errno.ENOTSUP, f"major version {msg.major} unsupported (0 only)")
        client_caps = msg.capabilities or wire.Capabilities.make()
        if len(client_caps.text) > self.config.max_version_json:
            raise _Failure(
                _errno.E2BIG,
                f"VERSION JSON {len(client_caps.text)} bytes > {self.config.max_version_json}",
            )
        if client_caps.max_data_xfer_size < self.config.min_client_xfer_size:
            raise _Failure(
                _errno.EINVAL,
                f"client max_data_xfer_size {client_caps.max_data_xfer_size} < "
                f"{self.config.min_client_xfer_size}",
            )
        self.client_caps = client_caps
        self.negotiated = True
        extra: dict[str, Any] = {}
        reply_fds: list[int] = []
        self._pad_mig_data = not client_caps.mig_data_unpadded
        if not self._pad_mig_data:
            extra[MIG_DATA_UNPADDED_KEY] = True
        if self.config.experimental_mig_data_socket and client_caps.mig_data_socket_supported:
            self._drop_channel()
            self._new_channel = new = open_channel(self)
            self.mig_channel = new.channel
            extra[MIG_DATA_SOCKET_KEY] = {"fd_index": 0}
            reply_fds.append(new.client_end.fileno())
        caps = wire.Capabilities.make(
            max_msg_fds=self.config.max_msg_fds,
            max_data_xfer_size=self.config.max_data_xfer_size,
            migration_pgsize=self.config.migration_pgsize,
            extra=extra,
        )
        return wire.VersionReply(
            major=0, minor=min(msg.minor, SERVER_MINOR), capabilities=caps, msg_id=msg.msg_id
        ), reply_fds

    def _dma_map(self, msg: wire.DmaMap, fds: list[int]) -> tuple[Any, list[int]]:
        if len(fds) > 1:
            raise _Failure(_errno.EINVAL, f"DMA_MAP carries {len(fds)} fds, at most 1")
        # DmaSpace keeps its mappings in a list: its length is O(1) (``mappings`` copies).
        if len(self.dma) >= self.config.max_dma_maps:
            raise _Failure(_errno.ENOSPC, f"more than {self.config.max_dma_maps} DMA regions")
        if msg.size == 0 or msg.addr + msg.size > IOVA_LIMIT:
            raise _Failure(
                _errno.EINVAL, f"DMA_MAP addr={msg.addr:#x} size={msg.size:#x}: empty or wraps"
            )
        if msg.flags & (DmaMapFlag.MMAP | DmaMapFlag.FILE_IO) and not fds:
            # libvfio-user's own flags (docs/wire-compat.md row 6) name an fd access mode
            raise _Failure(_errno.EINVAL, f"DMA_MAP flags {msg.flags:#x} need a file descriptor")
        readable = bool(msg.flags & DmaMapFlag.READ)
        writable = bool(msg.flags & DmaMapFlag.WRITE)
        memory: FdMemory | None = None
        if fds:
            # The mapping keeps a close-on-exec dup of the fd (the received one is closed, as
            # before) and reads/writes it with pread/pwrite: no mmap, so a client shrinking the
            # file can make DMA ops fault but can never raise SIGBUS in the server.
            fd = fds.pop()
            try:
                self._check_map_fd(
                    fd, msg.offset, msg.size, writable, self.config.require_sealed_dma_fds
                )
                memory = FdMemory(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0), msg.offset, msg.size)
            except (OSError, ValueError, OverflowError) as exc:
                raise _Failure(_errno.EINVAL, f"DMA_MAP cannot use the fd: {exc}") from None
            finally:
                os.close(fd)
        try:
            self.dma.map(msg.addr, msg.size, readable=readable, writable=writable, fd=memory)
        except DmaMapError as exc:
            if memory is not None:
                memory.close()
            raise _Failure(exc.errno, str(exc)) from None
        return wire.DmaMapReply(msg_id=msg.msg_id), []

    @staticmethod
    def _check_map_fd(fd: int, offset: int, size: int, writable: bool, sealed: bool) -> None:
        """The fd must be a regular file (memfd, tmpfs/shm, hugetlbfs, disk file) opened for
        reading (and writing, without O_APPEND, for a writable mapping), the range
        [offset, offset+size) page aligned and inside it; with ``sealed``, the file must be
        sealed against shrinking. These are the fds the former mmap accepted, minus devices."""
        if offset % mmap.ALLOCATIONGRANULARITY:
            raise _Failure(_errno.EINVAL, f"DMA_MAP offset {offset:#x} not aligned")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        access = flags & os.O_ACCMODE
        if access == os.O_WRONLY or (writable and access != os.O_RDWR):
            raise _Failure(_errno.EINVAL, "DMA_MAP fd not open for the mapping's access")
        if writable and flags & os.O_APPEND:
            raise _Failure(_errno.EINVAL, "DMA_MAP fd is O_APPEND: writes would not land")
        if sealed:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                seals = 0
            if not seals & fcntl.F_SEAL_SHRINK:
                raise _Failure(_errno.EPERM, "DMA_MAP fd is not sealed against shrinking")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Failure(_errno.EINVAL, "DMA_MAP fd is not a regular file (memfd, shm, ...)")
        if offset + size > st.st_size:
            raise _Failure(
                _errno.EINVAL,
                f"DMA_MAP offset {offset:#x} + size {size:#x} past the end of the "
                f"{st.st_size:#x}-byte file",
            )

    @staticmethod
    def _release(mapping: DmaMapping) -> None:
        """Close the mapping's fd (an unmapped or disconnected region keeps no fd open)."""
        with contextlib.suppress(OSError):
            mapping.release()

    def _dma_unmap(self, msg: wire.DmaUnmap, fds: list[int]) -> tuple[Any, list[int]]:
        if msg.flags & ~int(DmaUnmapFlag.ALL):
            raise _Failure(_errno.EINVAL, f"DMA_UNMAP flags {msg.flags:#x} unsupported")
        if msg.flags & DmaUnmapFlag.ALL:
            if msg.addr or msg.size:
                raise _Failure(_errno.EINVAL, "DMA_UNMAP ALL with a non-zero range")
            removed = self.dma.unmap_all()
        else:
            try:
                removed = (self.dma.unmap(msg.addr, msg.size),)
            except DmaMapError as exc:
                raise _Failure(exc.errno, str(exc)) from None
        for mapping in removed:
            self._release(mapping)
        return wire.DmaUnmapReply(
            addr=msg.addr, size=msg.size, flags=msg.flags, argsz=msg.argsz, msg_id=msg.msg_id
        ), []

    def _device_info(self, msg: wire.DeviceGetInfo, fds: list[int]) -> tuple[Any, list[int]]:
        if msg.argsz < DEVICE_INFO.size:
            raise _Failure(_errno.EINVAL, f"DEVICE_GET_INFO argsz {msg.argsz} too small")
        return wire.DeviceGetInfoReply(
            flags=int(DeviceInfoFlag.RESET | DeviceInfoFlag.PCI),
            num_regions=len(self.device.regions),
            num_irqs=len(self.device.irqs),
            msg_id=msg.msg_id,
        ), []

    def _region(self, index: int) -> Any:
        if not 0 <= index < len(self.device.regions):
            raise _Failure(_errno.EINVAL, f"region {index} does not exist")
        return self.device.regions[index]

    def _region_info(self, msg: wire.RegionInfo, fds: list[int]) -> tuple[Any, list[int]]:
        spec = self._region(msg.index)
        if msg.argsz < REGION_INFO.size:
            raise _Failure(_errno.EINVAL, f"GET_REGION_INFO argsz {msg.argsz} too small")
        caps: list[Any] = []
        if spec.sparse_mmap:
            for off, size in spec.sparse_mmap:
                if off < 0 or size <= 0 or off + size > spec.size:
                    raise _Failure(
                        _errno.EIO, f"region {spec.index}: sparse area {off:#x}+{size:#x} outside"
                    )
            caps.append(
                wire.SparseMmapCap(tuple(wire.SparseArea(o, s) for o, s in spec.sparse_mmap))
            )
        if spec.type_subtype is not None:
            caps.append(wire.TypeCap(*spec.type_subtype))
        chain = len(caps) + max(len(spec.sparse_mmap or ()) - 1, 0)
        if chain > self.config.max_region_caps:
            raise _Failure(
                _errno.EIO,
                f"region {spec.index}: capability chain of {chain} > {self.config.max_region_caps}",
            )
        reply = wire.RegionInfoReply(
            index=spec.index, flags=int(spec.flags), size=spec.size, offset=0,
            msg_id=msg.msg_id,
        )
        if caps:
            full = wire.RegionInfoReply(
                index=spec.index, flags=int(spec.flags | RegionInfoFlag.CAPS), size=spec.size,
                offset=0, caps=tuple(caps), msg_id=msg.msg_id,
            )
            full_size = full.argsz or 0
            if msg.argsz >= full_size:
                reply = full
            else:  # too small for the chain: the needed argsz, no caps, min(argsz, full) bytes
                reply = wire.RegionInfoReply(
                    index=spec.index, flags=int(spec.flags), size=spec.size, offset=0,
                    argsz=full_size, truncated_to=msg.argsz, msg_id=msg.msg_id,
                )
        # As libvfio-user: the fd travels with the capability chain only (when it fits); a
        # client asking with a too-small argsz may have no room for SCM_RIGHTS.
        fds_out = [spec.fd] if spec.fd is not None and reply.flags & RegionInfoFlag.CAPS else []
        return reply, fds_out

    def _region_io_fds(self, msg: wire.RegionIoFds, fds: list[int]) -> tuple[Any, list[int]]:
        # libvfio-user's handle_device_get_region_io_fds order: flags and count must be 0
        # (vfio-user.rst), the index must exist, the region must have an access flag, argsz
        # must hold the 16-byte reply and stay within max_data_xfer_size.
        if msg.flags or msg.count:
            raise _Failure(_errno.EINVAL, "GET_REGION_IO_FDS flags and count must be 0")
        spec = self._region(msg.index)
        if not spec.flags & (RegionFlag.READ | RegionFlag.WRITE | RegionFlag.MMAP):
            raise _Failure(_errno.EINVAL, f"region {msg.index} has no access flags")
        if msg.argsz > self.config.max_data_xfer_size:
            raise _Failure(_errno.EINVAL, f"GET_REGION_IO_FDS argsz {msg.argsz} too large")
        return wire.RegionIoFdsReply(index=msg.index, msg_id=msg.msg_id), []

    def _irq_info(self, msg: wire.IrqInfo, fds: list[int]) -> tuple[Any, list[int]]:
        if not 0 <= msg.index < len(self.device.irqs):
            raise _Failure(_errno.EINVAL, f"irq index {msg.index} does not exist")
        spec = self.device.irqs[msg.index]
        return wire.IrqInfoReply(
            index=spec.index, flags=int(spec.flags), count=spec.count, msg_id=msg.msg_id
        ), []

    def _set_irqs(self, msg: wire.IrqSet, fds: list[int]) -> tuple[Any, list[int]]:
        """vfio-user.rst "VFIO_USER_DEVICE_SET_IRQS", validated as the kernel's VFIO does
        (:func:`validate_set_irqs`). TRIGGER: eventfds install, no fds or count 0 with
        DATA_NONE disable (libvfio-user), DATA_NONE/BOOL signal; MASK/UNMASK on a maskable
        index are accepted and have no effect here."""
        flags = IrqSetFlag(msg.flags)
        try:
            validate_set_irqs(
                self.device.irqs, msg.flags, msg.index, msg.start, msg.count, len(fds)
            )
            if not flags & IrqSetFlag.ACTION_TRIGGER:
                pass
            elif flags & IrqSetFlag.DATA_EVENTFD and fds:
                self.irqs.set_eventfds(msg.index, msg.start, list(fds))
                fds.clear()
            elif flags & IrqSetFlag.DATA_EVENTFD or msg.count == 0:
                self.irqs.disable(msg.index, msg.start, msg.count)
            elif flags & IrqSetFlag.DATA_BOOL:
                self.irqs.trigger_range(msg.index, msg.start, bytes(msg.data))
            else:
                self.irqs.trigger_range(msg.index, msg.start, b"\x01" * msg.count)
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc)) from None
        return wire.IrqSetReply(msg_id=msg.msg_id), []

    def _reset(self, msg: wire.DeviceReset, fds: list[int]) -> tuple[Any, list[int]]:
        self._job = None
        self._pending = None
        self.fsm.reset()
        return wire.DeviceResetReply(msg_id=msg.msg_id), []

    # ----- handlers: region access -----------------------------------------------------------
    def _check_count(self, count: int, what: str) -> None:
        if count > self.config.max_data_xfer_size:
            raise _Failure(
                _errno.EINVAL,
                f"{what} count {count} > max_data_xfer_size {self.config.max_data_xfer_size}",
            )

    def _check_access(self, region: int, offset: int, count: int, what: str) -> bool:
        """libvfio-user's ``is_valid_region_access`` order: count limit, region index, bounds
        (offset + count, saturating, within the region size); True when ``count`` is 0, which
        is then answered without asking the device, on every region alike."""
        self._check_count(count, what)
        spec = self._region(region)
        if offset + count > spec.size:
            raise _Failure(
                _errno.EINVAL,
                f"{what} {offset:#x}+{count:#x} past the end of region {region} "
                f"({spec.size:#x} bytes)",
            )
        return count == 0

    def _empty_access_reply(self, msg: Any, cls: Any) -> Any:
        """A count-0 access: libvfio-user's header-only reply; strict_spec echoes the 16
        bytes (docs/wire-compat.md row 5)."""
        if self.config.strict_spec:
            return cls(offset=msg.offset, region=msg.region, count=0, msg_id=msg.msg_id)
        return cls(offset=0, region=0, count=0, bare=True, msg_id=msg.msg_id)

    def _region_read(self, msg: wire.RegionRead, fds: list[int]) -> tuple[Any, list[int]]:
        if self._check_access(msg.region, msg.offset, msg.count, "REGION_READ"):
            return self._empty_access_reply(msg, wire.RegionReadReply), []
        try:
            data = self.device.region_read(msg.region, msg.offset, msg.count, self._now)
        except DeviceError as exc:  # libvfio-user: the reply it had prepared, zero data
            raise _Failure(exc.errno, str(exc), payload=_access_echo(msg, msg.count)) from None
        return wire.RegionReadReply(
            offset=msg.offset, region=msg.region, count=msg.count, data=data, msg_id=msg.msg_id
        ), []

    def _region_write(self, msg: wire.RegionWrite, fds: list[int]) -> tuple[Any, list[int]]:
        if self._check_access(msg.region, msg.offset, msg.count, "REGION_WRITE"):
            return self._empty_access_reply(msg, wire.RegionWriteReply), []
        try:
            self.device.region_write(msg.region, msg.offset, bytes(msg.data), self._now)
        except DeviceError as exc:  # libvfio-user: the reply it had prepared
            raise _Failure(exc.errno, str(exc), payload=_access_echo(msg, 0)) from None
        return wire.RegionWriteReply(
            offset=msg.offset, region=msg.region, count=msg.count, msg_id=msg.msg_id
        ), []

    def _region_write_multi(
        self, msg: wire.RegionWriteMulti, fds: list[int]
    ) -> tuple[Any, list[int]]:
        done = 0
        for item in msg.writes:
            try:
                self.device.region_write(item.region, item.offset, item.value, self._now)
            except DeviceError as exc:
                raise _Failure(exc.errno, f"write {done}: {exc}") from None
            done += 1
        return wire.RegionWriteMultiReply(wr_cnt=done, msg_id=msg.msg_id), []

    # ----- handlers: DEVICE_FEATURE ------------------------------------------------------------
    def _feature(self, msg: wire.DeviceFeature, fds: list[int]) -> tuple[Any, list[int]]:
        ops = FeatureOp(int(msg.ops))
        feature = int(msg.feature)
        allowed_ops: dict[int, FeatureOp] = {
            FeatureIndex.MIGRATION: FeatureOp.GET,
            FeatureIndex.MIG_DEVICE_STATE: FeatureOp.GET | FeatureOp.SET,
            FeatureIndex.DMA_LOGGING_START: FeatureOp.SET,
            FeatureIndex.DMA_LOGGING_STOP: FeatureOp.SET,
            FeatureIndex.DMA_LOGGING_REPORT: FeatureOp.GET,
        }
        if feature == FeatureIndex.MIG_DATA_SIZE and self._mig_data_size_fn() is not None:
            allowed_ops[feature] = FeatureOp.GET
        allowed = allowed_ops.get(feature)
        if allowed is None:  # libvfio-user: device_feature_flags_supported() == 0 -> EINVAL
            raise _Failure(_errno.EINVAL, f"device feature {feature} unsupported")
        asked = ops & (FeatureOp.GET | FeatureOp.SET)
        if asked & ~allowed:
            raise _Failure(_errno.EINVAL, f"feature {feature}: operation not supported")
        if ops & FeatureOp.PROBE:  # PROTOCOL.md section 3: the reply echoes the request
            return wire.DeviceFeatureReply.echo(msg), []
        handler = {
            FeatureIndex.MIGRATION: self._feat_migration,
            FeatureIndex.MIG_DEVICE_STATE: self._feat_state,
            FeatureIndex.DMA_LOGGING_START: self._feat_log_start,
            FeatureIndex.DMA_LOGGING_STOP: self._feat_log_stop,
            FeatureIndex.DMA_LOGGING_REPORT: self._feat_log_report,
            FeatureIndex.MIG_DATA_SIZE: self._feat_mig_data_size,
        }[FeatureIndex(feature)]
        data = handler(msg)
        if ops & FeatureOp.SET:  # PROTOCOL.md section 3: a SET reply echoes the request
            return wire.DeviceFeatureReply.echo(msg), []
        reply = wire.DeviceFeatureReply(
            feature=msg.feature, ops=msg.ops, data=data, msg_id=msg.msg_id
        )
        # ``argsz`` is the largest reply the client takes (vfio-user.rst "argsz"): a GET whose
        # reply does not fit is refused with EINVAL (libvfio-user's
        # handle_migration_device_feature_get). These GETs have no side effect, so checking
        # after building the reply is safe; DMA_LOGGING_REPORT (read-and-clear) checks first.
        if (reply.argsz or 0) > (msg.argsz or 0):
            raise _Failure(
                _errno.EINVAL, f"feature {feature} GET: argsz {msg.argsz} < reply {reply.argsz}"
            )
        return reply, []

    def _feat_migration(self, msg: wire.DeviceFeature) -> Any:
        return wire.MigrationInfo(self.device.migration_caps)

    def _feat_state(self, msg: wire.DeviceFeature) -> Any:
        if msg.ops & FeatureOp.GET:
            return wire.MigDeviceState(self.state, 0)
        data = msg.data
        if not isinstance(data, wire.MigDeviceState):
            raise _Failure(_errno.EINVAL, "MIG_DEVICE_STATE SET without a state", echo=True)
        try:
            result = self.fsm.set_state(int(data.device_state))
        except InvalidTransition as exc:
            raise _Failure(exc.errno, str(exc), echo=True) from None
        if result.error is not None:
            raise _Failure(result.error.errno, str(result.error), echo=True)
        return data

    def _mig_data_size_fn(self) -> Callable[[], int] | None:
        """The device's ``pending_bytes`` when MIG_DATA_SIZE is enabled and it has one."""
        if not self.config.experimental_mig_data_size:
            return None
        fn = getattr(self.device, "pending_bytes", None)
        return fn if callable(fn) else None

    def _feat_mig_data_size(self, msg: wire.DeviceFeature) -> Any:
        fn = self._mig_data_size_fn()
        if fn is None:  # not reached: _feature checked it
            raise _Failure(_errno.EINVAL, "MIG_DATA_SIZE unsupported")
        try:
            size = int(fn())
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc)) from None
        return MigDataSize(min(max(size, 0), U64_MAX))

    def _feat_log_start(self, msg: wire.DeviceFeature) -> Any:
        data = msg.data
        if not isinstance(data, wire.DmaLoggingControl):
            raise _Failure(_errno.EINVAL, "DMA_LOGGING_START without control data", echo=True)
        if len(data.ranges) > self.config.max_logging_ranges:
            raise _Failure(
                _errno.E2BIG,
                f"DMA_LOGGING_START {len(data.ranges)} ranges > {self.config.max_logging_ranges}",
                echo=True,
            )
        try:
            self.device.dirty_log.start(data.page_size, [(r.iova, r.length) for r in data.ranges])
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc), echo=True) from None
        return data

    def _feat_log_stop(self, msg: wire.DeviceFeature) -> Any:
        try:
            self.device.dirty_log.stop()
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc), echo=True) from None
        return msg.data

    def _feat_log_report(self, msg: wire.DeviceFeature) -> Any:
        data = msg.data
        if not isinstance(data, wire.DmaLoggingReport):
            raise _Failure(_errno.EINVAL, "DMA_LOGGING_REPORT without a range")
        page_size = data.page_size
        if page_size <= 0 or page_size & (page_size - 1):
            raise _Failure(_errno.EINVAL, f"DMA_LOGGING_REPORT page_size {page_size:#x}")
        if data.length < page_size:  # libvfio-user's get_bitmap_size()
            raise _Failure(
                _errno.EINVAL, f"DMA_LOGGING_REPORT length {data.length:#x} < page_size"
            )
        size = wire.bitmap_len(data.length, page_size)
        need = DEVICE_FEATURE.size + FEATURE_LOGGING_REPORT.size + size
        if (msg.argsz or 0) < need:  # argsz: the largest reply taken (vfio-user.rst)
            raise _Failure(_errno.EINVAL, f"DMA_LOGGING_REPORT argsz {msg.argsz} < {need}")
        limit = min(self.config.max_bitmap_size, self._client_limit())
        if size > limit:  # checked before anything is allocated or cleared
            raise _Failure(_errno.E2BIG, f"DMA_LOGGING_REPORT bitmap {size} bytes > {limit}")
        if not self.dma.covers(data.iova, data.length):  # libvfio-user: dma_addr_to_sgl
            raise _Failure(
                _errno.ENOENT,
                f"DMA_LOGGING_REPORT {data.iova:#x}+{data.length:#x} is not all DMA-mapped",
            )
        try:
            pages = self.device.dirty_log.report(data.iova, data.length, data.page_size)
            bitmap = wire.DirtyBitmap.from_pages(data.iova, data.length, data.page_size, pages)
        except (DeviceError, ValueError) as exc:
            raise _Failure(getattr(exc, "errno", _errno.EINVAL), str(exc)) from None
        return wire.DmaLoggingReportData(data.iova, data.length, data.page_size, bitmap.to_bytes())

    # ----- handlers: migration data ------------------------------------------------------------
    def _mig_data_read(self, msg: wire.MigDataRead, fds: list[int]) -> tuple[Any, list[int]]:
        # The reply goes to the client: its max_data_xfer_size bounds it (PROTOCOL.md section
        # 4, libvfio-user's handle_mig_data_read); ours bounds what we buffer (SECURITY.md).
        limit = min(self.config.max_data_xfer_size, self._client_limit())
        if msg.size > limit:
            raise _Failure(_errno.EINVAL, f"MIG_DATA_READ size {msg.size} > {limit}")
        if msg.size == 0:  # nothing asked, nothing read (libvfio-user: a 0-byte read_data)
            return wire.MigDataReadReply(b"", None, msg_id=msg.msg_id), []
        try:
            data = self.device.mig_data_read(msg.size)
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc)) from None
        requested = msg.size if self._pad_mig_data else None
        return wire.MigDataReadReply(data, requested, msg_id=msg.msg_id), []

    def _mig_data_write(self, msg: wire.MigDataWrite, fds: list[int]) -> tuple[Any, list[int]]:
        limit = self.config.max_data_xfer_size
        if len(msg.data) > limit:
            raise _Failure(_errno.EINVAL, f"MIG_DATA_WRITE size {len(msg.data)} > {limit}")
        try:
            self.device.mig_data_write(msg.data)  # a view into the message's own buffer
        except DeviceError as exc:
            raise _Failure(exc.errno, str(exc)) from None
        return wire.MigDataWriteReply(msg_id=msg.msg_id), []

    # ----- device-initiated DMA ----------------------------------------------------------------
    def _tick(self, now: float) -> None:
        self.device.tick(now)
        if self._job is None:
            job = self.device.take_dma_job()
            if job is not None:
                self._job = job
                self._advance(None, first=True)

    def _advance(self, result: bytes | DmaFault | None, first: bool = False) -> None:
        """Resume the job with ``result`` and run ops until one must wait for the client."""
        job = self._job
        while job is not None:
            try:
                if first:
                    op = next(job)
                    first = False
                elif isinstance(result, DmaFault):
                    op = job.throw(result)
                else:
                    op = job.send(result)
            except StopIteration:
                self._job = None
                return
            try:
                route = self.dma.route(op)
                if op.kind in (DmaKind.CHECK_READ, DmaKind.CHECK_WRITE):
                    result = None
                    continue
                if route is Route.DIRECT:
                    try:
                        result = self.dma.resolve(op)
                    finally:
                        # Mark even when the write faulted part-way: over-marking only
                        # resends a page, under-marking would lose data in a migration.
                        if op.kind is DmaKind.WRITE:
                            self.device.dirty_log.mark(op.iova, op.length)
                    continue
            except DmaFault as fault:
                result = fault
                continue
            chunks = -(-op.length // max(1, self._client_limit()))
            if chunks > MAX_DMA_CHUNKS_PER_OP:
                result = DmaFault(
                    f"DMA op of {op.length} bytes needs {chunks} messages", op.iova, op.length
                )
                continue
            self._send_dma_messages(op)
            return

    def _client_limit(self) -> int:
        caps = self.client_caps
        return caps.max_data_xfer_size if caps is not None else wire.DEFAULT_MAX_DATA_XFER_SIZE

    def _send_dma_messages(self, op: DmaOp) -> None:
        pending = _PendingOp(op)
        if op.kind is DmaKind.READ:
            pending.buffer = bytearray(op.length)
        limit = max(1, self._client_limit())
        for off in range(0, op.length, limit):
            size = min(limit, op.length - off)
            msg_id = self._next_id
            self._next_id = 0x8000 + ((self._next_id + 1) & 0x7FFF)
            pending.waiting[msg_id] = (off, size)
            msg: Any
            if op.kind is DmaKind.READ:
                msg = wire.DmaRead(addr=op.iova + off, count=size, msg_id=msg_id)
            else:
                assert op.data is not None
                msg = wire.DmaWrite(
                    addr=op.iova + off,
                    count=size,
                    data=memoryview(op.data)[off : off + size],
                    msg_id=msg_id,
                )
            self._out.append((wire.encode_parts(msg, strict_spec=self.config.strict_spec), []))
            self.stats["dma_messages"] += 1
        self._pending = pending

    def _client_reply(self, msg: Any) -> Handled:
        pending = self._pending
        if pending is None or msg.msg_id not in pending.waiting:
            return Handled(msg.command, msg.msg_id, True, _errno.EINVAL, "unexpected reply")
        off, size = pending.waiting.pop(msg.msg_id)
        is_read = pending.op.kind is DmaKind.READ
        expected = Command.DMA_READ if is_read else Command.DMA_WRITE
        addr = pending.op.iova + off
        if isinstance(msg, wire.ErrorReply):
            pending.fault = DmaFault(f"client refused DMA (errno {msg.errno})", addr, size)
        elif msg.command != expected or (msg.addr, msg.count) != (addr, size):
            pending.fault = DmaFault(
                f"{msg.command.name} reply does not match the {expected.name} sent", addr, size
            )
        elif is_read:
            data = msg.data
            if len(data) != size:
                pending.fault = DmaFault("short DMA_READ reply", addr, size)
            else:
                pending.buffer[off : off + size] = data
        if pending.waiting:
            return Handled(msg.command, msg.msg_id, True, None)
        self._pending = None
        if pending.fault is not None:
            self._advance(pending.fault)
        elif pending.op.kind is DmaKind.READ:
            self._advance(bytes(pending.buffer))
        else:
            self.device.dirty_log.mark(pending.op.iova, pending.op.length)
            self._advance(None)
        return Handled(msg.command, msg.msg_id, True, None)


__all__ = ["Handled", "ServerConfig", "ServerCore", "SocketEnd"]
