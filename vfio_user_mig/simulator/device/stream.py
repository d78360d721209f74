"""The migration stream: versioned, self-describing, checksummed records.

Every record is a 20-byte header followed by ``length`` payload bytes (all little-endian):

====  ====  ==========  =================================================================
off   size  field       meaning
====  ====  ==========  =================================================================
0     4     magic       ``b"MGDV"``
4     2     version     :data:`FORMAT_VERSION`
6     2     type        :class:`RecordType`
8     4     seq         0 for the first record of a save session, then +1 per record
12    4     length      payload bytes (bounded per type, see :func:`max_payload`)
16    4     crc32       zlib CRC-32 of header bytes 0..15 followed by the payload
====  ====  ==========  =================================================================

Payloads (in stream order: HEADER, PAGES*, REGS, END; nothing after END):

* HEADER: ``format_version u16, page_size u32, mem_size u64, regs_size u32, name_len u16,
  name`` (the device profile, UTF-8, at most :data:`MAX_NAME` bytes);
* PAGES: ``first_page u32, count u32`` then ``count * page_size`` bytes (a run of consecutive
  pages, ``1 <= count <= MAX_RUN_PAGES``); a page may be sent again, the last copy wins; every
  page must be sent at least once;
* REGS: ``regs_size`` bytes of device registers (opaque here; the device validates them);
* END: ``digest`` (32 bytes, SHA-256 of the device state the stream restores).

A save session emits HEADER on its first read; PRE_COPY then emits PAGES; STOP_COPY the
remaining PAGES, REGS and END. The restore side receives the concatenation.
"""

from __future__ import annotations

import enum
import errno as _errno
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from vfio_user_mig.simulator.device.base import DeviceError

MAGIC = b"MGDV"
FORMAT_VERSION = 1
#: Longest run of pages in one PAGES record: bounds what encoder and decoder buffer.
MAX_RUN_PAGES = 16
MAX_NAME = 64
DIGEST_SIZE = 32

RECORD_HEADER = struct.Struct("<4sHHIII")
HEADER_PAYLOAD = struct.Struct("<HIQIH")
PAGES_PREFIX = struct.Struct("<II")
END_PAYLOAD = struct.Struct(f"<{DIGEST_SIZE}s")
_CRC_SPAN = RECORD_HEADER.size - 4
_HEAD_NO_CRC = struct.Struct("<4sHHII")
_CRC = struct.Struct("<I")
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


