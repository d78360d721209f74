"""Region queries: DEVICE_GET_REGION_INFO (5) with its capability chain and
DEVICE_GET_REGION_IO_FDS (6) (vfio-user.rst sections of the same names; PROTOCOL.md section 2:
"GET_REGION_INFO: reply is min(request argsz, full size) bytes").
"""

from __future__ import annotations

from dataclasses import field

from vfio_user_mig.wire.constants import HEADER_SIZE, Command
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layouts import IO_FDS, REGION_INFO, SUB_REGION_LIBVFIO, SUB_REGION_SPEC
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
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
from vfio_user_mig.wire.region_caps import RegionCap, decode_caps, encode_caps

_H_REGION_INFO = hstruct(REGION_INFO)
_H_IO_FDS = hstruct(IO_FDS)


# --------------------------------------------------------------------------- REGION_INFO (5)


@register(Command.DEVICE_GET_REGION_INFO)
@record
class RegionInfo(Request):
    """DEVICE_GET_REGION_INFO request: ``index`` and ``argsz`` (max reply size) matter.

    libvfio-user's client sends its whole argsz-sized buffer, so bytes after the 32-byte
    struct are accepted and kept verbatim in ``tail`` (decode -> encode stays byte-identical);
    the spec's 32-byte request has an empty ``tail``.
    """

    index: int
    argsz: int = REGION_INFO.size
    flags: int = 0
    cap_offset: int = 0
    size: int = 0
    offset: int = 0
    tail: Data = b""

    def _encode(self, strict: bool) -> Parts:
        head = _H_REGION_INFO.pack(
            self.msg_id, self.COMMAND, HEADER_SIZE + REGION_INFO.size + len(self.tail),
            self._flags(), 0,
            self.argsz, self.flags, self.index, self.cap_offset, self.size, self.offset,
        )
        return [head, self.tail] if self.tail else [head]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_min("DEVICE_GET_REGION_INFO", payload, REGION_INFO.size)
        argsz, rflags, index, cap_offset, size, offset = REGION_INFO.unpack_from(payload)
        if argsz < REGION_INFO.size:
            raise invalid("DEVICE_GET_REGION_INFO.argsz", f"{argsz} < {REGION_INFO.size}")
        if len(payload) > argsz:
            raise invalid("DEVICE_GET_REGION_INFO.payload",
                          f"{len(payload)} bytes > argsz {argsz}")
        tail = payload[REGION_INFO.size:]
        return cls(
            index, argsz, rflags, cap_offset, size, offset, tail if len(tail) else b"",
            msg_id=msg_id, no_reply=bool(flags & NO_REPLY),
        )


