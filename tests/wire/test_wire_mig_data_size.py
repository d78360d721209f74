"""DEVICE_FEATURE MIG_DATA_SIZE (index 9): an experimental extension, not in vfio-user.rst nor
libvfio-user. It carries the kernel's ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE`` (GET reply data
``struct vfio_device_feature_mig_data_size {__aligned_u64 stop_copy_length;}``). Golden bytes
are built by hand (header + {argsz u32, flags u32} + u64), independently of the layout table."""

from __future__ import annotations

import struct

import pytest

from vfio_user_mig.wire import (
    DeviceFeature,
    DeviceFeatureReply,
    FeatureIndex,
    FeatureOp,
    WireError,
    decode,
    encode,
    encode_parts,
)
from vfio_user_mig.wire.layouts import FEATURE_MIG_DATA_SIZE
from vfio_user_mig.wire.msg_feature import PAYLOAD_TYPES, MigDataSize


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def msg(msg_id: int, payload: bytes, flags: int = 0) -> bytes:
    """Header (id u16, command u16 = 16, size u32, flags u32, error u32) + payload."""
    return msg_id.to_bytes(2, "little") + (16).to_bytes(2, "little") + u32(
        16 + len(payload)) + u32(flags) + u32(0) + payload


GET_FLAGS = 9 | 0x10000  # feature index 9, GET
LENGTH = 0x0123_4567_89AB_CDEF

CASES = [
    (
        "mig-data-size-get",
        msg(7, u32(16) + u32(GET_FLAGS)),
        DeviceFeature.get_request(FeatureIndex.MIG_DATA_SIZE, msg_id=7),
    ),
    (
        "mig-data-size-get-reply",
        msg(7, u32(16) + u32(GET_FLAGS) + u64(LENGTH), flags=1),
        DeviceFeatureReply(FeatureIndex.MIG_DATA_SIZE, FeatureOp.GET, MigDataSize(LENGTH),
                           msg_id=7),
    ),
    (
        "mig-data-size-probe",
        msg(8, u32(8) + u32(9 | 0x40000 | 0x10000)),
        DeviceFeature.probe_request(FeatureIndex.MIG_DATA_SIZE, FeatureOp.GET, msg_id=8),
    ),
]


def test_constants() -> None:
    assert int(FeatureIndex.MIG_DATA_SIZE) == 9
    assert FEATURE_MIG_DATA_SIZE.size == 8
    assert PAYLOAD_TYPES[(9, int(FeatureOp.GET), True)] is MigDataSize
    assert (9, int(FeatureOp.GET), False) not in PAYLOAD_TYPES  # the GET carries no data


@pytest.mark.parametrize(("name", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_golden(name: str, data: bytes, message: object) -> None:
    assert decode(data) == message
    assert encode(message) == data  # type: ignore[arg-type]
    assert b"".join(encode_parts(message)) == data  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0, 1, 4096, 1 << 32, (1 << 64) - 1])
def test_round_trip(length: int) -> None:
    reply = DeviceFeatureReply(FeatureIndex.MIG_DATA_SIZE, FeatureOp.GET, MigDataSize(length),
                               msg_id=3)
    assert reply.argsz == 16
    back = decode(encode(reply))
    assert back == reply
    assert isinstance(back, DeviceFeatureReply) and isinstance(back.data, MigDataSize)
    assert back.data.stop_copy_length == length


def test_default_argsz_covers_the_reply() -> None:
    assert DeviceFeature.get_request(FeatureIndex.MIG_DATA_SIZE).argsz == 16


@pytest.mark.parametrize("extra", [b"", u32(0), u64(1) + b"\0"])
def test_wrong_reply_size_is_invalid(extra: bytes) -> None:
    payload = u32(8 + len(extra)) + u32(GET_FLAGS) + extra
    with pytest.raises(WireError):
        decode(msg(1, payload, flags=1))


def test_wrong_type_refused() -> None:
    with pytest.raises(WireError):
        encode(DeviceFeatureReply(FeatureIndex.MIGRATION, FeatureOp.GET, MigDataSize(1)))
    with pytest.raises(WireError):
        encode(DeviceFeature(FeatureIndex.MIG_DATA_SIZE, FeatureOp.SET, MigDataSize(1)))


def test_out_of_range_length_refused() -> None:
    with pytest.raises(struct.error):  # like every other u64 field of the layout table
        encode(DeviceFeatureReply(FeatureIndex.MIG_DATA_SIZE, FeatureOp.GET,
                                  MigDataSize(1 << 64)))
