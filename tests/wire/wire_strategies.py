"""Hypothesis strategies: one per message class of vfio_user_mig.wire (valid messages only)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

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
    DirtyBitmap,
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
    IrqSetFlag,
    IrqSetReply,
    Message,
    MigDataRead,
    MigDataReadReply,
    MigDataWrite,
    MigDataWriteReply,
    MigDeviceState,
    MigrationInfo,
    MultiWrite,
    RawCap,
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
)

U32 = 0xFFFF_FFFF
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, U32)
u64 = st.integers(0, 2**64 - 1)
small = st.integers(0, 40)
data = st.binary(max_size=48)
ids = {"msg_id": u16}
req = {"msg_id": u16, "no_reply": st.booleans()}


def at_least(n: int) -> st.SearchStrategy[int]:
    return st.integers(n, U32)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.text(max_size=6))
capabilities = st.one_of(
    st.none(),
    st.builds(
        Capabilities.make,
        max_msg_fds=st.none() | u32,
        max_data_xfer_size=st.none() | u32,
        pgsizes=st.none() | u64,
        max_dma_maps=st.none() | u32,
        migration_pgsize=st.none() | u32,
        twin_socket_supported=st.none() | st.booleans(),
        twin_socket_fd_index=st.none() | st.integers(0, 8),
        write_multiple=st.none() | st.booleans(),
        extra=st.none() | st.dictionaries(st.sampled_from(["x", "vendor", "é"]), json_leaf),
    ),
    # Raw texts as other peers format them (spacing, key order, unknown keys).
    st.sampled_from(
        [
            '{ "capabilities": { "max_msg_fds": 8, "max_data_xfer_size": 1048576, '
            '"migration": { "pgsize": 4096 } } }',
            "{}",
            ' {"capabilities":{"twin_socket":{"supported":true,"fd_index":0}}} ',
        ]
    ).map(lambda t: Capabilities.parse(t.encode() + b"\0")),
)


@st.composite
def dma_unmap(draw: st.DrawFn, reply: bool) -> Message:
    if draw(st.booleans()):
        cls: Any = DmaUnmapReply if reply else DmaUnmap
        return cls(
            draw(u64), draw(u64), draw(st.sampled_from([0, 2])), draw(at_least(24)),
            **draw(st.fixed_dictionaries(ids if reply else req)),
        )
    bm_data = draw(data)
    size = len(bm_data) if reply else draw(st.integers(0, 1 << 20))
    bitmap = UnmapBitmap(draw(u64), size)
    argsz = draw(st.integers(40 + size, U32))
    if reply:
        return DmaUnmapReply(
            draw(u64), draw(u64), 1, argsz, bitmap, bm_data, msg_id=draw(u16)
        )
    return DmaUnmap(draw(u64), draw(u64), 1, argsz, bitmap, **draw(st.fixed_dictionaries(req)))


region_caps = st.lists(
    st.one_of(
        st.builds(
            SparseMmapCap,
            st.lists(st.builds(SparseArea, u64, u64), max_size=3).map(tuple),
            u16,
            u32,
        ),
        st.builds(TypeCap, u32, u32, u16),
        st.builds(RawCap, st.integers(3, 0xFFFF), st.binary(max_size=12), u16),
    ),
    max_size=3,
).map(tuple)


@st.composite
def region_info_reply(draw: st.DrawFn) -> Message:
    caps = draw(region_caps)
    base = dict(index=draw(u32), flags=draw(u32), size=draw(u64), offset=draw(u64))
    if caps:
        return RegionInfoReply(**base, caps=caps, msg_id=draw(u16))
    trunc = draw(st.none() | st.integers(33, 80))
    argsz = draw(st.integers(trunc or 32, U32))
    return RegionInfoReply(**base, argsz=argsz, truncated_to=trunc, msg_id=draw(u16))


@st.composite
def io_fds_reply(draw: st.DrawFn) -> Message:
    esize = draw(st.sampled_from([40, 48]))
    subs = draw(
        st.lists(
            st.builds(
                SubRegionIoFd, u64, u64, u32, u32, u32, u64, u32,
                st.just(0) if esize == 40 else u64,
            ),
            max_size=3,
        )
    )
    if subs:
        count = len(subs)
        argsz = draw(st.integers(16 + count * esize, U32))
        return RegionIoFdsReply(
            draw(u32), tuple(subs), count, draw(u32), argsz, esize, msg_id=draw(u16)
        )
    return RegionIoFdsReply(
        draw(u32), (), draw(u32), draw(u32), draw(at_least(16)), msg_id=draw(u16)
    )


@st.composite
def irq_set(draw: st.DrawFn) -> Message:
    dbit = draw(
        st.sampled_from([IrqSetFlag.DATA_NONE, IrqSetFlag.DATA_BOOL, IrqSetFlag.DATA_EVENTFD])
    )
    abit = draw(
        st.sampled_from(
            [IrqSetFlag.ACTION_MASK, IrqSetFlag.ACTION_UNMASK, IrqSetFlag.ACTION_TRIGGER]
        )
    )
    if dbit == IrqSetFlag.DATA_BOOL:
        bools = draw(st.binary(max_size=8))
        count = len(bools)
    else:
        bools, count = b"", draw(u32)
    return IrqSet(
        int(dbit | abit), draw(u32), draw(u32), count, bools, draw(at_least(20)),
        **draw(st.fixed_dictionaries(req)),
    )


@st.composite
def region_read_reply(draw: st.DrawFn) -> Message:
    if draw(st.integers(0, 5)) == 0:
        return RegionReadReply(0, 0, 0, b"", True, msg_id=draw(u16))
    d = draw(data)
    return RegionReadReply(draw(u64), draw(u32), len(d), d, msg_id=draw(u16))


@st.composite
def region_write_reply(draw: st.DrawFn) -> Message:
    if draw(st.integers(0, 5)) == 0:
        return RegionWriteReply(0, 0, 0, True, msg_id=draw(u16))
    return RegionWriteReply(draw(u64), draw(u32), draw(u32), msg_id=draw(u16))


@st.composite
def with_data(draw: st.DrawFn, cls: Any, addr: st.SearchStrategy[int], region: bool) -> Message:
    d = draw(data)
    kw = draw(st.fixed_dictionaries(ids if cls.IS_REPLY else req))
    if region:
        return cls(draw(addr), draw(u32), len(d), d, **kw)  # type: ignore[no-any-return]
    return cls(draw(addr), len(d), d, **kw)  # type: ignore[no-any-return]


@st.composite
def dma_write_reply(draw: st.DrawFn) -> Message:
    if draw(st.booleans()):
        return DmaWriteReply(draw(u64), draw(u32), True, msg_id=draw(u16))
    return DmaWriteReply(draw(u64), draw(u64), msg_id=draw(u16))


multi_write = st.builds(MultiWrite, u64, u32, st.integers(0, 8), st.binary(min_size=8, max_size=8))

page_sizes = st.integers(0, 16).map(lambda k: 1 << k)
mig_state = st.builds(
    MigDeviceState,
    st.one_of(st.sampled_from(list(State)), st.integers(8, U32)),
    st.sampled_from([0, U32]) | u32,
)
logging_control = st.builds(
    DmaLoggingControl,
    u64,
    st.lists(st.builds(DmaRange, u64, u64), max_size=3).map(tuple),
    u32,
)


@st.composite
def report_data(draw: st.DrawFn) -> DmaLoggingReportData:
    page = draw(page_sizes)
    length = draw(st.integers(0, page * 200))
    bm = DirtyBitmap(draw(u64), length, page)
    for n in draw(st.lists(st.integers(0, max(bm.npages - 1, 0)), max_size=5)):
        if bm.npages:
            bm.set_page(n)
    return DmaLoggingReportData.of(bm)


@st.composite
def device_feature(draw: st.DrawFn, reply: bool) -> Message:
    cls: Any = DeviceFeatureReply if reply else DeviceFeature
    kw = draw(st.fixed_dictionaries(ids if reply else req))
    shape = draw(st.integers(0, 6))
    if shape == 0:  # GET MIGRATION / MIG_DEVICE_STATE
        if reply:
            d: Any = draw(
                st.one_of(
                    st.builds(MigrationInfo, u64.map(MigrationCaps)).map(
                        lambda m: (FeatureIndex.MIGRATION, m)
                    ),
                    mig_state.map(lambda m: (FeatureIndex.MIG_DEVICE_STATE, m)),
                )
            )
            return cls(d[0], FeatureOp.GET, d[1], **kw)  # type: ignore[no-any-return]
        feat = draw(st.sampled_from([FeatureIndex.MIGRATION, FeatureIndex.MIG_DEVICE_STATE]))
        return cls(feat, FeatureOp.GET, None, draw(at_least(8)), **kw)  # type: ignore[no-any-return]
    if shape == 1:  # SET MIG_DEVICE_STATE
        return cls(  # type: ignore[no-any-return]
            FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET, draw(mig_state), draw(at_least(16)), **kw
        )
    if shape == 2:  # SET DMA_LOGGING_START/STOP
        ctl = draw(logging_control)
        feat = draw(
            st.sampled_from([FeatureIndex.DMA_LOGGING_START, FeatureIndex.DMA_LOGGING_STOP])
        )
        need = 8 + 16 + 16 * len(ctl.ranges)
        return cls(feat, FeatureOp.SET, ctl, draw(at_least(need)), **kw)  # type: ignore[no-any-return]
    if shape == 3:  # GET DMA_LOGGING_REPORT
        if reply:
            return cls(  # type: ignore[no-any-return]
                FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET, draw(report_data()), **kw
            )
        rep = DmaLoggingReport(draw(u64), draw(u64), draw(page_sizes))
        return cls(  # type: ignore[no-any-return]
            FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET, rep, draw(at_least(8)), **kw
        )
    if shape == 4:  # PROBE, raw echo
        raw = draw(data)
        ops = FeatureOp.PROBE | draw(st.sampled_from([FeatureOp(0), FeatureOp.GET, FeatureOp.SET]))
        return cls(  # type: ignore[no-any-return]
            draw(u16), ops, raw, draw(at_least(8 + len(raw))), **kw
        )
    # Unknown feature (or an op the feature lacks): raw bytes.
    raw = draw(st.binary(min_size=0, max_size=20))
    feat = draw(st.integers(10, 0xFFFF) | st.just(3))  # 9: MIG_DATA_SIZE (experimental)
    op = draw(st.sampled_from([FeatureOp.GET, FeatureOp.SET]))
    argsz = len(raw) + 8 if reply and op == FeatureOp.GET else draw(at_least(8 + len(raw)))
    return cls(feat, op, raw, argsz, **kw)  # type: ignore[no-any-return]


@st.composite
def mig_read_reply(draw: st.DrawFn) -> Message:
    d = draw(data)
    requested = draw(st.none() | st.integers(len(d), len(d) + 64))
    return MigDataReadReply(d, requested, msg_id=draw(u16))


@st.composite
def mig_read(draw: st.DrawFn) -> Message:
    size = draw(st.integers(0, U32 - 8))
    return MigDataRead(size, draw(st.integers(8 + size, U32)), **draw(st.fixed_dictionaries(req)))


@st.composite
def mig_write(draw: st.DrawFn) -> Message:
    d = draw(data)
    return MigDataWrite(d, draw(st.integers(8 + len(d), U32)), **draw(st.fixed_dictionaries(req)))


error_reply = st.builds(
    ErrorReply, st.sampled_from(list(Command)), u32, st.binary(max_size=24), msg_id=u16
)

STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Version: st.builds(Version, u16, u16, capabilities, **req),
    VersionReply: st.builds(VersionReply, u16, u16, capabilities, **ids),
    DmaMap: st.builds(DmaMap, u64, u64, u64, st.integers(0, 15), at_least(32), **req),
    DmaMapReply: st.builds(DmaMapReply, **ids),
    DmaUnmap: dma_unmap(False),
    DmaUnmapReply: dma_unmap(True),
    DeviceGetInfo: st.builds(DeviceGetInfo, at_least(16), u32, u32, u32, **req),
    DeviceGetInfoReply: st.builds(DeviceGetInfoReply, u32, u32, u32, u32, **ids),
    RegionInfo: st.builds(RegionInfo, u32, at_least(32), u32, u32, u64, u64, **req),
    RegionInfoReply: region_info_reply(),
    RegionIoFds: st.builds(RegionIoFds, u32, at_least(16), u32, u32, **req),
    RegionIoFdsReply: io_fds_reply(),
    IrqInfo: st.builds(IrqInfo, u32, at_least(16), u32, u32, **req),
    IrqInfoReply: st.builds(IrqInfoReply, u32, u32, u32, u32, **ids),
    IrqSet: irq_set(),
    IrqSetReply: st.builds(IrqSetReply, **ids),
    RegionRead: st.builds(RegionRead, u64, u32, u32, **req),
    RegionReadReply: region_read_reply(),
    RegionWrite: with_data(RegionWrite, u64, True),
    RegionWriteReply: region_write_reply(),
    DmaRead: st.builds(DmaRead, u64, u64, **req),
    DmaReadReply: with_data(DmaReadReply, u64, False),
    DmaWrite: with_data(DmaWrite, u64, False),
    DmaWriteReply: dma_write_reply(),
    DeviceReset: st.builds(DeviceReset, **req),
    DeviceResetReply: st.builds(DeviceResetReply, **ids),
    RegionWriteMulti: st.builds(
        RegionWriteMulti, st.lists(multi_write, max_size=4).map(tuple), **req
    ),
    RegionWriteMultiReply: st.builds(RegionWriteMultiReply, u64, **ids),
    DeviceFeature: device_feature(False),
    DeviceFeatureReply: device_feature(True),
    MigDataRead: mig_read(),
    MigDataReadReply: mig_read_reply(),
    MigDataWrite: mig_write(),
    MigDataWriteReply: st.builds(MigDataWriteReply, **ids),
    ErrorReply: error_reply,
}

any_message: st.SearchStrategy[Message] = st.sampled_from(sorted(STRATEGIES, key=str)).flatmap(
    lambda cls: STRATEGIES[cls]
)