@register(Command.DEVICE_GET_REGION_INFO)
@record
class RegionInfoReply(Reply):
    """DEVICE_GET_REGION_INFO reply: ``struct vfio_region_info`` + capability chain.

    ``argsz`` is the size needed for the full reply (default: 32 + chain). The payload sent is
    32 + chain bytes, or exactly ``truncated_to`` bytes when the caller's argsz was too small
    for the chain (libvfio-user then sends min(request argsz, full size) bytes, zero beyond the
    32-byte struct, no chain, no CAPS flag; PROTOCOL.md section 2). ``cap_offset`` is 32 when
    ``caps`` is non-empty, else 0. ``flags`` is sent as given (set ``RegionInfoFlag.CAPS``).
    """

    index: int
    flags: int
    size: int
    offset: int
    caps: tuple[RegionCap, ...] = ()
    argsz: int | None = None
    truncated_to: int | None = None
    _chain: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        chain = encode_caps(self.caps) if self.caps else b""
        object.__setattr__(self, "_chain", chain)
        if self.argsz is None:
            object.__setattr__(self, "argsz", REGION_INFO.size + len(chain))

    def _encode(self, strict: bool) -> Parts:
        chain = self._chain
        if self.truncated_to is not None:
            if chain or self.truncated_to < REGION_INFO.size:
                raise invalid(
                    "DEVICE_GET_REGION_INFO.truncated_to",
                    "needs no caps and a size of at least 32",
                )
            chain = bytes(self.truncated_to - REGION_INFO.size)
        size = HEADER_SIZE + REGION_INFO.size + len(chain)
        head = _H_REGION_INFO.pack(
            self.msg_id, self.COMMAND, size, self._flags(), 0,
            self.argsz, self.flags, self.index, REGION_INFO.size if self.caps else 0,
            self.size, self.offset,
        )
        return [head + chain]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        name = "DEVICE_GET_REGION_INFO.reply"
        expect_min(name, payload, REGION_INFO.size)
        argsz, rflags, index, cap_offset, size, offset = REGION_INFO.unpack_from(payload)
        n = len(payload)
        if argsz < n:
            raise invalid(f"{name}.argsz", f"{argsz} < payload size {n}")
        caps: tuple[RegionCap, ...] = ()
        truncated_to = None
        if cap_offset:
            if argsz != n:
                raise invalid(f"{name}.argsz", f"{argsz} != payload size {n} with caps")
            caps = decode_caps(payload, cap_offset)
        elif n > REGION_INFO.size:
            tail = payload[REGION_INFO.size :]
            if tail != bytes(len(tail)):
                raise invalid(f"{name}.payload", "non-zero bytes after the struct, no caps")
            truncated_to = n
        return cls(index, rflags, size, offset, caps, argsz, truncated_to, msg_id=msg_id)


# --------------------------------------------------------------------------- REGION_IO_FDS (6)


@record
class SubRegionIoFd(Record):
    """One sub-region of a GET_REGION_IO_FDS reply.

    On the wire either the spec's 40-byte entry (``shadow_mem_fd_index`` is the spec's
    ``padding``; ``datamatch`` is ``datamatch`` or ioregionfd ``user_data``, at offset 32;
    ``shadow_offset`` must be 0) or libvfio-user's 48-byte entry (shadow ioeventfd fields at
    28 and 32, ``datamatch`` at 40).
    """

    offset: int
    size: int
    fd_index: int
    type: int
    flags: int = 0
    datamatch: int = 0
    shadow_mem_fd_index: int = 0
    shadow_offset: int = 0

    def _pack(self, entry_size: int) -> bytes:
        if entry_size == SUB_REGION_SPEC.size:
            if self.shadow_offset:
                raise invalid("io_fds.sub_region.shadow_offset", "not representable in 40 bytes")
            return SUB_REGION_SPEC.pack(
                self.offset, self.size, self.fd_index, self.type, self.flags,
                self.shadow_mem_fd_index, self.datamatch,
            )
        return SUB_REGION_LIBVFIO.pack(
            self.offset, self.size, self.fd_index, self.type, self.flags,
            self.shadow_mem_fd_index, self.shadow_offset, self.datamatch,
        )

    @classmethod
    def _unpack(cls, payload: memoryview, at: int, entry_size: int) -> SubRegionIoFd:
        if entry_size == SUB_REGION_SPEC.size:
            o, s, fdi, t, f, pad, dm = SUB_REGION_SPEC.unpack_from(payload, at)
            return cls(o, s, fdi, t, f, dm, pad, 0)
        o, s, fdi, t, f, smfd, soff, dm = SUB_REGION_LIBVFIO.unpack_from(payload, at)
        return cls(o, s, fdi, t, f, dm, smfd, soff)


_ENTRY_SIZES = (SUB_REGION_SPEC.size, SUB_REGION_LIBVFIO.size)


