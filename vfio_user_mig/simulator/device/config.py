"""PCI configuration space of migdev (type 0 header + one MSI capability), 256 bytes.

Every field is declared once in :data:`FIELDS` with its power-on value and its writable-bit
mask; writes merge through the mask, so writes to read-only bits are ignored as PCI does, and
BAR sizing (write all ones, read back) reports each BAR's size.
"""

from __future__ import annotations

import enum
import functools

from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.wire.record import Record, record

CONFIG_SIZE = 256

VENDOR_ID = 0x1D1D
DEVICE_ID = 0x6D69
SUBSYS_VENDOR_ID = 0x1D1D
SUBSYS_ID = 0x0001
REVISION = 0x01
CLASS_CODE = 0x088000  # base 0x08 system peripheral, sub-class 0x80 other
MSI_CAP = 0x50


class Command(enum.IntFlag):
    """Command register bits the device implements."""

    MEMORY = 1 << 1
    BUS_MASTER = 1 << 2
    INTX_DISABLE = 1 << 10


class Off(enum.IntEnum):
    """Offsets of the fields the device looks at."""

    VENDOR_ID = 0x00
    DEVICE_ID = 0x02
    COMMAND = 0x04
    STATUS = 0x06
    REVISION = 0x08
    CLASS_CODE = 0x09
    HEADER_TYPE = 0x0E
    BAR0 = 0x10
    BAR2_LO = 0x18
    BAR2_HI = 0x1C
    SUBSYS_VENDOR_ID = 0x2C
    SUBSYS_ID = 0x2E
    CAP_PTR = 0x34
    INTERRUPT_LINE = 0x3C
    INTERRUPT_PIN = 0x3D
    MSI_ID = MSI_CAP
    MSI_NEXT = MSI_CAP + 1
    MSI_CONTROL = MSI_CAP + 2
    MSI_ADDRESS = MSI_CAP + 4
    MSI_DATA = MSI_CAP + 8


@record
class Field(Record):
    """One config-space field: offset, size, power-on value, writable bits."""

    offset: Off
    size: int
    value: int
    wmask: int = 0


def fields(bar0_size: int, bar2_size: int) -> tuple[Field, ...]:
    """The field table for the given BAR sizes (powers of two)."""
    bar2_mask = ~(bar2_size - 1) & ((1 << 64) - 1)
    return (
        Field(Off.VENDOR_ID, 2, VENDOR_ID),
        Field(Off.DEVICE_ID, 2, DEVICE_ID),
        Field(Off.COMMAND, 2, 0, int(Command.MEMORY | Command.BUS_MASTER | Command.INTX_DISABLE)),
        Field(Off.STATUS, 2, 0x0010),  # capabilities list present
        Field(Off.REVISION, 1, REVISION),
        Field(Off.CLASS_CODE, 3, CLASS_CODE),
        Field(Off.HEADER_TYPE, 1, 0),
        Field(Off.BAR0, 4, 0x0, ~(bar0_size - 1) & 0xFFFFFFF0),  # 32-bit memory BAR
        Field(Off.BAR2_LO, 4, 0xC, bar2_mask & 0xFFFFFFF0),  # 64-bit prefetchable memory BAR
        Field(Off.BAR2_HI, 4, 0x0, bar2_mask >> 32),
        Field(Off.SUBSYS_VENDOR_ID, 2, SUBSYS_VENDOR_ID),
        Field(Off.SUBSYS_ID, 2, SUBSYS_ID),
        Field(Off.CAP_PTR, 1, MSI_CAP),
        Field(Off.INTERRUPT_LINE, 1, 0, 0xFF),
        Field(Off.INTERRUPT_PIN, 1, 1),  # INTA#
        Field(Off.MSI_ID, 1, 0x05),
        Field(Off.MSI_NEXT, 1, 0),
        Field(Off.MSI_CONTROL, 2, 0, 0x0001),  # enable; one vector, 32-bit address
        Field(Off.MSI_ADDRESS, 4, 0, 0xFFFFFFFC),
        Field(Off.MSI_DATA, 2, 0, 0xFFFF),
    )


@functools.lru_cache(maxsize=16)
def _images(bar0_size: int, bar2_size: int) -> tuple[bytes, bytes]:
    """(power-on bytes, writable-bit masks) of the 256 bytes, from :func:`fields` (made once
    per BAR sizes: every device of a campaign run has the same)."""
    init = bytearray(CONFIG_SIZE)
    wmask = bytearray(CONFIG_SIZE)
    for f in fields(bar0_size, bar2_size):
        init[f.offset : f.offset + f.size] = f.value.to_bytes(f.size, "little")
        wmask[f.offset : f.offset + f.size] = f.wmask.to_bytes(f.size, "little")
    return bytes(init), bytes(wmask)


class ConfigSpace:
    """256 bytes of config space with per-byte writable masks."""

    def __init__(self, bar0_size: int, bar2_size: int) -> None:
        self._init, self._wmask = _images(bar0_size, bar2_size)
        self._data = bytearray(self._init)

    def reset(self) -> None:
        """Back to power-on values."""
        self._data[:] = self._init

    def read(self, offset: int, count: int) -> bytes:
        """Bytes [offset, offset+count); bounds are the caller's job."""
        return bytes(self._data[offset : offset + count])

    def write(self, offset: int, data: bytes) -> None:
        """Merge ``data`` through the writable masks; read-only bits keep their value."""
        for i, byte in enumerate(data, offset):
            mask = self._wmask[i]
            self._data[i] = (self._data[i] & ~mask) | (byte & mask)

    def snapshot(self) -> bytes:
        """The 256 bytes, for migration."""
        return bytes(self._data)

    def load(self, data: bytes) -> None:
        """Restore a snapshot; DeviceError(EINVAL) if a read-only bit differs (other device)."""
        if len(data) != CONFIG_SIZE:
            raise DeviceError(f"config space snapshot is {len(data)} bytes, not {CONFIG_SIZE}")
        for i, (got, init, mask) in enumerate(zip(data, self._init, self._wmask, strict=True)):
            if (got ^ init) & ~mask & 0xFF:
                raise DeviceError(f"config space byte {i:#x} differs in read-only bits")
        self._data[:] = data

    def u16(self, offset: int) -> int:
        """A 16-bit field."""
        return int.from_bytes(self._data[offset : offset + 2], "little")

    @property
    def bus_master(self) -> bool:
        """Command.BUS_MASTER set: the device may DMA."""
        return bool(self.u16(Off.COMMAND) & Command.BUS_MASTER)

    @property
    def intx_disabled(self) -> bool:
        """Command.INTX_DISABLE set."""
        return bool(self.u16(Off.COMMAND) & Command.INTX_DISABLE)

    @property
    def msi_enabled(self) -> bool:
        """MSI control enable bit set."""
        return bool(self.u16(Off.MSI_CONTROL) & 1)
