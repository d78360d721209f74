"""Which pages of device memory changed since they were last sent (pre-copy tracking).

Device memory changes through paths the device sees (REGION_WRITE, DMA into BAR2) and one it
does not: the client's mmap of the memfd. A write-protect trap is not available to pure Python,
so the tracker keeps a *shadow copy* of the content last sent and compares: a page must be sent
when it was never sent or differs from its shadow. This is sound for every write path, whoever
writes and whenever, because the snapshot that is sent is the snapshot that is shadowed.

Cost: one extra copy of device memory (``mem_size`` bytes) for the duration of a save session,
and a scan reading ``2 * mem_size`` bytes per pass (blocks of :data:`BLOCK_PAGES` pages are
compared at once; only differing blocks are compared page by page). For 16 MiB that is a few
milliseconds per pass.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

BLOCK_PAGES = 64


class ShadowTracker:
    """Tracks changes of ``memory`` (page granular) against what was sent."""

    def __init__(self, memory: mmap.mmap, page_size: int) -> None:
        self._mem = memory
        self._ps = page_size
        self._n = len(memory) // page_size
        self._shadow = bytearray(len(memory))
        self._unsent = bytearray(b"\x01") * self._n
        self._n_unsent = self._n

    @property
    def shadow(self) -> memoryview:
        """Read-only view of the content as last sent (all pages, once everything was sent)."""
        return memoryview(self._shadow).toreadonly()

    @property
    def all_sent(self) -> bool:
        """True once every page was sent at least once."""
        return self._n_unsent == 0

    def changed(self) -> Iterator[int]:
        """Lazily yield, in order, the pages to send (never sent, or differing from shadow)."""
        ps, mem, shadow = self._ps, self._mem, self._shadow
        for base in range(0, self._n, BLOCK_PAGES):
            lo, hi = base * ps, min((base + BLOCK_PAGES) * ps, len(shadow))
            unsent = 1 in self._unsent[base : base + BLOCK_PAGES]
            if not unsent and mem[lo:hi] == shadow[lo:hi]:
                continue
            for page in range(base, min(base + BLOCK_PAGES, self._n)):
                a = page * ps
                if self._unsent[page] or mem[a : a + ps] != shadow[a : a + ps]:
                    yield page

    def take(self, first: int, count: int) -> bytes:
        """Snapshot pages [first, first+count) for sending; they become the shadow."""
        a, b = first * self._ps, (first + count) * self._ps
        data = self._mem[a:b]
        self._shadow[a:b] = data
        for page in range(first, first + count):
            if self._unsent[page]:
                self._unsent[page] = 0
                self._n_unsent -= 1
        return data

    def runs(self, max_run: int) -> Iterator[tuple[int, bytes]]:
        """One pass: lazily yield (first_page, data) runs of at most ``max_run`` pages."""
        first = count = 0
        for page in self.changed():
            if count and (page != first + count or count == max_run):
                yield first, self.take(first, count)
                count = 0
            if not count:
                first = page
            count += 1
        if count:
            yield first, self.take(first, count)
