"""DMA: the client's DMA space, jobs run through it (mapped and by message), faults, aborts."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_user_mig.model.states import State
from vfio_user_mig.simulator.device import (
    DirtyLog,
    DmaFault,
    DmaMapError,
    DmaMode,
    DmaOp,
    DmaSpace,
    IrqIndex,
    MigDev,
    PciRegion,
    Route,
    run_job,
)
from vfio_user_mig.simulator.device.config import Command, Off
from vfio_user_mig.simulator.device.dma import DmaKind
from vfio_user_mig.simulator.device.regs import Control, DmaDir, JobError, Reg, Status

MEM = 64 << 10
CLIENT_IOVA = 0x10000
CLIENT_SIZE = 0x8000
NOFD_IOVA = 0x40000  # mapped without fd: reachable by message only


class Irqs:
    """An IrqSink that records."""

    def __init__(self) -> None:
        self.fired: list[tuple[int, int]] = []

    def trigger(self, index: int, subindex: int) -> None:
        self.fired.append((index, subindex))


class Client:
    """The client side: its memory, its DMA space, and the server's view of it."""

    def __init__(self) -> None:
        self.memory = bytearray(range(256)) * (CLIENT_SIZE // 256)
        self.nofd = bytearray(CLIENT_SIZE)
        # What the client itself would accept in DMA_READ/DMA_WRITE messages.
        self.own = DmaSpace()
        self.own.map(CLIENT_IOVA, CLIENT_SIZE, view=memoryview(self.memory))
        self.own.map(NOFD_IOVA, CLIENT_SIZE, view=memoryview(self.nofd))
        # What the server knows: one fd-backed mapping, one without fd.
        self.server = DmaSpace()
        self.server.map(CLIENT_IOVA, CLIENT_SIZE, view=memoryview(self.memory))
        self.server.map(NOFD_IOVA, CLIENT_SIZE)
        self.messages: list[DmaOp] = []
        self.log = DirtyLog()

    def message(self, op: DmaOp) -> bytes | None:
        self.messages.append(op)
        if op.kind is DmaKind.READ:
            return self.own.read(op.iova, op.length)
        assert op.data is not None
        self.own.write(op.iova, op.data)
        return None

    def resolve(self, op: DmaOp) -> bytes | None:
        result = self.server.resolve(op, self.message)
        if op.kind is DmaKind.WRITE:
            self.log.mark(op.iova, op.length)
        return result


@pytest.fixture
def irqs() -> Irqs:
    return Irqs()


@pytest.fixture
def dev(irqs: Irqs) -> Iterator[MigDev]:
    d = MigDev(mem_size=MEM, irq_sink=irqs, dma_chunk=0x1000)
    d.region_write(PciRegion.CONFIG, Off.COMMAND, Command.BUS_MASTER.to_bytes(2, "little"), 0)
    reg(d, Reg.CONTROL, Control.IRQ_ON_JOB)
    yield d
    d.close()


def reg(dev: MigDev, r: Reg, value: int) -> None:
    size = 8 if r in (Reg.DMA_DEV_OFFSET, Reg.DMA_IOVA, Reg.DMA_LEN, Reg.SCRATCH) else 4
    if r is Reg.TIMER_DEADLINE_US:
        size = 8
    dev.region_write(PciRegion.BAR0, r, value.to_bytes(size, "little"), 0.0)


def rd(dev: MigDev, r: Reg, size: int = 4) -> int:
    return int.from_bytes(dev.region_read(PciRegion.BAR0, r, size, 0.0), "little")


def ring(dev: MigDev, dev_off: int, iova: int, length: int, d: DmaDir, mode: DmaMode) -> None:
    reg(dev, Reg.DMA_DEV_OFFSET, dev_off)
    reg(dev, Reg.DMA_IOVA, iova)
    reg(dev, Reg.DMA_LEN, length)
    reg(dev, Reg.DMA_DIR, d)
    reg(dev, Reg.DMA_MODE, mode)
    reg(dev, Reg.DOORBELL, 1)


def devmem(dev: MigDev) -> bytes:
    return dev.region_read(PciRegion.BAR2, 0, MEM, 0.0)


# ----- DmaSpace ------------------------------------------------------------------------------
def test_space_refuses_overlap_wrap_and_bad_views() -> None:
    space = DmaSpace()
    space.map(0x1000, 0x1000)
    for iova, size in ((0x1800, 0x1000), (0x0, 0x1001), (0x1FFF, 1), (2**64 - 0x1000, 0x2000)):
        with pytest.raises(DmaMapError) as exc:
            space.map(iova, size)
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(DmaMapError):
        space.map(0x3000, 0x1000, view=memoryview(bytearray(0x800)))
    with pytest.raises(DmaMapError):
        space.map(0x3000, 4, view=memoryview(b"abcd"))  # writable over read-only bytes
    space.map(0x2000, 0x1000)  # adjacent is fine
    with pytest.raises(DmaMapError) as exc:
        space.unmap(0x1000, 0x800)
    assert exc.value.errno == errno.ENOENT
    assert space.unmap(0x1000, 0x1000).iova == 0x1000
    assert [m.iova for m in space.mappings] == [0x2000]


@given(
    iova=st.integers(0, 0x6000),
    length=st.integers(1, 0x3000),
    write=st.booleans(),
)
def test_space_access_inside_one_mapping_or_fault_touching_nothing(
    iova: int, length: int, write: bool
) -> None:
    a, b = bytearray(0x1000), bytearray(0x1000)
    space = DmaSpace()
    space.map(0x1000, 0x1000, view=memoryview(a))
    space.map(0x2000, 0x1000, view=memoryview(b))  # adjacent: a range across both still faults
    inside = any(m.iova <= iova and iova + length <= m.end for m in space.mappings)
    if inside:
        if write:
            space.write(iova, b"\x01" * length)
            assert (a + b).count(1) == length
        else:
            assert space.read(iova, length) == bytes(length)
    else:
        with pytest.raises(DmaFault) as exc:
            if write:
                space.write(iova, b"\x01" * length)
            else:
                space.read(iova, length)
        assert exc.value.errno == errno.EFAULT
        assert not any(a) and not any(b)


def test_space_routes_by_mode_and_permission() -> None:
    space = DmaSpace()
    space.map(0x1000, 0x1000, view=memoryview(bytearray(0x1000)), writable=False)
    space.map(0x2000, 0x1000)
    assert space.route(DmaOp.read(0x1000, 8)) is Route.DIRECT
    assert space.route(DmaOp.read(0x1000, 8, DmaMode.MESSAGE_ONLY)) is Route.MESSAGE
    assert space.route(DmaOp.write(0x2000, b"x")) is Route.MESSAGE
    with pytest.raises(DmaFault):
        space.route(DmaOp.write(0x1000, b"x"))  # read-only mapping
    with pytest.raises(DmaFault):
        space.route(DmaOp.read(0x2000, 8, DmaMode.MAPPED_ONLY))  # no fd
    with pytest.raises(DmaFault):
        space.resolve(DmaOp.read(0x2000, 8))  # message route but no channel


# ----- jobs ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(DmaMode))
def test_job_to_client_and_back(dev: MigDev, irqs: Irqs, mode: DmaMode) -> None:
    client = Client()
    iova = NOFD_IOVA if mode is DmaMode.AUTO else CLIENT_IOVA
    target = client.nofd if mode is DmaMode.AUTO else client.memory
    pattern = bytes((i * 7) & 0xFF for i in range(0x2800))
    dev.region_write(PciRegion.BAR2, 0x100, pattern, 0.0)
    client.log.start(0x1000)
    if mode is DmaMode.MAPPED_ONLY:
        iova = CLIENT_IOVA
    ring(dev, 0x100, iova + 0x10, len(pattern), DmaDir.TO_CLIENT, mode)
    assert rd(dev, Reg.STATUS) == Status.BUSY
    job = dev.take_dma_job()
    assert job is not None and dev.take_dma_job() is None
    ops = run_job(job, client.resolve)
    assert ops == 1 + 3  # CHECK + 3 chunks of <= 0x1000
    assert target[0x10 : 0x10 + len(pattern)] == pattern
    assert rd(dev, Reg.STATUS) == Status.DONE and rd(dev, Reg.JOBS_DONE, 8) == 1
    assert irqs.fired == [(IrqIndex.INTX, 0)]
    assert client.log.report(iova, 0x4000, 0x1000) == [0, 1, 2]
    by_message = mode is DmaMode.MESSAGE_ONLY or iova == NOFD_IOVA
    assert bool(client.messages) == by_message
    # and back: client -> device memory at another offset
    ring(dev, 0x8000, iova + 0x10, len(pattern), DmaDir.FROM_CLIENT, mode)
    job = dev.take_dma_job()
    assert job is not None
    run_job(job, client.resolve)
    assert dev.region_read(PciRegion.BAR2, 0x8000, len(pattern), 0.0) == pattern
    assert rd(dev, Reg.JOBS_DONE, 8) == 2


@pytest.mark.parametrize("direction", list(DmaDir))
@pytest.mark.parametrize(
    ("iova", "mode"),
    [
        (CLIENT_IOVA + CLIENT_SIZE - 0x100, DmaMode.AUTO),  # runs off the end
        (0x0, DmaMode.AUTO),  # nothing mapped
        (NOFD_IOVA, DmaMode.MAPPED_ONLY),  # mapped without fd
    ],
)
def test_job_outside_mapped_ranges_faults_and_touches_nothing(
    dev: MigDev, irqs: Irqs, direction: DmaDir, iova: int, mode: DmaMode
) -> None:
    client = Client()
    before_client, before_nofd = bytes(client.memory), bytes(client.nofd)
    dev.region_write(PciRegion.BAR2, 0, b"\xaa" * 0x2000, 0.0)
    before_dev = devmem(dev)
    ring(dev, 0, iova, 0x2000, direction, mode)
    job = dev.take_dma_job()
    assert job is not None
    assert run_job(job, client.resolve) == 1  # the CHECK failed; nothing else was tried
    assert rd(dev, Reg.STATUS) == Status.FAULT
    assert rd(dev, Reg.LAST_ERROR) == JobError.DMA_FAULT
    assert rd(dev, Reg.FAULT_IOVA, 8) == iova
    assert rd(dev, Reg.JOBS_DONE, 8) == 0
    assert irqs.fired == [(IrqIndex.INTX, 0)]
    assert bytes(client.memory) == before_client and bytes(client.nofd) == before_nofd
    assert devmem(dev) == before_dev and not client.messages


def test_fault_in_the_middle_of_a_job(dev: MigDev) -> None:
    client = Client()
    ring(dev, 0, CLIENT_IOVA, 0x3000, DmaDir.TO_CLIENT, DmaMode.AUTO)
    job = dev.take_dma_job()
    assert job is not None
    op = next(job)
    assert op.kind is DmaKind.CHECK_WRITE
    op = job.send(client.resolve(op))
    client.server.unmap(CLIENT_IOVA, CLIENT_SIZE)  # the client unmaps mid-job
    with pytest.raises(DmaFault) as exc:
        client.resolve(op)
    with pytest.raises(StopIteration):
        job.throw(exc.value)
    assert rd(dev, Reg.STATUS) == Status.FAULT and rd(dev, Reg.FAULT_IOVA, 8) == CLIENT_IOVA


def test_bad_reply_to_a_read_fails_the_job(dev: MigDev) -> None:
    ring(dev, 0, CLIENT_IOVA, 0x100, DmaDir.FROM_CLIENT, DmaMode.AUTO)
    job = dev.take_dma_job()
    assert job is not None
    run_job(job, lambda op: b"short" if op.kind is DmaKind.READ else None)
    assert rd(dev, Reg.STATUS) == Status.FAULT and rd(dev, Reg.LAST_ERROR) == JobError.BAD_REPLY
    assert devmem(dev) == bytes(MEM)


def test_msi_when_enabled_and_no_irq_when_intx_disabled(dev: MigDev, irqs: Irqs) -> None:
    client = Client()
    cmd = Command.BUS_MASTER | Command.INTX_DISABLE
    dev.region_write(PciRegion.CONFIG, Off.COMMAND, cmd.to_bytes(2, "little"), 0.0)
    for msi in (False, True):
        dev.region_write(PciRegion.CONFIG, Off.MSI_CONTROL, int(msi).to_bytes(2, "little"), 0.0)
        ring(dev, 0, CLIENT_IOVA, 8, DmaDir.TO_CLIENT, DmaMode.AUTO)
        job = dev.take_dma_job()
        assert job is not None
        run_job(job, client.resolve)
    assert irqs.fired == [(IrqIndex.MSI, 0)]


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        ("stop", JobError.NOT_RUNNING),
        ("busy", JobError.BUSY),
        ("nobm", JobError.BUS_MASTER_OFF),
        ("len0", JobError.BAD_DESCRIPTOR),
        ("past", JobError.BAD_DESCRIPTOR),
        ("dir", JobError.BAD_DESCRIPTOR),
    ],
)
def test_doorbell_refusals(dev: MigDev, setup: str, why: JobError) -> None:
    length, dev_off, direction = 0x100, 0, DmaDir.TO_CLIENT
    if setup == "stop":
        dev.on_arc(State.RUNNING, State.STOP)
    elif setup == "busy":
        ring(dev, 0, CLIENT_IOVA, 8, DmaDir.TO_CLIENT, DmaMode.AUTO)
    elif setup == "nobm":
        dev.region_write(PciRegion.CONFIG, Off.COMMAND, b"\0\0", 0.0)
    elif setup == "len0":
        length = 0
    elif setup == "past":
        dev_off = MEM - 8
    elif setup == "dir":
        direction = 7  # type: ignore[assignment]
    ring(dev, dev_off, CLIENT_IOVA, length, direction, DmaMode.AUTO)
    status = rd(dev, Reg.STATUS)
    assert status & Status.REFUSED and rd(dev, Reg.LAST_ERROR) == why
    assert bool(status & Status.BUSY) == (setup == "busy")
    if setup != "busy":
        assert dev.take_dma_job() is None


