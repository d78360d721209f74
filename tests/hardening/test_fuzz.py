"""Issue #8 item 2 (default suite): hypothesis fuzzing of ``wire.decode``, the ``Framer`` and
the server core fed arbitrary byte streams, with the oracles of :mod:`fuzz.targets` (the same
ones the atheris harnesses in ``fuzz/`` use for long campaigns)."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import VERSION, seed_messages
from fuzz.targets import framer_stream, server_stream, wire_decode

SEEDS = [*seed_messages(), VERSION]
#: Values that sit on the edges of the limits and of the u32/u64 fields.
EDGES = [0, 1, 7, 8, 15, 16, 17, 0x7F, 0xFFFF, 0x10000, 0x100000, 0x100020, 0x100021,
         0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A seed message with a few byte, field, truncation or insertion mutations."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 3))
        if kind == 0 and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == 1 and len(data) >= 4:
            at = draw(st.integers(0, (len(data) - 4) // 4)) * 4
            struct.pack_into("<I", data, at, draw(st.sampled_from(EDGES)))
        elif kind == 2:
            del data[draw(st.integers(0, len(data))):]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(max_size=16))
    return bytes(data)


inputs = st.one_of(st.binary(max_size=96), mutated(), st.sampled_from(SEEDS))
streams = st.lists(inputs, max_size=6).map(b"".join)
cuts = st.lists(st.integers(0, 400), max_size=4)


@settings(FUZZ, max_examples=2000)
@given(inputs)
def test_fuzz_wire_decode(data: bytes) -> None:
    wire_decode(data)


@settings(FUZZ, max_examples=1000)
@given(streams, cuts)
def test_fuzz_framer(data: bytes, where: list[int]) -> None:
    framer_stream(data, where, max_size=4096)


@settings(FUZZ, max_examples=2000)
@given(streams, cuts, st.integers(0, 3), st.booleans())
def test_fuzz_server_core(data: bytes, where: list[int], nfds: int, negotiate: bool) -> None:
    server_stream(data, cuts=where, nfds=nfds, negotiate=negotiate)
