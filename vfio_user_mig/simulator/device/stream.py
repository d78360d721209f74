"""The migration stream: versioned, self-describing, checksummed records.

Every record is a 20-byte header followed by ``length`` payload bytes (all little-endian):

====  ====  ==========  =================================================================
off   size  field       meaning
====  ====  ==========  =================================================================
0     4     magic       ``b"MGDV"``
4     2     version     :data:`FORMAT_VERSION` (2)
6     2     type        :class:`RecordType`
8     4     seq         0 for the first record of a save session, then +1 per record
12    4     length      payload bytes (bounded per type, see :func:`max_payload`)
16    4     crc32       zlib CRC-32 of header bytes 0..15 followed by the record's *checked
                        span*: the whole payload, except for PAGES (see below)
====  ====  ==========  =================================================================

Payloads (in stream order: HEADER, PAGES*, REGS, END; nothing after END):

* HEADER: ``format_version u16, page_size u32, mem_size u64, regs_size u32, name_len u16,
  name`` (the device profile, UTF-8, at most :data:`MAX_NAME` bytes);
* PAGES: ``first_page u32, count u32``, then ``count`` page CRCs (``u32`` each: the zlib
  CRC-32 of each page, in order), then ``count * page_size`` bytes (a run of consecutive
  pages, ``1 <= count <= MAX_RUN_PAGES``); a page may be sent again, the last copy wins;
  every page must be sent at least once. The header's crc32 covers ``first_page``, ``count``
  and the page CRCs (the first ``8 + 4 * count`` payload bytes, or fewer if the payload is
  shorter); each page's bytes are covered by its own CRC. So every payload byte is under a
  CRC-32, and any single bit flip (or burst of up to 32 bits within one CRC's span) is
  detected; the page CRCs computed once on the save side also feed the END digest;
* REGS: ``regs_size`` bytes of device registers (opaque here; the device validates them);
* END: ``digest`` (32 bytes): the device's digest of the state the stream restores,
  compared by the restore side with :meth:`RestoreSink.restored_digest` (for ``migdev``:
  SHA-256 over profile, geometry, REGS payload and the SHA-256 of the page-CRC table of
  device memory, :func:`memory_fingerprint`).

Version 1 (before): PAGES had no page CRCs, the header CRC covered the whole payload, and
migdev's END digest hashed all of device memory with SHA-256.

A save session emits HEADER on its first read; PRE_COPY then emits PAGES; STOP_COPY the
remaining PAGES, REGS and END. The restore side receives the concatenation.
"""

from __future__ import annotations

import enum
import errno as _errno
import hashlib
import mmap
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from vfio_user_mig.simulator.device.base import DeviceError

MAGIC = b"MGDV"
FORMAT_VERSION = 2
#: Longest run of pages in one PAGES record: bounds what encoder and decoder buffer.
MAX_RUN_PAGES = 64
MAX_NAME = 64
DIGEST_SIZE = 32

RECORD_HEADER = struct.Struct("<4sHHIII")
HEADER_PAYLOAD = struct.Struct("<HIQIH")
PAGES_PREFIX = struct.Struct("<II")
#: One page CRC of a PAGES record.
PAGE_CRC = struct.Struct("<I")
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
        return PAGES_PREFIX.size + MAX_RUN_PAGES * (PAGE_CRC.size + geometry.page_size)
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
    head = _HEAD_NO_CRC.pack(MAGIC, FORMAT_VERSION, rtype, seq, length)
    crc = zlib.crc32(head)
    if rtype is RecordType.PAGES and payload and len(payload[0]) >= PAGES_PREFIX.size:
        first = payload[0]
        span = min(pages_crc_span(PAGES_PREFIX.unpack_from(first)[1]), length)
        if span <= len(first):
            crc = zlib.crc32(memoryview(first)[:span], crc)
            return head + _CRC.pack(crc), payload
        joined = b"".join(payload)  # a prefix split across parts (hand-made records only)
        return head + _CRC.pack(zlib.crc32(joined[:span], crc)), (joined,)
    for part in payload:
        crc = zlib.crc32(part, crc)
    return head + _CRC.pack(crc), payload


def pages_crc_span(count: int) -> int:
    """Bytes of a PAGES payload under the record CRC: prefix and ``count`` page CRCs."""
    return PAGES_PREFIX.size + PAGE_CRC.size * count


