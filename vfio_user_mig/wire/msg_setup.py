"""Session and device set-up messages: commands 1-4 and 13.

VERSION, DMA_MAP, DMA_UNMAP, DEVICE_GET_INFO, DEVICE_RESET (vfio-user.rst sections of the
same names; PROTOCOL.md section 2). Region queries are in :mod:`.msg_region`, interrupts in
:mod:`.msg_irq`. Field layouts come from
:mod:`vfio_user_mig.wire.layouts`; this module only states the size rules between the fixed
part, the ``argsz``/``count`` fields and the variable tail.
"""

from __future__ import annotations

from typing import ClassVar

from vfio_user_mig.wire.capabilities import Capabilities
from vfio_user_mig.wire.constants import (
    HEADER_SIZE,
    Command,
    DmaMapFlag,
    DmaUnmapFlag,
)
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layout import Layout
from vfio_user_mig.wire.layouts import (
    DEVICE_INFO,
    DMA_MAP,
    DMA_UNMAP,
    IO_FDS,
    IRQ_INFO,
    IRQ_SET,
    REGION_INFO,
    UNMAP_BITMAP,
    VERSION,
)
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
    EmptyPayload,
    FixedLayout,
    Message,
    Parts,
    Reply,
    Request,
    expect_len,
    expect_min,
    hstruct,
    register,
)
from vfio_user_mig.wire.record import Record, record

_H_VERSION = hstruct(VERSION)
_H_DMA_MAP = hstruct(DMA_MAP)
_H_DMA_UNMAP = hstruct(DMA_UNMAP)
_H_DEVICE_INFO = hstruct(DEVICE_INFO)
_H_REGION_INFO = hstruct(REGION_INFO)
_H_IO_FDS = hstruct(IO_FDS)
_H_IRQ_INFO = hstruct(IRQ_INFO)
_H_IRQ_SET = hstruct(IRQ_SET)


# --------------------------------------------------------------------------- VERSION (1)


def _version_encode(msg: Version | VersionReply) -> Parts:
    tail = msg.capabilities.encode() if msg.capabilities is not None else b""
    size = HEADER_SIZE + VERSION.size + len(tail)
    head = _H_VERSION.pack(msg.msg_id, msg.COMMAND, size, msg._flags(), 0, msg.major, msg.minor)
    return [head + tail]


def _version_fields(payload: memoryview) -> tuple[int, int, Capabilities | None]:
    expect_min("VERSION", payload, VERSION.size)
    major, minor = VERSION.unpack_from(payload)
    rest = payload[VERSION.size :]
    return major, minor, (Capabilities.parse(rest) if len(rest) else None)


@register(Command.VERSION)
@record
class Version(Request):
    """VERSION request {major u16, minor u16, optional JSON + NUL}; libvfio-user speaks 0.2."""

    major: int = 0
    minor: int = 2
    capabilities: Capabilities | None = None

    def _encode(self, strict: bool) -> Parts:
        return _version_encode(self)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        major, minor, caps = _version_fields(payload)
        return cls(major, minor, caps, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.VERSION)
@record
class VersionReply(Reply):
    """VERSION reply: same format as the request (vfio-user.rst "Version", Reply)."""

    major: int = 0
    minor: int = 2
    capabilities: Capabilities | None = None

    def _encode(self, strict: bool) -> Parts:
        return _version_encode(self)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        major, minor, caps = _version_fields(payload)
        return cls(major, minor, caps, msg_id=msg_id)


# --------------------------------------------------------------------------- DMA_MAP (2)

_DMA_MAP_KNOWN = int(DmaMapFlag.READ | DmaMapFlag.WRITE | DmaMapFlag.MMAP | DmaMapFlag.FILE_IO)


@register(Command.DMA_MAP)
@record
class DmaMap(Request):
    """DMA_MAP {argsz, flags, offset, addr, size}; the mappable fd travels as SCM_RIGHTS."""

    addr: int
    size: int
    offset: int = 0
    flags: int = DmaMapFlag.READ | DmaMapFlag.WRITE
    argsz: int = DMA_MAP.size

    def _encode(self, strict: bool) -> Parts:
        return [
            _H_DMA_MAP.pack(
                self.msg_id, self.COMMAND, HEADER_SIZE + DMA_MAP.size, self._flags(), 0,
                self.argsz, self.flags, self.offset, self.addr, self.size,
            )
        ]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_len("DMA_MAP", payload, DMA_MAP.size)
        argsz, mflags, offset, addr, size = DMA_MAP.unpack_from(payload)
        if argsz < DMA_MAP.size:
            raise invalid("DMA_MAP.argsz", f"{argsz} < {DMA_MAP.size}")
        if mflags & ~_DMA_MAP_KNOWN:
            raise invalid("DMA_MAP.flags", f"unknown bits {mflags & ~_DMA_MAP_KNOWN:#x}")
        nr = bool(flags & NO_REPLY)
        return cls(addr, size, offset, mflags, argsz, msg_id=msg_id, no_reply=nr)


@register(Command.DMA_MAP)
@record
class DmaMapReply(EmptyPayload, Reply):
    """DMA_MAP reply: no payload."""




# --------------------------------------------------------------------------- DMA_UNMAP (3)


