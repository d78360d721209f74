"""``migdev``: an emulated PCI device with a DMA engine, device memory and live migration.

Regions (vfio-pci indexes): BAR0 = the register file of :mod:`.regs` (256 bytes, read/write);
BAR2 = device memory (default 16 MiB, a power of two), read/write and mmappable through a memfd
(one sparse-mmap area covering all of it); CONFIG = the config space of :mod:`.config`. The
other six vfio-pci regions exist with size 0. Interrupts: INTx (1) and MSI (1 vector), plus ERR
and REQ (1 each, never raised by the device); an interrupt goes to MSI when the MSI capability
is enabled, else to INTx unless the command register disables it.

DMA engine: writing DOORBELL while the device runs (RUNNING, RUNNING_P2P, PRE_COPY,
PRE_COPY_P2P), is idle and has bus mastering on, with a valid descriptor, sets STATUS.BUSY and
creates a job (:meth:`MigDev.take_dma_job`). The job first CHECKs the whole client range, then
copies in ops of at most ``dma_chunk`` bytes; it ends with STATUS.DONE (JOBS_DONE + 1) or
STATUS.FAULT (FAULT_IOVA, LAST_ERROR) and an interrupt if CONTROL.IRQ_ON_JOB. A refused doorbell
sets STATUS.REFUSED and LAST_ERROR. Leaving the running states, DEVICE_RESET and close abort an
in-flight job (STATUS.ABORTED): the job then ends at its next step without touching memory.

Migration (direct arcs of the kernel FSM, P2P ones included):

* entering the saving group (RUNNING->PRE_COPY, RUNNING_P2P->PRE_COPY_P2P, STOP->STOP_COPY)
  starts a :class:`~.session.SaveSession`; PRE_COPY*->STOP_COPY finishes it (rest of memory,
  REGS, END); leaving the group (PRE_COPY*->RUNNING*, STOP_COPY->STOP) discards it;
* STOP->RESUMING clears the device (power-on registers, zero memory) and starts a decoder;
  RESUMING->STOP checks the stream is complete and the digest matches; otherwise the device is
  cleared again and the arc fails with ``ArcActionError(EINVAL, broken=True)`` (ERROR).
"""

from __future__ import annotations

import errno as _errno
import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from typing import Protocol

from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.model.graph import running_states, saving_states, transition_graph
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
from vfio_user_mig.simulator.device.dma import IOVA_LIMIT, DmaFault, DmaJob, DmaMode, DmaOp
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.regs import (
    BAR0_SIZE,
    MIGRATING,
    MIGRATING_STRUCT,
    REGISTERS,
    Access,
    Control,
    DmaDir,
    JobError,
    Reg,
    Status,
    find,
)
from vfio_user_mig.simulator.device.session import SaveSession
from vfio_user_mig.simulator.device.stream import (
    END_PAYLOAD,
    MAX_RUN_PAGES,
    PAGE_CRC,
    PAGES_PREFIX,
    RECORD_HEADER,
    StreamError,
    StreamGeometry,
    header_payload,
    memory_fingerprint,
    page_crcs,
)
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
_ZERO_CHUNK = bytes(1 << 20)
_NO_STATUS = Status(0)
_DIGEST_HEAD = struct.Struct("<QI")


class SaveStream(Protocol):
    """What the device reads its save stream from (a :class:`SaveSession`)."""

    def read(self, max_size: int) -> bytes:
        """The next bytes of the stream (short: caught up for now, or ended)."""

    def stop_copy(self) -> None:
        """PRE_COPY -> STOP_COPY."""


@dataclass
class _Injected:
    errno: int
    broken: bool


@dataclass(frozen=True)
class _Descriptor:
    dev_offset: int
    iova: int
    length: int
    direction: DmaDir
    mode: DmaMode


class _Restorer:
    """The :class:`~.stream.RestoreSink` view of a device being restored."""

    def __init__(self, dev: MigDev) -> None:
        self._dev = dev

    def load_pages(self, first_page: int, data: memoryview) -> None:
        self._dev._load_pages(first_page, data)

    def load_regs(self, data: bytes) -> None:
        self._dev._load_regs(data)

    def restored_digest(self) -> bytes:
        return self._dev._stream_digest()


