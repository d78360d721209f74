"""GET_REGION_INFO requests longer than the 32-byte struct (libvfio-user's client sends its
whole argsz-sized buffer): accepted, kept verbatim, refused beyond argsz."""

from __future__ import annotations

import struct

import pytest

from vfio_user_mig.wire import RegionInfo, WireError, decode, encode


def request(argsz: int, tail: bytes, msg_id: int = 5) -> bytes:
    payload = struct.pack("<IIIIQQ", argsz, 0, 1, 0, 0, 0) + tail
    return struct.pack("<HHIII", msg_id, 5, 16 + len(payload), 0, 0) + payload


def test_long_request_as_samples_client_sends_it_round_trips() -> None:
    raw = request(80, bytes(48))
    msg = decode(raw)
    assert isinstance(msg, RegionInfo) and msg.index == 1 and msg.argsz == 80
    assert len(msg.tail) == 48
    assert encode(msg) == raw


def test_payload_longer_than_argsz_is_refused() -> None:
    with pytest.raises(WireError) as info:
        decode(request(40, bytes(16)))
    assert info.value.errno == 22 and "DEVICE_GET_REGION_INFO.payload" in str(info.value)


def test_capability_chain_with_too_many_sparse_areas_is_refused() -> None:
    from vfio_user_mig.wire.region_caps import MAX_SPARSE_AREAS

    nr = MAX_SPARSE_AREAS + 1
    chain = struct.pack("<HHI", 1, 1, 0) + struct.pack("<II", nr, 0) + bytes(16 * nr)
    argsz = 32 + len(chain)
    payload = struct.pack("<IIIIQQ", argsz, 8, 1, 32, 0x1000, 0) + chain
    raw = struct.pack("<HHIII", 9, 5, 16 + len(payload), 1, 0) + payload
    with pytest.raises(WireError) as info:
        decode(raw)
    assert info.value.errno == 7 and "nr_areas" in str(info.value)  # E2BIG