@dataclass(frozen=True)
class StreamGeometry:
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
        return PAGES_PREFIX.size + MAX_RUN_PAGES * geometry.page_size
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
    is chained over the parts (``zlib.crc32`` reads any buffer in place)."""
    length = sum(len(p) for p in payload)
    head = _HEAD_NO_CRC.pack(MAGIC, FORMAT_VERSION, rtype, seq, length)
    crc = zlib.crc32(head)
    for part in payload:
        crc = zlib.crc32(part, crc)
    return head + _CRC.pack(crc), payload


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
    return PAGES_PREFIX.pack(first_page, len(data) // page_size) + data


def pages_parts(first_page: int, data: memoryview, page_size: int) -> tuple[bytes, memoryview]:
    """The PAGES payload of :func:`pages_payload` as parts (prefix, data): no copy of data."""
    return PAGES_PREFIX.pack(first_page, len(data) // page_size), data


#: A payload: one buffer, or a tuple of buffers sent back to back (never concatenated).
Payload = bytes | memoryview | tuple[Chunk, ...]


class Barrier:
    """Yielded by a record source before it changes a buffer that parts of earlier records
    may still reference (e.g. a new shadow pass re-taking pages): the encoder then copies the
    bytes it gathered so far before going on."""


#: The one :class:`Barrier` a source yields.
BARRIER = Barrier()
#: What a record source yields: a record to send, None for "caught up for now", or BARRIER.
RecordItem = tuple[RecordType, Payload] | Barrier | None


class StreamEncoder:
    """Cuts records from a lazy source into reads of any size, numbering them.

    Only the record being sent is referenced (``buffered`` bytes, high-water mark ``peak``);
    the source builds the next one on demand. A payload may be given as parts (e.g. a prefix
    and a view of the pages); they are CRC'd in place and copied exactly once, into the bytes
    a read returns. A part must not change until the read that returns it ends, unless the
    source yields :data:`BARRIER` first (the shadow tracker only rewrites a page it already
    handed out in a later pass, and a pass starts with a barrier). A source yielding None
    pauses the stream (the read returns short); a source that is exhausted ends it (every
    later read returns b""). :meth:`switch` replaces the source (PRE_COPY -> STOP_COPY)
    without losing the record in flight or the numbering.
    """

    def __init__(self, source: Iterator[RecordItem]) -> None:
        self._source: Iterator[RecordItem] | None = source
        self._parts: deque[Chunk] = deque()
        self._left = 0
        self._seq = 0
        self.peak = 0

    @property
    def buffered(self) -> int:
        """Bytes of the current record not yet read."""
        return self._left

    @property
    def ended(self) -> bool:
        """True once the source is exhausted and everything was read."""
        return self._source is None and self._left == 0

    @property
    def records(self) -> int:
        """Records framed so far."""
        return self._seq

    def switch(self, source: Iterator[RecordItem]) -> None:
        """Continue with ``source`` after the current record."""
        self._source = source

    def read(self, max_size: int) -> bytes:
        """Up to ``max_size`` bytes; short when the source pauses or ends."""
        out: list[Chunk] = []
        room = max_size
        parts = self._parts
        while room > 0:
            if not parts:
                item = self._next_record()
                if item is None:
                    break
                if isinstance(item, Barrier):
                    if any(isinstance(p, memoryview) for p in out):
                        out = [b"".join(out)]
                    continue
                payload = item[1]
                head, body = frame_parts(
                    item[0], self._seq, payload if isinstance(payload, tuple) else (payload,)
                )
                parts.append(head)
                parts.extend(body)
                self._seq += 1
                size = len(head) + sum(len(p) for p in body)
                self._left = size
                if size > self.peak:
                    self.peak = size
            part = parts[0]
            n = len(part)
            if n <= room:
                parts.popleft()
                out.append(part)
            else:
                view = part if isinstance(part, memoryview) else memoryview(part)
                out.append(view[:room])
                parts[0] = view[room:]
                n = room
            room -= n
            self._left -= n
        if len(out) == 1 and type(out[0]) is bytes:
            return out[0]
        return b"".join(out)

    def _next_record(self) -> tuple[RecordType, Payload] | Barrier | None:
        if self._source is None:
            return None
        try:
            return next(self._source)
        except StopIteration:
            self._source = None
            return None


class RestoreSink(Protocol):
    """Where a decoder puts validated records (the device being restored)."""

    def load_pages(self, first_page: int, data: memoryview) -> None:
        """Store whole pages starting at ``first_page`` (bounds already checked)."""

    def load_regs(self, data: bytes) -> None:
        """Apply the REGS payload; raise StreamError if its content is invalid."""

    def restored_digest(self) -> bytes:
        """SHA-256 digest of the state restored so far."""


class StreamDecoder:
    """Validates a stream as bytes arrive, in chunks of any size, and restores it into a sink.

    Checks, as soon as the bytes are there: magic, version, record type, order, seq, length
    bound, CRC, HEADER geometry, PAGES bounds. After the first error the decoder is poisoned:
    every later call raises the same :class:`StreamError`. Buffers at most one record.
    """

    def __init__(self, geometry: StreamGeometry, sink: RestoreSink) -> None:
        self._geo = geometry
        self._sink = sink
        self._buf = bytearray()
        self._head: tuple[RecordType, int, int] | None = None  # type, length, crc
        self._seq = 0
        self._last: RecordType | None = None
        self._covered = bytearray(geometry.n_pages)
        self._missing = geometry.n_pages
        self._end_digest: bytes | None = None
        self._error: StreamError | None = None
        self._crc = 0
        self.peak = 0

    @property
    def complete(self) -> bool:
        """True once END was accepted."""
        return self._end_digest is not None

    def feed(self, data: bytes | memoryview) -> None:
        """Accept the next bytes of the stream (not kept beyond the call)."""
        if self._error is not None:
            raise self._error
        try:
            self._feed(memoryview(data))
        except StreamError as exc:
            self._error = exc
            raise

    def finish(self) -> None:
        """Check the stream was complete and the restored state matches END's digest."""
        if self._error is not None:
            raise self._error
        problem = None
        if self._buf or self._head is not None:
            problem = f"stream truncated inside record #{self._seq}"
        elif self._last is None:
            problem = "stream empty: no record received"
        elif self._end_digest is None:
            problem = f"stream incomplete: no END (last record #{self._seq - 1} {self._last.name})"
        elif self._sink.restored_digest() != self._end_digest:
            problem = "END: digest does not match the restored device state"
        if problem is not None:
            self._error = StreamError(problem)
            raise self._error

    def _feed(self, data: memoryview) -> None:
        while data:
            if self._end_digest is not None:
                raise StreamError(f"{len(data)} bytes of trailing data after END")
            need = RECORD_HEADER.size if self._head is None else self._head[1]
            take = min(need - len(self._buf), len(data))
            self._buf += data[:take]
            data = data[take:]
            self.peak = max(self.peak, len(self._buf))
            if len(self._buf) < need:
                if self._head is None and take and not MAGIC.startswith(self._buf[:4]):
                    raise StreamError(f"record #{self._seq}: bad magic {bytes(self._buf[:4])!r}")
                return
            if self._head is None:
                self._parse_head(bytes(self._buf))
                self._buf.clear()
                if self._head is not None and self._head[1] == 0:
                    self._finish_record()
            else:
                self._finish_record()

    def _parse_head(self, raw: bytes) -> None:
        magic, version, rtype_raw, seq, length, crc = RECORD_HEADER.unpack(raw)
        where = f"record #{self._seq}"
        if magic != MAGIC:
            raise StreamError(f"{where}: bad magic {magic!r}")
        if version != FORMAT_VERSION:
            raise StreamError(f"{where}: unsupported version {version}")
        try:
            rtype = RecordType(rtype_raw)
        except ValueError:
            raise StreamError(f"{where}: unknown record type {rtype_raw}") from None
        if seq != self._seq:
            raise StreamError(f"{where}: seq is {seq}, expected {self._seq} (reordered or lost)")
        allowed = _NEXT[self._last]
        if rtype not in allowed:
            after = self._last.name if self._last else "stream start"
            raise StreamError(f"{where}: {rtype.name} not allowed after {after}")
        limit = max_payload(rtype, self._geo)
        if length > limit:
            raise StreamError(f"{where} {rtype.name}: length {length} exceeds {limit}")
        self._head = (rtype, length, crc)
        self._crc = zlib.crc32(raw[:_CRC_SPAN])

    def _finish_record(self) -> None:
        assert self._head is not None
        rtype, _length, crc = self._head
        payload = bytes(self._buf)
        self._buf.clear()
        where = f"record #{self._seq} {rtype.name}"
        if zlib.crc32(payload, self._crc) != crc:
            raise StreamError(f"{where}: CRC mismatch")
        if rtype is RecordType.HEADER:
            self._header(payload, where)
        elif rtype is RecordType.PAGES:
            self._pages(payload, where)
        elif rtype is RecordType.REGS:
            if len(payload) != self._geo.regs_size:
                raise StreamError(f"{where}: {len(payload)} bytes, expected {self._geo.regs_size}")
            self._sink.load_regs(payload)
        else:
            if len(payload) != END_PAYLOAD.size:
                raise StreamError(f"{where}: {len(payload)} bytes, expected {END_PAYLOAD.size}")
            if self._missing:
                raise StreamError(f"{where}: {self._missing} pages were never sent")
            (self._end_digest,) = END_PAYLOAD.unpack(payload)
        self._head = None
        self._last = rtype
        self._seq += 1

    def _header(self, payload: bytes, where: str) -> None:
        if len(payload) < HEADER_PAYLOAD.size:
            raise StreamError(f"{where}: payload of {len(payload)} bytes is too short")
        fver, page_size, mem_size, regs_size, name_len = HEADER_PAYLOAD.unpack_from(payload)
        name = payload[HEADER_PAYLOAD.size :]
        if len(name) != name_len:
            raise StreamError(f"{where}: name_len {name_len} but {len(name)} name bytes")
        got = {
            "format_version": fver,
            "profile": name.decode(errors="replace"),
            "page_size": page_size,
            "mem_size": mem_size,
            "regs_size": regs_size,
        }
        want = {
            "format_version": FORMAT_VERSION,
            "profile": self._geo.profile,
            "page_size": self._geo.page_size,
            "mem_size": self._geo.mem_size,
            "regs_size": self._geo.regs_size,
        }
        for field, value in got.items():
            if value != want[field]:
                raise StreamError(f"{where}: {field} is {value!r}, this device has {want[field]!r}")

    def _pages(self, payload: bytes, where: str) -> None:
        ps = self._geo.page_size
        if len(payload) < PAGES_PREFIX.size:
            raise StreamError(f"{where}: payload of {len(payload)} bytes is too short")
        first, count = PAGES_PREFIX.unpack_from(payload)
        if not 1 <= count <= MAX_RUN_PAGES:
            raise StreamError(f"{where}: count {count} not in [1, {MAX_RUN_PAGES}]")
        if len(payload) != PAGES_PREFIX.size + count * ps:
            raise StreamError(f"{where}: length does not match count {count}")
        if first + count > self._geo.n_pages:
            raise StreamError(
                f"{where}: pages {first}..{first + count - 1} beyond {self._geo.n_pages} pages"
            )
        self._sink.load_pages(first, memoryview(payload)[PAGES_PREFIX.size :])
        for page in range(first, first + count):
            if not self._covered[page]:
                self._covered[page] = 1
                self._missing -= 1


_NEXT: dict[RecordType | None, frozenset[RecordType]] = {
    None: frozenset({RecordType.HEADER}),
    RecordType.HEADER: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.PAGES: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.REGS: frozenset({RecordType.END}),
    RecordType.END: frozenset(),
}
