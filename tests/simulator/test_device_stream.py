"""The migration stream format: framing, lazy chunked encoding, incremental validation."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.simulator.conftest import MemorySink
from vfio_user_mig.simulator.device.stream import (
    END_PAYLOAD,
    FORMAT_VERSION,
    MAX_RUN_PAGES,
    PAGES_PREFIX,
    RECORD_HEADER,
    RecordItem,
    RecordType,
    StreamError,
    StreamGeometry,
    frame,
    header_payload,
    max_payload,
    pages_parts,
    pages_payload,
)
from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder
from vfio_user_mig.simulator.device.stream_encoder import StreamEncoder

PS = 4096
GEO = StreamGeometry("toy", PS, 8 * PS, 4)


def Sink() -> MemorySink:
    return MemorySink(GEO)


def page(n: int) -> bytes:
    return bytes([n + 1]) * PS


def records(pause_after: int | None = None) -> Iterator[RecordItem]:
    yield RecordType.HEADER, header_payload(GEO)
    mem = b"".join(page(i) for i in range(8))
    yield RecordType.PAGES, pages_payload(0, mem[: 5 * PS], PS)
    if pause_after is not None:
        yield None
    yield RecordType.PAGES, pages_payload(5, mem[5 * PS :], PS)
    yield RecordType.PAGES, pages_payload(2, page(2), PS)  # resend: last copy wins
    yield RecordType.REGS, b"regs"
    yield RecordType.END, END_PAYLOAD.pack(hashlib.sha256(b"regs" + mem).digest())


def whole() -> bytes:
    enc = StreamEncoder(records())
    return enc.read(1 << 20)


def split(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        length = RECORD_HEADER.unpack_from(stream, pos)[4]
        out.append(stream[pos : pos + RECORD_HEADER.size + length])
        pos += RECORD_HEADER.size + length
    return out


def decode(data: bytes, chunk: int = 7) -> MemorySink:
    sink = Sink()
    dec = StreamDecoder(GEO, sink)
    for i in range(0, len(data), chunk):
        dec.feed(data[i : i + chunk])
    dec.finish()
    return sink


def refused(data: bytes, fragment: str) -> None:
    with pytest.raises(StreamError) as exc:
        decode(data)
    assert fragment in str(exc.value)
    assert exc.value.errno == 22


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=10))
def test_roundtrip_any_chunking(sizes: list[int]) -> None:
    enc = StreamEncoder(records())
    parts = []
    i = 0
    while not enc.ended:
        parts.append(enc.read(sizes[i % len(sizes)]))
        i += 1
    data = b"".join(parts)
    assert data == whole()
    sink = decode(data, chunk=sizes[0])
    assert sink.mem == b"".join(page(i) for i in range(8)) and sink.regs == b"regs"


def test_encoder_buffers_one_record_and_pauses() -> None:
    enc = StreamEncoder(records(pause_after=1))
    first = enc.read(1 << 20)
    assert len(first) == 2 * RECORD_HEADER.size + len(header_payload(GEO)) + 8 + 5 * (8 + PS)
    assert enc.read(3) == b"\x4d\x47\x44"  # next record starts: magic
    assert enc.buffered == RECORD_HEADER.size + 8 + 3 * (8 + PS) - 3
    rest = enc.read(1 << 20)
    assert enc.read(10) == b"" and enc.ended
    assert enc.peak <= RECORD_HEADER.size + max_payload(RecordType.PAGES, GEO)
    assert enc.records == 6
    decode(first + b"MGD" + rest)


def test_truncation_anywhere_is_detected() -> None:
    data = whole()
    for cut in range(0, len(data), 997):
        refused(data[:cut], "stream")


@given(bit=st.integers(0, 8 * 2000 - 1))
def test_bit_flips_are_detected(bit: int) -> None:
    data = bytearray(whole())
    bit %= 8 * len(data)
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(StreamError):
        decode(bytes(data))


def test_reorder_drop_duplicate_junk() -> None:
    recs = split(whole())
    refused(b"".join([recs[0], recs[2], recs[1], *recs[3:]]), "seq is 2, expected 1")
    refused(b"".join([recs[0], *recs[2:]]), "seq is 2, expected 1")
    refused(b"".join([recs[0], recs[1], recs[1], *recs[2:]]), "seq is 1, expected 2")
    refused(whole() + b"\0", "trailing data after END")
    refused(b"XXXX" + whole()[4:], "bad magic")


def test_semantic_checks_with_valid_checks() -> None:
    mem = b"".join(page(i) for i in range(8))
    good_end = END_PAYLOAD.pack(hashlib.sha256(b"regs" + mem).digest())

    def stream(*items: tuple[RecordType, bytes]) -> bytes:
        return b"".join(frame(t, seq, p) for seq, (t, p) in enumerate(items))

    head = (RecordType.HEADER, header_payload(GEO))
    all_pages = [
        (RecordType.PAGES, pages_payload(i * 4, mem[i * 4 * PS : (i + 1) * 4 * PS], PS))
        for i in (0, 1)
    ]
    tail = [(RecordType.REGS, b"regs"), (RecordType.END, good_end)]
    decode(stream(head, *all_pages, *tail))
    other = StreamGeometry("toy", PS, 16 * PS, 4)
    refused(stream((RecordType.HEADER, header_payload(other)), *all_pages, *tail), "mem_size")
    refused(stream(head, all_pages[0], *tail), "4 pages were never sent")
    refused(
        stream(head, *all_pages, (RecordType.PAGES, pages_payload(7, page(0) * 2, PS)), *tail),
        "beyond 8 pages",
    )
    bad = pages_payload(0, mem[: 4 * PS - 1] + b"\x00", PS)  # valid checks, other content
    refused(stream(head, (RecordType.PAGES, bad), all_pages[1], *tail), "digest does not match")
    torn = pages_payload(0, mem[: 4 * PS], PS)[:-1] + b"\x00"  # record CRC fine, page not
    refused(
        stream(head, (RecordType.PAGES, torn), all_pages[1], *tail),
        "fingerprint mismatch in page 3",
    )
    for n in (0, 2):  # count disagreeing with the length, with a valid record CRC
        odd = PAGES_PREFIX.pack(0, n) + pages_payload(0, mem[: 4 * PS], PS)[8:]
        refused(stream(head, (RecordType.PAGES, odd), *tail), f"count {n}")
    refused(stream(head, *all_pages, (RecordType.END, good_end)), "END not allowed after PAGES")
    refused(stream(*all_pages), "PAGES not allowed after stream start")
    refused(stream(head, *all_pages, (RecordType.REGS, b"reg"), tail[1]), "REGS: 3 bytes")
    big = RECORD_HEADER.pack(
        b"MGDV", FORMAT_VERSION, RecordType.PAGES, 1, 8 + (MAX_RUN_PAGES + 1) * (8 + PS), 0
    )
    refused(stream(head) + big, "exceeds")
    refused(stream(head, *all_pages, (RecordType.REGS, b"regs")), "no END (last record #3 REGS)")


def test_every_copy_of_a_page_sent_twice_is_checked() -> None:
    """Page data is checked when a later copy replaces it or at finish: a bit flipped in the
    first copy of a page sent again is refused (when the second copy arrives), one in the
    last copy at finish; a clean stream decodes."""
    recs = split(whole())
    first_copy = 2 * PS + 8 + 8 * 5 + RECORD_HEADER.size  # page 2 in the record of pages 0..4
    for at, fragment in (
        (first_copy, "page 2 (its copy before)"),
        (-1, "fingerprint mismatch in page 2"),
    ):
        rec = 1 if at > 0 else 3
        bad = bytearray(recs[rec])
        bad[at] ^= 0x10
        dec = StreamDecoder(GEO, Sink())
        with pytest.raises(StreamError) as exc:
            for r in (*recs[:rec], bytes(bad), *recs[rec + 1 :]):
                dec.feed(r)
            dec.finish()
        assert fragment in str(exc.value)
    decode(b"".join(recs))


def test_poisoned_decoder_keeps_failing() -> None:
    dec = StreamDecoder(GEO, Sink())
    with pytest.raises(StreamError):
        dec.feed(b"JUNKJUNK")
    with pytest.raises(StreamError):
        dec.feed(whole())
    with pytest.raises(StreamError):
        dec.finish()


def test_read_parts_are_the_records_without_a_copy() -> None:
    """read_parts returns the parts a read is made of (record headers, prefixes, the page
    buffers themselves, sliced at the read's bounds): their concatenation is the stream
    read() returns, and page data is never copied."""
    mem = bytearray(b"".join(page(i) for i in range(8)))
    view = memoryview(mem)
    items: list[RecordItem] = [
        (RecordType.HEADER, header_payload(GEO)),
        (RecordType.PAGES, pages_parts(0, view[: 4 * PS], PS)),
        (RecordType.PAGES, pages_parts(4, view[4 * PS :], PS)),
        (RecordType.REGS, b"regs"),
        (RecordType.END, END_PAYLOAD.pack(hashlib.sha256(b"regs" + mem).digest())),
    ]
    enc = StreamEncoder(iter(items))
    parts = []
    while not enc.ended:
        parts.extend(enc.read_parts(5000))
    pages = [p for p in parts if isinstance(p, memoryview) and p.obj is mem]
    assert sum(len(p) for p in pages) == len(mem)  # every page byte a view of memory
    data = b"".join(parts)
    assert data == StreamEncoder(iter(items)).read(1 << 20)
    assert decode(data).mem == mem


def test_whole_records_in_one_feed_are_not_buffered() -> None:
    data = whole()
    sink = Sink()
    dec = StreamDecoder(GEO, sink)
    dec.feed(data)
    dec.finish()
    assert dec.peak == 0 and sink.regs == b"regs"
    split_dec = StreamDecoder(GEO, Sink())
    split_dec.feed(data[:100])  # a record split across feeds: buffered, one at most
    split_dec.feed(data[100:])
    split_dec.finish()
    assert 0 < split_dec.peak <= PS  # the PAGES prefix, or one page, split across feeds
