"""``migdev``'s region access (:mod:`.migdev` describes the regions): bounds checks, the
BAR0 register file (read image, per-register write semantics, DOORBELL), device memory and
config space.
"""

from __future__ import annotations

import errno as _errno

from vfio_user_mig.simulator.device.base import (
    PciRegion,
    RegionSpec,
)
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.migdev_dma import MigDevDma
from vfio_user_mig.simulator.device.regs import (
    BAR0_SIZE,
    REGISTERS,
    Access,
    Reg,
    Status,
    find,
)


class MigDevRegions(MigDevDma):
    """REGION_READ/REGION_WRITE of a migdev device."""

    def _check_access(self, index: int, offset: int, count: int, what: str) -> RegionSpec:
        if self._closed:
            raise DeviceError(f"{what}: device is closed", _errno.EBADF)
        if not 0 <= index < len(self._regions) or self._regions[index].size == 0:
            raise DeviceError(f"{what}: no region {index}")
        spec = self._regions[index]
        if offset < 0 or count < 0 or offset + count > spec.size:
            raise DeviceError(
                f"{what}: region {index} [{offset:#x}, +{count:#x}) outside its {spec.size:#x}"
            )
        return spec

    def region_read(self, index: int, offset: int, count: int, now: float) -> bytes:
        self._check_access(index, offset, count, "REGION_READ")
        if index == PciRegion.BAR0:
            return self._bar0_image(now)[offset : offset + count]
        if index == PciRegion.CONFIG:
            return self._config.read(offset, count)
        return self._mm[offset : offset + count]

    def region_write(self, index: int, offset: int, data: bytes, now: float) -> None:
        self._check_access(index, offset, len(data), "REGION_WRITE")
        if index == PciRegion.BAR0:
            self._bar0_write(offset, bytes(data))
        elif index == PciRegion.CONFIG:
            self._config.write(offset, data)
        else:
            self._mm[offset : offset + len(data)] = data

    def _bar0_image(self, now: float) -> bytes:
        image = bytearray(BAR0_SIZE)
        for d in REGISTERS:
            value = self._regs[d.reg]
            if d.reg is Reg.CLOCK_US:
                value = max(int(now * 1_000_000), 0)
            elif d.access is Access.WO:
                value = 0
            image[d.reg : d.reg + d.size] = (value & ((1 << (8 * d.size)) - 1)).to_bytes(
                d.size, "little"
            )
        return bytes(image)

    def _bar0_write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        first, last = find(offset), find(offset + len(data) - 1)
        inside = {find(i) for i in range(offset, offset + len(data))}
        if len(inside) > 1:
            raise DeviceError(
                f"REGION_WRITE: BAR0 [{offset:#x}, +{len(data)}) spans more than one register"
            )
        if first is None or last is None:
            return  # unimplemented space: ignored
        shift = 8 * (offset - first.reg)
        written = int.from_bytes(data, "little") << shift
        mask = ((1 << (8 * len(data))) - 1) << shift
        old = self._regs[first.reg]
        if first.access is Access.RW:
            self._regs[first.reg] = (old & ~mask) | written
        elif first.access is Access.RW1C:
            self._regs[first.reg] = old & ~(written & ~Status.BUSY)
        elif first.access is Access.WO:
            self._ring()

__all__ = ["MigDevRegions"]
