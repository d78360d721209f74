"""Receiving the migration stream in place (device/stream_inplace.py): bytes received into the
buffers ``StreamDecoder.recv_buffers`` gives (views of the sink's memory, pieces of the
decoder's own buffer) restore exactly what feeding them restores, however the receives are
cut, and every check still refuses a bad stream."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.simulator.conftest import InPlaceSink
from vfio_user_mig.simulator.device.stream import (
    END_PAYLOAD,
    RECORD_HEADER,
    RecordItem,
    RecordType,
    StreamError,
    StreamGeometry,
    header_payload,
    pages_payload,
)
from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder
from vfio_user_mig.simulator.device.stream_encoder import StreamEncoder

PS = 64  # small pages: a stream of a few KiB crosses several blocks of 64 pages
N = 160
GEO = StreamGeometry("toy", PS, N * PS, 4)
MEM = bytes(random.Random(7).randbytes(N * PS))


def Sink() -> InPlaceSink:
    return InPlaceSink(GEO)


def _records(runs: list[tuple[int, int]]) -> Iterator[RecordItem]:
    yield RecordType.HEADER, header_payload(GEO)
    for first, count in runs:
        yield RecordType.PAGES, pages_payload(first, MEM[first * PS : (first + count) * PS], PS)
    yield RecordType.REGS, b"regs"
    yield RecordType.END, END_PAYLOAD.pack(hashlib.sha256(b"regs" + MEM).digest())


#: As a save pass sends it (runs of whole blocks: every guess right), then pages sent again.
ALIGNED = [(0, 64), (64, 64), (128, 32), (5, 3), (120, 20)]
#: Runs the decoder cannot guess (not block-aligned, short, out of order).
MISALIGNED = [(0, 10), (10, 60), (100, 60), (70, 30), (3, 1)]


def stream(runs: list[tuple[int, int]]) -> bytes:
    return StreamEncoder(_records(runs)).read(1 << 20)


def receive(data: bytes, cuts: list[int], sink: InPlaceSink | None = None
            ) -> tuple[InPlaceSink, int]:
    """Deliver ``data`` as a socket would: each receive at most the next cut's byte count,
    into the decoder's buffers when it has some (else fed, at most ``feed_size``). Returns the
    sink and the bytes received in place."""
    sink = sink or Sink()
    dec = StreamDecoder(GEO, sink)
    pos = i = in_place = 0
    while pos < len(data):
        k = cuts[i % len(cuts)]
        i += 1
        bufs = dec.recv_buffers(len(data) - pos)
        if not bufs:
            n = min(k, dec.feed_size(), len(data) - pos)
            dec.feed(data[pos : pos + n])
            pos += n
            continue
        n = min(k, sum(len(b) for b in bufs))
        off = 0
        for b in bufs:
            m = min(len(b), n - off)
            b[:m] = data[pos + off : pos + off + m]
            off += m
        dec.received(n)
        pos += n
        in_place += n
    dec.finish()
    return sink, in_place


@pytest.mark.parametrize("runs", [ALIGNED, MISALIGNED])
@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(1, 3000), min_size=1, max_size=8))
def test_any_receives_restore_the_stream(runs: list[tuple[int, int]], cuts: list[int]) -> None:
    sink, in_place = receive(stream(runs), cuts)
    assert sink.mem == MEM and sink.regs == b"regs"
    assert in_place > 0


@pytest.mark.parametrize("runs", [ALIGNED, MISALIGNED])
def test_a_stream_cut_at_every_byte_restores(runs: list[tuple[int, int]]) -> None:
    """Two receives, the first ending at every byte of the stream in turn."""
    data = stream(runs)
    for cut in range(1, len(data)):
        sink, _ = receive(data, [cut, len(data)])
        assert sink.mem == MEM, cut


def test_aligned_runs_are_received_in_place_whole() -> None:
    """With runs as a save pass sends them, large receives take every page of the first
    pass in place (the guessed records are the ones sent): only the pages sent again and
    the records' headers and checked spans are fed."""
    data = stream(ALIGNED)
    _sink, in_place = receive(data, [1 << 20])
    assert in_place >= N * PS


@pytest.mark.parametrize("runs", [ALIGNED, MISALIGNED])
def test_a_changed_byte_anywhere_is_refused(runs: list[tuple[int, int]]) -> None:
    """Every byte of the stream, flipped, makes the decoder refuse it (a page received in
    place is checked against its fingerprint like a fed one)."""
    data = stream(runs)
    rng = random.Random(3)
    for at in rng.sample(range(len(data)), 300):
        bad = bytearray(data)
        bad[at] ^= 1 << rng.randrange(8)
        with pytest.raises(StreamError):
            receive(bytes(bad), [rng.randrange(1, 5000) for _ in range(5)])


def test_truncated_or_reordered_streams_are_refused() -> None:
    data = stream(ALIGNED)
    for end in (len(data) - 1, len(data) // 2, 1000):
        with pytest.raises(StreamError, match=r"truncated|incomplete"):
            receive(data[:end], [4096])
    recs = []
    pos = 0
    while pos < len(data):
        size = RECORD_HEADER.size + RECORD_HEADER.unpack_from(data, pos)[4]
        recs.append(data[pos : pos + size])
        pos += size
    swapped = b"".join([recs[0], recs[2], recs[1], *recs[3:]])
    with pytest.raises(StreamError, match="reordered"):
        receive(swapped, [1 << 20])


def test_abort_refuses_the_rest() -> None:
    dec = StreamDecoder(GEO, Sink())
    dec.feed(stream(ALIGNED)[:500])
    dec.abort("cut")
    with pytest.raises(StreamError, match="cut"):
        dec.recv_buffers(100) or dec.feed(b"x")
    with pytest.raises(StreamError, match="cut"):
        dec.finish()
