"""migdev regions: table, bounds, BAR0 registers, BAR2 memory, PCI config space."""

from __future__ import annotations

import errno
import mmap
from collections.abc import Iterator

import pytest

from vfio_user_mig.simulator.device import (
    DEVICES,
    MigDev,
    NullIrqSink,
    PciRegion,
    RegionFlag,
)
from vfio_user_mig.simulator.device.config import DEVICE_ID, VENDOR_ID, Command, Off
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.regs import BAR0_SIZE, DEVICE_MAGIC, Reg, Status

MEM = 64 << 10


@pytest.fixture
def dev() -> Iterator[MigDev]:
    d = MigDev(mem_size=MEM)
    yield d
    d.close()


def u(dev: MigDev, index: int, off: int, size: int) -> int:
    return int.from_bytes(dev.region_read(index, off, size, 0.0), "little")


def w(dev: MigDev, index: int, off: int, value: int, size: int) -> None:
    dev.region_write(index, off, value.to_bytes(size, "little"), 0.0)


def test_region_table(dev: MigDev) -> None:
    regions = dev.regions
    assert [r.index for r in regions] == list(range(9))
    assert regions[PciRegion.BAR0].size == BAR0_SIZE
    bar2 = regions[PciRegion.BAR2]
    assert bar2.size == MEM and bar2.flags & RegionFlag.MMAP
    assert bar2.sparse_mmap == ((0, MEM),) and bar2.fd == dev.memory_fd
    assert regions[PciRegion.CONFIG].size == 256
    assert all(regions[i].size == 0 for i in (1, 3, 4, 5, 6, 8))
    assert [(i.index, i.count) for i in dev.irqs] == [(0, 1), (1, 1), (2, 0), (3, 1), (4, 1)]


@pytest.mark.parametrize(
    ("index", "offset", "count"),
    [
        (PciRegion.BAR0, BAR0_SIZE - 3, 4),
        (PciRegion.BAR2, MEM, 1),
        (PciRegion.CONFIG, -1, 2),
        (PciRegion.BAR1, 0, 1),
        (9, 0, 1),
        (0xDEADBEEF, 0, 1),
        (PciRegion.BAR2, 0, -1),
    ],
)
def test_out_of_range_access_is_einval_and_writes_nothing(
    dev: MigDev, index: int, offset: int, count: int
) -> None:
    before = dev.digest()
    with pytest.raises(DeviceError) as exc:
        dev.region_read(index, offset, count, 0.0)
    assert exc.value.errno == errno.EINVAL
    if count > 0:
        with pytest.raises(DeviceError) as exc:
            dev.region_write(index, offset, b"\xff" * count, 0.0)
        assert exc.value.errno == errno.EINVAL
    assert dev.digest() == before


def test_bar2_read_write_and_mmap_see_the_same_memory(dev: MigDev) -> None:
    dev.region_write(PciRegion.BAR2, MEM - 4, b"tail", 0.0)
    guest = mmap.mmap(dev.memory_fd, MEM)
    try:
        assert guest[MEM - 4 :] == b"tail"
        guest[100:105] = b"hello"
        assert dev.region_read(PciRegion.BAR2, 100, 5, 0.0) == b"hello"
    finally:
        guest.close()


def test_config_space_ids_and_readonly_fields(dev: MigDev) -> None:
    cfg = PciRegion.CONFIG
    assert u(dev, cfg, Off.VENDOR_ID, 2) == VENDOR_ID
    assert u(dev, cfg, Off.DEVICE_ID, 2) == DEVICE_ID
    w(dev, cfg, Off.VENDOR_ID, 0x1234, 4)  # read-only: ignored
    assert u(dev, cfg, Off.VENDOR_ID, 4) == VENDOR_ID | DEVICE_ID << 16
    w(dev, cfg, Off.COMMAND, 0xFFFF, 2)
    assert u(dev, cfg, Off.COMMAND, 2) == Command.MEMORY | Command.BUS_MASTER | Command.INTX_DISABLE
    w(dev, cfg, Off.INTERRUPT_PIN, 7, 1)
    assert u(dev, cfg, Off.INTERRUPT_PIN, 1) == 1


