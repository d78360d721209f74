"""Which pages of device memory changed since they were last sent (pre-copy tracking).

Device memory changes through paths the device sees (REGION_WRITE, DMA into BAR2) and one it
does not: the client's mmap of the memfd. A write-protect trap is not available to pure Python,
so the tracker keeps a *shadow copy* of the content last sent and compares: a page must be sent
when it was never sent or differs from its shadow. This is sound for every write path, whoever
writes and whenever, because the snapshot that is sent is the snapshot that is shadowed.

Cost: one extra copy of device memory (``mem_size`` bytes) for the duration of a save session,
and a scan reading ``2 * mem_size`` bytes per pass, done in C without copies (``memcmp`` via
``bytearray.startswith(view, offset)``): blocks of :data:`BLOCK_PAGES` pages are compared at
once, a differing block is split into :data:`SUB_PAGES`-page parts and only differing parts
are compared page by page. A block never sent is taken whole, without comparing. A sent run
is copied once from device memory into the shadow, and handed out as a read-only view of the
shadow (the encoder copies it once more, into the read's bytes). The SHA-256 of the shadow
(for END) is computed as pages are taken, in order, while they are in cache; a page taken a
second time makes :meth:`ShadowTracker.memory_digest` hash the whole shadow instead.
"""

from __future__ import annotations

import hashlib
import mmap
from collections.abc import Iterator

BLOCK_PAGES = 64
SUB_PAGES = 8


class ShadowTracker:
    """Tracks changes of ``memory`` (page granular) against what was sent."""

    def __init__(self, memory: mmap.mmap, page_size: int) -> None:
        self._mem = memory
        self._ps = page_size
        self._n = len(memory) // page_size
        self._shadow = bytearray(len(memory))
        self._view = memoryview(self._shadow).toreadonly()
        self._unsent = bytearray(b"\x01") * self._n
        self._n_unsent = self._n
        # SHA-256 of shadow[0:_hashed], fed by take() while the pages are in cache; None once
        # a hashed page was taken again (memory_digest then hashes the whole shadow).
        self._hash: hashlib._Hash | None = hashlib.sha256()
        self._hashed = 0

    @property
    def shadow(self) -> memoryview:
        """Read-only view of the content as last sent (all pages, once everything was sent)."""
        return self._view

    @property
    def all_sent(self) -> bool:
        """True once every page was sent at least once."""
        return self._n_unsent == 0

    def _differs(self, mem: memoryview, first: int, end: int) -> bool:
        """Pages [first, end) were never all sent, or differ from the shadow (memcmp)."""
        if self._n_unsent and self._unsent.find(1, first, end) >= 0:
            return True
        lo, hi = first * self._ps, end * self._ps
        return not self._shadow.startswith(mem[lo:hi], lo)

    def _dirty(self, base: int, end: int) -> list[int] | range:
        """The pages of block [base, end) to send, in order."""
        if self._n_unsent and self._unsent.count(1, base, end) == end - base:
            return range(base, end)  # never sent: no comparison needed
        with memoryview(self._mem) as mem:
            if not self._differs(mem, base, end):
                return range(base, base)
            pages: list[int] = []
            for sub in range(base, end, SUB_PAGES):
                sub_end = min(sub + SUB_PAGES, end)
                if self._differs(mem, sub, sub_end):
                    pages.extend(p for p in range(sub, sub_end) if self._differs(mem, p, p + 1))
            return pages

    def changed(self) -> Iterator[int]:
        """Lazily yield, in order, the pages to send (never sent, or differing from shadow)."""
        for base in range(0, self._n, BLOCK_PAGES):
            yield from self._dirty(base, min(base + BLOCK_PAGES, self._n))

    def take(self, first: int, count: int) -> memoryview:
        """Snapshot pages [first, first+count) for sending; they become the shadow. Returns a
        read-only view of the shadow (valid until these pages are taken again)."""
        a, b = first * self._ps, (first + count) * self._ps
        with memoryview(self._mem) as mem:
            self._shadow[a:b] = mem[a:b]
        if self._n_unsent:
            k = self._unsent.count(1, first, first + count)
            if k:
                self._unsent[first : first + count] = bytes(count)
                self._n_unsent -= k
        if self._hash is not None:
            if a == self._hashed:
                self._hash.update(self._view[a:b])
                self._hashed = b
            elif a < self._hashed:
                self._hash = None
        return self._view[a:b]

    def memory_digest(self) -> bytes:
        """SHA-256 of the shadow (what was sent): the running hash of the prefix taken in
        order, completed with the rest; the whole shadow when pages were taken again."""
        if self._hash is None:
            return hashlib.sha256(self._view).digest()
        h = self._hash.copy()
        h.update(self._view[self._hashed :])
        return h.digest()

    def runs(self, max_run: int) -> Iterator[tuple[int, memoryview]]:
        """One pass: lazily yield (first_page, data) runs of at most ``max_run`` pages; data
        is a read-only view of the shadow, valid until the next item is asked for."""
        first = count = 0
        for base in range(0, self._n, BLOCK_PAGES):
            end = min(base + BLOCK_PAGES, self._n)
            pages = self._dirty(base, end)
            if not count and isinstance(pages, range):  # clean, or never sent: no per-page work
                for start in range(pages.start, pages.stop, max_run):
                    n = min(max_run, pages.stop - start)
                    if n < max_run:  # a partial run may continue into the next block
                        first, count = start, n
                        break
                    yield start, self.take(start, n)
                continue
            for page in pages:
                if count and (page != first + count or count == max_run):
                    yield first, self.take(first, count)
                    count = 0
                if not count:
                    first = page
                count += 1
        if count:
            yield first, self.take(first, count)
