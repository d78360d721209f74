"""Data-carrying access messages: commands 9-12 and 15.

REGION_READ/WRITE {offset u64, region u32, count u32, data}, DMA_READ/WRITE {addr u64,
count u64, data} and REGION_WRITE_MULTI (vfio-user.rst "Read and Write Operations",
"VFIO_USER_REGION_WRITE_MULTI"; PROTOCOL.md section 2). Decoded ``data`` is a memoryview into
the received buffer (zero-copy); encoding returns the data as its own part (no concatenation).
These classes are the server's hot path: one struct unpack and one constructor per decode.
"""

from __future__ import annotations

from collections.abc import Callable

from vfio_user_mig.wire.constants import HEADER_SIZE, Command, MsgType
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layouts import (
    DMA_ACCESS,
    DMA_WRITE_REPLY_SPEC,
    REGION_ACCESS,
    WRITE_MULTI,
    WRITE_MULTI_ENTRY,
)
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
    Message,
    Parts,
    Reply,
    Request,
    expect_len,
    fast_factory,
    header_only,
    hstruct,
    register,
)
from vfio_user_mig.wire.record import Record, record

_RA = REGION_ACCESS.size
_DA = DMA_ACCESS.size
_RA_UNPACK = REGION_ACCESS.struct.unpack_from
_DA_UNPACK = DMA_ACCESS.struct.unpack_from
_H_RA = hstruct(REGION_ACCESS).pack
_H_DA = hstruct(DMA_ACCESS).pack
_H_DA_SPEC = hstruct(DMA_WRITE_REPLY_SPEC).pack
_H_WM = hstruct(WRITE_MULTI).pack
_RA_MSG = HEADER_SIZE + _RA
_REPLY = int(MsgType.REPLY)
_C_RR = int(Command.REGION_READ)
_C_RW = int(Command.REGION_WRITE)
_C_DR = int(Command.DMA_READ)
_C_DW = int(Command.DMA_WRITE)
_C_WM = int(Command.REGION_WRITE_MULTI)
#: Size of the data field of one REGION_WRITE_MULTI entry.
_WM_DATA = WRITE_MULTI_ENTRY.fields[-1].size
_DA_MSG = HEADER_SIZE + _DA


def _count_mismatch(name: str, count: int, n: int) -> Exception:
    return invalid(f"{name}.count", f"{count} != {n} data bytes")


def _data_len(name: str, data: Data, count: int) -> int:
    """``len(data)``, which must equal the message's ``count`` field (encoding)."""
    n = len(data)
    if n != count:
        raise _count_mismatch(name, count, n)
    return n


def _parts(head: bytes, data: Data) -> Parts:
    """Header + fixed part, then the data as its own part (none when empty)."""
    return [head, data] if len(data) else [head]


def _split(
    name: str, payload: memoryview, size: int, unpack: Callable[[memoryview], tuple[int, ...]]
) -> tuple[tuple[int, ...], memoryview]:
    """(fixed fields, data) of a payload ``{fixed part of size bytes, data}`` whose last fixed
    field is the data's ``count`` (decoding; the data is a view, not a copy)."""
    n = len(payload)
    if n < size:
        expect_len(name, payload, size)
    fixed = unpack(payload)
    if n - size != fixed[-1]:
        raise _count_mismatch(name, fixed[-1], n - size)
    return fixed, payload[size:]


# --------------------------------------------------------------------------- REGION_READ (9)


@register(Command.REGION_READ)
@record
class RegionRead(Request):
    """REGION_READ request: read ``count`` bytes at ``offset`` of region ``region``."""

    offset: int
    region: int
    count: int

    def _encode(self, strict: bool) -> Parts:
        return [
            _H_RA(
                self.msg_id, _C_RR, _RA_MSG, NO_REPLY if self.no_reply else 0, 0,
                self.offset, self.region, self.count,
            )
        ]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        if len(payload) != _RA:
            expect_len("REGION_READ", payload, _RA)
        offset, region, count = _RA_UNPACK(payload)
        return _new_rr(msg_id, flags & NO_REPLY != 0, offset, region, count)


