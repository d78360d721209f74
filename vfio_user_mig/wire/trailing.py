"""Trailing bytes after a fixed-size request payload: where a request ends, so a receiver can
ignore what follows it.

vfio-user.rst gives each request's payload as a struct and says nothing of bytes after it.
libvfio-user, the reference server, reads the struct and ignores the rest, and so does our
server by default (docs/wire-compat.md, "Server behaviour"); with ``--strict-spec`` such a
request is refused with EINVAL, which is what the codec alone does (decode-then-encode stays
byte-identical there).

:func:`request_end` knows, for each request whose payload has a fixed size (or a size its
own fields give), how many payload bytes it uses; :func:`trim_request` cuts a whole message
to that size. Requests whose payload is variable by nature (REGION_WRITE, DMA_UNMAP with a
dirty bitmap, SET_IRQS with data, VERSION's JSON) are not trimmed: for them there is no
"after". Nor is DEVICE_FEATURE, whose ``argsz`` says how much the request carries: like
libvfio-user, a payload within ``argsz`` is taken whole and one beyond it is EINVAL.
"""

from __future__ import annotations

import struct

from vfio_user_mig.wire.constants import (
    HEADER_SIZE,
    Command,
    DmaUnmapFlag,
    IrqSetFlag,
    MsgType,
)
from vfio_user_mig.wire.layouts import (
    DEVICE_INFO,
    DMA_MAP,
    DMA_UNMAP,
    IRQ_INFO,
    IRQ_SET,
    MIG_DATA,
    REGION_ACCESS,
    REGION_INFO,
)

_HEADER = struct.Struct("<HHIII")
_U32 = struct.Struct("<I")

#: Requests whose payload is one struct, by command: the struct's size.
_FIXED: dict[int, int] = {
    Command.DEVICE_GET_INFO: DEVICE_INFO.size,
    Command.DEVICE_GET_REGION_INFO: REGION_INFO.size,
    Command.DEVICE_GET_IRQ_INFO: IRQ_INFO.size,
    Command.DMA_MAP: DMA_MAP.size,
    Command.REGION_READ: REGION_ACCESS.size,
    Command.MIG_DATA_READ: MIG_DATA.size,
    Command.DEVICE_RESET: 0,
}


def request_end(command: int, payload: memoryview | bytes) -> int | None:
    """How many bytes of ``payload`` the request uses, or ``None`` when its size is not fixed
    (or the payload is too short to tell: then the codec's own error stands)."""
    fixed = _FIXED.get(command)
    if fixed is not None:
        return fixed
    n = len(payload)
    if command == Command.DMA_UNMAP and n >= DMA_UNMAP.size:
        flags = _U32.unpack_from(payload, 4)[0]
        return None if flags & DmaUnmapFlag.GET_DIRTY_BITMAP else DMA_UNMAP.size
    if command == Command.DEVICE_SET_IRQS and n >= IRQ_SET.size:
        flags = _U32.unpack_from(payload, 4)[0]
        return IRQ_SET.size if flags & IrqSetFlag.DATA_NONE else None
    if command == Command.MIG_DATA_WRITE and n >= MIG_DATA.size:
        return int(MIG_DATA.size + _U32.unpack_from(payload, 4)[0])
    return None


def trim_request(message: memoryview | bytes | bytearray) -> bytearray | None:
    """``message`` (a whole request, header included) without the bytes after its payload,
    with ``msg_size`` rewritten; ``None`` when it is not a request, has no fixed end, or
    nothing follows that end."""
    if len(message) < HEADER_SIZE:
        return None
    msg_id, command, _size, flags, _err = _HEADER.unpack_from(message, 0)
    if flags & 0xF != MsgType.COMMAND:
        return None
    payload = memoryview(message)[HEADER_SIZE:]
    end = request_end(command, payload)
    if end is None or end >= len(payload):
        return None
    trimmed = bytearray(message[:HEADER_SIZE + end])
    _HEADER.pack_into(trimmed, 0, msg_id, command, HEADER_SIZE + end, flags, 0)
    return trimmed