@register(Command.DEVICE_GET_REGION_IO_FDS)
@record
class RegionIoFds(Request):
    """GET_REGION_IO_FDS request {argsz, flags, index, count}; flags and count must be 0."""

    index: int
    argsz: int = IO_FDS.size
    flags: int = 0
    count: int = 0

    def _encode(self, strict: bool) -> Parts:
        return [
            _H_IO_FDS.pack(
                self.msg_id, self.COMMAND, HEADER_SIZE + IO_FDS.size, self._flags(), 0,
                self.argsz, self.flags, self.index, self.count,
            )
        ]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_len("DEVICE_GET_REGION_IO_FDS", payload, IO_FDS.size)
        argsz, fflags, index, count = IO_FDS.unpack_from(payload)
        if argsz < IO_FDS.size:
            raise invalid("DEVICE_GET_REGION_IO_FDS.argsz", f"{argsz} < {IO_FDS.size}")
        return cls(index, argsz, fflags, count, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.DEVICE_GET_REGION_IO_FDS)
@record
class RegionIoFdsReply(Reply):
    """GET_REGION_IO_FDS reply {argsz, flags, index, count, sub_regions[count]}.

    ``count`` is the number of sub-regions the region has; ``sub_regions`` may be empty when
    the caller's argsz was too small (libvfio-user then sends only the 16 bytes).
    ``entry_size`` is 48 (libvfio-user, the default) or 40 (spec; forced by ``strict_spec``).
    ``argsz`` defaults to 16 + count * entry_size.
    """

    index: int
    sub_regions: tuple[SubRegionIoFd, ...] = ()
    count: int | None = None
    flags: int = 0
    argsz: int | None = None
    entry_size: int | None = None

    def __post_init__(self) -> None:
        if self.count is None:
            object.__setattr__(self, "count", len(self.sub_regions))
        if not self.sub_regions:
            object.__setattr__(self, "entry_size", None)
        elif self.entry_size is None:
            object.__setattr__(self, "entry_size", SUB_REGION_LIBVFIO.size)
        if self.argsz is None:
            object.__setattr__(self, "argsz", self._full_argsz(self.entry_size))

    def _full_argsz(self, entry_size: int | None) -> int:
        return IO_FDS.size + int(self.count or 0) * (entry_size or SUB_REGION_LIBVFIO.size)

    def _encode(self, strict: bool) -> Parts:
        esize = self.entry_size or SUB_REGION_LIBVFIO.size
        argsz = self.argsz
        if strict and esize != SUB_REGION_SPEC.size:
            if argsz == self._full_argsz(esize):
                argsz = self._full_argsz(SUB_REGION_SPEC.size)
            esize = SUB_REGION_SPEC.size
        if esize not in _ENTRY_SIZES:
            raise invalid("DEVICE_GET_REGION_IO_FDS.entry_size", f"{esize} not 40 or 48")
        if self.sub_regions and len(self.sub_regions) != self.count:
            raise invalid("DEVICE_GET_REGION_IO_FDS.count", "must match sub_regions")
        tail = b"".join(s._pack(esize) for s in self.sub_regions)
        head = _H_IO_FDS.pack(
            self.msg_id, self.COMMAND, HEADER_SIZE + IO_FDS.size + len(tail), self._flags(), 0,
            argsz, self.flags, self.index, self.count,
        )
        return [head + tail]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        name = "DEVICE_GET_REGION_IO_FDS.reply"
        expect_min(name, payload, IO_FDS.size)
        argsz, fflags, index, count = IO_FDS.unpack_from(payload)
        rest = len(payload) - IO_FDS.size
        if argsz < len(payload):
            raise invalid(f"{name}.argsz", f"{argsz} < payload size {len(payload)}")
        if rest == 0:
            return cls(index, (), count, fflags, argsz, None, msg_id=msg_id)
        esize = rest // count if count else 0
        if esize not in _ENTRY_SIZES or esize * count != rest:
            raise invalid(f"{name}.count", f"{count} sub-regions do not fill {rest} bytes")
        subs = tuple(
            SubRegionIoFd._unpack(payload, IO_FDS.size + i * esize, esize) for i in range(count)
        )
        return cls(index, subs, count, fflags, argsz, esize, msg_id=msg_id)