@register(Command.REGION_READ)
@record
class RegionReadReply(Reply):
    """REGION_READ reply: the request's 16 bytes + ``count`` bytes of ``data``.

    ``bare`` marks libvfio-user's reply to a count-0 access: header only, no payload (then
    offset, region and count are 0). ``strict_spec`` sends the 16 bytes instead.
    """

    offset: int
    region: int
    count: int
    data: Data = b""
    bare: bool = False

    def _encode(self, strict: bool) -> Parts:
        n = _data_len("REGION_READ.reply", self.data, self.count)
        if self.bare and not strict:
            if self.count:
                raise invalid("REGION_READ.reply.bare", "only for count 0")
            return header_only(self)
        head = _H_RA(
            self.msg_id, _C_RR, _RA_MSG + n, _REPLY, 0, self.offset, self.region, self.count
        )
        return _parts(head, self.data)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        if not len(payload):
            return cls(0, 0, 0, b"", True, msg_id=msg_id)
        (offset, region, count), data = _split("REGION_READ.reply", payload, _RA, _RA_UNPACK)
        return _new_rrr(msg_id, offset, region, count, data, False)


# --------------------------------------------------------------------------- REGION_WRITE (10)


@register(Command.REGION_WRITE)
@record
class RegionWrite(Request):
    """REGION_WRITE request: write ``data`` (``count`` bytes) at ``offset`` of ``region``."""

    offset: int
    region: int
    count: int
    data: Data

    def _encode(self, strict: bool) -> Parts:
        n = _data_len("REGION_WRITE", self.data, self.count)
        head = _H_RA(
            self.msg_id, _C_RW, _RA_MSG + n, NO_REPLY if self.no_reply else 0, 0,
            self.offset, self.region, self.count,
        )
        return _parts(head, self.data)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        (offset, region, count), data = _split("REGION_WRITE", payload, _RA, _RA_UNPACK)
        return _new_rw(msg_id, flags & NO_REPLY != 0, offset, region, count, data)


@register(Command.REGION_WRITE)
@record
class RegionWriteReply(Reply):
    """REGION_WRITE reply: the request's 16 bytes, no data (``bare``: see RegionReadReply)."""

    offset: int
    region: int
    count: int
    bare: bool = False

    def _encode(self, strict: bool) -> Parts:
        if self.bare and not strict:
            if self.count or self.offset or self.region:
                raise invalid("REGION_WRITE.reply.bare", "only for a zeroed count-0 reply")
            return header_only(self)
        return [_H_RA(self.msg_id, _C_RW, _RA_MSG, _REPLY, 0, self.offset, self.region, self.count)]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        if len(payload) == 0:
            return cls(0, 0, 0, True, msg_id=msg_id)
        expect_len("REGION_WRITE.reply", payload, _RA)
        offset, region, count = _RA_UNPACK(payload)
        return _new_rwr(msg_id, offset, region, count, False)


# Hot-path constructors (fields order: msg_id, [no_reply,] own fields).
_new_rr = fast_factory(RegionRead)
_new_rrr = fast_factory(RegionReadReply)
_new_rw = fast_factory(RegionWrite)
_new_rwr = fast_factory(RegionWriteReply)


# --------------------------------------------------------------------------- DMA_READ (11)


@register(Command.DMA_READ)
@record
class DmaRead(Request):
    """DMA_READ (server -> client): read ``count`` bytes of client memory at ``addr``."""

    addr: int
    count: int

    def _encode(self, strict: bool) -> Parts:
        return [
            _H_DA(
                self.msg_id, _C_DR, _DA_MSG, NO_REPLY if self.no_reply else 0, 0,
                self.addr, self.count,
            )
        ]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_len("DMA_READ", payload, _DA)
        addr, count = _DA_UNPACK(payload)
        return cls(addr, count, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.DMA_READ)
@record
class DmaReadReply(Reply):
    """DMA_READ reply {addr, count, data}."""

    addr: int
    count: int
    data: Data

    def _encode(self, strict: bool) -> Parts:
        n = _data_len("DMA_READ.reply", self.data, self.count)
        head = _H_DA(self.msg_id, _C_DR, _DA_MSG + n, _REPLY, 0, self.addr, self.count)
        return _parts(head, self.data)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        (addr, count), data = _split("DMA_READ.reply", payload, _DA, _DA_UNPACK)
        return cls(addr, count, data, msg_id=msg_id)


# --------------------------------------------------------------------------- DMA_WRITE (12)


@register(Command.DMA_WRITE)
@record
class DmaWrite(Request):
    """DMA_WRITE (server -> client): write ``data`` (``count`` bytes) at ``addr``."""

    addr: int
    count: int
    data: Data

    def _encode(self, strict: bool) -> Parts:
        n = _data_len("DMA_WRITE", self.data, self.count)
        head = _H_DA(
            self.msg_id, _C_DW, _DA_MSG + n, NO_REPLY if self.no_reply else 0, 0,
            self.addr, self.count,
        )
        return _parts(head, self.data)

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        (addr, count), data = _split("DMA_WRITE", payload, _DA, _DA_UNPACK)
        return cls(addr, count, data, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.DMA_WRITE)
