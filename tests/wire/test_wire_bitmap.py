"""Dirty bitmap helper against a straightforward reference (PROTOCOL.md section 3 erratum)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_user_mig.wire import DirtyBitmap, WireError, bitmap_len


def reference_bytes(length: int, page_size: int, pages: set[int]) -> bytes:
    """Page n -> bit n % 64 of little-endian u64 word n // 64, words packed in order."""
    npages = math.ceil(length / page_size)
    words = [0] * math.ceil(npages / 64)
    for n in pages:
        words[n // 64] |= 1 << (n % 64)
    return b"".join(w.to_bytes(8, "little") for w in words)


@st.composite
def ranges(draw: st.DrawFn) -> tuple[int, int, int, set[int]]:
    page_size = 1 << draw(st.integers(0, 21))
    length = draw(st.integers(0, page_size * 300))
    npages = math.ceil(length / page_size)
    pages = draw(st.sets(st.integers(0, npages - 1), max_size=40)) if npages else set()
    iova = draw(st.integers(0, 2**48)) // page_size * page_size
    return iova, length, page_size, pages


@settings(max_examples=150, deadline=None)
@given(ranges())
def test_against_reference(r: tuple[int, int, int, set[int]]) -> None:
    iova, length, page_size, pages = r
    expected = reference_bytes(length, page_size, pages)
    assert bitmap_len(length, page_size) == len(expected)
    bm = DirtyBitmap.from_pages(iova, length, page_size, pages)
    assert bm.to_bytes() == expected
    assert list(bm.pages()) == sorted(pages)
    assert list(bm.addresses()) == [iova + n * page_size for n in sorted(pages)]
    assert bm.count() == len(pages)
    assert all(bm.test_page(n) == (n in pages) for n in range(bm.npages))
    assert DirtyBitmap(iova, length, page_size, expected) == bm
    marked = DirtyBitmap(iova, length, page_size)
    for n in pages:
        marked.mark(iova + n * page_size)
    assert marked == bm


def test_length_rule_examples() -> None:
    assert bitmap_len(0x1000, 4096) == 8  # one page -> one u64 word
    assert bitmap_len(64 * 4096, 4096) == 8
    assert bitmap_len(64 * 4096 + 1, 4096) == 16
    assert bitmap_len(0, 4096) == 0


def test_spec_formula_is_wrong_and_ours_is_right() -> None:
    # Page 65 of a 4 KiB-page range: word 1, bit 1. The spec's text would test word 65 (out
    # of range) and bit addr % 64 == 0.
    bm = DirtyBitmap.from_pages(0, 128 * 4096, 4096, [65])
    assert bm.to_bytes() == bytes(8) + (2).to_bytes(8, "little")


def test_mark_range_take_and_errors() -> None:
    bm = DirtyBitmap(0x10000, 0x10000, 0x1000)
    bm.mark(0x10FFF, 2)  # straddles pages 0 and 1
    assert list(bm.pages()) == [0, 1]
    assert bm.take() == (3).to_bytes(8, "little")
    assert bm.count() == 0
    bm.set_page(15)
    bm.clear_page(15)
    assert bm.count() == 0
    with pytest.raises(WireError):
        bm.set_page(16)
    with pytest.raises(WireError):
        bm.mark(0x20000)
    with pytest.raises(WireError):
        DirtyBitmap(0, 4096, 3000)
    with pytest.raises(WireError):
        DirtyBitmap(0, 4096, 4096, (2).to_bytes(8, "little"))  # bit past the range
    with pytest.raises(WireError):
        DirtyBitmap(0, 4096, 4096, bytes(16))
