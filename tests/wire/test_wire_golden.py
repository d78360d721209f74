"""Golden byte vectors, one or more per message kind, transcribed from the spec's tables.

The expected bytes are built here with ``int.to_bytes`` straight from vfio-user.rst's
Name/Offset/Size tables (and libvfio-user's structs where it differs), independently of the
package's layout table. Each case checks both directions: ``decode(bytes) == message`` and
``encode(message) == bytes`` (h11-style table of SIMPLE_CASES).
"""

from __future__ import annotations

import pytest

from vfio_user_mig.model.states import MigrationCaps, State
from vfio_user_mig.wire import (
    Capabilities,
    Command,
    DeviceFeature,
    DeviceFeatureReply,
    DeviceGetInfo,
    DeviceGetInfoReply,
    DeviceReset,
    DeviceResetReply,
    DmaLoggingControl,
    DmaLoggingReport,
    DmaLoggingReportData,
    DmaMap,
    DmaMapReply,
    DmaRange,
    DmaRead,
    DmaReadReply,
    DmaUnmap,
    DmaUnmapReply,
    DmaWrite,
    DmaWriteReply,
    ErrorReply,
    FeatureIndex,
    FeatureOp,
    IrqInfo,
    IrqInfoReply,
    IrqSet,
    IrqSetReply,
    Message,
    MigDataRead,
    MigDataReadReply,
    MigDataWrite,
    MigDataWriteReply,
    MigDeviceState,
    MigrationInfo,
    MultiWrite,
    RegionInfo,
    RegionInfoReply,
    RegionIoFds,
    RegionIoFdsReply,
    RegionRead,
    RegionReadReply,
    RegionWrite,
    RegionWriteMulti,
    RegionWriteMultiReply,
    RegionWriteReply,
    SparseArea,
    SparseMmapCap,
    SubRegionIoFd,
    TypeCap,
    UnmapBitmap,
    Version,
    VersionReply,
    decode,
    encode,
    encode_parts,
)


def u8(v: int) -> bytes:
    return v.to_bytes(1, "little")


def u16(v: int) -> bytes:
    return v.to_bytes(2, "little")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def msg(msg_id: int, cmd: int, payload: bytes, flags: int = 0, error: int = 0) -> bytes:
    """Header (vfio-user.rst "Header": id 2, command 2, size 4, flags 4, error 4) + payload."""
    return u16(msg_id) + u16(cmd) + u32(16 + len(payload)) + u32(flags) + u32(error) + payload


REPLY = 1
NO_REPLY = 0x10
ERROR = 0x20

CLIENT_JSON = b'{"capabilities":{"max_msg_fds":32,"max_data_xfer_size":1024}}'
SERVER_JSON = (
    b'{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, '
    b'"migration": { "pgsize": 4096 } } }'
)
SPARSE_CAP = (
    u16(1) + u16(1) + u32(0)  # cap header: SPARSE_MMAP, version 1, last
    + u32(2) + u32(0)  # nr_areas, reserved
    + u64(0) + u64(0x1000) + u64(0x2000) + u64(0x1000)
)
SPARSE_AREAS = (SparseArea(0, 0x1000), SparseArea(0x2000, 0x1000))
BAR1_INFO = u32(1) + u32(32) + u64(0x4000) + u64(0x10000)  # index, cap_offset, size, offset
SUB48 = u64(0x100) + u64(4) + u32(0) + u32(0) + u32(1) + u32(0) + u64(0) + u64(0xAB)
SUB40 = u64(0x100) + u64(4) + u32(0) + u32(1) + u32(2) + u32(0) + u64(0xCD)

