"""Which pages of device memory changed since they were last sent (pre-copy tracking).

Device memory changes through paths the device sees (REGION_WRITE, DMA into BAR2) and one it
does not: the client's mmap of the memfd. A write-protect trap is not available to pure Python,
so the tracker keeps a *shadow copy* of the content last sent and compares: a page must be sent
when it was never sent or differs from its shadow. This is sound for every write path, whoever
writes and whenever, because the snapshot that is sent is the snapshot that is shadowed.

Memory is cut in *blocks* of :data:`BLOCK_PAGES` pages (= ``MAX_RUN_PAGES``, so a block is at
most one PAGES record); a run of pages sent never crosses a block boundary. The shadow of a
block lives in one of two places:

* the *staging* buffer, laid out as the save stream itself: room for the HEADER record, then
  per block the 20-byte record header, the PAGES prefix and page CRCs, then the pages. The
  first time a block is sent (it is always sent whole, the first time) its pages are copied
  from device memory straight into their place there, their CRCs computed right after the
  copy while in cache, and the prefix and CRCs written in front: the encoder only fills in the
  record header (:class:`~.stream.Staged`), and consecutive blocks of the first pass are
  consecutive bytes, so a read of them is a zero-copy view of the staging buffer. Staging
  bytes never change once written, so a view of them handed out stays valid as long as its
  holder wants (e.g. a reply queued by the server);
* the *second shadow*, at the page's natural offset, once a page of the block is sent again:
  the block's shadow is then moved there (one block copy, once) and re-sent runs are copied
  into it; those records go out as (prefix + CRCs, view of the second shadow) parts that the
  encoder copies into the read's bytes. A block's shadow is therefore always in one
  contiguous place, compared with one call.

Cost: up to two extra copies of device memory for the duration of a save session (the staging
buffer, ``mem_size`` plus 0.1 %; the second shadow only for blocks sent again), both anonymous
mappings that are neither zeroed up front nor touched before use (transparent huge pages where
the kernel allows); and a scan reading ``2 * mem_size`` bytes per pass, done in C without
copies (a byte compare via ``mmap.find(view, start, end)`` over a window exactly as long as the
view, so it can only match in place: an equality test): a block is compared at once, a
differing block is split into :data:`SUB_PAGES`-page parts and only differing parts are
compared page by page. A block never sent is taken whole, without comparing. The CRC-32 of
every page taken is also kept in a page-CRC table (4 bytes a page):
:meth:`ShadowTracker.memory_digest` is the SHA-256 of the table, so END needs no pass over
the whole shadow.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Iterator
from dataclasses import dataclass

from vfio_user_mig.simulator.device.stream import (
    MAX_RUN_PAGES,
    PAGE_CRC,
    PAGES_PREFIX,
    RECORD_HEADER,
    memory_fingerprint,
    page_crcs,
)

BLOCK_PAGES = MAX_RUN_PAGES
SUB_PAGES = 8
_REC = RECORD_HEADER.size


def _anonymous(size: int) -> mmap.mmap:
    """A zero-filled private anonymous mapping of ``size`` bytes, backed by transparent huge
    pages where the kernel allows: unlike ``bytearray(size)`` it is not written at creation
    (no up-front memset of a whole shadow when a session starts), and first touches fault
    2 MiB at a time."""
    mm = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None:
        with contextlib.suppress(OSError):  # THP disabled or not supported: plain pages
            mm.madvise(advice)
    return mm


@dataclass(frozen=True)
class StagedRun:
    """A whole block sent for the first time, already laid out in the staging buffer as a
    PAGES record: payload (prefix, page CRCs, pages) at ``staging[offset + 20 :][:length]``,
    the 20-byte record header to be written at ``offset``."""

    first: int
    count: int
    offset: int
    length: int


class ShadowTracker:
    """Tracks changes of ``memory`` (page granular) against what was sent; see the module
    docstring. ``head_room``: bytes reserved at the start of the staging buffer (for the
    HEADER record)."""

    def __init__(self, memory: mmap.mmap, page_size: int, head_room: int = 0) -> None:
        self._mem = memory
        self._ps = page_size
        self._n = len(memory) // page_size
        self._head_room = head_room
        self._n_blocks = -(-self._n // BLOCK_PAGES)
        self._slot = _REC + PAGES_PREFIX.size + BLOCK_PAGES * (PAGE_CRC.size + page_size)
        last = self._n - (self._n_blocks - 1) * BLOCK_PAGES
        size = head_room + (self._n_blocks - 1) * self._slot + self._slot_size(last)
        self._staging = _anonymous(size)
        self._staging_ro = memoryview(self._staging).toreadonly()
        self._second: mmap.mmap | None = None  # allocated when a block is first sent again
        self._second_ro = memoryview(b"")
        self._moved = bytearray(self._n_blocks)
        self._unsent = bytearray(b"\x01") * self._n
        self._n_unsent = self._n
        # CRC-32 of every page of the shadow (u32 little-endian), set by each take.
        self._crcs = bytearray(4 * self._n)

    def _slot_size(self, pages: int) -> int:
        return _REC + PAGES_PREFIX.size + pages * (PAGE_CRC.size + self._ps)

    @property
    def staging(self) -> mmap.mmap:
        """The staging buffer (the encoder writes record headers into it)."""
        return self._staging

    @property
    def all_sent(self) -> bool:
        """True once every page was sent at least once."""
        return self._n_unsent == 0

    def _where(self, page: int) -> tuple[mmap.mmap, int]:
        """(buffer, offset) of the shadow of ``page``."""
        block, index = divmod(page, BLOCK_PAGES)
        if self._moved[block]:
            assert self._second is not None
            return self._second, page * self._ps
        count = min(BLOCK_PAGES, self._n - block * BLOCK_PAGES)
        data = self._head_room + block * self._slot + _REC + PAGES_PREFIX.size
        return self._staging, data + count * PAGE_CRC.size + index * self._ps

    def content(self) -> bytes:
        """The whole shadow as one bytes object, page order (for inspection and tests)."""
        out = []
        for base in range(0, self._n, BLOCK_PAGES):
            buf, off = self._where(base)
            n = min(BLOCK_PAGES, self._n - base) * self._ps
            out.append(buf[off : off + n])
        return b"".join(out)

    def _differs(self, mem: memoryview, first: int, end: int) -> bool:
        """Pages [first, end) (inside one block) were never all sent, or differ from the
        shadow."""
        if self._n_unsent and self._unsent.find(1, first, end) >= 0:
            return True
        buf, off = self._where(first)
        lo, hi = first * self._ps, end * self._ps
        return buf.find(mem[lo:hi], off, off + hi - lo) != off  # fits only in place: equality

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

    def _mark_sent(self, first: int, count: int) -> None:
        if self._n_unsent:
            k = self._unsent.count(1, first, first + count)
            if k:
                self._unsent[first : first + count] = bytes(count)
                self._n_unsent -= k

    def _take_block(self, block: int) -> StagedRun:
        """First send of a whole block: copy it into its staging slot (pages, CRCs, prefix)."""
        first = block * BLOCK_PAGES
        count = min(BLOCK_PAGES, self._n - first)
        slot = self._head_room + block * self._slot
        table = slot + _REC + PAGES_PREFIX.size
        data = table + count * PAGE_CRC.size
        a, n = first * self._ps, count * self._ps
        with memoryview(self._mem) as mem:
            self._staging[data : data + n] = mem[a : a + n]
        crcs = page_crcs(self._staging_ro[data : data + n], self._ps)
        self._staging[slot + _REC : table] = PAGES_PREFIX.pack(first, count)
        self._staging[table:data] = crcs
        self._crcs[4 * first : 4 * (first + count)] = crcs
        self._mark_sent(first, count)
        return StagedRun(first, count, slot, data + n - slot - _REC)

    def _move(self, block: int) -> None:
        """A block is sent again: its shadow moves to the second shadow (once)."""
        if self._second is None:
            self._second = _anonymous(self._n * self._ps)
            self._second_ro = memoryview(self._second).toreadonly()
        _, off = self._where(block * BLOCK_PAGES)
        n = min(BLOCK_PAGES, self._n - block * BLOCK_PAGES) * self._ps
        a = block * BLOCK_PAGES * self._ps
        self._second[a : a + n] = self._staging_ro[off : off + n]
        self._moved[block] = 1

    def take(self, first: int, count: int) -> memoryview:
        """Snapshot pages [first, first+count) (inside one block, whose first send was a
        whole-block one) for sending again; they become the shadow, and their CRCs are
        recorded (:meth:`crcs`). Returns a read-only view of the second shadow (valid until
        these pages are taken again)."""
        block = first // BLOCK_PAGES
        if (first + count - 1) // BLOCK_PAGES != block:
            raise ValueError(f"run {first}+{count} crosses a block boundary")
        if not self._moved[block]:
            self._move(block)
        a, b = first * self._ps, (first + count) * self._ps
        assert self._second is not None
        with memoryview(self._mem) as mem:
            self._second[a:b] = mem[a:b]
        self._mark_sent(first, count)
        view = self._second_ro[a:b]
        self._crcs[4 * first : 4 * (first + count)] = page_crcs(view, self._ps)
        return view

    def crcs(self, first: int, count: int) -> bytes:
        """The page CRCs (u32 little-endian each) of pages [first, first+count) as last taken."""
        return bytes(self._crcs[4 * first : 4 * (first + count)])

    def memory_digest(self) -> bytes:
        """:func:`~.stream.memory_fingerprint` of the shadow (what was sent): the SHA-256 of
        its page-CRC table; meaningful once every page was sent."""
        return memory_fingerprint(self._crcs)

    def runs(self, max_run: int) -> Iterator[tuple[int, memoryview] | StagedRun]:
        """One pass, lazily: a block never sent yields a :class:`StagedRun` (or, when
        ``max_run`` is smaller than a block, (first_page, view of its staging pages) runs of
        at most ``max_run`` pages; staging views stay valid); a block with changed pages
        yields (first_page, data) runs of at most ``max_run`` consecutive changed pages, data
        a read-only view of the second shadow, valid until the next item is asked for. Runs
        never cross a block boundary."""
        for base in range(0, self._n, BLOCK_PAGES):
            end = min(base + BLOCK_PAGES, self._n)
            pages = self._dirty(base, end)
            if isinstance(pages, range) and len(pages) == end - base:  # never sent: staging
                staged = self._take_block(base // BLOCK_PAGES)
                if max_run >= staged.count:
                    yield staged
                    continue
                _, off = self._where(base)
                for start in range(base, end, max_run):
                    n = min(max_run, end - start)
                    o = off + (start - base) * self._ps
                    yield start, self._staging_ro[o : o + n * self._ps]
                continue
            first = count = 0
            for page in pages:
                if count and (page != first + count or count == max_run):
                    yield first, self.take(first, count)
                    count = 0
                if not count:
                    first = page
                count += 1
            if count:
                yield first, self.take(first, count)
