"""The restore side of the migration stream (:mod:`.stream` has the format): a
:class:`StreamDecoder` validates bytes as they arrive and restores the records into a
:class:`RestoreSink`.

Page data is verified *once per copy, when cheapest* (the stream's integrity rule,
:mod:`.stream`): a page is loaded as it arrives with its fingerprint recorded; the copy is
checked against that fingerprint either when a later copy of the same page is about to replace
it, or at :meth:`StreamDecoder.finish`, in the pass over restored memory that computes the END
digest anyway (the digest covers the page-fingerprint table of memory). So every byte of every
copy is still checked against its fingerprint, without a hash pass over the data while it
streams in.

Page data may also be *received in place*, into the memory of a sink that is an
:class:`InPlaceSink` (:mod:`.stream_inplace`).
"""

from __future__ import annotations

import zlib
from typing import Protocol

from vfio_user_mig.simulator.device.stream import (
    CRC_SPAN,
    END_PAYLOAD,
    FORMAT_VERSION,
    HEADER_PAYLOAD,
    MAGIC,
    MAX_RUN_PAGES,
    PAGE_FP,
    PAGES_PREFIX,
    RECORD_HEADER,
    Chunk,
    RecordType,
    StreamError,
    StreamGeometry,
    max_payload,
    pages_checked_span,
)
from vfio_user_mig.simulator.device.stream_inplace import InPlaceReceive, Planned


class RestoreSink(Protocol):
    """Where a decoder puts validated records (the device being restored)."""

    def load_pages(self, first_page: int, data: memoryview) -> None:
        """Store whole pages starting at ``first_page`` (bounds already checked)."""

    def load_regs(self, data: bytes) -> None:
        """Apply the REGS payload; raise StreamError if its content is invalid."""

    def page_fingerprints(self, first_page: int, count: int) -> bytes:
        """The page fingerprints (:func:`~.stream.page_fingerprints`) of ``count`` restored
        pages from ``first_page``, as they are in the sink now."""

    def restored_digest(self, page_fingerprints: bytes) -> bytes:
        """SHA-256 digest of the state restored so far, given the page fingerprints of all of
        its memory (what :meth:`page_fingerprints` answered for every page)."""


class InPlaceSink(RestoreSink, Protocol):
    """A :class:`RestoreSink` whose memory the decoder may have bytes received into."""

    def page_view(self, first_page: int, count: int) -> memoryview:
        """A writable view of ``count`` pages of the sink's memory from ``first_page`` (bounds
        already checked)."""


