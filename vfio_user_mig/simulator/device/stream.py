"""The migration stream: versioned, self-describing, checked records.

Every record is a 20-byte header followed by ``length`` payload bytes (all little-endian):

====  ====  ==========  =================================================================
off   size  field       meaning
====  ====  ==========  =================================================================
0     4     magic       ``b"MGDV"``
4     2     version     :data:`FORMAT_VERSION` (3)
6     2     type        :class:`RecordType`
8     4     seq         0 for the first record of a save session, then +1 per record
12    4     length      payload bytes (bounded per type, see :func:`max_payload`)
16    4     crc32       zlib CRC-32 of header bytes 0..15 followed by the record's *checked
                        span*: the whole payload, except for PAGES (see below)
====  ====  ==========  =================================================================

Payloads (in stream order: HEADER, PAGES*, REGS, END; nothing after END):

* HEADER: ``format_version u16, page_size u32, mem_size u64, regs_size u32, name_len u16,
  name`` (the device profile, UTF-8, at most :data:`MAX_NAME` bytes);
* PAGES: ``first_page u32, count u32``, then ``count`` page fingerprints (``u64`` each: the
  XXH3-64 hash of each page, in order, :func:`page_fingerprints`), then ``count * page_size``
  bytes (a run of consecutive pages, ``1 <= count <= MAX_RUN_PAGES``); a page may be sent
  again, the last copy wins; every page must be sent at least once. The header's crc32 covers
  ``first_page``, ``count`` and the page fingerprints (the first ``8 + 8 * count`` payload
  bytes, or fewer if the payload is shorter); each page's bytes are covered by its own
  fingerprint. So every payload byte is checked: a changed byte of the checked span is
  caught by the CRC-32 (any burst of up to 32 bits), a changed page by its fingerprint
  (XXH3-64: a differing page goes unnoticed with probability 2**-64). The fingerprints the
  save side computes also tell it which pages changed since they were sent (:mod:`.tracker`)
  and feed the END digest. The restore side checks every copy of a page against its
  fingerprint by the end of the stream at the latest: when the page is sent again, else in
  its END digest pass (:mod:`.stream_decoder`);
* REGS: ``regs_size`` bytes of device registers (opaque here; the device validates them);
* END: ``digest`` (32 bytes): the device's digest of the state the stream restores,
  compared by the restore side with :meth:`RestoreSink.restored_digest` (for ``migdev``:
  SHA-256 over profile, geometry, REGS payload and the SHA-256 of the page-fingerprint table
  of device memory, :func:`memory_fingerprint`).

Version 2 (before): the same with a zlib CRC-32 per page (``u32``) instead of the
fingerprint, and the END digest over the page-CRC table. Version 1: PAGES had no per-page
check, the header CRC covered the whole payload, and migdev's END digest hashed all of device
memory with SHA-256.

A save session emits HEADER on its first read; PRE_COPY then emits PAGES; STOP_COPY the
remaining PAGES, REGS and END. The restore side receives the concatenation.

This module is the format (constants, record framing, payload builders, the record items a
source yields); :mod:`.stream_encoder` turns a record source into stream bytes and
:mod:`.stream_decoder` validates and restores them.
"""

from __future__ import annotations

import enum
import errno as _errno
import functools
import struct
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from xxhash import xxh3_64_intdigest

from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.wire.record import Record, record

if TYPE_CHECKING:
    import hashlib

    from _typeshed import ReadableBuffer

MAGIC = b"MGDV"
FORMAT_VERSION = 3
#: Longest run of pages in one PAGES record: bounds what encoder and decoder buffer.
MAX_RUN_PAGES = 64
MAX_NAME = 64
DIGEST_SIZE = 32

RECORD_HEADER = struct.Struct("<4sHHIII")
HEADER_PAYLOAD = struct.Struct("<HIQIH")
PAGES_PREFIX = struct.Struct("<II")
#: One page fingerprint of a PAGES record.
PAGE_FP = struct.Struct("<Q")
END_PAYLOAD = struct.Struct(f"<{DIGEST_SIZE}s")
_FPS = struct.Struct(f"<{MAX_RUN_PAGES}Q")
CRC_SPAN = RECORD_HEADER.size - 4
HEAD_NO_CRC = struct.Struct("<4sHHII")
CRC = struct.Struct("<I")
#: One buffer of a record (header, payload or a part of the payload).
Chunk = bytes | bytearray | memoryview


class RecordType(enum.IntEnum):
    """Record types, in the order they may appear."""

    HEADER = 1
    PAGES = 2
    REGS = 3
    END = 4


class StreamError(DeviceError):
    """The stream is malformed; ``errno`` EINVAL, message names the record and field."""

    def __init__(self, message: str) -> None:
        super().__init__(message, _errno.EINVAL)


@record
class StreamGeometry(Record):
    """What both sides must agree on; sent in HEADER and checked on restore."""

    profile: str
    page_size: int
    mem_size: int
    regs_size: int

    @property
    def n_pages(self) -> int:
        """Pages of device memory."""
        return self.mem_size // self.page_size


