"""Dirty-page bitmaps of DMA_LOGGING_REPORT (PROTOCOL.md section 3 "Dirty bitmap (erratum)").

Mapping: page ``n = (addr - iova) // page_size`` is bit ``n % 64`` of the little-endian u64 word
``n // 64``. Because the words are little-endian this is the same as bit ``n % 8`` of byte
``n // 8``, which is how this module stores it.

Erratum: vfio-user.rst ("VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT"), copying the kernel uapi
comment, writes ``bitmap[(addr - iova)/page_size] & (1ULL << (addr % 64))``. Both halves are
wrong: the word index must be the page number divided by 64 (not the page number), and the
bit must be the page number modulo 64 (not the address modulo 64, which is always 0 for a
page-aligned address with page_size >= 64). The kernel, QEMU and libvfio-user all implement the
mapping above.

Length rule: ``ceil(ceil(length / page_size) / 64) * 8`` bytes (whole u64 words); bits past the
last page of the range must be zero. ``page_size`` must be a power of two.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from vfio_user_mig.wire.errors import invalid

_WORD_BITS = 64
_WORD_BYTES = 8
_WORDS = struct.Struct("<Q")


def _check_page_size(page_size: int) -> None:
    if page_size <= 0 or page_size & (page_size - 1):
        raise invalid("bitmap.page_size", f"{page_size} is not a power of two")


def page_count(length: int, page_size: int) -> int:
    """Pages covered by ``length`` bytes: ``ceil(length / page_size)``."""
    _check_page_size(page_size)
    return -(-length // page_size)


def bitmap_len(length: int, page_size: int) -> int:
    """Bitmap bytes for a range: ``ceil(ceil(length / page_size) / 64) * 8``."""
    return -(-page_count(length, page_size) // _WORD_BITS) * _WORD_BYTES


def tail_is_clear(data: bytes | bytearray | memoryview, npages: int) -> bool:
    """True when no bit at or past page ``npages`` is set (checks the last word only)."""
    if not len(data):
        return True
    last = len(data) - _WORD_BYTES
    first_page_of_last = last * 8
    (word,) = _WORDS.unpack_from(data, last)
    return not word >> max(npages - first_page_of_last, 0)


class DirtyBitmap:
    """A mutable dirty bitmap for ``[iova, iova + length)`` at ``page_size`` granularity.

    ``data`` (optional) is an existing bitmap of exactly :func:`bitmap_len` bytes, e.g. the
    tail of a DMA_LOGGING_REPORT reply; it is copied. Raises :class:`WireError` (EINVAL) for a
    bad page size, a wrong length, bits set beyond the range, or a page/address out of range.
    """

    __slots__ = ("_bits", "iova", "length", "npages", "page_size")

    def __init__(
        self,
        iova: int,
        length: int,
        page_size: int,
        data: bytes | bytearray | memoryview | None = None,
    ) -> None:
        self.iova = iova
        self.length = length
        self.page_size = page_size
        self.npages = page_count(length, page_size)
        size = bitmap_len(length, page_size)
        if data is None:
            self._bits = bytearray(size)
            return
        if len(data) != size:
            raise invalid("bitmap", f"{len(data)} bytes, expected {size} for {self.npages} pages")
        self._bits = bytearray(data)
        if not tail_is_clear(self._bits, self.npages):
            raise invalid("bitmap", f"bits set beyond page {self.npages - 1}")

    @classmethod
    def from_pages(
        cls, iova: int, length: int, page_size: int, pages: Iterable[int]
    ) -> DirtyBitmap:
        """A bitmap with the given page numbers set."""
        bm = cls(iova, length, page_size)
        for n in pages:
            bm.set_page(n)
        return bm

    def _check(self, n: int) -> None:
        if not 0 <= n < self.npages:
            raise invalid("bitmap.page", f"{n} outside 0..{self.npages - 1}")

    def set_page(self, n: int) -> None:
        self._check(n)
        self._bits[n >> 3] |= 1 << (n & 7)

    def clear_page(self, n: int) -> None:
        self._check(n)
        self._bits[n >> 3] &= ~(1 << (n & 7)) & 0xFF

    def test_page(self, n: int) -> bool:
        self._check(n)
        return bool(self._bits[n >> 3] >> (n & 7) & 1)

    def page_of(self, addr: int) -> int:
        """The page number of address ``addr`` (must lie in the range)."""
        if not self.iova <= addr < self.iova + self.length:
            raise invalid("bitmap.addr", f"{addr:#x} outside the logged range")
        return (addr - self.iova) // self.page_size

    def mark(self, addr: int, size: int = 1) -> None:
        """Set every page touched by ``[addr, addr + size)``."""
        if size <= 0:
            return
        first = self.page_of(addr)
        last = self.page_of(addr + size - 1)
        for n in range(first, last + 1):
            self._bits[n >> 3] |= 1 << (n & 7)

    def pages(self) -> Iterator[int]:
        """Dirty page numbers, ascending."""
        bits = self._bits
        for wi, (word,) in enumerate(_WORDS.iter_unpack(bits)):
            base = wi * _WORD_BITS
            while word:
                low = word & -word
                yield base + low.bit_length() - 1
                word ^= low

    def addresses(self) -> Iterator[int]:
        """Start address of each dirty page, ascending."""
        for n in self.pages():
            yield self.iova + n * self.page_size

    def count(self) -> int:
        """Number of dirty pages."""
        return int.from_bytes(self._bits, "little").bit_count()

    def to_bytes(self) -> bytes:
        """The wire form (little-endian u64 words)."""
        return bytes(self._bits)

    def take(self) -> bytes:
        """Read-and-clear (as libvfio-user's report does): the bytes, then all bits cleared."""
        out = bytes(self._bits)
        self._bits[:] = bytes(len(self._bits))
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DirtyBitmap):
            return NotImplemented
        return (self.iova, self.length, self.page_size, self._bits) == (
            other.iova,
            other.length,
            other.page_size,
            other._bits,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"DirtyBitmap(iova={self.iova:#x}, length={self.length:#x}, "
            f"page_size={self.page_size}, dirty={self.count()})"
        )
