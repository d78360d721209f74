"""The region-info capability chain (vfio-user.rst "VFIO region capabilities").

Each capability starts with the cap header {id u16, version u16, next u32}; ``next`` and the
region info's ``cap_offset`` are offsets from the start of the region info payload. Known
bodies: SPARSE_MMAP (id 1) {nr_areas u32, reserved u32, areas[{offset u64, size u64}]} and
TYPE (id 2) {type u32, subtype u32}; any other id is kept as raw bytes.

Accepted chain shape (what the kernel and libvfio-user produce, and what this module emits):
capabilities packed back to back from offset 32 (right after ``struct vfio_region_info``), each
``next`` pointing at the following one, the last one's ``next`` 0, the last one ending at the
end of the payload. Any other shape is rejected with EINVAL, because it could not be
re-encoded byte for byte.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Sequence

from vfio_user_mig.wire.constants import RegionCapId
from vfio_user_mig.wire.errors import WireError, invalid
from vfio_user_mig.wire.layouts import (
    CAP_HEADER,
    CAP_SPARSE_MMAP,
    CAP_TYPE,
    REGION_INFO,
    SPARSE_AREA,
)
from vfio_user_mig.wire.record import Record, record

_FIELD = "DEVICE_GET_REGION_INFO.caps"


@record
class SparseArea(Record):
    """One mmap-able area of a sparse region: ``offset`` is relative to the region offset."""

    offset: int
    size: int


@record
class SparseMmapCap(Record):
    """``VFIO_REGION_INFO_CAP_SPARSE_MMAP`` (id 1, version 1)."""

    areas: tuple[SparseArea, ...]
    version: int = 1
    reserved: int = 0

    def _body(self) -> bytes:
        parts = [CAP_SPARSE_MMAP.pack(len(self.areas), self.reserved)]
        parts.extend(SPARSE_AREA.pack(a.offset, a.size) for a in self.areas)
        return b"".join(parts)


@record
class TypeCap(Record):
    """``VFIO_REGION_INFO_CAP_TYPE`` (id 2): device-specific region type/subtype."""

    type: int
    subtype: int
    version: int = 1

    def _body(self) -> bytes:
        return CAP_TYPE.pack(self.type, self.subtype)


@record
class RawCap(Record):
    """A capability this model does not interpret; ``body`` follows the cap header."""

    id: int
    body: bytes
    version: int = 1

    def _body(self) -> bytes:
        return bytes(self.body)


RegionCap = SparseMmapCap | TypeCap | RawCap


def _cap_id(cap: RegionCap) -> int:
    if isinstance(cap, SparseMmapCap):
        return RegionCapId.SPARSE_MMAP
    if isinstance(cap, TypeCap):
        return RegionCapId.TYPE
    return cap.id


def encode_caps(caps: Sequence[RegionCap]) -> bytes:
    """The chain bytes, to be placed at offset 32 of the region info payload."""
    bodies = [cap._body() for cap in caps]
    out: list[bytes] = []
    pos = REGION_INFO.size
    for i, (cap, body) in enumerate(zip(caps, bodies, strict=True)):
        end = pos + CAP_HEADER.size + len(body)
        nxt = end if i + 1 < len(caps) else 0
        out.append(CAP_HEADER.pack(_cap_id(cap), cap.version, nxt))
        out.append(body)
        pos = end
    return b"".join(out)


#: Most capabilities, and most sparse mmap areas, a decoded chain may hold: a client must not
#: let a hostile server make it build unbounded lists (vfio-pci chains hold a handful).
MAX_CAPS = 64
MAX_SPARSE_AREAS = 64


def decode_caps(payload: memoryview, cap_offset: int) -> tuple[RegionCap, ...]:
    """Parse the chain starting at ``cap_offset`` of the region info ``payload``.

    At most :data:`MAX_CAPS` capabilities and :data:`MAX_SPARSE_AREAS` areas per sparse mmap
    capability (E2BIG beyond)."""
    end = len(payload)
    if cap_offset != REGION_INFO.size:
        raise invalid(
            "DEVICE_GET_REGION_INFO.cap_offset",
            f"{cap_offset}, the chain must start at {REGION_INFO.size}",
        )
    caps: list[RegionCap] = []
    pos = cap_offset
    while True:
        if pos + CAP_HEADER.size > end:
            raise invalid(f"{_FIELD}[{len(caps)}]", f"cap header at {pos} overruns {end}")
        if len(caps) >= MAX_CAPS:
            raise WireError(_errno.E2BIG, _FIELD, f"more than {MAX_CAPS} capabilities")
        cid, version, nxt = CAP_HEADER.unpack_from(payload, pos)
        body_at = pos + CAP_HEADER.size
        if nxt != 0 and nxt < body_at:
            raise invalid(f"{_FIELD}[{len(caps)}].next", f"{nxt} does not move forward")
        limit = nxt if nxt else end
        if limit > end:
            raise invalid(f"{_FIELD}[{len(caps)}].next", f"{nxt} beyond payload end {end}")
        cap: RegionCap
        if cid == RegionCapId.SPARSE_MMAP:
            if body_at + CAP_SPARSE_MMAP.size > limit:
                raise invalid(f"{_FIELD}[{len(caps)}]", "sparse mmap cap truncated")
            nr, reserved = CAP_SPARSE_MMAP.unpack_from(payload, body_at)
            if nr > MAX_SPARSE_AREAS:
                raise WireError(_errno.E2BIG, f"{_FIELD}[{len(caps)}].nr_areas",
                                f"{nr} > {MAX_SPARSE_AREAS}")
            areas_at = body_at + CAP_SPARSE_MMAP.size
            if nr * SPARSE_AREA.size != limit - areas_at:
                raise invalid(
                    f"{_FIELD}[{len(caps)}].nr_areas",
                    f"{nr} areas do not fill {limit - areas_at} bytes",
                )
            areas = tuple(
                SparseArea(*SPARSE_AREA.unpack_from(payload, areas_at + i * SPARSE_AREA.size))
                for i in range(nr)
            )
            cap = SparseMmapCap(areas, version, reserved)
        elif cid == RegionCapId.TYPE:
            if limit - body_at != CAP_TYPE.size:
                raise invalid(f"{_FIELD}[{len(caps)}]", "type cap is not 16 bytes")
            ctype, subtype = CAP_TYPE.unpack_from(payload, body_at)
            cap = TypeCap(ctype, subtype, version)
        else:
            cap = RawCap(cid, bytes(payload[body_at:limit]), version)
        caps.append(cap)
        if nxt == 0:
            return tuple(caps)
        pos = nxt