class MigDev(BookkeepingDevice):
    """The migdev device; see the module docstring. Starts in RUNNING."""

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
        self._injected: dict[tuple[State, State], _Injected] = {}
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
        return self._save if isinstance(self._save, SaveSession) else None

    def _new_save(self, *, precopy: bool) -> SaveStream:
        """The save stream of a session entering the saving group (a subclass may serve
        another source, e.g. :mod:`.memstream`)."""
        return SaveSession(
            self._mm, self._geo, self._regs_snapshot, self._digest_of, precopy=precopy
        )

    @property
    def restore_decoder(self) -> StreamDecoder | None:
        """The restore decoder in progress, if any (for inspection)."""
        return self._restore

    # ----- regions ------------------------------------------------------------------------
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

    # ----- DMA engine ---------------------------------------------------------------------
    def take_dma_job(self) -> DmaJob | None:
        job, self._pending_job = self._pending_job, None
        return job

    def abort_dma(self) -> None:
        """Abort the job in flight (STATUS.ABORTED); its generator ends at its next step."""
        self._abort_job()

    def _set_status(self, add: Status = _NO_STATUS, clear: Status = _NO_STATUS) -> None:
        self._regs[Reg.STATUS] = (self._regs[Reg.STATUS] & ~clear) | add

    def _refuse(self, why: JobError) -> None:
        self._set_status(Status.REFUSED)
        self._regs[Reg.LAST_ERROR] = why

    def _ring(self) -> None:
        if self._state not in RUNNING_STATES:
            return self._refuse(JobError.NOT_RUNNING)
        if self._regs[Reg.STATUS] & Status.BUSY:
            return self._refuse(JobError.BUSY)
        if not self._config.bus_master:
            return self._refuse(JobError.BUS_MASTER_OFF)
        r = self._regs
        length, dev_off, iova = r[Reg.DMA_LEN], r[Reg.DMA_DEV_OFFSET], r[Reg.DMA_IOVA]
        if (
            length == 0
            or dev_off + length > self._mem_size
            or iova + length > IOVA_LIMIT
            or r[Reg.DMA_DIR] not in DmaDir._value2member_map_
            or r[Reg.DMA_MODE] not in DmaMode._value2member_map_
        ):
            return self._refuse(JobError.BAD_DESCRIPTOR)
        desc = _Descriptor(dev_off, iova, length, DmaDir(r[Reg.DMA_DIR]), DmaMode(r[Reg.DMA_MODE]))
        self._job_seq += 1
        self._active_job = self._job_seq
        all_outcomes = Status.DONE | Status.FAULT | Status.REFUSED | Status.ABORTED
        self._set_status(Status.BUSY, clear=all_outcomes)
        self._regs[Reg.LAST_ERROR] = JobError.NONE
        self._pending_job = self._job(self._job_seq, desc)
        return None

    def _job(self, job_id: int, desc: _Descriptor) -> DmaJob:
        to_client = desc.direction is DmaDir.TO_CLIENT
        finished = False
        try:
            yield DmaOp.check(desc.iova, desc.length, write=to_client, mode=desc.mode)
            pos = 0
            while pos < desc.length:
                if self._active_job != job_id:
                    return
                n = min(self._dma_chunk, desc.length - pos)
                dev = desc.dev_offset + pos
                if to_client:
                    yield DmaOp.write(desc.iova + pos, self._mm[dev : dev + n], desc.mode)
                else:
                    reply = yield DmaOp.read(desc.iova + pos, n, desc.mode)
                    if self._active_job != job_id:
                        return
                    if not isinstance(reply, bytes | bytearray) or len(reply) != n:
                        finished = True
                        self._finish(job_id, JobError.BAD_REPLY, desc.iova + pos)
                        return
                    self._mm[dev : dev + n] = reply
                pos += n
            finished = True
            self._finish(job_id, JobError.NONE, 0)
        except DmaFault as fault:
            finished = True
            self._finish(job_id, JobError.DMA_FAULT, fault.iova)
        finally:
            if not finished and self._active_job == job_id:
                self._abort_job()

    def _finish(self, job_id: int, error: JobError, fault_iova: int) -> None:
        if self._active_job != job_id or self._closed:
            return
        self._active_job = None
        self._regs[Reg.LAST_ERROR] = error
        if error is JobError.NONE:
            self._regs[Reg.JOBS_DONE] = (self._regs[Reg.JOBS_DONE] + 1) & ((1 << 64) - 1)
            self._set_status(Status.DONE, clear=Status.BUSY)
        else:
            self._regs[Reg.FAULT_IOVA] = fault_iova
            self._set_status(Status.FAULT, clear=Status.BUSY)
        if self._regs[Reg.CONTROL] & Control.IRQ_ON_JOB:
            self._interrupt()

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

    def tick(self, now: float) -> None:
        deadline = self._regs[Reg.TIMER_DEADLINE_US]
        if self._closed or self._state not in RUNNING_STATES or deadline == 0:
            return
        if now * 1_000_000 >= deadline:
            self._regs[Reg.TIMER_DEADLINE_US] = 0
            self._set_status(Status.TIMER)
            if self._regs[Reg.CONTROL] & Control.IRQ_ON_TIMER:
                self._interrupt()

    # ----- state, digest ------------------------------------------------------------------
    def _regs_snapshot(self) -> bytes:
        return MIGRATING_STRUCT.pack(*(self._regs[d.reg] for d in MIGRATING)) + (
            self._config.snapshot()
        )

    def _digest_of(self, memory: bytes, regs: bytes) -> bytes:
        """A state digest: SHA-256 of the profile, geometry, REGS payload and ``memory``, a
        32-byte digest of device memory (nested, so the save side can build it as it sends)."""
        h = hashlib.sha256(PROFILE.encode())
        h.update(_DIGEST_HEAD.pack(self._mem_size, PAGE_SIZE))
        h.update(regs)
        h.update(memory)
        return h.digest()

    def _digest_bytes(self) -> bytes:
        """:meth:`digest`: over the SHA-256 of device memory (the strong, stream-independent
        digest tests and the migration driver compare)."""
        return self._digest_of(hashlib.sha256(self._mm).digest(), self._regs_snapshot())

    def _stream_digest(self) -> bytes:
        """The END digest of the stream (format 2): over the
        :func:`~.stream.memory_fingerprint` of device memory (the SHA-256 of its page-CRC
        table), computed here from the restored memory itself."""
        with memoryview(self._mm) as mem:
            table = page_crcs(mem, PAGE_SIZE)
        return self._digest_of(memory_fingerprint(table), self._regs_snapshot())

    def digest(self) -> str:
        if self._closed:
            raise DeviceError("digest: device is closed", _errno.EBADF)
        return self._digest_bytes().hex()

    def _power_on(self) -> None:
        """Registers, config space and memory to power-on values; no job in flight."""
        self._abort_job()
        self._regs = {d.reg: d.reset for d in REGISTERS}
        self._config.reset()
        for off in range(0, self._mem_size, len(_ZERO_CHUNK)):
            n = min(len(_ZERO_CHUNK), self._mem_size - off)
            self._mm[off : off + n] = _ZERO_CHUNK[:n]

    def reset(self, *, keep_mig_state: bool = False) -> None:
        if self._closed:
            raise DeviceError("DEVICE_RESET: device is closed", _errno.EBADF)
        self._power_on()
        if not keep_mig_state:
            self._save = None
            self._restore = None
            self._state = State.RUNNING

    def close(self) -> None:
        if self._closed:
            return
        self._abort_job()
        self._closed = True
        self._save = None
        self._restore = None
        self._mm.close()
        os.close(self._fd)

    # ----- restore sink -------------------------------------------------------------------
    def _load_pages(self, first_page: int, data: memoryview) -> None:
        a = first_page * PAGE_SIZE
        self._mm[a : a + len(data)] = data

    def _load_regs(self, data: bytes) -> None:
        values = MIGRATING_STRUCT.unpack_from(data)
        regs = dict(zip((d.reg for d in MIGRATING), values, strict=True))
        if regs[Reg.STATUS] & Status.BUSY:
            raise StreamError("REGS: STATUS has BUSY set (a stopped device has no job)")
        try:
            self._config.load(data[MIGRATING_STRUCT.size :])
        except DeviceError as exc:
            raise StreamError(f"REGS: {exc}") from None
        self._regs.update(regs)

    # ----- migration ----------------------------------------------------------------------
    def inject_arc_failure(
        self, src: State, dst: State, *, errno: int = _errno.EIO, broken: bool = False
    ) -> None:
        """Make the next ``on_arc(src, dst)`` fail with ``errno`` before doing anything.

        With ``broken`` the device is cleared to power-on values and goes to ERROR.
        """
        self._injected[(State(src), State(dst))] = _Injected(errno, broken)

    def on_arc(self, src: State, dst: State) -> None:
        arc = f"{State(src).name} -> {State(dst).name}"
        if self._closed:
            raise ArcActionError(f"{arc}: device is closed", _errno.EBADF)
        if src != self._state:
            raise ArcActionError(f"{arc}: device is in {self._state.name}", _errno.EINVAL)
        if not transition_graph(self._caps).has_edge(src, dst):
            raise ArcActionError(f"{arc}: not a direct arc of this device", _errno.EINVAL)
        injected = self._injected.pop((src, dst), None)
        if injected is not None:
            if injected.broken:
                self._to_error()
            raise ArcActionError(f"{arc}: injected failure", injected.errno, broken=injected.broken)
        if src in RUNNING_STATES and dst not in RUNNING_STATES:
            self._abort_job()
        if dst in SAVING_STATES and src not in SAVING_STATES:
            self._save = self._new_save(precopy=dst in PRECOPY_STATES)
        elif src in PRECOPY_STATES and dst is State.STOP_COPY and self._save is not None:
            self._save.stop_copy()
        elif src in SAVING_STATES and dst not in SAVING_STATES:
            self._save = None
        if dst is State.RESUMING:
            self._power_on()
            self._restore = StreamDecoder(self._geo, _Restorer(self))
        elif src is State.RESUMING:
            decoder, self._restore = self._restore, None
            try:
                if decoder is None:
                    raise StreamError("no restore in progress")
                decoder.finish()
            except StreamError as exc:
                self._to_error()
                raise ArcActionError(f"{arc}: {exc}", _errno.EINVAL, broken=True) from exc
        self._state = State(dst)

    def _to_error(self) -> None:
        self._power_on()
        self._save = None
        self._restore = None
        self._state = State.ERROR

    def pending_bytes(self) -> int:
        """Bytes the device would still send if switched to STOP_COPY now (the answer to the
        experimental MIG_DATA_SIZE feature, the kernel's ``stop_copy_length``).

        In PRE_COPY: the record being read (what is left of it), HEADER if not sent yet, the
        pages the shadow reports as never sent or changed since sent (with their page CRCs),
        framed in PAGES records (runs of consecutive pages, at most ``MAX_RUN_PAGES`` each and
        never across a multiple of ``MAX_RUN_PAGES``, as the final pass cuts them), then REGS
        and END. Exact for the content at the time of the call; the guest may dirty
        more before the switch. In STOP_COPY the same, so an upper bound (REGS and END are
        counted until the stream ended), 0 once it ended. Outside the saving group (or with a
        save stream not built on the shadow), a whole stream: an upper bound.
        """
        if self._closed:
            raise DeviceError("pending_bytes: device is closed", _errno.EBADF)
        rec = RECORD_HEADER.size
        tail = rec + self._geo.regs_size + rec + END_PAYLOAD.size
        ps = self._geo.page_size
        header = rec + len(header_payload(self._geo))
        session = self.save_session
        if self._state in SAVING_STATES and session is not None:
            encoder = session.encoder
            if encoder.ended:
                return 0
            pages = records = run = 0
            last = -2
            for page in session.tracker.changed():
                pages += 1
                joins = page == last + 1 and run < MAX_RUN_PAGES and page % MAX_RUN_PAGES
                run = run + 1 if joins else 1
                if run == 1:
                    records += 1
                last = page
            unsent_header = 0 if encoder.records else header
            return (encoder.buffered + unsent_header + pages * (ps + PAGE_CRC.size)
                    + records * (rec + PAGES_PREFIX.size) + tail)
        n = self._geo.n_pages
        records = -(-n // MAX_RUN_PAGES)
        return header + n * (ps + PAGE_CRC.size) + records * (rec + PAGES_PREFIX.size) + tail

    def mig_data_read(self, max_size: int) -> bytes:
        if self._closed:
            raise DeviceError("MIG_DATA_READ: device is closed", _errno.EBADF)
        if self._state not in SAVING_STATES or self._save is None:
            raise DeviceError(f"MIG_DATA_READ in {self._state.name}: not a saving state")
        if max_size < 0:
            raise DeviceError(f"MIG_DATA_READ: size {max_size} is negative")
        if max_size == 0:
            return b""  # POSIX-like: a zero-length read neither reads nor ends the stream
        return self._save.read(max_size)

    def mig_data_write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise DeviceError("MIG_DATA_WRITE: device is closed", _errno.EBADF)
        if self._state is not State.RESUMING or self._restore is None:
            raise DeviceError(f"MIG_DATA_WRITE in {self._state.name}: not RESUMING")
        self._restore.feed(data)