def test_stopping_aborts_an_in_flight_job_without_touching_memory(dev: MigDev) -> None:
    client = Client()
    ring(dev, 0, CLIENT_IOVA, 0x2000, DmaDir.FROM_CLIENT, DmaMode.AUTO)
    job = dev.take_dma_job()
    assert job is not None
    op = next(job)
    op = job.send(client.resolve(op))  # first READ op issued
    data = client.resolve(op)  # the reply is in flight...
    dev.on_arc(State.RUNNING, State.STOP)  # ...when the VMM stops the device
    with pytest.raises(StopIteration):
        job.send(data)
    assert rd(dev, Reg.STATUS) == Status.ABORTED and rd(dev, Reg.LAST_ERROR) == JobError.ABORTED
    assert devmem(dev) == bytes(MEM)


@pytest.mark.parametrize("how", ["abort_dma", "reset", "close_generator"])
def test_server_side_abort(dev: MigDev, irqs: Irqs, how: str) -> None:
    client = Client()
    ring(dev, 0, CLIENT_IOVA, 0x2000, DmaDir.FROM_CLIENT, DmaMode.AUTO)
    job = dev.take_dma_job()
    assert job is not None
    op = job.send(client.resolve(next(job)))
    if how == "abort_dma":
        dev.abort_dma()
    elif how == "reset":
        dev.reset()
    else:
        job.close()  # the server dropped the job (client gone)
    if how != "close_generator":
        with pytest.raises(StopIteration):
            job.send(client.resolve(op))
    status = rd(dev, Reg.STATUS)
    assert status == (0 if how == "reset" else Status.ABORTED)
    assert devmem(dev) == bytes(MEM) and not irqs.fired
    ring(dev, 0, CLIENT_IOVA, 8, DmaDir.TO_CLIENT, DmaMode.AUTO)  # the engine is free again
    if how == "reset":
        assert rd(dev, Reg.LAST_ERROR) == JobError.BUS_MASTER_OFF
    else:
        assert rd(dev, Reg.STATUS) == Status.BUSY


