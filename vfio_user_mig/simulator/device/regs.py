"""BAR0 register file of migdev: the layout, declared once, and its access rules.

========  ====  =================  ======  =====================================================
offset    size  register           access  meaning
========  ====  =================  ======  =====================================================
0x00      4     ID                 RO      :data:`DEVICE_MAGIC`
0x04      4     VERSION            RO      register layout version (1)
0x08      4     CONTROL            RW      :class:`Control` bits (interrupt enables)
0x0C      4     STATUS             RW1C    :class:`Status` bits; BUSY is read-only
0x10      4     DOORBELL           WO      any write starts the DMA job described below
0x14      4     LAST_ERROR         RO      :class:`JobError` of the last job or doorbell
0x18      8     DMA_DEV_OFFSET     RW      offset in device memory (BAR2)
0x20      8     DMA_IOVA           RW      client IOVA
0x28      8     DMA_LEN            RW      bytes to copy (> 0)
0x30      4     DMA_DIR            RW      :class:`DmaDir`
0x34      4     DMA_MODE           RW      :class:`~.dma.DmaMode` (AUTO, MAPPED_ONLY, ...)
0x38      8     JOBS_DONE          RO      count of jobs completed without fault
0x40      8     FAULT_IOVA         RO      IOVA of the op that faulted last
0x48      8     TIMER_DEADLINE_US  RW      timer deadline in µs on the server clock; 0 = off
0x50      8     CLOCK_US           RO      the server clock in µs at the read (not migrated)
0x58      8     SCRATCH            RW      free for the guest
========  ====  =================  ======  =====================================================

BAR0 is :data:`BAR0_SIZE` bytes; unimplemented offsets read 0 and ignore writes. Reads of any
range are allowed; a write must lie within one register (any 1-8 bytes inside it) or within
unimplemented space, otherwise it is refused whole.
"""

from __future__ import annotations

import enum
import struct

from vfio_user_mig.wire.record import Record, record

BAR0_SIZE = 0x100
DEVICE_MAGIC = 0x5644474D  # b"MGDV" read little-endian
LAYOUT_VERSION = 1


class Access(enum.Enum):
    """How writes to a register behave."""

    RO = "ro"
    RW = "rw"
    RW1C = "rw1c"
    WO = "wo"


class Reg(enum.IntEnum):
    """Register offsets."""

    ID = 0x00
    VERSION = 0x04
    CONTROL = 0x08
    STATUS = 0x0C
    DOORBELL = 0x10
    LAST_ERROR = 0x14
    DMA_DEV_OFFSET = 0x18
    DMA_IOVA = 0x20
    DMA_LEN = 0x28
    DMA_DIR = 0x30
    DMA_MODE = 0x34
    JOBS_DONE = 0x38
    FAULT_IOVA = 0x40
    TIMER_DEADLINE_US = 0x48
    CLOCK_US = 0x50
    SCRATCH = 0x58


@record
class RegDef(Record):
    """One register: size in bytes, access, power-on value, whether it migrates."""

    reg: Reg
    size: int
    access: Access
    reset: int = 0
    migrates: bool = True


REGISTERS: tuple[RegDef, ...] = (
    RegDef(Reg.ID, 4, Access.RO, DEVICE_MAGIC, migrates=False),
    RegDef(Reg.VERSION, 4, Access.RO, LAYOUT_VERSION, migrates=False),
    RegDef(Reg.CONTROL, 4, Access.RW),
    RegDef(Reg.STATUS, 4, Access.RW1C),
    RegDef(Reg.DOORBELL, 4, Access.WO, migrates=False),
    RegDef(Reg.LAST_ERROR, 4, Access.RO),
    RegDef(Reg.DMA_DEV_OFFSET, 8, Access.RW),
    RegDef(Reg.DMA_IOVA, 8, Access.RW),
    RegDef(Reg.DMA_LEN, 8, Access.RW),
    RegDef(Reg.DMA_DIR, 4, Access.RW),
    RegDef(Reg.DMA_MODE, 4, Access.RW),
    RegDef(Reg.JOBS_DONE, 8, Access.RO),
    RegDef(Reg.FAULT_IOVA, 8, Access.RO),
    RegDef(Reg.TIMER_DEADLINE_US, 8, Access.RW),
    RegDef(Reg.CLOCK_US, 8, Access.RO, migrates=False),
    RegDef(Reg.SCRATCH, 8, Access.RW),
)
BY_REG: dict[Reg, RegDef] = {d.reg: d for d in REGISTERS}
MIGRATING: tuple[RegDef, ...] = tuple(d for d in REGISTERS if d.migrates)
#: Packed migrating registers, in table order (part of the REGS record).
MIGRATING_STRUCT = struct.Struct("<" + "".join("I" if d.size == 4 else "Q" for d in MIGRATING))


class Control(enum.IntFlag):
    """CONTROL bits."""

    IRQ_ON_JOB = 1 << 0
    """Interrupt when a DMA job completes (DONE or FAULT)."""
    IRQ_ON_TIMER = 1 << 1
    """Interrupt when the timer expires."""


class Status(enum.IntFlag):
    """STATUS bits; all but BUSY are write-one-to-clear."""

    BUSY = 1 << 0
    DONE = 1 << 1
    FAULT = 1 << 2
    REFUSED = 1 << 3
    ABORTED = 1 << 4
    TIMER = 1 << 5


class JobError(enum.IntEnum):
    """LAST_ERROR codes."""

    NONE = 0
    NOT_RUNNING = 1
    BUSY = 2
    BAD_DESCRIPTOR = 3
    BUS_MASTER_OFF = 4
    DMA_FAULT = 5
    ABORTED = 6
    BAD_REPLY = 7


class DmaDir(enum.IntEnum):
    """DMA_DIR values."""

    TO_CLIENT = 0
    """Device memory -> client memory (DMA writes)."""
    FROM_CLIENT = 1
    """Client memory -> device memory (DMA reads)."""


def find(offset: int) -> RegDef | None:
    """The register holding byte ``offset`` of BAR0, if any."""
    for d in REGISTERS:
        if d.reg <= offset < d.reg + d.size:
            return d
    return None
