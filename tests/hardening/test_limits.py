"""Every limit holds at its value and is refused one past it, before the server buffers or
allocates anything the client sized (docs/SECURITY.md "Limits"; sans-IO core, no sockets)."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import replace
from typing import Any

import pytest

from tests.hardening.helpers import BAR0, BAR2, CONFIG, Driver, fd_closed, raw, version
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.device.regs import Reg, Status
from vfio_user_mig.simulator.server.types import MAX_DMA_CHUNKS_PER_OP, ServerConfig
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp, IrqSetFlag

DEFAULT = ServerConfig()
MIB = 1 << 20


def test_defaults_are_the_documented_ones() -> None:
    c = DEFAULT
    assert (c.max_data_xfer_size, c.max_msg_size, c.max_msg_fds, c.max_dma_maps) == (
        MIB, MIB + 32, 8, 65535)
    assert (c.max_bitmap_size, c.max_logging_ranges, c.max_region_caps) == (MIB, 256, 16)
    assert (c.max_version_json, c.min_client_xfer_size) == (4096, 512)


# ----- maximum message size ----------------------------------------------------------------
def test_message_of_exactly_max_msg_size_is_served() -> None:
    config = ServerConfig(max_data_xfer_size=4096)
    with Driver(config) as d:
        msg = wire.encode(wire.RegionWrite(0, BAR2, 4096, b"x" * 4096, msg_id=9))
        assert len(msg) == config.max_msg_size
        assert d.send(msg).errno is None


@pytest.mark.parametrize("config", [ServerConfig(), ServerConfig(max_data_xfer_size=4096)])
def test_one_past_max_msg_size_refused_from_the_header_alone(config: ServerConfig) -> None:
    with Driver(config) as d:
        # Only the 16 header bytes are sent: the limit must fire before any payload arrives.
        header = raw(77, Command.REGION_WRITE, size=config.max_msg_size + 1)
        answer = d.send(header)
        assert answer.errno == errno.E2BIG and answer.reply_errno == errno.E2BIG
        assert answer.reply.msg_id == 77
        assert d.core.framer.needed == 16  # nothing of the payload was buffered
        with pytest.raises(ConnectionError):  # the stream cannot be resynchronised
            d.core.next_event()
        fd = os.eventfd(0)
        with pytest.raises(ConnectionError):
            d.core.receive_data(b"more", [fd])
        assert fd_closed(fd)


def test_msg_size_below_header_refused() -> None:
    with Driver() as d:
        answer = d.send(raw(5, Command.DEVICE_GET_INFO, size=15))
        assert answer.errno == errno.EINVAL and answer.reply.msg_id == 5


# ----- maximum migration chunk / access size -------------------------------------------------
@pytest.mark.parametrize("limit", [DEFAULT.max_data_xfer_size, 4096])
def test_region_read_count_limit(limit: int) -> None:
    with Driver(ServerConfig(max_data_xfer_size=limit), mem_size=max(limit, 1 << 16) * 2) as d:
        assert len(d.ok(wire.RegionRead(0, BAR2, limit)).data) == limit
        answer = d.request(wire.RegionRead(0, BAR2, limit + 1))
        assert answer.errno == errno.EINVAL and "max_data_xfer_size" in answer.event.detail


@pytest.mark.parametrize("limit", [DEFAULT.max_data_xfer_size, 4096])
def test_mig_data_read_chunk_limit(limit: int) -> None:
    with Driver(ServerConfig(max_data_xfer_size=limit)) as d:
        d.set_state(State.PRE_COPY)
        assert d.request(wire.MigDataRead(limit)).errno is None
        answer = d.request(wire.MigDataRead(limit + 1))
        assert answer.errno == errno.EINVAL and f"> {limit}" in answer.event.detail
        assert d.core.state is State.PRE_COPY


def test_mig_data_write_chunk_limit() -> None:
    limit = 4096
    with Driver(ServerConfig(max_data_xfer_size=limit)) as d:
        d.set_state(State.STOP)
        d.set_state(State.RESUMING)
        answer = d.request(wire.MigDataWrite(b"\0" * (limit + 1)))
        assert answer.errno == errno.EINVAL and f"> {limit}" in answer.event.detail
        assert d.core.state is State.RESUMING
        # At the limit the size check passes (the device then judges the bytes).
        answer = d.request(wire.MigDataWrite(b"\0" * limit))
        assert "max" not in answer.event.detail and "> 4096" not in answer.event.detail


# ----- maximum DMA regions -------------------------------------------------------------------
def test_default_max_dma_maps_one_past() -> None:
    with Driver() as d:
        limit = DEFAULT.max_dma_maps
        for i in range(limit):
            answer = d.send(wire.encode(wire.DmaMap(i << 12, 4096, msg_id=i & 0x7FFF)))
            assert answer.errno is None, answer.event
        answer = d.request(wire.DmaMap(limit << 12, 4096))
        assert answer.errno == errno.ENOSPC
        assert len(d.core.dma.mappings) == limit


def test_small_max_dma_maps_and_unmap_frees_a_slot() -> None:
    with Driver(ServerConfig(max_dma_maps=2)) as d:
        d.ok(wire.DmaMap(0, 4096))
        d.ok(wire.DmaMap(4096, 4096))
        assert d.request(wire.DmaMap(8192, 4096)).errno == errno.ENOSPC
        d.ok(wire.DmaUnmap(0, 4096))
        d.ok(wire.DmaMap(8192, 4096))


# ----- fds per message -----------------------------------------------------------------------
def _eventfds(n: int) -> list[int]:
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


@pytest.mark.parametrize("limit", [DEFAULT.max_msg_fds, 2])
def test_max_msg_fds_one_past(limit: int) -> None:
    with Driver(ServerConfig(max_msg_fds=limit)) as d:
        flags = int(IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER)
        at = _eventfds(limit)
        answer = d.request(wire.IrqSet(flags, 0, 0, limit), at)
        # At the limit the fd count passes; the device has 1 vector, so the IRQ check refuses.
        assert "max_msg_fds" not in answer.event.detail and answer.errno == errno.EINVAL
        past = _eventfds(limit + 1)
        answer = d.request(wire.IrqSet(flags, 0, 0, limit + 1), past)
        assert answer.errno == errno.EINVAL and "max_msg_fds" in answer.event.detail
        assert all(fd_closed(fd) for fd in at + past)


def test_one_eventfd_within_limit_is_kept_until_disconnect() -> None:
    with Driver() as d:
        (fd,) = _eventfds(1)
        flags = int(IrqSetFlag.DATA_EVENTFD | IrqSetFlag.ACTION_TRIGGER)
        assert d.request(wire.IrqSet(flags, 0, 0, 1), [fd]).errno is None
        assert not fd_closed(fd)
        d.core.connection_lost()
        assert fd_closed(fd)


@pytest.mark.parametrize("cmd_msg", [
    wire.RegionRead(0, BAR0, 4), wire.DeviceGetInfo(), wire.DeviceReset(),
    wire.DmaUnmap(0, 4096), wire.MigDataRead(16),
])
def test_fds_on_a_message_that_takes_none_are_closed_and_refused(cmd_msg: wire.Message) -> None:
    with Driver() as d:
        fds = _eventfds(1)
        answer = d.request(cmd_msg, fds)
        assert answer.errno == errno.EINVAL and answer.reply_errno == errno.EINVAL
        assert all(fd_closed(fd) for fd in fds)


def test_dma_map_with_two_fds_refused() -> None:
    with Driver() as d:
        fds = [os.memfd_create("m", os.MFD_CLOEXEC) for _ in range(2)]
        for fd in fds:
            os.ftruncate(fd, 8192)
        assert d.request(wire.DmaMap(0, 8192), fds).errno == errno.EINVAL
        assert all(fd_closed(fd) for fd in fds) and d.core.dma.mappings == ()


# ----- capability chain ----------------------------------------------------------------------
def test_region_caps_chain_limit() -> None:
    # BAR2 has one SPARSE_MMAP cap with one area: a chain of length 1.
    with Driver(ServerConfig(max_region_caps=1)) as d:
        reply = d.ok(wire.RegionInfo(BAR2, argsz=4096))
        assert len(reply.caps) == 1
    with Driver(ServerConfig(max_region_caps=0)) as d:
        answer = d.request(wire.RegionInfo(BAR2, argsz=4096))
        assert answer.errno == errno.EIO and "capability chain" in answer.event.detail
        d.ok(wire.RegionInfo(BAR0))  # no chain: still served


def test_region_caps_chain_counts_sparse_areas() -> None:
    with Driver() as d:
        dev = d.core.device
        areas = tuple((i * 4096, 4096) for i in range(DEFAULT.max_region_caps))
        regions = list(dev.regions)
        regions[BAR2] = replace(regions[BAR2], sparse_mmap=areas)
        dev._regions = tuple(regions)  # type: ignore[attr-defined]
        assert len(d.ok(wire.RegionInfo(BAR2, argsz=4096)).caps[0].areas) == len(areas)
        regions[BAR2] = replace(regions[BAR2], sparse_mmap=(*areas, (len(areas) * 4096, 4096)))
        dev._regions = tuple(regions)  # type: ignore[attr-defined]
        assert d.request(wire.RegionInfo(BAR2, argsz=4096)).errno == errno.EIO


def test_sparse_area_outside_its_region_is_never_advertised() -> None:
    with Driver() as d:
        dev = d.core.device
        regions = list(dev.regions)
        size = regions[BAR2].size
        regions[BAR2] = replace(regions[BAR2], sparse_mmap=((size - 4096, 8192),))
        dev._regions = tuple(regions)  # type: ignore[attr-defined]
        answer = d.request(wire.RegionInfo(BAR2, argsz=4096))
        assert answer.errno == errno.EIO and "outside" in answer.event.detail


@pytest.mark.parametrize("limit", [DEFAULT.max_version_json, 256])
def test_version_json_limit(limit: int) -> None:
    def version_of(size: int) -> bytes:
        base = json.dumps({"capabilities": {"max_data_xfer_size": MIB, "pad": ""}},
                          separators=(",", ":"))
        text = base.replace('"pad":""', '"pad":"' + "p" * (size - len(base)) + '"')
        assert len(text) == size
        return raw(1, Command.VERSION, b"\0\0\2\0" + text.encode() + b"\0")

    config = ServerConfig(max_version_json=limit)
    with Driver(config, negotiate=False) as d:
        answer = d.send(version_of(limit + 1))
        assert answer.errno == errno.E2BIG and not d.core.negotiated
        assert d.send(version_of(limit)).errno is None and d.core.negotiated


def test_min_client_xfer_size() -> None:
    with Driver(negotiate=False) as d:
        assert d.send(version(DEFAULT.min_client_xfer_size - 1)).errno == errno.EINVAL
        assert not d.core.negotiated
        assert d.send(version(DEFAULT.min_client_xfer_size)).errno is None


def test_dma_op_needing_too_many_messages_faults_without_sending_any() -> None:
    config = ServerConfig(min_client_xfer_size=1)
    with Driver(config, client_xfer=1) as d:  # 64 KiB chunk / 1 byte = 65536 messages
        d.ok(wire.DmaMap(0, 1 << 16))
        out = d.start_dma(1, 0, 1 << 16)  # FROM_CLIENT: would be DMA_READ messages
        assert not [m for m, _ in out if wire.decode(m).command == Command.DMA_READ]
        assert d.status() & Status.FAULT and d.core.stats["dma_messages"] == 0
    with Driver(config, client_xfer=4) as d:  # exactly MAX_DMA_CHUNKS_PER_OP messages
        d.ok(wire.DmaMap(0, 1 << 16))
        d.start_dma(1, 0, 1 << 16)
        assert d.core.stats["dma_messages"] == MAX_DMA_CHUNKS_PER_OP


# ----- bitmap length and logging ranges ------------------------------------------------------
def _report(d: Driver, length: int, page: int = 4096) -> object:
    return d.feature(FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET,
                     wire.DmaLoggingReport(0, length, page))


@pytest.mark.parametrize("limit", [DEFAULT.max_bitmap_size, 4096])
def test_bitmap_length_limit(limit: int) -> None:
    with Driver(ServerConfig(max_bitmap_size=limit)) as d:
        d.ok(wire.DmaMap(0, 1 << 40))  # a report range must be DMA-mapped (else ENOENT)
        control = wire.DmaLoggingControl(4096, ())
        assert d.feature(FeatureIndex.DMA_LOGGING_START, FeatureOp.SET, control).errno is None
        d.core.device.dirty_log.mark(0x3000, 1)
        pages = limit * 8  # a bitmap of exactly ``limit`` bytes
        past = _report(d, (pages + 1) * 4096)
        assert past.errno == errno.E2BIG  # type: ignore[attr-defined]
        reply = _report(d, pages * 4096).reply  # type: ignore[attr-defined]
        assert len(bytes(reply.data.bitmap)) == limit
        assert reply.data.dirty_bitmap().test_page(3)  # the refused report cleared nothing


def test_bitmap_never_larger_than_the_clients_max_data_xfer_size() -> None:
    with Driver(client_xfer=4096) as d:
        d.ok(wire.DmaMap(0, 1 << 40))  # a report range must be DMA-mapped (else ENOENT)
        control = wire.DmaLoggingControl(4096, ())
        assert d.feature(FeatureIndex.DMA_LOGGING_START, FeatureOp.SET, control).errno is None
        assert _report(d, 4096 * 8 * 4096).errno is None  # type: ignore[attr-defined]
        assert _report(d, 4096 * 8 * 4096 + 4096).errno == errno.E2BIG  # type: ignore[attr-defined]


@pytest.mark.parametrize("limit", [DEFAULT.max_logging_ranges, 3])
def test_logging_ranges_limit(limit: int) -> None:
    def ranges(n: int) -> tuple[wire.DmaRange, ...]:
        return tuple(wire.DmaRange(i << 20, 4096) for i in range(n))

    with Driver(ServerConfig(max_logging_ranges=limit)) as d:
        start, stop = FeatureIndex.DMA_LOGGING_START, FeatureIndex.DMA_LOGGING_STOP
        answer = d.feature(start, FeatureOp.SET, wire.DmaLoggingControl(4096, ranges(limit + 1)))
        assert answer.errno == errno.E2BIG
        assert bytes(answer.reply.payload)  # a failed feature SET echoes the request
        assert not d.core.device.dirty_log.active
        control = wire.DmaLoggingControl(4096, ranges(limit))
        assert d.feature(start, FeatureOp.SET, control).errno is None
        assert d.feature(stop, FeatureOp.SET, wire.DmaLoggingControl(4096)).errno is None


# ----- DMA_MAP ranges and mmap offsets ---------------------------------------------------------
def test_dma_map_overlap_wrap_and_empty_refused() -> None:
    top = 1 << 64
    with Driver() as d:
        d.ok(wire.DmaMap(0x10000, 0x10000))
        for addr, size in ((0x18000, 0x10000), (0x8000, 0x10000), (0x10000, 0x1000),
                           (0, 0x20001), (0x1FFFF, 1)):
            assert d.request(wire.DmaMap(addr, size)).errno == errno.EINVAL, (addr, size)
        d.ok(wire.DmaMap(0x20000, 0x1000))  # adjacent is fine
        assert d.request(wire.DmaMap(top - 0x1000, 0x1001)).errno == errno.EINVAL  # wraps
        d.ok(wire.DmaMap(top - 0x1000, 0x1000))  # ends exactly at 2**64
        assert d.request(wire.DmaMap(0x40000, 0)).errno == errno.EINVAL  # empty
        assert len(d.core.dma.mappings) == 3


def _memfd(size: int) -> int:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def test_dma_map_fd_range_must_lie_inside_the_file() -> None:
    with Driver() as d:
        size = 1 << 16
        fd = _memfd(size)
        answer = d.request(wire.DmaMap(0, size, offset=4096), [fd])  # one page past the end
        assert answer.errno == errno.EINVAL and "past the end" in answer.event.detail
        assert fd_closed(fd)
        fd = _memfd(size)
        answer = d.request(wire.DmaMap(0, size - 4096, offset=4096), [fd])
        assert answer.errno is None and fd_closed(fd)  # mapped, and the fd itself closed


def test_dma_map_unaligned_or_huge_offset_refused() -> None:
    with Driver() as d:
        for offset in (1, 4095, (1 << 64) - 4096):
            fd = _memfd(1 << 16)
            answer = d.request(wire.DmaMap(0, 4096, offset=offset), [fd])
            assert answer.errno == errno.EINVAL and fd_closed(fd), offset
        fd = os.eventfd(0)  # not mappable at all
        assert d.request(wire.DmaMap(0, 4096), [fd]).errno == errno.EINVAL and fd_closed(fd)
        assert d.core.dma.mappings == ()


# ----- region accesses past the region end -------------------------------------------------------
@pytest.mark.parametrize("region", [BAR0, BAR2, CONFIG])
def test_region_access_one_past_the_end(region: int) -> None:
    with Driver() as d:
        size = d.core.device.regions[region].size
        assert d.request(wire.RegionRead(size - 4, region, 4)).errno is None
        assert d.request(wire.RegionRead(size - 3, region, 4)).errno == errno.EINVAL
        assert d.request(wire.RegionRead(size, region, 0)).errno is None or region == BAR0
        assert d.request(wire.RegionRead((1 << 64) - 1, region, 2)).errno == errno.EINVAL
        answer = d.request(wire.RegionWrite(size - 3, region, 4, b"abcd"))
        assert answer.errno == errno.EINVAL
        multi = wire.RegionWriteMulti((wire.MultiWrite(size - 3, region, 4, b"abcd\0\0\0\0"),))
        assert d.request(multi).errno == errno.EINVAL
    with Driver() as d:
        assert d.request(wire.RegionRead(0, 1, 1)).errno == errno.EINVAL  # size-0 region


def test_dma_reply_that_does_not_match_the_request_faults_the_job() -> None:
    with Driver() as d:
        d.ok(wire.DmaMap(0, 1 << 16))  # no fd: the server asks with DMA_READ messages
        out = d.start_dma(1, 0x1000, 4096)
        (req_bytes,) = [m for m, _ in out if wire.decode(m).command == Command.DMA_READ]
        req: Any = wire.decode(req_bytes)
        bogus = wire.DmaReadReply(req.addr + 4096, req.count, b"E" * req.count, msg_id=req.msg_id)
        event = d.events(wire.encode(bogus))[0].event
        assert event.is_reply
        assert d.status() & Status.FAULT
        assert d.ok(wire.RegionRead(0, BAR2, 4096)).data == bytes(4096)  # nothing written


def test_region_read_hot_path_unchanged() -> None:
    with Driver() as d:
        for _ in range(100):
            assert len(d.ok(wire.RegionRead(int(Reg.STATUS), BAR0, 4)).data) == 4