def test_timer_fires_only_when_running(dev: MigDev, irqs: Irqs) -> None:
    reg(dev, Reg.CONTROL, Control.IRQ_ON_TIMER)
    reg(dev, Reg.TIMER_DEADLINE_US, 2_000_000)
    dev.tick(1.5)
    assert not irqs.fired
    dev.on_arc(State.RUNNING, State.STOP)
    dev.tick(3.0)
    assert not irqs.fired
    dev.on_arc(State.STOP, State.RUNNING)
    dev.tick(3.0)
    assert irqs.fired == [(IrqIndex.INTX, 0)]
    assert rd(dev, Reg.STATUS) & Status.TIMER and rd(dev, Reg.TIMER_DEADLINE_US, 8) == 0
    dev.tick(4.0)
    assert len(irqs.fired) == 1


@settings(max_examples=30, deadline=None)
@given(
    dev_off=st.integers(0, MEM - 1),
    offset=st.integers(0, CLIENT_SIZE - 1),
    length=st.integers(1, 0x3000),
    chunk=st.sampled_from([0x10, 0x1000, 0x10000]),
)
def test_job_copies_exactly_the_descriptor(
    dev_off: int, offset: int, length: int, chunk: int
) -> None:
    length = min(length, MEM - dev_off, CLIENT_SIZE - offset)
    dev = MigDev(mem_size=MEM, dma_chunk=chunk)
    try:
        dev.region_write(PciRegion.CONFIG, Off.COMMAND, Command.BUS_MASTER.to_bytes(2, "little"), 0)
        client = Client()
        expected = bytearray(client.memory)
        dev.region_write(PciRegion.BAR2, 0, bytes(range(256)) * (MEM // 256), 0.0)
        expected[offset : offset + length] = devmem(dev)[dev_off : dev_off + length]
        ring(dev, dev_off, CLIENT_IOVA + offset, length, DmaDir.TO_CLIENT, DmaMode.AUTO)
        job = dev.take_dma_job()
        assert job is not None
        run_job(job, client.resolve)
        assert client.memory == expected and rd(dev, Reg.STATUS) == Status.DONE
    finally:
        dev.close()