def page_crcs(data: Chunk, page_size: int) -> bytes:
    """The page CRCs of whole pages ``data`` (``u32`` little-endian each, in order)."""
    view = memoryview(data)
    crc32 = zlib.crc32
    crcs = [crc32(view[o : o + page_size]) for o in range(0, len(view), page_size)]
    return struct.pack(f"<{len(crcs)}I", *crcs)


def memory_fingerprint(crc_table: Chunk) -> bytes:
    """SHA-256 of a page-CRC table (the CRCs of every page of a memory, in page order): what
    migdev's END digest covers of device memory."""
    return hashlib.sha256(crc_table).digest()


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
    return PAGES_PREFIX.pack(first_page, len(data) // page_size) + page_crcs(data, page_size) + data


def pages_parts(
    first_page: int, data: memoryview, page_size: int, crcs: bytes | None = None
) -> tuple[bytes, memoryview]:
    """The PAGES payload of :func:`pages_payload` as parts (prefix + page CRCs, data): no copy
    of data. ``crcs``: the page CRCs if already known (:func:`page_crcs` of ``data``)."""
    if crcs is None:
        crcs = page_crcs(data, page_size)
    return PAGES_PREFIX.pack(first_page, len(data) // page_size) + crcs, data


@dataclass(frozen=True)
class Staged:
    """A payload already in place in the encoder's staging buffer: ``length`` bytes at
    ``offset + 20``, with room for the record header at ``offset``; the encoder writes the
    header there and sends the record as a view of the buffer (see :class:`StreamEncoder`)."""

    offset: int
    length: int


#: A payload: one buffer, a tuple of buffers sent back to back (never concatenated), or a
#: :class:`Staged` one.
Payload = bytes | memoryview | tuple[Chunk, ...] | Staged


@dataclass(slots=True)
class _Span:
    """Bytes [start, end) of the staging buffer."""

    start: int
    end: int


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

    ``staging``: a writable buffer :class:`Staged` payloads live in. Their records are framed
    in place and never copied here: a read made only of consecutive staging bytes returns a
    read-only view of them (zero copy); the source must never change staging bytes it handed
    over (a view may be held after the read returns).
    """

    def __init__(self, source: Iterator[RecordItem], staging: mmap.mmap | None = None) -> None:
        self._source: Iterator[RecordItem] | None = source
        self._staging = staging
        self._staging_ro = memoryview(staging).toreadonly() if staging is not None else None
        self._parts: deque[Chunk | _Span] = deque()
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
        """Up to ``max_size`` bytes; short when the source pauses or ends. A read made only of
        consecutive staging bytes is a read-only memoryview of them (typed ``bytes``: the
        device returns it as its ``mig_data_read`` answer, which the wire codec sends as any
        buffer)."""
        out: list[Chunk | _Span] = []
        room = max_size
        parts = self._parts
        while room > 0:
            if not parts:
                item = self._next_record()
                if item is None:
                    break
                if isinstance(item, Barrier):
                    if any(isinstance(p, memoryview) for p in out):
                        out = [self._join(out)]
                    continue
                rtype, payload = item
                if isinstance(payload, Staged):
                    size = self._frame_staged(rtype, payload)
                    parts.append(_Span(payload.offset, payload.offset + size))
                else:
                    head, body = frame_parts(
                        rtype, self._seq, payload if isinstance(payload, tuple) else (payload,)
                    )
                    parts.append(head)
                    parts.extend(body)
                    size = len(head) + sum(len(p) for p in body)
                self._seq += 1
                self._left = size
                if size > self.peak:
                    self.peak = size
            part = parts[0]
            if isinstance(part, _Span):
                n = part.end - part.start
                if n <= room:
                    parts.popleft()
                    out.append(part)
                else:
                    out.append(_Span(part.start, part.start + room))
                    part.start += room
                    n = room
            else:
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
        if out and self._staging_ro is not None and isinstance(out[0], _Span):
            start = end = out[0].start
            for p in out:
                if not isinstance(p, _Span) or p.start != end:
                    break
                end = p.end
            else:
                return cast(bytes, self._staging_ro[start:end])
        return self._join(out)

    def _join(self, out: list[Chunk | _Span]) -> bytes:
        ro = self._staging_ro
        return b"".join(
            ro[p.start : p.end] if isinstance(p, _Span) and ro is not None else cast(Chunk, p)
            for p in out
        )

    def _frame_staged(self, rtype: RecordType, payload: Staged) -> int:
        """Write the header of a staged record in place; returns the record size."""
        staging = self._staging
        if staging is None:
            raise ValueError("a Staged payload needs an encoder with a staging buffer")
        at, length = payload.offset, payload.length
        body = at + RECORD_HEADER.size
        span = length
        if rtype is RecordType.PAGES and length >= PAGES_PREFIX.size:
            span = min(pages_crc_span(PAGES_PREFIX.unpack_from(staging, body)[1]), length)
        head = _HEAD_NO_CRC.pack(MAGIC, FORMAT_VERSION, rtype, self._seq, length)
        assert self._staging_ro is not None
        crc = zlib.crc32(self._staging_ro[body : body + span], zlib.crc32(head))
        staging[at:body] = head + _CRC.pack(crc)
        return RECORD_HEADER.size + length

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
    bound, CRC (record and page CRCs), HEADER geometry, PAGES bounds. After the first error
    the decoder is poisoned: every later call raises the same :class:`StreamError`. Pages go
    from the caller's buffer into the sink, each checked against its CRC first, as soon as it
    is whole (after its record's CRC over prefix and page CRCs passed): only a PAGES prefix,
    a page or another (small) record split across calls is buffered, so the decoder holds at
    most one page or one non-PAGES record.
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
        # The PAGES record in progress once its checked span passed: first, count, page
        # CRCs, pages loaded so far.
        self._run: tuple[int, int, bytes, int] | None = None
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
            with memoryview(data) as view:
                self._feed(view)
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
        hsize = RECORD_HEADER.size
        while data:
            if self._end_digest is not None:
                raise StreamError(f"{len(data)} bytes of trailing data after END")
            head = self._head
            buf = self._buf
            if head is None:
                if not buf and len(data) >= hsize:
                    self._parse_head(data[:hsize])
                    data = data[hsize:]
                else:
                    take = min(hsize - len(buf), len(data))
                    buf += data[:take]
                    data = data[take:]
                    if len(buf) < hsize:
                        if not MAGIC.startswith(buf[:4]):
                            raise StreamError(f"record #{self._seq}: bad magic {bytes(buf[:4])!r}")
                        return
                    raw = bytes(buf)
                    buf.clear()
                    self._parse_head(raw)
                if self._head is not None and self._head[1] == 0:
                    self._finish_record(memoryview(b""))
                continue
            if head[0] is RecordType.PAGES:
                data = self._feed_pages(data)
                continue
            length = head[1]
            if not buf and len(data) >= length:  # the whole payload is here: no copy
                self._finish_record(data[:length])
                data = data[length:]
                continue
            take = min(length - len(buf), len(data))
            buf += data[:take]
            data = data[take:]
            self._note_peak()
            if len(buf) < length:
                return
            self._buf = bytearray()  # views of the old buffer may outlive the record
            self._finish_record(memoryview(buf))

    def _note_peak(self) -> None:
        if len(self._buf) > self.peak:
            self.peak = len(self._buf)

    def _buffer(self, data: memoryview, want: int) -> memoryview:
        """Append to the buffer up to ``want`` bytes in all; returns the rest of ``data``."""
        take = max(0, min(want - len(self._buf), len(data)))
        self._buf += data[:take]
        self._note_peak()
        return data[take:]

    def _feed_pages(self, data: memoryview) -> memoryview:
        """A PAGES payload as it arrives: its checked span (prefix and page CRCs, buffered if
        split) is checked first; then each page is checked against its CRC and loaded as soon
        as it is whole, straight from ``data`` (only a page split across feeds is buffered).
        Returns what follows the record in ``data``."""
        assert self._head is not None
        _rtype, length, crc = self._head
        where = f"record #{self._seq} PAGES"
        ps = self._geo.page_size
        if self._run is None:  # the checked span
            if not self._buf and len(data) >= PAGES_PREFIX.size:
                count = PAGES_PREFIX.unpack_from(data)[1]
                span = min(pages_crc_span(count), length)
                if len(data) >= span:
                    self._start_run(data[:span], crc, where)
                    data = data[span:]
            if self._run is None:
                need = min(PAGES_PREFIX.size, length)
                if len(self._buf) < need:
                    data = self._buffer(data, need)
                    if len(self._buf) < need:
                        return data
                span = length
                if len(self._buf) >= PAGES_PREFIX.size:
                    span = min(pages_crc_span(PAGES_PREFIX.unpack_from(self._buf)[1]), length)
                data = self._buffer(data, span)
                if len(self._buf) < span:
                    return data
                raw, self._buf = bytes(self._buf), bytearray()
                self._start_run(memoryview(raw), crc, where)
        assert self._run is not None
        first, count, table, done = self._run
        while done < count and data:
            if self._buf or len(data) < ps:  # a page split across feeds
                data = self._buffer(data, ps)
                if len(self._buf) < ps:
                    break
                page, self._buf = bytes(self._buf), bytearray()
                self._load(first, done, memoryview(page), table, where)
                done += 1
                continue
            k = min(count - done, len(data) // ps)
            self._load(first, done, data[: k * ps], table, where)
            data = data[k * ps :]
            done += k
        self._run = (first, count, table, done)
        if done == count:
            covered = self._covered
            fresh = covered.count(0, first, first + count)
            if fresh:
                covered[first : first + count] = _ONES[:count]
                self._missing -= fresh
            self._run = None
            self._head = None
            self._last = RecordType.PAGES
            self._seq += 1
        return data

    def _start_run(self, span: memoryview, crc: int, where: str) -> None:
        """Check a PAGES record's checked span (record CRC, count, length, bounds)."""
        assert self._head is not None
        length = self._head[1]
        if zlib.crc32(span, self._crc) != crc:
            raise StreamError(f"{where}: CRC mismatch")
        if len(span) < PAGES_PREFIX.size:
            raise StreamError(f"{where}: payload of {length} bytes is too short")
        first, count = PAGES_PREFIX.unpack_from(span)
        if not 1 <= count <= MAX_RUN_PAGES:
            raise StreamError(f"{where}: count {count} not in [1, {MAX_RUN_PAGES}]")
        if length != len(span) + count * self._geo.page_size:
            raise StreamError(f"{where}: length does not match count {count}")
        if first + count > self._geo.n_pages:
            raise StreamError(
                f"{where}: pages {first}..{first + count - 1} beyond {self._geo.n_pages} pages"
            )
        self._run = (first, count, bytes(span[PAGES_PREFIX.size :]), 0)

    def _load(self, first: int, index: int, pages: memoryview, table: bytes, where: str) -> None:
        """Check whole pages (``first + index`` on) against their CRCs, then load them."""
        got = page_crcs(pages, self._geo.page_size)
        want = table[4 * index : 4 * index + len(got)]
        if got != want:
            bad = next(
                i for i in range(len(got) // 4) if got[4 * i : 4 * i + 4] != want[4 * i : 4 * i + 4]
            )
            raise StreamError(f"{where}: CRC mismatch in page {first + index + bad}")
        self._sink.load_pages(first + index, pages)

    def _parse_head(self, raw: Chunk) -> None:
        magic, version, rtype_raw, seq, length, crc = RECORD_HEADER.unpack_from(raw)
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
        self._crc = zlib.crc32(memoryview(raw)[:_CRC_SPAN])

    def _finish_record(self, payload: memoryview) -> None:
        assert self._head is not None
        rtype, _length, crc = self._head
        where = f"record #{self._seq} {rtype.name}"
        if rtype is RecordType.PAGES:  # an empty PAGES payload (the rest go to _feed_pages)
            self._start_run(payload, crc, where)
        else:
            if zlib.crc32(payload, self._crc) != crc:
                raise StreamError(f"{where}: CRC mismatch")
            if rtype is RecordType.HEADER:
                self._header(bytes(payload), where)
            elif rtype is RecordType.REGS:
                if len(payload) != self._geo.regs_size:
                    raise StreamError(
                        f"{where}: {len(payload)} bytes, expected {self._geo.regs_size}"
                    )
                self._sink.load_regs(bytes(payload))
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


_ONES = b"\x01" * MAX_RUN_PAGES

_NEXT: dict[RecordType | None, frozenset[RecordType]] = {
    None: frozenset({RecordType.HEADER}),
    RecordType.HEADER: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.PAGES: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.REGS: frozenset({RecordType.END}),
    RecordType.END: frozenset(),
}
