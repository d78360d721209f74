"""Hypothesis fuzzing (default suite; docs/SECURITY.md "Fuzzing record") of ``wire.decode``,
the ``Framer`` and the server core fed arbitrary byte streams, with the oracles of
:mod:`fuzz.targets` (the same ones the atheris harnesses in ``fuzz/`` use for long campaigns)."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import VERSION, seed_messages
from fuzz.targets import framer_stream, server_stream, wire_decode
from vfio_user_mig import wire
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import host_device

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


def _plant_region_read_bug(core: ServerCore) -> None:
    """A device whose region read has a bug (raises RuntimeError): the core must answer EIO
    and record it in ``internal_errors``."""

    def broken_read(index: int, offset: int, count: int, now: float) -> bytes:
        raise RuntimeError("planted device bug")

    core.device.region_read = broken_read  # type: ignore[method-assign]


def test_fuzz_oracle_fails_on_internal_error() -> None:
    """A handler exception becomes an EIO reply that looks like any other refusal; the oracle
    must still fail because ``ServerCore.internal_errors`` is not empty."""
    request = wire.encode(wire.RegionRead(0, 0, 4, msg_id=7))
    server_stream(request)  # the same request on a healthy device passes the oracle
    with pytest.raises(AssertionError, match="internal error"):
        server_stream(request, setup=_plant_region_read_bug)


def test_internal_error_is_recorded_and_answered_eio() -> None:
    """The record the oracle reads: one entry per handler exception, the reply is EIO."""
    hosted = host_device("migdev", mem_size=1 << 16)
    try:
        core = hosted.core
        _plant_region_read_bug(core)
        core.receive_data(VERSION + wire.encode(wire.RegionRead(0, 0, 4, msg_id=7)))
        assert core.next_event(0.0) is not None
        event = core.next_event(0.0)
        assert event is not None and event.errno == errno.EIO
        assert len(core.internal_errors) == 1 and "planted device bug" in core.internal_errors[0]
    finally:
        hosted.close()