CASES: list[tuple[str, bytes, Message]] = [
    # VERSION (1)
    (
        "version-client",
        msg(0xDA55, 1, u16(0) + u16(2) + CLIENT_JSON + b"\0"),
        Version(0, 2, Capabilities.make(max_msg_fds=32, max_data_xfer_size=1024), msg_id=0xDA55),
    ),
    (
        "version-server-reply",
        msg(0xDA55, 1, u16(0) + u16(2) + SERVER_JSON + b"\0", REPLY),
        VersionReply(0, 2, Capabilities.parse(SERVER_JSON + b"\0"), msg_id=0xDA55),
    ),
    ("version-no-json", msg(1, 1, u16(0) + u16(1)), Version(0, 1, None, msg_id=1)),
    # DMA_MAP (2)
    (
        "dma-map",
        msg(0x1234, 2, u32(32) + u32(3) + u64(0) + u64(0x1000) + u64(0x1000)),
        DmaMap(0x1000, 0x1000, 0, 3, msg_id=0x1234),
    ),
    ("dma-map-reply", msg(0x1234, 2, b"", REPLY), DmaMapReply(msg_id=0x1234)),
    # DMA_UNMAP (3)
    (
        "dma-unmap",
        msg(7, 3, u32(24) + u32(0) + u64(0x1000) + u64(0x1000)),
        DmaUnmap(0x1000, 0x1000, msg_id=7),
    ),
    (
        "dma-unmap-all-reply",
        msg(8, 3, u32(24) + u32(2) + u64(0) + u64(0), REPLY),
        DmaUnmapReply(0, 0, 2, msg_id=8),
    ),
    (
        "dma-unmap-bitmap-reply",
        msg(9, 3, u32(48) + u32(1) + u64(0) + u64(0x1000) + u64(4096) + u64(8) + u64(1), REPLY),
        DmaUnmapReply(0, 0x1000, 1, 48, UnmapBitmap(4096, 8), u64(1), msg_id=9),
    ),
    # DEVICE_GET_INFO (4)
    ("get-info", msg(2, 4, u32(16) + u32(0) * 3), DeviceGetInfo(msg_id=2)),
    (
        "get-info-reply",
        msg(2, 4, u32(16) + u32(3) + u32(9) + u32(5), REPLY),
        DeviceGetInfoReply(3, 9, 5, msg_id=2),
    ),
    # DEVICE_GET_REGION_INFO (5)
    (
        "region-info",
        msg(0xABCD, 5, u32(32) + u32(0) + u32(1) + u32(0) + u64(0) + u64(0)),
        RegionInfo(1, msg_id=0xABCD),
    ),
    (
        "region-info-reply-truncated",
        msg(0xABCD, 5, u32(80) + u32(7) + u32(1) + u32(0) + u64(0x4000) + u64(0x10000), REPLY),
        RegionInfoReply(1, 7, 0x4000, 0x10000, argsz=80, msg_id=0xABCD),
    ),
    (
        "region-info-reply-truncated-to-40",
        msg(
            5, 5, u32(80) + u32(7) + u32(1) + u32(0) + u64(0x4000) + u64(0x10000) + bytes(8), REPLY
        ),
        RegionInfoReply(1, 7, 0x4000, 0x10000, argsz=80, truncated_to=40, msg_id=5),
    ),
    (
        "region-info-reply-sparse",
        msg(0xABCD, 5, u32(80) + u32(0xF) + BAR1_INFO + SPARSE_CAP, REPLY),
        RegionInfoReply(1, 0xF, 0x4000, 0x10000, (SparseMmapCap(SPARSE_AREAS),), msg_id=0xABCD),
    ),
    (
        "region-info-reply-sparse-and-type",
        msg(
            3, 5,
            u32(96) + u32(0xF) + BAR1_INFO
            + u16(1) + u16(1) + u32(80) + SPARSE_CAP[8:]  # next -> 80
            + u16(2) + u16(1) + u32(0) + u32(3) + u32(1),  # TYPE cap 3/1
            REPLY,
        ),
        RegionInfoReply(
            1, 0xF, 0x4000, 0x10000, (SparseMmapCap(SPARSE_AREAS), TypeCap(3, 1)), msg_id=3
        ),
    ),
    # DEVICE_GET_REGION_IO_FDS (6)
    ("io-fds", msg(4, 6, u32(64) + u32(0) + u32(0) + u32(0)), RegionIoFds(0, 64, msg_id=4)),
    (
        "io-fds-reply-48",
        msg(4, 6, u32(64) + u32(0) + u32(0) + u32(1) + SUB48, REPLY),
        RegionIoFdsReply(0, (SubRegionIoFd(0x100, 4, 0, 0, 1, 0xAB),), msg_id=4),
    ),
    (
        "io-fds-reply-40",
        msg(4, 6, u32(56) + u32(0) + u32(0) + u32(1) + SUB40, REPLY),
        RegionIoFdsReply(0, (SubRegionIoFd(0x100, 4, 0, 1, 2, 0xCD),), entry_size=40, msg_id=4),
    ),
    (
        "io-fds-reply-truncated",
        msg(4, 6, u32(112) + u32(0) + u32(2) + u32(2), REPLY),
        RegionIoFdsReply(2, (), 2, argsz=112, msg_id=4),
    ),
    # DEVICE_GET_IRQ_INFO (7)
    ("irq-info", msg(5, 7, u32(16) + u32(0) + u32(4) + u32(0)), IrqInfo(4, msg_id=5)),
    (
        "irq-info-reply",
        msg(5, 7, u32(16) + u32(1) + u32(4) + u32(1), REPLY),
        IrqInfoReply(4, 1, 1, msg_id=5),
    ),
    # DEVICE_SET_IRQS (8)
    (
        "set-irqs-eventfd",
        msg(6, 8, u32(20) + u32(0x24) + u32(0) + u32(0) + u32(1)),
        IrqSet(0x24, 0, 0, 1, msg_id=6),
    ),
    (
        "set-irqs-bool",
        msg(6, 8, u32(22) + u32(0x22) + u32(2) + u32(0) + u32(2) + b"\x01\x00"),
        IrqSet(0x22, 2, 0, 2, b"\x01\x00", msg_id=6),
    ),
    ("set-irqs-reply", msg(6, 8, b"", REPLY), IrqSetReply(msg_id=6)),
    # REGION_READ (9)
    (
        "region-read",
        msg(0x10, 9, u64(0x2C) + u32(7) + u32(4)),
        RegionRead(0x2C, 7, 4, msg_id=0x10),
    ),
    (
        "region-read-reply",
        msg(0x10, 9, u64(0x2C) + u32(7) + u32(4) + b"\xfe\xca\xbe\xba", REPLY),
        RegionReadReply(0x2C, 7, 4, b"\xfe\xca\xbe\xba", msg_id=0x10),
    ),
    (
        "region-read-reply-count0-libvfio-user",
        msg(0x11, 9, b"", REPLY),
        RegionReadReply(0, 0, 0, b"", bare=True, msg_id=0x11),
    ),
    (
        "region-read-no-reply",
        msg(0x12, 9, u64(0) + u32(0) + u32(8), NO_REPLY),
        RegionRead(0, 0, 8, msg_id=0x12, no_reply=True),
    ),
    # REGION_WRITE (10)
    (
        "region-write",
        msg(0x20, 10, u64(0) + u32(0) + u32(8) + u64(0x1122334455667788)),
        RegionWrite(0, 0, 8, u64(0x1122334455667788), msg_id=0x20),
    ),
    (
        "region-write-reply",
        msg(0x20, 10, u64(0) + u32(0) + u32(8), REPLY),
        RegionWriteReply(0, 0, 8, msg_id=0x20),
    ),
    # DMA_READ (11), DMA_WRITE (12): server -> client
    ("dma-read", msg(0xCAFE, 11, u64(0x8000) + u64(4)), DmaRead(0x8000, 4, msg_id=0xCAFE)),
    (
        "dma-read-reply",
        msg(0xCAFE, 11, u64(0x8000) + u64(4) + b"abcd", REPLY),
        DmaReadReply(0x8000, 4, b"abcd", msg_id=0xCAFE),
    ),
    (
        "dma-write",
        msg(0xCAFF, 12, u64(0x8000) + u64(2) + b"xy"),
        DmaWrite(0x8000, 2, b"xy", msg_id=0xCAFF),
    ),
    (
        "dma-write-reply",
        msg(0xCAFF, 12, u64(0x8000) + u64(2), REPLY),
        DmaWriteReply(0x8000, 2, msg_id=0xCAFF),
    ),
    (
        "dma-write-reply-spec-table",
        msg(0xCAFF, 12, u64(0x8000) + u32(2), REPLY),
        DmaWriteReply(0x8000, 2, spec_short_count=True, msg_id=0xCAFF),
    ),
    # DEVICE_RESET (13)
    ("reset", msg(1, 13, b""), DeviceReset(msg_id=1)),
    ("reset-reply", msg(1, 13, b"", REPLY), DeviceResetReply(msg_id=1)),
    # REGION_WRITE_MULTI (15)
    (
        "write-multi",
        msg(
            3, 15,
            u64(2)
            + u64(0x10) + u32(0) + u32(4) + b"\x01\x02\x03\x04" + bytes(4)
            + u64(0x18) + u32(2) + u32(8) + u64(7),
        ),
        RegionWriteMulti(
            (MultiWrite.of(0x10, 0, b"\x01\x02\x03\x04"), MultiWrite(0x18, 2, 8, u64(7))),
            msg_id=3,
        ),
    ),
    ("write-multi-reply", msg(3, 15, u64(2), REPLY), RegionWriteMultiReply(2, msg_id=3)),
    # DEVICE_FEATURE (16)
    (
        "feature-get-migration",
        msg(1, 16, u32(16) + u32(0x10001)),
        DeviceFeature(FeatureIndex.MIGRATION, FeatureOp.GET, msg_id=1),
    ),
    (
        "feature-get-migration-reply",
        msg(1, 16, u32(16) + u32(0x10001) + u64(5), REPLY),
        DeviceFeatureReply(
            FeatureIndex.MIGRATION,
            FeatureOp.GET,
            MigrationInfo(MigrationCaps.STOP_COPY | MigrationCaps.PRE_COPY),
            msg_id=1,
        ),
    ),
    (
        "feature-set-state-pre-copy",
        msg(2, 16, u32(16) + u32(0x20002) + u32(6) + u32(0)),
        DeviceFeature.set_state(State.PRE_COPY, msg_id=2),
    ),
    (
        "feature-set-state-reply-echo",
        msg(2, 16, u32(16) + u32(0x20002) + u32(6) + u32(0), REPLY),
        DeviceFeatureReply(
            FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET, MigDeviceState(State.PRE_COPY), msg_id=2
        ),
    ),
    (
        "feature-set-state-data-fd-minus-1",
        msg(2, 16, u32(16) + u32(0x20002) + u32(4) + u32(0xFFFFFFFF)),
        DeviceFeature.set_state(State.RESUMING, 0xFFFFFFFF, msg_id=2),
    ),
    (
        "feature-get-state",
        msg(3, 16, u32(16) + u32(0x10002)),
        DeviceFeature.get_request(FeatureIndex.MIG_DEVICE_STATE, msg_id=3),
    ),
    (
        "feature-get-state-reply",
        msg(3, 16, u32(16) + u32(0x10002) + u32(2) + u32(0), REPLY),
        DeviceFeatureReply(
            FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, MigDeviceState(State.RUNNING), msg_id=3
        ),
    ),
    (
        "feature-logging-start-no-ranges",
        msg(0, 16, u32(24) + u32(0x20006) + u64(4096) + u32(0) + u32(0)),
        DeviceFeature.set_request(FeatureIndex.DMA_LOGGING_START, DmaLoggingControl(4096)),
    ),
    (
        "feature-logging-stop-one-range-reply",
        msg(
            0, 16,
            u32(40) + u32(0x20007) + u64(4096) + u32(1) + u32(0) + u64(0) + u64(0x2000),
            REPLY,
        ),
        DeviceFeatureReply(
            FeatureIndex.DMA_LOGGING_STOP,
            FeatureOp.SET,
            DmaLoggingControl(4096, (DmaRange(0, 0x2000),)),
        ),
    ),
    (
        "feature-logging-report",
        msg(0x99, 16, u32(40) + u32(0x10008) + u64(0x1000) + u64(0x1000) + u64(4096)),
        DeviceFeature.get_request(
            FeatureIndex.DMA_LOGGING_REPORT, DmaLoggingReport(0x1000, 0x1000, 4096), msg_id=0x99
        ),
    ),
    (
        "feature-logging-report-reply",
        msg(
            0x99, 16,
            u32(40) + u32(0x10008) + u64(0x1000) + u64(0x1000) + u64(4096) + u64(1),
            REPLY,
        ),
        DeviceFeatureReply(
            FeatureIndex.DMA_LOGGING_REPORT,
            FeatureOp.GET,
            DmaLoggingReportData(0x1000, 0x1000, 4096, u64(1)),
            msg_id=0x99,
        ),
    ),
    (
        "feature-probe-get",
        msg(4, 16, u32(8) + u32(0x50001)),
        DeviceFeature.probe_request(FeatureIndex.MIGRATION, FeatureOp.GET, msg_id=4),
    ),
    (
        "feature-probe-reply",
        msg(4, 16, u32(8) + u32(0x50001), REPLY),
        DeviceFeatureReply(FeatureIndex.MIGRATION, FeatureOp.PROBE | FeatureOp.GET, msg_id=4),
    ),
    # MIG_DATA_READ (17)
    ("mig-read", msg(9, 17, u32(1032) + u32(1024)), MigDataRead(1024, msg_id=9)),
    (
        "mig-read-reply-full",
        msg(9, 17, u32(12) + u32(4) + b"data", REPLY),
        MigDataReadReply(b"data", msg_id=9),
    ),
    (
        "mig-read-reply-padded-libvfio-user",
        msg(9, 17, u32(16) + u32(8) + u64(0x0123456789) + bytes(1016), REPLY),
        MigDataReadReply(u64(0x0123456789), requested=1024, msg_id=9),
    ),
    (
        "mig-read-reply-end-of-stream",
        msg(9, 17, u32(8) + u32(0), REPLY),
        MigDataReadReply(b"", msg_id=9),
    ),
    # MIG_DATA_WRITE (18)
    (
        "mig-write",
        msg(10, 18, u32(12) + u32(4) + b"\x00\x01\x02\x03"),
        MigDataWrite(b"\0\1\2\3", msg_id=10),
    ),
    ("mig-write-reply", msg(10, 18, b"", REPLY), MigDataWriteReply(msg_id=10)),
    # Error replies
    (
        "error-header-only",
        msg(0x21, 9, b"", REPLY | ERROR, 22),
        ErrorReply(Command.REGION_READ, 22, msg_id=0x21),
    ),
    (
        "error-echoed-feature-set",
        msg(2, 16, u32(16) + u32(0x20002) + u32(2) + u32(0), REPLY | ERROR, 22),
        ErrorReply(Command.DEVICE_FEATURE, 22, u32(16) + u32(0x20002) + u32(2) + u32(0), msg_id=2),
    ),
    (
        "error-zero-errno",
        msg(0x22, 13, b"", REPLY | ERROR, 0),
        ErrorReply(Command.DEVICE_RESET, 0, msg_id=0x22),
    ),
]


@pytest.mark.parametrize(("name", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_golden_decode(name: str, data: bytes, message: Message) -> None:
    assert decode(data) == message


@pytest.mark.parametrize(("name", "data", "message"), CASES, ids=[c[0] for c in CASES])
def test_golden_encode(name: str, data: bytes, message: Message) -> None:
    assert encode(message) == data
    assert b"".join(encode_parts(message)) == data


def test_every_command_has_a_golden_case() -> None:
    covered = {(int(m.command), m.is_reply) for _, _, m in CASES if not isinstance(m, ErrorReply)}
    assert covered == {(int(c), r) for c in Command for r in (False, True)}


def test_libvfio_user_version_accessors() -> None:
    reply = decode(CASES[1][1])
    assert isinstance(reply, VersionReply) and reply.capabilities is not None
    caps = reply.capabilities
    assert (caps.max_msg_fds, caps.max_data_xfer_size, caps.migration_pgsize) == (8, 1 << 20, 4096)
    assert (caps.pgsizes, caps.max_dma_maps, caps.write_multiple) == (4096, 65535, False)
    assert caps.twin_socket_supported is False and caps.twin_socket_fd_index is None
