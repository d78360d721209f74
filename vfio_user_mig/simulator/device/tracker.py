"""Which pages of device memory changed since they were last sent (pre-copy tracking).

Device memory changes through paths the device sees (REGION_WRITE, DMA into BAR2) and one it
does not: the client's mmap of the memfd. A write-protect trap is not available to pure Python,
so the tracker keeps, per page, the *fingerprint* of the copy last sent (XXH3-64,
:func:`~.stream.page_fingerprints`, 8 bytes a page) and compares: a page must be sent when it
was never sent or its fingerprint now differs from the one sent. This is sound for every write
path, whoever writes and whenever, as long as the fingerprint recorded is that of the bytes
sent, and it needs no copy of memory (the staging shadow of format 2 did).

Memory is cut in *blocks* of :data:`BLOCK_PAGES` pages (= ``MAX_RUN_PAGES``, so a block is at
most one PAGES record); a run of pages sent never crosses a block boundary. A pass scans
block by block: a block never sent is taken whole without hashing it first; otherwise the
block's pages are hashed (one C call a page) and the table compared with the sent table at
once, then page by page only where it differs.

What a run's data is depends on whether memory may change while it is sent:

* *copied* (PRE_COPY: the device runs, DMA and the client may write at any time): the run is
  copied once into a private ``bytes`` and its fingerprints computed over that copy, so the
  fingerprint recorded is exactly that of the bytes that go out, even if memory changes right
  after (the page is then found changed by the next pass);
* *live* (STOP_COPY: the device is stopped, its memory does not change): the data is a
  read-only view of device memory, sent without any copy (scatter-gather), with the
  fingerprints the scan computed. A client that writes device memory while the stopped
  device's stream is read makes the destination refuse the stream (the page no longer matches
  its fingerprint), never restore it wrongly.

:meth:`FingerprintTracker.memory_digest` is the SHA-256 of the sent table: END needs no pass
over memory.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

from vfio_user_mig.simulator.device.stream import (
    MAX_RUN_PAGES,
    PAGE_FP,
    Chunk,
    memory_fingerprint,
    page_fingerprints,
)

BLOCK_PAGES = MAX_RUN_PAGES
_FP = PAGE_FP.size


class FingerprintTracker:
    """Tracks changes of ``memory`` (page granular) against what was sent; see the module
    docstring."""

    def __init__(self, memory: mmap.mmap, page_size: int) -> None:
        self._ps = page_size
        self._n = len(memory) // page_size
        self._mem = memoryview(memory).toreadonly()
        self._sent = bytearray(_FP * self._n)  # the fingerprint of each page as last sent
        self._unsent = bytearray(b"\x01") * self._n
        self._n_unsent = self._n

    @property
    def all_sent(self) -> bool:
        """True once every page was sent at least once."""
        return self._n_unsent == 0

    def release(self) -> None:
        """Drop the view of device memory (the session ends)."""
        self._mem.release()

    def _scan(self, base: int, end: int) -> tuple[list[int] | range, bytes | None]:
        """The pages of block [base, end) to send, in order, and the block's current
        fingerprints (None when the block was never sent: not hashed)."""
        unsent = self._n_unsent and self._unsent.count(1, base, end)
        if unsent == end - base:
            return range(base, end), None
        ps = self._ps
        now = page_fingerprints(self._mem[base * ps : end * ps], ps)
        sent = self._sent
        if not unsent and now == sent[_FP * base : _FP * end]:
            return range(base, base), now
        flags = self._unsent
        pages = [
            p
            for i, p in enumerate(range(base, end))
            if flags[p] or now[_FP * i : _FP * i + _FP] != sent[_FP * p : _FP * p + _FP]
        ]
        return pages, now

    def changed(self) -> Iterator[int]:
        """Lazily yield, in order, the pages to send (never sent, or changed since sent)."""
        for base in range(0, self._n, BLOCK_PAGES):
            yield from self._scan(base, min(base + BLOCK_PAGES, self._n))[0]

    def _mark_sent(self, first: int, count: int, fps: bytes) -> None:
        self._sent[_FP * first : _FP * (first + count)] = fps
        if self._n_unsent:
            k = self._unsent.count(1, first, first + count)
            if k:
                self._unsent[first : first + count] = bytes(count)
                self._n_unsent -= k

    def fingerprints(self, first: int, count: int) -> bytes:
        """The fingerprints of pages [first, first+count) as last sent."""
        return bytes(self._sent[_FP * first : _FP * (first + count)])

    def memory_digest(self) -> bytes:
        """:func:`~.stream.memory_fingerprint` of what was sent (the SHA-256 of the sent
        table); meaningful once every page was sent."""
        return memory_fingerprint(self._sent)

    def _take(self, first: int, count: int, now: bytes | None, base: int,
              live: bool) -> tuple[int, Chunk, bytes]:
        ps = self._ps
        view = self._mem[first * ps : (first + count) * ps]
        if live:
            data: Chunk = view
            if now is None:
                fps = page_fingerprints(view, ps)
            else:
                fps = now[_FP * (first - base) : _FP * (first - base + count)]
        else:
            data = view.tobytes()  # the copy that is sent: fingerprinted after the copy
            fps = page_fingerprints(data, ps)
        self._mark_sent(first, count, fps)
        return first, data, fps

    def runs(self, max_run: int, *, live: bool) -> Iterator[tuple[int, Chunk, bytes]]:
        """One pass, lazily: (first_page, data, fingerprints) runs of at most ``max_run``
        consecutive pages to send (never sent, or changed), never crossing a block boundary;
        each is recorded as sent when yielded. ``live``: data is a read-only view of memory
        (the device is stopped), else a copy (module docstring)."""
        for base in range(0, self._n, BLOCK_PAGES):
            end = min(base + BLOCK_PAGES, self._n)
            pages, now = self._scan(base, end)
            first = count = 0
            for page in pages:
                if count and (page != first + count or count == max_run):
                    yield self._take(first, count, now, base, live)
                    count = 0
                if not count:
                    first = page
                count += 1
            if count:
                yield self._take(first, count, now, base, live)
