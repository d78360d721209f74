"""The ``lvu-sample`` profile driven through the flow libvfio-user's samples/client runs.

No libvfio-user needed: our own client plays samples/client (INTEROP.md steps 1-9), against a
source and a destination server. The servers run on a clock the test can move forward, so the
1 s and 10 s BAR0 deadlines of the real client fire without waiting.
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from vfio_user_mig.model import State
from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.device import (
    DEVICES,
    DeviceError,
    DmaFault,
    DmaOp,
    IrqIndex,
    NullIrqSink,
    run_job,
)
from vfio_user_mig.simulator.device.lvu_sample import (
    BAR1_REGION_SIZE,
    BAR1_SIZE,
    PROBE_LIMIT,
    STOP_COPY_SIZE,
    LvuSample,
)
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import pump
from vfio_user_mig.wire.constants import RegionInfoFlag

PAGE = 4096
NR_DMA = 16  # samples/client maps 2 * max_msg_fds (8, our server's) one-page regions
XFER = 1024  # samples/client's max_data_xfer_size
BAR0, BAR1, CONFIG = 0, 1, 7
PATTERN = b"".join(bytes([c]) * 1024 for c in b"ABCD")
TIME_T = struct.Struct("<q")


class SkewClock:
    """``time.monotonic`` plus a skew the test moves forward to make timers expire."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew

    def unix(self, dev: LvuSample) -> float:
        """The Unix time the device sees now."""
        return self() + dev.unix_offset


@dataclass
class Served:
    hosted: HostedDevice
    client: Client
    server_sock: socket.socket
    thread: threading.Thread
    stop: threading.Event
    clock: SkewClock = field(default_factory=SkewClock)

    @property
    def dev(self) -> LvuSample:
        dev = self.hosted.device
        assert isinstance(dev, LvuSample)
        return dev

    def close(self) -> None:
        self.client.close()
        self.stop.set()
        self.thread.join(5)
        self.server_sock.close()
        self.hosted.close()


def serve(memory: GuestMemory) -> Served:
    hosted = host_device("lvu-sample")
    a, b = socket.socketpair()
    clock = SkewClock()
    stop = threading.Event()
    thread = threading.Thread(
        target=pump,
        args=(hosted.core, a, stop),
        kwargs={"clock": clock, "tick": 0.01},
        daemon=True,
    )
    thread.start()
    client = Client(b, memory=memory, timeout=5.0, max_data_xfer_size=XFER, max_msg_fds=32)
    return Served(hosted, client, a, thread, stop, clock)


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    mem = GuestMemory(NR_DMA * PAGE)
    yield mem
    mem.close()


def write_deadline(s: Served, seconds: int) -> int:
    deadline = math.floor(s.clock.unix(s.dev)) + seconds
    s.client.region_write(BAR0, 0, TIME_T.pack(deadline))
    return deadline


def fire_timer(s: Served, seconds: float, irq_fd: int) -> None:
    """Move the server clock ``seconds`` forward; serve the DMA until the job is over."""
    s.clock.skew += seconds
    runs, errors = s.dev.dma_runs, len(s.dev.dma_errors)
    end = time.monotonic() + 5
    while s.dev.dma_runs == runs and len(s.dev.dma_errors) == errors:
        assert time.monotonic() < end, "the timer did not fire"
        s.client.poll(0.01)
    assert s.dev.dma_errors == []
    assert select.select([irq_fd], [], [], 0)[0], "INTx eventfd not signalled"
    assert os.eventfd_read(irq_fd) == 1


def map_pages(c: Client, memory: GuestMemory, pages: range) -> None:
    for i in pages:
        c.dma_map(i * PAGE, PAGE, fd=memory.fd, offset=i * PAGE)


def setup_irqs(c: Client) -> int:
    infos = [c.irq_info(i) for i in range(5)]
    assert [(i.count, i.flags) for i in infos] == [(1, 1), (0, 1), (0, 1), (1, 1), (1, 1)]
    irq_fd = os.eventfd(0, os.EFD_CLOEXEC)
    c.set_irq_eventfds(IrqIndex.INTX, [irq_fd])
    return irq_fd