def max_payload(rtype: RecordType, geometry: StreamGeometry) -> int:
    """The largest payload a record of ``rtype`` may carry."""
    if rtype is RecordType.HEADER:
        return HEADER_PAYLOAD.size + MAX_NAME
    if rtype is RecordType.PAGES:
        return PAGES_PREFIX.size + MAX_RUN_PAGES * (PAGE_FP.size + geometry.page_size)
    if rtype is RecordType.REGS:
        return geometry.regs_size
    return END_PAYLOAD.size


def frame(rtype: RecordType, seq: int, payload: bytes) -> bytes:
    """One record: header (with CRC) + payload."""
    head, body = frame_parts(rtype, seq, (payload,))
    return b"".join((head, *body))


def frame_parts(
    rtype: RecordType, seq: int, payload: Sequence[Chunk]
) -> tuple[bytes, Sequence[Chunk]]:
    """One record as (header with CRC, payload parts): the payload is never copied; the CRC
    is chained over the parts of the checked span (``zlib.crc32`` reads any buffer in
    place). For PAGES the span is the prefix and the page CRCs, which must then be in the
    first part (as :func:`pages_parts` and :func:`pages_payload` make them)."""
    length = sum(len(p) for p in payload)
    head = HEAD_NO_CRC.pack(MAGIC, FORMAT_VERSION, rtype, seq, length)
    crc = zlib.crc32(head)
    if rtype is RecordType.PAGES and payload and len(payload[0]) >= PAGES_PREFIX.size:
        first = payload[0]
        span = min(pages_checked_span(PAGES_PREFIX.unpack_from(first)[1]), length)
        if span <= len(first):
            crc = zlib.crc32(memoryview(first)[:span], crc)
            return head + CRC.pack(crc), payload
        joined = b"".join(payload)  # a prefix split across parts (hand-made records only)
        return head + CRC.pack(zlib.crc32(joined[:span], crc)), (joined,)
    for part in payload:
        crc = zlib.crc32(part, crc)
    return head + CRC.pack(crc), payload


def pages_checked_span(count: int) -> int:
    """Bytes of a PAGES payload under the record CRC: prefix and ``count`` page fingerprints."""
    return PAGES_PREFIX.size + PAGE_FP.size * count


@functools.lru_cache(maxsize=8)
def _page_slices(size: int, page_size: int) -> tuple[slice, ...]:
    return tuple(slice(o, o + page_size) for o in range(0, size, page_size))


def page_fingerprints(data: Chunk, page_size: int) -> bytes:
    """The page fingerprints of whole pages ``data``: XXH3-64 of each page (``u64``
    little-endian each, in order)."""
    view = memoryview(data)
    slices = _page_slices(len(view), page_size)
    fps = map(xxh3_64_intdigest, map(view.__getitem__, slices))  # no Python loop per page
    if len(slices) == MAX_RUN_PAGES:
        return _FPS.pack(*fps)
    return struct.pack(f"<{len(slices)}Q", *fps)


def sha256(data: ReadableBuffer = b"") -> hashlib._Hash:
    """``hashlib.sha256(data)``, with :mod:`hashlib` imported on first use: loading OpenSSL
    is the costliest import of a server's start, and a server hashes only to digest a
    state."""
    import hashlib

    return hashlib.sha256(data)


def memory_fingerprint(fp_table: Chunk) -> bytes:
    """SHA-256 of a page-fingerprint table (the fingerprints of every page of a memory, in
    page order): what migdev's END digest covers of device memory."""
    return sha256(fp_table).digest()


def header_payload(geometry: StreamGeometry) -> bytes:
    """HEADER payload for ``geometry``."""
    name = geometry.profile.encode()
    if len(name) > MAX_NAME:
        raise ValueError(f"profile name longer than {MAX_NAME} bytes")
    return (
        HEADER_PAYLOAD.pack(
            FORMAT_VERSION, geometry.page_size, geometry.mem_size, geometry.regs_size, len(name)
        )
        + name
    )


def pages_payload(first_page: int, data: bytes, page_size: int) -> bytes:
    """PAGES payload: a run starting at ``first_page``; ``data`` is whole pages."""
    return b"".join(pages_parts(first_page, memoryview(data), page_size))


def pages_parts(
    first_page: int, data: Chunk, page_size: int, fps: bytes | None = None
) -> tuple[bytes, Chunk]:
    """The PAGES payload of :func:`pages_payload` as parts (prefix + page fingerprints,
    data): no copy of data. ``fps``: the page fingerprints if already known
    (:func:`page_fingerprints` of ``data``)."""
    if fps is None:
        fps = page_fingerprints(data, page_size)
    return PAGES_PREFIX.pack(first_page, len(data) // page_size) + fps, data


#: A payload: one buffer, or a tuple of buffers sent back to back (never concatenated).
Payload = bytes | memoryview | tuple[Chunk, ...]
#: What a record source yields: a record to send, or None for "caught up for now".
RecordItem = tuple[RecordType, Payload] | None
