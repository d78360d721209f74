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

from vfio_user_mig.wire.constants import (
    HEADER_SIZE,
    Command,
    DmaUnmapFlag,
    HeaderFlag,
    IrqSetFlag,
    MsgType,
)
from vfio_user_mig.wire.layouts import (
    DEVICE_INFO,
    DMA_MAP,
    DMA_UNMAP,
    HEADER,
    IRQ_INFO,
    IRQ_SET,
    MIG_DATA,
    REGION_ACCESS,
    REGION_INFO,
)

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
        _argsz, flags, _iova, _size = DMA_UNMAP.unpack_from(payload)
        return None if flags & DmaUnmapFlag.GET_DIRTY_BITMAP else DMA_UNMAP.size
    if command == Command.DEVICE_SET_IRQS and n >= IRQ_SET.size:
        _argsz, flags, _index, _start, _count = IRQ_SET.unpack_from(payload)
        return IRQ_SET.size if flags & IrqSetFlag.DATA_NONE else None
    if command == Command.MIG_DATA_WRITE and n >= MIG_DATA.size:
        _argsz, size = MIG_DATA.unpack_from(payload)
        return int(MIG_DATA.size + size)
    return None


def trim_request(message: memoryview | bytes | bytearray) -> bytearray | None:
    """``message`` (a whole request, header included) without the bytes after its payload,
    with ``msg_size`` rewritten; ``None`` when it is not a request, has no fixed end, or
    nothing follows that end."""
    if len(message) < HEADER_SIZE:
        return None
    msg_id, command, _size, flags, _err = HEADER.unpack_from(message, 0)
    if flags & HeaderFlag.TYPE_MASK != MsgType.COMMAND:
        return None
    payload = memoryview(message)[HEADER_SIZE:]
    end = request_end(command, payload)
    if end is None or end >= len(payload):
        return None
    return bytearray(HEADER.pack(msg_id, command, HEADER_SIZE + end, flags, 0)) + payload[:end]