def test_samples_client_flow(memory: GuestMemory) -> None:
    src = serve(memory)
    dst: Served | None = None
    irq_fds: list[int] = []
    try:
        c = src.client
        # 1-2. VERSION, a bogus region
        c.negotiate()
        with pytest.raises(VfioUserError) as bogus:
            c.region_read(0xDEADBEEF, 0, 4)
        assert bogus.value.errno == errno.EINVAL
        # 3. 9 regions; only BAR1 has a capability (sparse mmap) and an fd
        info = c.device_info()
        assert (info.num_regions, info.num_irqs) == (9, 5)
        sizes = []
        for index in range(9):
            reply, fds = c.region_info(index)
            sizes.append(reply.size)
            if index != BAR1:
                assert not reply.flags & RegionInfoFlag.CAPS and fds == []
                continue
            assert reply.flags & RegionInfoFlag.CAPS and reply.flags & RegionInfoFlag.MMAP
            [cap] = reply.caps
            assert [(a.offset, a.size) for a in cap.areas] == [(0, 0x1000), (0x2000, 0x1000)]
            assert len(fds) == 1
            c.region_write(BAR1, 0x2000, b"mapped")
            with mmap.mmap(fds[0], 0x1000, offset=0x2000) as area:
                assert area[:6] == b"mapped"
            os.close(fds[0])
        assert sizes == [8, BAR1_REGION_SIZE, 0, 0, 0, 0, 0, 256, 0]  # PCI: power of two
        # 4. config space ids
        cfg = c.region_read(CONFIG, 0, 64)
        assert struct.unpack_from("<HH", cfg, 0) == (0xDEAD, 0xBEEF)
        assert struct.unpack_from("<HH", cfg, 0x2C) == (0xCAFE, 0xBABE)
        # 5. reset, DMA_MAP 16 pages with fds, IRQs
        c.reset()
        map_pages(c, memory, range(NR_DMA))
        irq_fds.append(setup_irqs(c))
        # 6. logging, BAR0 deadline now + 1 s: INTx, direct DMA at 0x1000, messages at 0
        c.dma_logging_start(PAGE)
        deadline = write_deadline(src, 1)
        (elapsed,) = TIME_T.unpack(c.region_read(BAR0, 0, 8))
        assert elapsed in (-1, 0)  # the sample reads back now - deadline
        served = c.dma_served
        fire_timer(src, 1.0, irq_fds[0])
        assert c.dma_served - served == 8  # 4 DMA_WRITE + 4 DMA_READ of 1024 bytes
        assert memory.read(0x1000, PAGE) == PATTERN
        assert memory.read(0, PAGE) == PATTERN
        dirty = [bool(c.dma_logging_report(i * PAGE, PAGE, PAGE)) for i in range(NR_DMA)]
        assert dirty == [True, True] + [False] * (NR_DMA - 2)
        c.dma_logging_stop()
        for i in range(NR_DMA // 2):
            c.dma_unmap(i * PAGE, PAGE)
        # 7. the interrupt the destination must deliver
        deadline = write_deadline(src, 10)
        assert src.dev.bar0_deadline == deadline
        # 8. PRE_COPY: 12 x 1024 of BAR1 while the "guest" writes BAR1, then caught up
        guest = os.urandom(BAR1_SIZE)
        c.region_write(BAR1, 0, guest)
        c.set_state(State.PRE_COPY)
        reads = []
        for _ in range(12):
            reads.append(c.mig_data_read(XFER))
            guest = os.urandom(BAR1_SIZE)
            c.region_write(BAR1, 0, guest)
        assert [len(r) for r in reads] == [XFER] * 12
        assert c.mig_data_read(XFER) == b""
        # STOP_COPY: 13 non-empty reads, BAR1 then the deadline; then the stream has ended
        c.set_state(State.STOP_COPY)
        stream = [c.mig_data_read(XFER) for _ in range(13)]
        assert [len(r) for r in stream] == [XFER] * 12 + [8]
        assert b"".join(stream) == guest + TIME_T.pack(deadline)
        assert c.mig_data_read(XFER) == b""
        c.set_state(State.STOP)
        assert src.dev.timer_expiry is None
        # 9. destination: RESUMING, 13 writes, STOP, BAR1 check, RUNNING
        dst = serve(memory)
        dst.clock.skew = src.clock.skew
        d = dst.client
        d.negotiate()
        d.set_state(State.RESUMING)
        for chunk in stream:
            d.mig_data_write(chunk)
        d.set_state(State.STOP)
        bar1 = b"".join(d.region_read(BAR1, off, XFER) for off in range(0, BAR1_SIZE, XFER))
        assert bar1 == guest
        assert dst.dev.digest() == src.dev.digest()
        d.set_state(State.RUNNING)
        assert dst.dev.timer_expiry is not None
        map_pages(d, memory, range(NR_DMA // 2, NR_DMA))
        irq_fds.append(setup_irqs(d))
        served = d.dma_served
        fire_timer(dst, 10.0, irq_fds[1])
        assert d.dma_served - served == 8
        assert memory.read(0x9000, PAGE) == PATTERN  # direct
        assert memory.read(0x8000, PAGE) == PATTERN  # messages
        d.dma_unmap(all_regions=True)
        assert dst.dev.timer_fired == 1 and dst.dev.dma_runs == 1
    finally:
        for fd in irq_fds:
            os.close(fd)
        src.close()
        if dst is not None:
            dst.close()


# ----- behaviours of the device alone (sans-IO) ---------------------------------------------
@pytest.fixture
def dev() -> Iterator[LvuSample]:
    device = LvuSample(irq_sink=NullIrqSink(), unix_offset=1000.0)
    yield device
    device.close()


def test_registered() -> None:
    assert "lvu-sample" in DEVICES


def test_bar0_accesses(dev: LvuSample) -> None:
    for offset, count in ((0, 4), (4, 4), (1, 8)):
        with pytest.raises(DeviceError):
            dev.region_read(BAR0, offset, count, 0.0)
    with pytest.raises(DeviceError) as past:
        dev.region_write(BAR0, 0, TIME_T.pack(999), 0.5)  # unix now 1000.5, floor 1000
    assert past.value.errno == errno.EINVAL and dev.bar0_deadline == 0
    dev.region_write(BAR0, 0, TIME_T.pack(1000), 0.5)  # delta 0: stored, timer off
    assert dev.bar0_deadline == 1000 and dev.timer_expiry is None
    dev.region_write(BAR0, 0, TIME_T.pack(1003), 0.5)
    assert dev.timer_expiry == 3.5
    assert TIME_T.unpack(dev.region_read(BAR0, 0, 8, 1.0)) == (-2,)


def test_timer_without_mapped_dma_records_an_error(dev: LvuSample) -> None:
    dev.region_write(BAR0, 0, TIME_T.pack(1001), 0.0)
    dev.tick(0.9)
    assert dev.take_dma_job() is None
    dev.tick(1.0)
    job = dev.take_dma_job()
    assert job is not None and dev.timer_fired == 1

    def unmapped(op: DmaOp) -> bytes | None:
        raise DmaFault("unmapped", op.iova, op.length)

    assert run_job(job, unmapped) == PROBE_LIMIT // PAGE
    assert dev.dma_runs == 0 and "need 2" in dev.dma_errors[0]


def test_running_arc_rearms_or_refuses(dev: LvuSample) -> None:
    dev.region_write(BAR0, 0, TIME_T.pack(1005), 0.0)
    dev.on_arc(State.RUNNING, State.STOP)
    assert dev.timer_expiry is None
    dev.tick(2.0)
    dev.on_arc(State.STOP, State.RUNNING)
    assert dev.timer_expiry == 5.0
    dev.on_arc(State.RUNNING, State.STOP)
    dev.tick(6.0)  # the deadline is now in the past
    with pytest.raises(ArcActionError) as refused:
        dev.on_arc(State.STOP, State.RUNNING)
    assert refused.value.errno == errno.EINVAL and not refused.value.broken
    assert dev.mig_state is State.STOP


def test_restore_must_be_complete(dev: LvuSample) -> None:
    dev.on_arc(State.RUNNING, State.STOP)
    dev.on_arc(State.STOP, State.RESUMING)
    dev.mig_data_write(bytes(STOP_COPY_SIZE - 8))
    with pytest.raises(DeviceError):
        dev.mig_data_write(bytes(9))
    with pytest.raises(ArcActionError) as broken:
        dev.on_arc(State.RESUMING, State.STOP)
    assert broken.value.broken and dev.mig_state is State.ERROR


def test_stop_copy_from_stop_and_precopy_cancel(dev: LvuSample) -> None:
    dev.region_write(BAR1, 0, b"\x5a" * BAR1_SIZE, 0.0)
    dev.on_arc(State.RUNNING, State.PRE_COPY)
    assert len(dev.mig_data_read(0x10000)) == BAR1_SIZE
    assert dev.mig_data_read(1) == b""
    dev.on_arc(State.PRE_COPY, State.RUNNING)  # cancel: no deadline, nothing to re-arm
    dev.on_arc(State.RUNNING, State.STOP)
    dev.on_arc(State.STOP, State.STOP_COPY)
    data = dev.mig_data_read(5000) + dev.mig_data_read(5000) + dev.mig_data_read(5000)
    assert data == b"\x5a" * BAR1_SIZE + TIME_T.pack(0)
    with pytest.raises(DeviceError):
        dev.mig_data_write(b"x")


# ----- what samples/client needs from files other than this profile ------------------------
def test_truncated_region_info_carries_no_fd(memory: GuestMemory) -> None:
    s = serve(memory)
    try:
        s.client.negotiate()
        reply, fds = s.client.region_info(BAR1, argsz=32)
        for fd in fds:
            os.close(fd)
        assert reply.argsz > 32 and not reply.flags & RegionInfoFlag.CAPS
        assert fds == []
    finally:
        s.close()


def test_region_info_request_with_argsz_sized_payload(memory: GuestMemory) -> None:
    s = serve(memory)
    try:
        s.client.negotiate()
        payload = struct.pack("<IIIIQQ", 80, 0, BAR1, 0, 0, 0) + bytes(48)
        header = struct.pack("<HHIII", 0xABCD, 5, 16 + len(payload), 0, 0)
        s.client.sock.sendall(header + payload)
        msg, anc, _, _ = s.client.sock.recvmsg(16 + 80, socket.CMSG_SPACE(16))
        for level, kind, data in anc:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS):
                for fd in struct.unpack(f"{len(data) // 4}i", data):
                    os.close(fd)
        _, _, size, flags, error = struct.unpack_from("<HHIII", msg)
        assert (flags & 0x20, error) == (0, 0)
        assert size == 16 + 80
    finally:
        s.close()
