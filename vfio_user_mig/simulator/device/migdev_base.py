"""``migdev`` (:mod:`.migdev` describes the device): its geometry and FSM constants, and
:class:`MigDevBase`, the state every part of the device shares -- registers, config space,
device memory (a memfd), the save/restore objects -- with the tables the server reads
(regions, IRQs), the status and interrupt helpers, the state digest, power-on, reset and close.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import gc
import mmap
import os
import struct
from typing import TYPE_CHECKING, Protocol

from vfio_user_mig.model.graph import running_states, saving_states
from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps, State
from vfio_user_mig.simulator.device.base import (
    PCI_NUM_REGIONS,
    BookkeepingDevice,
    IrqFlag,
    IrqIndex,
    IrqSink,
    IrqSpec,
    NullIrqSink,
    PciRegion,
    RegionFlag,
    RegionSpec,
    pci_irq_table,
)
from vfio_user_mig.simulator.device.config import CONFIG_SIZE, ConfigSpace
from vfio_user_mig.simulator.device.dirtylog import DirtyLog
from vfio_user_mig.simulator.device.dma import DmaJob
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.regs import (
    BAR0_SIZE,
    MIGRATING,
    MIGRATING_STRUCT,
    REGISTERS,
    JobError,
    Reg,
    Status,
)
from vfio_user_mig.simulator.device.stream import (
    StreamGeometry,
    memory_fingerprint,
    page_fingerprints,
    sha256,
)
from vfio_user_mig.wire.record import Record, record

if TYPE_CHECKING:  # imported when a save or restore starts (a server starts without them)
    from vfio_user_mig.simulator.device.session import SaveSession
    from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder

PROFILE = "migdev"
PAGE_SIZE = 4096
DEFAULT_MEM_SIZE = 16 << 20
MAX_MEM_SIZE = 1 << 34
DEFAULT_DMA_CHUNK = 64 << 10
#: Bytes of the REGS record: migrating BAR0 registers, then config space.
REGS_SIZE = MIGRATING_STRUCT.size + CONFIG_SIZE

#: FSM facts come from the model (the one declaration): which states run, which save.
RUNNING_STATES = running_states()
SAVING_STATES = saving_states()
PRECOPY_STATES = RUNNING_STATES & SAVING_STATES
ZERO_CHUNK = bytes(1 << 20)
NO_STATUS = Status(0)
DIGEST_HEAD = struct.Struct("<QI")


class SaveStream(Protocol):
    """What the device reads its save stream from (a :class:`SaveSession`)."""

    def read(self, max_size: int) -> bytes:
        """The next bytes of the stream (short: caught up for now, or ended)."""

    def stop_copy(self) -> None:
        """PRE_COPY -> STOP_COPY."""



@record
class Injected(Record):
    """A failure :meth:`~.migdev.MigDev.inject_arc_failure` armed for one arc."""

    errno: int
    broken: bool


class MigDevBase(BookkeepingDevice):
    """The shared state of a migdev device (see module docstring); :class:`~.migdev.MigDev`
    is the device."""

    def __init__(
        self,
        *,
        mem_size: int = DEFAULT_MEM_SIZE,
        irq_sink: IrqSink | None = None,
        caps: MigrationCaps = VFIO_USER_CAPS,
        dma_chunk: int = DEFAULT_DMA_CHUNK,
    ) -> None:
        if not PAGE_SIZE <= mem_size <= MAX_MEM_SIZE or mem_size & (mem_size - 1):
            raise DeviceError(f"mem_size {mem_size:#x}: not a power of two in [4 KiB, 16 GiB]")
        if not caps & MigrationCaps.STOP_COPY:
            raise DeviceError("migration caps must include STOP_COPY")
        if dma_chunk <= 0:
            raise DeviceError(f"dma_chunk {dma_chunk} must be positive")
        self._mem_size = mem_size
        self._sink: IrqSink = irq_sink if irq_sink is not None else NullIrqSink()
        self._caps = caps
        self._dma_chunk = dma_chunk
        self._fd = os.memfd_create("migdev-bar2", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, mem_size)
            self._mm = mmap.mmap(self._fd, mem_size)
        except OSError:
            os.close(self._fd)
            raise
        self._geo = StreamGeometry(PROFILE, PAGE_SIZE, mem_size, REGS_SIZE)
        self._config = ConfigSpace(BAR0_SIZE, mem_size)
        self._regs: dict[Reg, int] = {d.reg: d.reset for d in REGISTERS}
        self._state = State.RUNNING
        self._save: SaveStream | None = None
        self._restore: StreamDecoder | None = None
        self._dirty = DirtyLog()
        self._job_seq = 0
        self._active_job: int | None = None
        self._pending_job: DmaJob | None = None
        self._injected: dict[tuple[State, State], Injected] = {}
        self._closed = False
        self._regions = self._region_table()

    # ----- tables -------------------------------------------------------------------------
    def _region_table(self) -> tuple[RegionSpec, ...]:
        rw = RegionFlag.READ | RegionFlag.WRITE
        table = [RegionSpec(i, 0, RegionFlag(0)) for i in range(PCI_NUM_REGIONS)]
        table[PciRegion.BAR0] = RegionSpec(PciRegion.BAR0, BAR0_SIZE, rw)
        table[PciRegion.BAR2] = RegionSpec(
            PciRegion.BAR2,
            self._mem_size,
            rw | RegionFlag.MMAP,
            sparse_mmap=((0, self._mem_size),),
            fd=self._fd,
        )
        table[PciRegion.CONFIG] = RegionSpec(PciRegion.CONFIG, CONFIG_SIZE, rw)
        return tuple(table)

    @property
    def regions(self) -> tuple[RegionSpec, ...]:
        return self._regions

    @property
    def irqs(self) -> tuple[IrqSpec, ...]:
        return pci_irq_table(msi=1, msi_flags=IrqFlag.EVENTFD | IrqFlag.NORESIZE)

    @property
    def mem_size(self) -> int:
        """Bytes of device memory (BAR2)."""
        return self._mem_size

    @property
    def page_size(self) -> int:
        """Migration page size."""
        return PAGE_SIZE

    @property
    def memory_fd(self) -> int:
        """The memfd behind BAR2 (owned by the device)."""
        return self._fd

    @property
    def save_session(self) -> SaveSession | None:
        """The save session in progress, if any (for inspection)."""
        from vfio_user_mig.simulator.device.session import SaveSession

        return self._save if isinstance(self._save, SaveSession) else None

    def _new_save(self, *, precopy: bool) -> SaveStream:
        """The save stream of a session entering the saving group (a subclass may serve
        another source, e.g. :mod:`.memstream`)."""
        from vfio_user_mig.simulator.device.session import SaveSession

        return SaveSession(
            self._mm, self._geo, self._regs_snapshot, self._digest_of, precopy=precopy
        )

    def _drop_save(self) -> None:
        """End the save session (if any): it lets go of device memory at once."""
        save, self._save = self._save, None
        close = getattr(save, "close", None)
        if close is not None:
            close()

    @property
    def restore_decoder(self) -> StreamDecoder | None:
        """The restore decoder in progress, if any (for inspection)."""
        return self._restore

    def _set_status(self, add: Status = NO_STATUS, clear: Status = NO_STATUS) -> None:
        self._regs[Reg.STATUS] = (self._regs[Reg.STATUS] & ~clear) | add

    def _abort_job(self) -> None:
        self._pending_job = None
        if self._active_job is not None:
            self._active_job = None
            self._regs[Reg.LAST_ERROR] = JobError.ABORTED
            self._set_status(Status.ABORTED, clear=Status.BUSY)

    def _interrupt(self) -> None:
        if self._config.msi_enabled:
            self._sink.trigger(IrqIndex.MSI, 0)
        elif not self._config.intx_disabled:
            self._sink.trigger(IrqIndex.INTX, 0)
    # ----- state, digest ------------------------------------------------------------------
    def _regs_snapshot(self) -> bytes:
        return MIGRATING_STRUCT.pack(*(self._regs[d.reg] for d in MIGRATING)) + (
            self._config.snapshot()
        )

    def _digest_of(self, memory: bytes, regs: bytes) -> bytes:
        """A state digest: SHA-256 of the profile, geometry, REGS payload and ``memory``, a
        32-byte digest of device memory (nested, so the save side can build it as it sends)."""
        h = sha256(PROFILE.encode())
        h.update(DIGEST_HEAD.pack(self._mem_size, PAGE_SIZE))
        h.update(regs)
        h.update(memory)
        return h.digest()

    def _digest_bytes(self) -> bytes:
        """:meth:`digest`: over the SHA-256 of device memory (the strong, stream-independent
        digest tests and the migration driver compare)."""
        return self._digest_of(sha256(self._mm).digest(), self._regs_snapshot())

    def _page_fingerprints(self, first_page: int, count: int) -> bytes:
        """:func:`~.stream.page_fingerprints` of ``count`` pages of device memory from
        ``first_page``."""
        a = first_page * PAGE_SIZE
        with memoryview(self._mm) as mem:
            return page_fingerprints(mem[a : a + count * PAGE_SIZE], PAGE_SIZE)

    def _stream_digest(self, fp_table: bytes) -> bytes:
        """The END digest of the stream (format 3): over the
        :func:`~.stream.memory_fingerprint` of device memory (the SHA-256 of its
        page-fingerprint table ``fp_table``, :meth:`_page_fingerprints` of every page) and the
        registers."""
        return self._digest_of(memory_fingerprint(fp_table), self._regs_snapshot())

    def digest(self) -> str:
        if self._closed:
            raise DeviceError("digest: device is closed", _errno.EBADF)
        return self._digest_bytes().hex()

    def _power_on(self) -> None:
        """Registers, config space and memory to power-on values; no job in flight."""
        self._abort_job()
        self._regs = {d.reg: d.reset for d in REGISTERS}
        self._config.reset()
        for off in range(0, self._mem_size, len(ZERO_CHUNK)):
            n = min(len(ZERO_CHUNK), self._mem_size - off)
            self._mm[off : off + n] = ZERO_CHUNK[:n]

    def reset(self, *, keep_mig_state: bool = False) -> None:
        if self._closed:
            raise DeviceError("DEVICE_RESET: device is closed", _errno.EBADF)
        self._power_on()
        if not keep_mig_state:
            self._drop_save()
            self._restore = None
            self._state = State.RUNNING

    def close(self) -> None:
        if self._closed:
            return
        self._abort_job()
        self._closed = True
        self._drop_save()
        self._restore = None
        try:
            self._mm.close()
        except BufferError:  # views of memory sent in STOP_COPY, held by a reference cycle
            gc.collect()  # (e.g. an exception's traceback of a failed send): free them
            with contextlib.suppress(BufferError):  # still held: unmapped when freed
                self._mm.close()
        os.close(self._fd)

__all__ = [
    "DEFAULT_DMA_CHUNK",
    "DEFAULT_MEM_SIZE",
    "MAX_MEM_SIZE",
    "PAGE_SIZE",
    "PRECOPY_STATES",
    "PROFILE",
    "REGS_SIZE",
    "RUNNING_STATES",
    "SAVING_STATES",
    "MigDevBase",
    "SaveStream",
]
