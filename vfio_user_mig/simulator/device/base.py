"""The interface a vfio-user server drives to host an emulated device (sans-IO).

A :class:`Device` never touches a socket, an eventfd or a clock: the server passes the time in
(``now``, seconds as a float on the server's clock), delivers interrupts through an
:class:`IrqSink` it owns, resolves device-initiated DMA (:mod:`.dma`) and feeds DMA dirty logging
(:mod:`.dirtylog`).

Migration data (PROTOCOL.md section 4), as seen through :meth:`Device.mig_data_read`:

* in PRE_COPY (and PRE_COPY_P2P) a read shorter than ``max_size`` (possibly empty) means "caught
  up for now": more data may appear as the device or the guest changes device memory, and the
  VMM polls again;
* in STOP_COPY a short read ends the stream; every later read returns ``b""``.

:meth:`Device.mig_data_write` is valid only in RESUMING. Both raise :class:`DeviceError` with
``EINVAL`` in any other state (the server gates these too; the device defends itself).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

from vfio_user_mig.model.states import MigrationCaps, State
from vfio_user_mig.wire.record import Record, record

if TYPE_CHECKING:
    from vfio_user_mig.simulator.device.dirtylog import DirtyLog
    from vfio_user_mig.simulator.device.dma import DmaJob


class RegionFlag(enum.IntFlag):
    """``VFIO_REGION_INFO_FLAG_*`` bits a region reports."""

    READ = 1
    WRITE = 2
    MMAP = 4


class PciRegion(enum.IntEnum):
    """vfio-pci region indexes (``VFIO_PCI_*_REGION_INDEX``)."""

    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


#: ``VFIO_PCI_NUM_REGIONS``: a vfio-pci device reports at least this many regions.
PCI_NUM_REGIONS = 9


class IrqIndex(enum.IntEnum):
    """vfio-pci interrupt indexes (``VFIO_PCI_*_IRQ_INDEX``)."""

    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


class IrqFlag(enum.IntFlag):
    """``VFIO_IRQ_INFO_*`` bits an interrupt index reports."""

    EVENTFD = 1
    MASKABLE = 2
    AUTOMASKED = 4
    NORESIZE = 8


@record
class RegionSpec(Record):
    """One region as DEVICE_GET_REGION_INFO reports it.

    ``sparse_mmap`` lists the (offset, size) areas the client may mmap through ``fd`` (a file
    descriptor owned by the device: the server sends it with SCM_RIGHTS and must not close it;
    it stays valid until :meth:`Device.close`). ``type_subtype`` is the optional
    VFIO_REGION_INFO_CAP_TYPE pair.
    """

    index: int
    size: int
    flags: RegionFlag
    sparse_mmap: tuple[tuple[int, int], ...] = ()
    fd: int | None = None
    type_subtype: tuple[int, int] | None = None


@record
class IrqSpec(Record):
    """One interrupt index as DEVICE_GET_IRQ_INFO reports it."""

    index: int
    count: int
    flags: IrqFlag


class IrqSink(Protocol):
    """Where a device sends interrupts; the server signals the eventfd set with SET_IRQS.

    ``trigger`` must not raise when no eventfd is configured for (index, subindex): the
    interrupt is then lost, as on real hardware with the vector unconfigured.
    """

    def trigger(self, index: int, subindex: int) -> None: ...


class NullIrqSink:
    """An :class:`IrqSink` that drops every interrupt."""

    def trigger(self, index: int, subindex: int) -> None:
        """Drop the interrupt."""


class Device(ABC):
    """An emulated vfio-user device: what a server hosts and drives.

    Contracts common to every method: bad input raises :class:`DeviceError` (with an errno and a
    message naming what was wrong) and changes nothing; methods never block and never do I/O.
    """

    @property
    @abstractmethod
    def regions(self) -> tuple[RegionSpec, ...]:
        """The region table, indexed by region index (``regions[i].index == i``)."""

    @property
    @abstractmethod
    def irqs(self) -> tuple[IrqSpec, ...]:
        """The interrupt table, indexed by irq index."""

    @property
    @abstractmethod
    def migration_caps(self) -> MigrationCaps:
        """The migration capabilities (VFIO_DEVICE_FEATURE_MIGRATION)."""

    @property
    @abstractmethod
    def mig_state(self) -> State:
        """The migration state the device believes it is in (from :meth:`on_arc`)."""

    @property
    @abstractmethod
    def dirty_log(self) -> DirtyLog:
        """DMA dirty logging state (DMA_LOGGING_START/STOP/REPORT act on it)."""

    @abstractmethod
    def region_read(self, index: int, offset: int, count: int, now: float) -> bytes:
        """REGION_READ: exactly ``count`` bytes, or DeviceError(EINVAL) if out of range."""

    @abstractmethod
    def region_write(self, index: int, offset: int, data: bytes, now: float) -> None:
        """REGION_WRITE: all of ``data`` or nothing; DeviceError(EINVAL) if out of range."""

    @abstractmethod
    def on_arc(self, src: State, dst: State) -> None:
        """The Mealy action of the direct arc ``src -> dst``; raises ArcActionError on failure.

        After success the device is in ``dst``; after a failure with ``broken=False`` it is
        still in ``src``; with ``broken=True`` it is in ERROR with a defined (cleared) state.
        """

    @abstractmethod
    def mig_data_read(self, max_size: int) -> bytes:
        """MIG_DATA_READ: up to ``max_size`` bytes of the save stream (see module docstring)."""

    def mig_data_read_parts(self, max_size: int) -> list[bytes | memoryview]:
        """MIG_DATA_READ as the buffers its bytes are made of, which the server sends by
        scatter-gather without joining them; the server reads the save stream only through
        this. By default one part, :meth:`mig_data_read`'s bytes; a device whose stream is
        views of its own memory overrides it (and keeps :meth:`mig_data_read` equal to the
        parts joined)."""
        return [self.mig_data_read(max_size)]

    @abstractmethod
    def mig_data_write(self, data: bytes | memoryview) -> None:
        """MIG_DATA_WRITE: the next bytes of the restore stream (RESUMING only)."""

    @abstractmethod
    def take_dma_job(self) -> DmaJob | None:
        """The DMA job the device started since the last call, for the server to run.

        The server runs each job it takes to its end, or calls :meth:`abort_dma` when it
        cannot (client gone). Jobs the device aborts itself end at their next step.
        """

    def abort_dma(self) -> None:
        """Abort the DMA job in flight, if any (no-op for devices without DMA)."""
        return None

    @abstractmethod
    def tick(self, now: float) -> None:
        """Let timers that expired by ``now`` fire."""

    @abstractmethod
    def reset(self, *, keep_mig_state: bool = False) -> None:
        """DEVICE_RESET: registers, config space and device memory to power-on values.

        In-flight DMA is aborted. Unless ``keep_mig_state`` (libvfio-user's behaviour since
        2026), any save/restore session ends and the migration state becomes RUNNING (spec).
        """

    @abstractmethod
    def digest(self) -> str:
        """Hex digest of everything that migrates: equal digests mean equal device state."""

    @abstractmethod
    def close(self) -> None:
        """Release the memory fd and mappings; the device is unusable afterwards."""


def pci_irq_table(msi: int = 0, msi_flags: IrqFlag = IrqFlag.EVENTFD) -> tuple[IrqSpec, ...]:
    """The five vfio-pci interrupt indexes every profile reports: INTx 1, MSI ``msi``,
    MSI-X 0, ERR 1, REQ 1, all signalled by eventfd."""
    return (
        IrqSpec(IrqIndex.INTX, 1, IrqFlag.EVENTFD),
        IrqSpec(IrqIndex.MSI, msi, msi_flags),
        IrqSpec(IrqIndex.MSIX, 0, IrqFlag.EVENTFD),
        IrqSpec(IrqIndex.ERR, 1, IrqFlag.EVENTFD),
        IrqSpec(IrqIndex.REQ, 1, IrqFlag.EVENTFD),
    )


class BookkeepingDevice(Device):
    """A :class:`Device` keeping its capabilities, migration state and dirty log in
    ``_caps``, ``_state`` and ``_dirty`` (set by the subclass's ``__init__``)."""

    _caps: MigrationCaps
    _state: State
    _dirty: DirtyLog

    @property
    def migration_caps(self) -> MigrationCaps:
        return self._caps

    @property
    def mig_state(self) -> State:
        return self._state

    @property
    def dirty_log(self) -> DirtyLog:
        return self._dirty
