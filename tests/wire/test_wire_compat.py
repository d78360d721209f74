"""libvfio-user (default) vs strict spec encodings; zero-copy; layout table; capabilities.

Each COMPAT row is one difference listed in docs/wire-compat.md.
"""

from __future__ import annotations

import pytest

from vfio_user_mig.model.states import State
from vfio_user_mig.wire import (
    DEFAULT_MAX_MSG_SIZE,
    Capabilities,
    Command,
    DeviceFeature,
    DmaWriteReply,
    ErrorReply,
    Message,
    MigDataReadReply,
    MigDataWrite,
    RegionIoFdsReply,
    RegionReadReply,
    RegionWrite,
    RegionWriteReply,
    SubRegionIoFd,
    WireError,
    decode,
    encode,
    encode_parts,
)
from vfio_user_mig.wire import layouts as L


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def _h(cmd: int, size: int, flags: int, err: int) -> bytes:
    """Header with msg_id 0 (vfio-user.rst "Header")."""
    return bytes(2) + cmd.to_bytes(2, "little") + u32(size) + u32(flags) + u32(err)


SET_STOP = u32(16) + u32(0x20002) + u32(1) + u32(0)
SUB = SubRegionIoFd(0x100, 4, 0, 0, 0, 7)

# (name, message, libvfio-user bytes, strict-spec bytes)
COMPAT: list[tuple[str, Message, bytes, bytes]] = [
    (
        "mig-data-read-padding",
        MigDataReadReply(b"ab", requested=6),
        _h(17, 30, 1, 0) + u32(10) + u32(2) + b"ab" + bytes(4),
        _h(17, 26, 1, 0) + u32(10) + u32(2) + b"ab",
    ),
    (
        "error-reply-echo",
        ErrorReply(Command.DEVICE_FEATURE, 22, SET_STOP),
        _h(16, 32, 0x21, 22) + SET_STOP,
        _h(16, 16, 0x21, 22),
    ),
    (
        "dma-write-reply-count-width",
        DmaWriteReply(0x8000, 4),
        _h(12, 32, 1, 0) + u64(0x8000) + u64(4),
        _h(12, 28, 1, 0) + u64(0x8000) + u32(4),
    ),
    (
        "io-fds-entry-size",
        RegionIoFdsReply(0, (SUB,)),
        _h(6, 80, 1, 0) + u32(64) + u32(0) + u32(0) + u32(1)
        + u64(0x100) + u64(4) + u32(0) * 4 + u64(0) + u64(7),
        _h(6, 72, 1, 0) + u32(56) + u32(0) + u32(0) + u32(1)
        + u64(0x100) + u64(4) + u32(0) * 4 + u64(7),
    ),
    (
        "region-read-count0-bare",
        RegionReadReply(0, 0, 0, b"", bare=True),
        _h(9, 16, 1, 0),
        _h(9, 32, 1, 0) + bytes(16),
    ),
    (
        "region-write-count0-bare",
        RegionWriteReply(0, 0, 0, bare=True),
        _h(10, 16, 1, 0),
        _h(10, 32, 1, 0) + bytes(16),
    ),
]


@pytest.mark.parametrize(("name", "message", "lib", "spec"), COMPAT, ids=[c[0] for c in COMPAT])
def test_compat_difference(name: str, message: Message, lib: bytes, spec: bytes) -> None:
    assert encode(message) == lib
    assert encode(message, strict_spec=True) == spec
    # Both forms are accepted and each re-encodes to itself.
    assert encode(decode(lib)) == lib
    assert encode(decode(spec), strict_spec=True) == spec


def test_data_payloads_are_zero_copy_views() -> None:
    small = encode(MigDataWrite(bytes(4096)))
    big = encode(MigDataWrite(bytes(1 << 20)))
    for wire in (small, big):
        msg = decode(wire, max_size=len(wire))
        assert isinstance(msg, MigDataWrite) and isinstance(msg.data, memoryview)
        assert msg.data.obj is wire
    w = decode(encode(RegionWrite(4, 1, 3, b"xyz")))
    assert isinstance(w, RegionWrite) and isinstance(w.data, memoryview)


def test_encode_parts_does_not_copy_the_data() -> None:
    payload = memoryview(bytearray(1 << 20))
    parts = encode_parts(RegionWrite(0, 1, len(payload), payload))
    assert len(parts) == 2 and len(parts[0]) == 32 and parts[1] is payload
    parts = encode_parts(MigDataReadReply(payload, requested=(1 << 20) + 8))
    assert parts[1] is payload and parts[2] == bytes(8)


@pytest.mark.parametrize(
    ("layout", "size"),
    [
        (L.HEADER, 16), (L.DMA_MAP, 32), (L.DMA_UNMAP, 24), (L.DEVICE_INFO, 16),
        (L.REGION_INFO, 32), (L.CAP_HEADER, 8), (L.SPARSE_AREA, 16), (L.IO_FDS, 16),
        (L.SUB_REGION_SPEC, 40), (L.SUB_REGION_LIBVFIO, 48), (L.IRQ_INFO, 16),
        (L.IRQ_SET, 20), (L.REGION_ACCESS, 16), (L.DMA_ACCESS, 16), (L.WRITE_MULTI_ENTRY, 24),
        (L.DEVICE_FEATURE, 8), (L.FEATURE_LOGGING_CONTROL, 16), (L.FEATURE_LOGGING_REPORT, 24),
        (L.MIG_DATA, 8),
    ],
)
def test_layout_sizes_match_the_spec(layout: L.Layout, size: int) -> None:
    assert layout.size == layout.struct.size == size
    assert all(f.offset + f.size <= size for f in layout.fields)


def test_layout_table_rejects_gaps() -> None:
    with pytest.raises(AssertionError):
        L.Layout("bad", [("a", 0, 4, "u32"), ("b", 8, 4, "u32")])


def test_default_max_size_fits_a_max_region_write() -> None:
    assert DEFAULT_MAX_MSG_SIZE == 16 + 16 + (1 << 20)


def test_capabilities_defaults_and_round_trip() -> None:
    empty = Capabilities.parse(b"{}\0")
    assert (empty.max_msg_fds, empty.max_data_xfer_size) == (1, 1 << 20)
    assert empty.migration_pgsize is None and not empty.twin_socket_supported
    caps = Capabilities.make(
        max_msg_fds=8, migration_pgsize=4096, twin_socket_supported=True, twin_socket_fd_index=0,
        write_multiple=True, pgsizes=4096 | 65536, max_dma_maps=10, extra={"vendor": {"x": 1}},
    )
    again = Capabilities.parse(caps.encode())
    assert again == caps and again.caps["vendor"] == {"x": 1}
    assert (again.twin_socket_supported, again.twin_socket_fd_index) == (True, 0)
    assert (again.write_multiple, again.pgsizes, again.max_dma_maps) == (True, 69632, 10)
    with pytest.raises(WireError):
        Capabilities.parse(b'{"capabilities": []}\0')


def test_feature_helpers() -> None:
    req = DeviceFeature.set_state(State.STOP_COPY, msg_id=3)
    assert req.argsz == 16
    from vfio_user_mig.wire import DeviceFeatureReply

    rep = DeviceFeatureReply.echo(req)
    assert encode(rep)[16:] == encode(req)[16:] and rep.msg_id == 3
    with pytest.raises(WireError, match="does not fit"):
        encode(DeviceFeature(1, req.ops, req.data))