class StreamDecoder(InPlaceReceive):
    """Validates a stream as bytes arrive, in chunks of any size, and restores it into a sink.

    Checks, as soon as the bytes are there: magic, version, record type, order, seq, length
    bound, record CRC, HEADER geometry, PAGES bounds; page data against its fingerprint when
    the page is sent again or at :meth:`finish` (module docstring). After the first error the
    decoder is poisoned: every later call raises the same :class:`StreamError`. Pages go from
    the caller's buffer into the sink as soon as they are whole (after their record's CRC over
    prefix and page fingerprints passed): only a PAGES prefix, a page or another (small)
    record split across calls is buffered, so the decoder holds at most one page or one
    non-PAGES record (plus the page-fingerprint table: 8 bytes a page, and one byte a page of
    coverage).
    """

    def __init__(self, geometry: StreamGeometry, sink: RestoreSink) -> None:
        self._geo = geometry
        self._sink = sink
        self._buf = bytearray()
        self._head: tuple[RecordType, int, int] | None = None  # type, length, crc
        self._seq = 0
        self._last: RecordType | None = None
        self._covered = bytearray(geometry.n_pages)  # 1: a copy was loaded, not yet checked
        self._fps = bytearray(_FP * geometry.n_pages)  # the fingerprint of each loaded copy
        self._missing = geometry.n_pages
        self._end_digest: bytes | None = None
        self._error: StreamError | None = None
        self._crc = 0
        # The PAGES record in progress once its checked span passed: first, count, page
        # fingerprints, pages loaded so far.
        self._run: tuple[int, int, bytes, int] | None = None
        # Bytes of the run's next page already in the sink's memory (received in place).
        self._part = 0
        self._view_of = getattr(sink, "page_view", None)
        self._next_page = 0  # the page after the last run (where the next one may start)
        self._plan: list[Planned] = []
        self._scratch: memoryview | None = None
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
        else:
            problem = self._verify()
        if problem is not None:
            self._error = StreamError(problem)
            raise self._error

    def abort(self, reason: str) -> None:
        """Refuse the stream from now on (e.g. part of a write was taken and the rest never
        came): every later call raises ``StreamError(reason)``."""
        if self._error is None:
            self._error = StreamError(reason)

    def _verify(self) -> str | None:
        """Every page's last copy against its fingerprint, then END's digest (None: all
        good)."""
        got = self._sink.page_fingerprints(0, self._geo.n_pages)
        want = self._fps
        if got != want:
            bad = next(
                i for i in range(0, len(got), _FP) if got[i : i + _FP] != want[i : i + _FP]
            )
            return f"fingerprint mismatch in page {bad // _FP}"
        if self._sink.restored_digest(got) != self._end_digest:
            return "END: digest does not match the restored device state"
        return None

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
        """A PAGES payload as it arrives: its checked span (prefix and fingerprints, buffered if
        split) is checked first; then each page is loaded as soon as it is whole, straight from
        ``data`` (only a page split across feeds is buffered). Returns what follows the record
        in ``data``."""
        assert self._head is not None
        _rtype, length, crc = self._head
        where = f"record #{self._seq} PAGES"
        ps = self._geo.page_size
        if self._run is None:  # the checked span
            if not self._buf and len(data) >= PAGES_PREFIX.size:
                count = PAGES_PREFIX.unpack_from(data)[1]
                span = min(pages_checked_span(count), length)
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
                    span = min(pages_checked_span(PAGES_PREFIX.unpack_from(self._buf)[1]), length)
                data = self._buffer(data, span)
                if len(self._buf) < span:
                    return data
                raw, self._buf = bytes(self._buf), bytearray()
                self._start_run(memoryview(raw), crc, where)
        if self._part and data:
            data = self._continue_page(data)
            if self._run is None:
                return data
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
            self._end_run()
        return data

    def _end_run(self) -> None:
        assert self._run is not None
        self._next_page = self._run[0] + self._run[1]
        self._run = None
        self._head = None
        self._last = RecordType.PAGES
        self._seq += 1

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
        self._part = 0

    def _load(self, first: int, index: int, pages: memoryview, table: bytes, where: str) -> None:
        """Load whole pages (``first + index`` on), recording their fingerprints; a page loaded
        before has its previous copy checked first (module docstring)."""
        page = first + index
        n = len(pages) // self._geo.page_size
        if self._covered.find(1, page, page + n) >= 0:  # sent again
            self._check_previous(page, n, where)
        self._mark(page, n, table, index)
        self._sink.load_pages(page, pages)

    def _mark(self, page: int, n: int, table: bytes, index: int) -> None:
        """Pages [page, page+n) hold a copy (its fingerprints: ``table`` from ``index``)."""
        end = page + n
        covered = self._covered
        fresh = covered.count(0, page, end)
        if fresh:
            covered[page:end] = _ONES[:n]
            self._missing -= fresh
        self._fps[_FP * page : _FP * end] = table[_FP * index : _FP * (index + n)]

    def _check_previous(self, page: int, n: int, where: str) -> None:
        """The copies already loaded of pages [page, page+n) against their fingerprints."""
        got = self._sink.page_fingerprints(page, n)
        want = self._fps
        for i in range(n):
            at = _FP * (page + i)
            if self._covered[page + i] and got[_FP * i : _FP * i + _FP] != want[at : at + _FP]:
                raise StreamError(
                    f"{where}: fingerprint mismatch in page {page + i} (its copy before)"
                )

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
        self._crc = zlib.crc32(memoryview(raw)[:CRC_SPAN])

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
_FP = PAGE_FP.size

_NEXT: dict[RecordType | None, frozenset[RecordType]] = {
    None: frozenset({RecordType.HEADER}),
    RecordType.HEADER: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.PAGES: frozenset({RecordType.PAGES, RecordType.REGS}),
    RecordType.REGS: frozenset({RecordType.END}),
    RecordType.END: frozenset(),
}

__all__ = ["InPlaceSink", "RestoreSink", "StreamDecoder"]
