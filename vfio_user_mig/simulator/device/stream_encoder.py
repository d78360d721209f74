"""The save side of the migration stream (:mod:`.stream` has the format): a
:class:`StreamEncoder` reads records from a source and serves them as bytes in reads of any
size, as one buffer or as parts for a scatter-gather send.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from vfio_user_mig.simulator.device.stream import (
    Chunk,
    Payload,
    RecordItem,
    RecordType,
    frame_parts,
)


class StreamEncoder:
    """Cuts records from a lazy source into reads of any size, numbering them.

    Only the record being sent is referenced (``buffered`` bytes, high-water mark ``peak``);
    the source builds the next one on demand. A payload may be given as parts (e.g. a prefix
    and a view of the pages); they are CRC'd in place and never copied here:
    :meth:`read_parts` returns them (sliced at the read's bounds), :meth:`read` joins them
    into one ``bytes`` (one copy) unless the read is a single ``bytes`` part. A part must not
    change until the read that returns it was sent. A source yielding None pauses the stream
    (the read returns short); a source that is exhausted ends it (every later read returns
    b""). :meth:`switch` replaces the source (PRE_COPY -> STOP_COPY) without losing the record
    in flight or the numbering.
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

    def drop(self) -> None:
        """Forget the record in flight (the stream is abandoned)."""
        self._parts.clear()
        self._left = 0

    def read(self, max_size: int) -> bytes:
        """Up to ``max_size`` bytes as one buffer; short when the source pauses or ends."""
        out = self.read_parts(max_size)
        if len(out) == 1 and type(out[0]) is bytes:
            return out[0]
        return b"".join(out)

    def read_parts(self, max_size: int) -> list[Chunk]:
        """Up to ``max_size`` bytes as the parts they are made of (no copy)."""
        out: list[Chunk] = []
        room = max_size
        parts = self._parts
        while room > 0:
            if not parts:
                item = self._next_record()
                if item is None:
                    break
                rtype, payload = item
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
        return out

    def _next_record(self) -> tuple[RecordType, Payload] | None:
        if self._source is None:
            return None
        try:
            return next(self._source)
        except StopIteration:
            self._source = None
            return None


__all__ = ["StreamEncoder"]