def test_bar_sizing(dev: MigDev) -> None:
    cfg = PciRegion.CONFIG
    for off in (Off.BAR0, Off.BAR2_LO, Off.BAR2_HI):
        w(dev, cfg, off, 0xFFFFFFFF, 4)
    bar0 = u(dev, cfg, Off.BAR0, 4)
    assert (~(bar0 & 0xFFFFFFF0) & 0xFFFFFFFF) + 1 == BAR0_SIZE
    bar2 = u(dev, cfg, Off.BAR2_LO, 8)
    assert bar2 & 0xF == 0xC  # 64-bit prefetchable memory
    assert (~(bar2 & ~0xF) & (2**64 - 1)) + 1 == MEM


def test_bar0_register_semantics(dev: MigDev) -> None:
    bar0 = PciRegion.BAR0
    assert u(dev, bar0, Reg.ID, 4) == DEVICE_MAGIC
    w(dev, bar0, Reg.ID, 0, 4)  # read-only
    assert u(dev, bar0, Reg.ID, 4) == DEVICE_MAGIC
    w(dev, bar0, Reg.SCRATCH, 0x1122334455667788, 8)
    w(dev, bar0, Reg.SCRATCH + 4, 0xAABBCCDD, 4)  # half of a 64-bit register
    assert u(dev, bar0, Reg.SCRATCH, 8) == 0xAABBCCDD55667788
    assert u(dev, bar0, Reg.CLOCK_US, 8) == 0
    assert int.from_bytes(dev.region_read(bar0, Reg.CLOCK_US, 8, 2.5), "little") == 2_500_000
    w(dev, bar0, 0xF0, 0xFFFF, 2)  # unimplemented: ignored
    assert u(dev, bar0, 0xF0, 2) == 0


def test_bar0_write_spanning_registers_is_refused_whole(dev: MigDev) -> None:
    before = dev.region_read(PciRegion.BAR0, 0, BAR0_SIZE, 0.0)
    with pytest.raises(DeviceError) as exc:
        w(dev, PciRegion.BAR0, Reg.DMA_DIR, 2**64 - 1, 8)  # DMA_DIR + DMA_MODE
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(DeviceError):
        w(dev, PciRegion.BAR0, Reg.SCRATCH + 4, 2**64 - 1, 8)  # SCRATCH + unimplemented
    assert dev.region_read(PciRegion.BAR0, 0, BAR0_SIZE, 0.0) == before


def test_status_is_write_one_to_clear(dev: MigDev) -> None:
    w(dev, PciRegion.BAR0, Reg.DOORBELL, 1, 4)  # DMA_LEN 0: refused
    assert u(dev, PciRegion.BAR0, Reg.STATUS, 4) == Status.REFUSED
    w(dev, PciRegion.BAR0, Reg.STATUS, 0, 4)
    assert u(dev, PciRegion.BAR0, Reg.STATUS, 4) == Status.REFUSED
    w(dev, PciRegion.BAR0, Reg.STATUS, Status.REFUSED, 4)
    assert u(dev, PciRegion.BAR0, Reg.STATUS, 4) == 0


def test_reset_restores_power_on_state(dev: MigDev) -> None:
    fresh = dev.digest()
    w(dev, PciRegion.BAR0, Reg.SCRATCH, 5, 8)
    w(dev, PciRegion.CONFIG, Off.COMMAND, Command.BUS_MASTER, 2)
    dev.region_write(PciRegion.BAR2, 0, b"x" * 10, 0.0)
    assert dev.digest() != fresh
    dev.reset()
    assert dev.digest() == fresh


def test_registry_and_bad_construction() -> None:
    d = DEVICES["migdev"](mem_size=MEM, irq_sink=NullIrqSink())
    assert d.regions[PciRegion.BAR2].size == MEM
    d.close()
    d.close()  # idempotent
    with pytest.raises(DeviceError) as exc:
        d.region_read(PciRegion.BAR0, 0, 4, 0.0)
    assert exc.value.errno == errno.EBADF
    for bad in (0, 3 << 12, 1 << 11):
        with pytest.raises(DeviceError):
            MigDev(mem_size=bad)
