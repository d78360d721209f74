"""The save side of the migration stream (:mod:`.stream` has the format): a
:class:`StreamEncoder` reads records from a source and serves them as bytes in reads of any
size, sending staged payloads as views of its staging buffer.
"""

from __future__ import annotations

import mmap
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from vfio_user_mig.simulator.device.stream import (
    CRC,
    FORMAT_VERSION,
    HEAD_NO_CRC,
    MAGIC,
    PAGES_PREFIX,
    RECORD_HEADER,
    Barrier,
    Chunk,
    Payload,
    RecordItem,
    RecordType,
    Staged,
    frame_parts,
    pages_crc_span,
)


@dataclass(slots=True)
class _Span:
    """Bytes [start, end) of the staging buffer."""

    start: int
    end: int


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
        head = HEAD_NO_CRC.pack(MAGIC, FORMAT_VERSION, rtype, self._seq, length)
        assert self._staging_ro is not None
        crc = zlib.crc32(self._staging_ro[body : body + span], zlib.crc32(head))
        staging[at:body] = head + CRC.pack(crc)
        return RECORD_HEADER.size + length

    def _next_record(self) -> tuple[RecordType, Payload] | Barrier | None:
        if self._source is None:
            return None
        try:
            return next(self._source)
        except StopIteration:
            self._source = None
            return None


__all__ = ["StreamEncoder"]
