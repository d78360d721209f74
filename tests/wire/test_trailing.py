"""Where a fixed-size request ends (vfio_user_mig.wire.trailing) and the framer option that
decodes a request without the bytes after that end."""

from __future__ import annotations

import struct

import pytest

from vfio_user_mig import wire
from vfio_user_mig.wire.trailing import trim_request

HDR = struct.Struct("<HHIII")


def message(cmd: int, payload: bytes, flags: int = 0) -> bytes:
    return HDR.pack(7, cmd, 16 + len(payload), flags, 0) + payload


DMA_MAP = struct.pack("<IIQQQ", 32, 3, 0, 0x10000, 0x1000)


def test_trim_cuts_to_the_struct_and_rewrites_msg_size() -> None:
    trimmed = trim_request(message(wire.Command.DMA_MAP, DMA_MAP + b"xyz"))
    assert trimmed == bytearray(message(wire.Command.DMA_MAP, DMA_MAP))


@pytest.mark.parametrize("data", [
    message(wire.Command.DMA_MAP, DMA_MAP),                             # nothing after the end
    message(wire.Command.DMA_MAP, DMA_MAP + b"x", flags=1),             # a reply
    message(wire.Command.REGION_WRITE, struct.pack("<QII", 0, 0, 1) + b"ab"),  # variable
    message(wire.Command.DMA_UNMAP, struct.pack("<IIQQ", 24, 1, 0, 4096) + bytes(16)),
    message(wire.Command.DEVICE_FEATURE, struct.pack("<IIII", 16, 2 | 1 << 17, 1, 0) + b"x"),
    b"short",
])
def test_nothing_to_trim(data: bytes) -> None:
    assert trim_request(data) is None


def test_mig_data_write_ends_after_its_size_field() -> None:
    body = struct.pack("<II", 12, 4) + b"abcd"
    assert trim_request(message(wire.Command.MIG_DATA_WRITE, body + b"!!")) == bytearray(
        message(wire.Command.MIG_DATA_WRITE, body))


def test_framer_trims_only_when_asked() -> None:
    data = message(wire.Command.DMA_MAP, DMA_MAP + bytes(8))
    lenient = wire.Framer(trim_trailing=True)
    lenient.feed(data)
    item = lenient.next_message()
    assert item is not None and isinstance(item[0], wire.DmaMap)
    strict = wire.Framer()
    strict.feed(data)
    with pytest.raises(wire.WireError, match="40 bytes, expected 32"):
        strict.next_message()
    # a request still wrong once trimmed keeps its own error
    bad = message(wire.Command.DMA_MAP, struct.pack("<IIQQQ", 0, 3, 0, 0, 0) + bytes(8))
    lenient.feed(bad)
    with pytest.raises(wire.WireError):
        lenient.next_message()