@record
class UnmapBitmap(Record):
    """libvfio-user's ``struct vfio_user_bitmap`` (DMA_UNMAP with GET_DIRTY_BITMAP)."""

    pgsize: int
    size: int


def _unmap_fields(
    name: str, payload: memoryview, reply: bool
) -> tuple[int, int, int, int, UnmapBitmap | None, Data]:
    expect_min(name, payload, DMA_UNMAP.size)
    argsz, flags, addr, size = DMA_UNMAP.unpack_from(payload)
    if flags not in (0, DmaUnmapFlag.GET_DIRTY_BITMAP, DmaUnmapFlag.ALL):
        raise invalid(f"{name}.flags", f"{flags:#x} is not 0, GET_DIRTY_BITMAP or ALL")
    if flags != DmaUnmapFlag.GET_DIRTY_BITMAP:
        expect_len(name, payload, DMA_UNMAP.size)
        if argsz < DMA_UNMAP.size:
            raise invalid(f"{name}.argsz", f"{argsz} < {DMA_UNMAP.size}")
        return argsz, flags, addr, size, None, b""
    fixed = DMA_UNMAP.size + UNMAP_BITMAP.size
    expect_min(name, payload, fixed)
    bitmap = UnmapBitmap(*UNMAP_BITMAP.unpack_from(payload, DMA_UNMAP.size))
    data = payload[fixed:]
    if reply and len(data) != bitmap.size:
        raise invalid(f"{name}.bitmap.size", f"{bitmap.size} != {len(data)} bitmap bytes")
    if not reply and len(data):
        raise invalid(f"{name}.payload", f"{len(data)} unexpected bytes after the bitmap")
    if argsz < fixed + bitmap.size:
        raise invalid(f"{name}.argsz", f"{argsz} < {fixed} + bitmap size {bitmap.size}")
    return argsz, flags, addr, size, bitmap, data


def _unmap_encode(
    msg: DmaUnmap | DmaUnmapReply, bitmap: UnmapBitmap | None, data: Data
) -> Parts:
    tail = b"" if bitmap is None else UNMAP_BITMAP.pack(bitmap.pgsize, bitmap.size)
    size = HEADER_SIZE + DMA_UNMAP.size + len(tail) + len(data)
    head = _H_DMA_UNMAP.pack(
        msg.msg_id, msg.COMMAND, size, msg._flags(), 0, msg.argsz, msg.flags, msg.addr, msg.size
    )
    return [head + tail, data] if len(data) else [head + tail]


@register(Command.DMA_UNMAP)
@record
class DmaUnmap(Request):
    """DMA_UNMAP {argsz, flags, addr, size} (+ {pgsize, size} when flags = GET_DIRTY_BITMAP)."""

    addr: int
    size: int
    flags: int = 0
    argsz: int = DMA_UNMAP.size
    bitmap: UnmapBitmap | None = None

    def _encode(self, strict: bool) -> Parts:
        return _unmap_encode(self, self.bitmap, b"")

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        argsz, uflags, addr, size, bitmap, _ = _unmap_fields("DMA_UNMAP", payload, False)
        nr = bool(flags & NO_REPLY)
        return cls(addr, size, uflags, argsz, bitmap, msg_id=msg_id, no_reply=nr)


@register(Command.DMA_UNMAP)
@record
class DmaUnmapReply(Reply):
    """DMA_UNMAP reply: the request's 24 bytes echoed (+ bitmap header and bitmap)."""

    addr: int
    size: int
    flags: int = 0
    argsz: int = DMA_UNMAP.size
    bitmap: UnmapBitmap | None = None
    bitmap_data: Data = b""

    def _encode(self, strict: bool) -> Parts:
        return _unmap_encode(self, self.bitmap, self.bitmap_data)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        argsz, uflags, addr, size, bitmap, data = _unmap_fields("DMA_UNMAP.reply", payload, True)
        return cls(addr, size, uflags, argsz, bitmap, data, msg_id=msg_id)


# --------------------------------------------------------------------------- DEVICE_GET_INFO (4)


@register(Command.DEVICE_GET_INFO)
@record
class DeviceGetInfo(FixedLayout, Request):
    """DEVICE_GET_INFO request: ``argsz`` = max reply size; other fields should be zero."""

    LAYOUT: ClassVar[Layout] = DEVICE_INFO

    argsz: int = DEVICE_INFO.size
    flags: int = 0
    num_regions: int = 0
    num_irqs: int = 0


@register(Command.DEVICE_GET_INFO)
@record
class DeviceGetInfoReply(FixedLayout, Reply):
    """DEVICE_GET_INFO reply ``struct vfio_device_info`` (16 bytes; libvfio-user sends 16)."""

    LAYOUT: ClassVar[Layout] = DEVICE_INFO

    flags: int
    num_regions: int
    num_irqs: int
    argsz: int = DEVICE_INFO.size


# --------------------------------------------------------------------------- DEVICE_RESET (13)


@register(Command.DEVICE_RESET)
@record
class DeviceReset(EmptyPayload, Request):
    """DEVICE_RESET: neither request nor reply has a payload."""


@register(Command.DEVICE_RESET)
@record
class DeviceResetReply(EmptyPayload, Reply):
    """DEVICE_RESET reply: no payload."""