@record
class DmaWriteReply(Reply):
    """DMA_WRITE reply {addr u64, count u64} (libvfio-user; PROTOCOL.md section 2).

    The spec's table gives ``count`` 4 bytes (a 12-byte payload): ``spec_short_count`` marks
    (and ``strict_spec`` forces) that form; both are accepted.
    """

    addr: int
    count: int
    spec_short_count: bool = False

    def _encode(self, strict: bool) -> Parts:
        if self.spec_short_count or strict:
            size = HEADER_SIZE + DMA_WRITE_REPLY_SPEC.size
            return [_H_DA_SPEC(self.msg_id, _C_DW, size, _REPLY, 0, self.addr, self.count)]
        return [_H_DA(self.msg_id, _C_DW, _DA_MSG, _REPLY, 0, self.addr, self.count)]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        if len(payload) == DMA_WRITE_REPLY_SPEC.size:
            addr, count = DMA_WRITE_REPLY_SPEC.unpack_from(payload)
            return cls(addr, count, True, msg_id=msg_id)
        expect_len("DMA_WRITE.reply", payload, _DA)
        addr, count = _DA_UNPACK(payload)
        return cls(addr, count, msg_id=msg_id)


# --------------------------------------------------------------------------- WRITE_MULTI (15)


@record
class MultiWrite(Record):
    """One coalesced write: ``count`` (<= 8) bytes of the 8-byte ``data`` field are written.

    ``data`` is the raw 8-byte field (bytes past ``count`` are kept for byte-exactness); use
    :meth:`of` to build one from the bytes to write.
    """

    offset: int
    region: int
    count: int
    data: bytes

    @classmethod
    def of(cls, offset: int, region: int, value: bytes) -> MultiWrite:
        if len(value) > _WM_DATA:
            raise invalid("REGION_WRITE_MULTI.wrs.count", f"{len(value)} > {_WM_DATA}")
        return cls(offset, region, len(value), value.ljust(_WM_DATA, b"\0"))

    @property
    def value(self) -> bytes:
        """The bytes actually written."""
        return self.data[: self.count]


@register(Command.REGION_WRITE_MULTI)
@record
class RegionWriteMulti(Request):
    """REGION_WRITE_MULTI {wr_cnt u64, wrs[wr_cnt] of {offset, region, count, data[8]}}."""

    writes: tuple[MultiWrite, ...]

    def _encode(self, strict: bool) -> Parts:
        body = []
        for i, w in enumerate(self.writes):
            if w.count > _WM_DATA or len(w.data) != _WM_DATA:
                raise invalid(f"REGION_WRITE_MULTI.wrs[{i}]", "count <= 8 and 8 data bytes")
            body.append(WRITE_MULTI_ENTRY.pack(w.offset, w.region, w.count, w.data))
        tail = b"".join(body)
        size = HEADER_SIZE + WRITE_MULTI.size + len(tail)
        return [_H_WM(self.msg_id, _C_WM, size, self._flags(), 0, len(self.writes)) + tail]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        name = "REGION_WRITE_MULTI"
        if len(payload) < WRITE_MULTI.size:
            expect_len(name, payload, WRITE_MULTI.size)
        (wr_cnt,) = WRITE_MULTI.unpack_from(payload)
        rest = len(payload) - WRITE_MULTI.size
        if wr_cnt * WRITE_MULTI_ENTRY.size != rest:
            raise invalid(f"{name}.wr_cnt", f"{wr_cnt} entries do not fill {rest} bytes")
        writes = []
        for i in range(wr_cnt):
            at = WRITE_MULTI.size + i * WRITE_MULTI_ENTRY.size
            w = MultiWrite(*WRITE_MULTI_ENTRY.unpack_from(payload, at))
            if w.count > _WM_DATA:
                raise invalid(f"{name}.wrs[{i}].count", f"{w.count} > 8")
            writes.append(w)
        return cls(tuple(writes), msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.REGION_WRITE_MULTI)
@record
class RegionWriteMultiReply(Reply):
    """REGION_WRITE_MULTI reply {wr_cnt u64}: the number of writes completed."""

    wr_cnt: int

    def _encode(self, strict: bool) -> Parts:
        return [_H_WM(self.msg_id, _C_WM, HEADER_SIZE + WRITE_MULTI.size, _REPLY, 0, self.wr_cnt)]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_len("REGION_WRITE_MULTI.reply", payload, WRITE_MULTI.size)
        (wr_cnt,) = WRITE_MULTI.unpack_from(payload)
        return cls(wr_cnt, msg_id=msg_id)
