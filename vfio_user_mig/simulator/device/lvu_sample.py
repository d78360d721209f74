"""``lvu-sample``: a device that behaves like libvfio-user's ``samples/server`` (INTEROP.md).

Its purpose is interoperability: libvfio-user's C ``samples/client`` runs its whole flow,
migration included, against a server hosting this profile, as source and as destination.

Regions (vfio-pci indexes; the other five have size 0):

======  ======  ==========  =========================================================
index   size    flags       contents
======  ======  ==========  =========================================================
BAR0    8       RW          a ``time_t`` deadline (signed 64-bit Unix seconds)
BAR1    0x4000  RW, MMAP    device memory (a 0x3000-byte memfd; the region is a power of two
                            as PCI requires); sparse mmap (0, 0x1000), (0x2000, 0x1000);
                            REGION_READ/WRITE anywhere in the first 0x3000 bytes
CONFIG  256     RW          vendor 0xdead, device 0xbeef, subsystem 0xcafe/0xbabe
======  ======  ==========  =========================================================

BAR0 accepts only 8-byte accesses at offset 0 (else EINVAL). A write stores the deadline; in
RUNNING it also arms the timer as the sample's ``setitimer`` does: ``delta = deadline -
floor(unix_now)`` seconds from now; ``delta < 0`` refuses the write (EINVAL, nothing stored),
``delta == 0`` disarms. A read returns ``floor(unix_now) - deadline`` (the sample returns the
elapsed time, not the value written). BAR1 reads honour the offset (the sample's BAR1 read
ignores it, a bug no client relies on).

Timer: when it expires in a running state (RUNNING, PRE_COPY) the device raises INTx 0 and
starts one DMA job, the sample's ``do_dma_io`` twice: on the *second* mapped DMA region directly
through its fd-backed mapping (``MAPPED_ONLY``), then on the *first* one with DMA_WRITE/DMA_READ
messages (``MESSAGE_ONLY``); each writes 4 x 1024 bytes filled with ``A``, ``B``, ``C``, ``D``
and reads the 4 KiB back in two 2048-byte reads that must match. The device cannot see the DMA
map, so the job finds "the first and second region" (the sample's registration slots 0 and 1,
which are the two lowest IOVAs for a client mapping in increasing order, as samples/client
does) by probing page-aligned IOVAs with CHECK ops below :data:`PROBE_LIMIT`. Outcomes are
counted in :attr:`LvuSample.dma_runs` and :attr:`LvuSample.dma_errors` (the sample exits on
any DMA failure; this device records it and carries on).

Time: the device never reads a clock. Unix time is ``now + unix_offset``; the registry factory
sets ``unix_offset`` from the real clocks for a server whose clock is ``time.monotonic`` (the
IO pump's default). Tests may change :attr:`LvuSample.unix_offset`.

Migration (capabilities STOP_COPY | PRE_COPY, libvfio-user's; no P2P). The stream is raw, no
framing, as the sample's: PRE_COPY sends BAR1 as it is at read time (0x3000 bytes, then empty
reads: "caught up"); STOP_COPY sends BAR1 then BAR0's 8-byte deadline (0x3008 bytes, then the
stream has ended). Entering PRE_COPY or STOP_COPY starts the count from 0, as the sample does.
RESUMING clears the device and accepts exactly 0x3008 bytes (more is EINVAL, nothing taken);
RESUMING -> STOP with fewer puts the device in ERROR (``ArcActionError(EINVAL, broken=True)``),
where the sample would abort on the next SET RUNNING. Timer versus states: leaving the running
states disarms the timer (the sample disarms only on STOP_COPY and would fire in STOP); entering
RUNNING re-arms it from BAR0 like the sample, and fails with EINVAL (device left in the source
state) when the deadline is in the past, except that a zero deadline (never written) means no
timer (the sample would fail). The sample's assertions on the byte count at STOP_COPY -> STOP
and at RUNNING are not reproduced: a VMM may abandon a migration.

DEVICE_RESET: BAR0 = 0, BAR1 zeroed, timer off, config space to power-on values, DMA aborted.
"""

from __future__ import annotations

import errno as _errno
import math
import mmap
import os
import struct
import time
from collections.abc import Generator

from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.model.graph import is_direct_arc, running_states, saving_states
from vfio_user_mig.model.states import VFIO_USER_CAPS, MigrationCaps, State
from vfio_user_mig.simulator.device.base import (
    PCI_NUM_REGIONS,
    BookkeepingDevice,
    Device,
    IrqIndex,
    IrqSink,
    IrqSpec,
    NullIrqSink,
    PciRegion,
    RegionFlag,
    RegionSpec,
    pci_irq_table,
)
from vfio_user_mig.simulator.device.dirtylog import DirtyLog
from vfio_user_mig.simulator.device.dma import DmaFault, DmaJob, DmaMode, DmaOp
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.stream import sha256

PROFILE = "lvu-sample"
BAR0_SIZE = 8
BAR1_SIZE = 0x3000
#: BAR1's region size: the next power of two (PCI: a BAR's size is a power of two; libvfio-user
#: refuses to register 0x3000). Only the first BAR1_SIZE bytes hold data; accesses past them
#: are refused (EINVAL), as the sample's ``bar1_access`` does.
BAR1_REGION_SIZE = 0x4000
BAR1_SPARSE = ((0x0000, 0x1000), (0x2000, 0x1000))
CONFIG_SIZE = 256
VENDOR_ID, DEVICE_ID, SUBSYS_VENDOR_ID, SUBSYS_ID = 0xDEAD, 0xBEEF, 0xCAFE, 0xBABE
#: Bytes of the STOP_COPY stream (and of a complete restore): BAR1 then BAR0.
STOP_COPY_SIZE = BAR1_SIZE + BAR0_SIZE
PAGE_SIZE = 4096
#: The DMA job looks for mapped regions among IOVAs [0, PROBE_LIMIT).
PROBE_LIMIT = 16 << 20
#: The sample's ``do_dma_io``: ``DMA_COUNT`` writes of ``DMA_CHUNK`` bytes, reads of twice that.
DMA_CHUNK = 1024
DMA_COUNT = 4

#: FSM facts come from the model (the one declaration); this profile never has P2P states.
RUNNING_STATES = running_states()
SAVING_STATES = saving_states()

_TIME_T = struct.Struct("<q")
_ZERO_BAR1 = bytes(BAR1_SIZE)


def _config_image() -> tuple[bytes, bytes]:
    """Power-on config space and its writable-bit masks (type 0 header, no capabilities)."""
    data, wmask = bytearray(CONFIG_SIZE), bytearray(CONFIG_SIZE)

    def put(off: int, size: int, value: int, mask: int = 0) -> None:
        data[off : off + size] = value.to_bytes(size, "little")
        wmask[off : off + size] = mask.to_bytes(size, "little")

    put(0x00, 2, VENDOR_ID)
    put(0x02, 2, DEVICE_ID)
    put(0x04, 2, 0, 0x0547)  # command: IO, memory, bus master, parity, SERR, INTx disable
    put(0x10, 4, 0, 0xFFFFFFF0)  # BAR0: 32-bit memory BAR of 16 bytes (PCI's minimum)
    put(0x14, 4, 0, 0xFFFFC000)  # BAR1: 32-bit memory BAR, 0x3000 rounded up to 0x4000
    put(0x2C, 2, SUBSYS_VENDOR_ID)
    put(0x2E, 2, SUBSYS_ID)
    put(0x3C, 1, 0, 0xFF)  # interrupt line
    put(0x3D, 1, 1)  # interrupt pin INTA#
    return bytes(data), bytes(wmask)


_CONFIG_INIT, _CONFIG_WMASK = _config_image()


class LvuSample(BookkeepingDevice):
    """The lvu-sample device; see the module docstring. Starts in RUNNING."""

    def __init__(
        self,
        *,
        irq_sink: IrqSink | None = None,
        caps: MigrationCaps = VFIO_USER_CAPS,
        unix_offset: float = 0.0,
    ) -> None:
        if not caps & MigrationCaps.STOP_COPY or caps & MigrationCaps.P2P:
            raise DeviceError(
                f"{PROFILE}: migration caps must include STOP_COPY and not P2P (libvfio-user)"
            )
        self._caps = caps & (MigrationCaps.STOP_COPY | MigrationCaps.PRE_COPY)
        self._sink: IrqSink = irq_sink if irq_sink is not None else NullIrqSink()
        #: Unix time = server time ``now`` + ``unix_offset`` (seconds).
        self.unix_offset = unix_offset
        self._fd = os.memfd_create("lvu-sample-bar1", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, BAR1_SIZE)
            self._bar1 = mmap.mmap(self._fd, BAR1_SIZE)
        except OSError:
            os.close(self._fd)
            raise
        self._bar0 = 0
        self._config = bytearray(_CONFIG_INIT)
        self._timer: float | None = None
        # on_arc gets no time but entering RUNNING re-arms the timer: it uses the time of the
        # last tick or region access (the server ticks the device after every message and
        # between messages, so this is at most one pump interval old).
        self._last_now = 0.0
        self._state = State.RUNNING
        self._transferred = 0
        self._restore_bar0 = bytearray(BAR0_SIZE)
        self._dirty = DirtyLog()
        self._job_seq = 0
        self._active_job: int | None = None
        self._pending_job: DmaJob | None = None
        self._closed = False
        #: Timer expiries that started a DMA job, and jobs that completed with matching data.
        self.timer_fired = 0
        self.dma_runs = 0
        #: One message per failed DMA job (fault, mismatch, region not found, abort).
        self.dma_errors: list[str] = []
        rw = RegionFlag.READ | RegionFlag.WRITE
        table = [RegionSpec(i, 0, RegionFlag(0)) for i in range(PCI_NUM_REGIONS)]
        table[PciRegion.BAR0] = RegionSpec(PciRegion.BAR0, BAR0_SIZE, rw)
        table[PciRegion.BAR1] = RegionSpec(
            PciRegion.BAR1, BAR1_REGION_SIZE, rw | RegionFlag.MMAP, sparse_mmap=BAR1_SPARSE,
            fd=self._fd,
        )
        table[PciRegion.CONFIG] = RegionSpec(PciRegion.CONFIG, CONFIG_SIZE, rw)
        self._regions = tuple(table)

    # ----- tables -------------------------------------------------------------------------
    @property
    def regions(self) -> tuple[RegionSpec, ...]:
        return self._regions

    @property
    def irqs(self) -> tuple[IrqSpec, ...]:
        return pci_irq_table()

    @property
    def memory_fd(self) -> int:
        """The memfd behind BAR1 (owned by the device)."""
        return self._fd

    @property
    def bar0_deadline(self) -> int:
        """BAR0's stored deadline (Unix seconds; 0 = never written)."""
        return self._bar0

    @property
    def timer_expiry(self) -> float | None:
        """When the armed timer fires, on the server's clock (None = disarmed)."""
        return self._timer

    @property
    def bar1(self) -> bytes:
        """A copy of BAR1."""
        return bytes(self._bar1)

    # ----- regions ------------------------------------------------------------------------
    def _check_access(self, index: int, offset: int, count: int, what: str) -> None:
        if self._closed:
            raise DeviceError(f"{what}: device is closed", _errno.EBADF)
        if not 0 <= index < len(self._regions) or self._regions[index].size == 0:
            raise DeviceError(f"{what}: no region {index}")
        size = self._regions[index].size
        if offset < 0 or count < 0 or offset + count > size:
            raise DeviceError(
                f"{what}: region {index} [{offset:#x}, +{count:#x}) outside its {size:#x}"
            )
        if index == PciRegion.BAR1 and offset + count > BAR1_SIZE:
            raise DeviceError(f"{what}: BAR1 [{offset:#x}, +{count:#x}) past its {BAR1_SIZE:#x} "
                              "bytes of memory")
        if index == PciRegion.BAR0 and (offset, count) != (0, BAR0_SIZE):
            raise DeviceError(f"{what}: bad BAR0 access {offset:#x}+{count} (8 bytes at 0 only)")

    def _unix_seconds(self, now: float) -> int:
        return math.floor(now + self.unix_offset)

    def region_read(self, index: int, offset: int, count: int, now: float) -> bytes:
        self._check_access(index, offset, count, "REGION_READ")
        self._last_now = now
        if index == PciRegion.BAR0:
            elapsed = self._unix_seconds(now) - self._bar0
            return _TIME_T.pack(max(min(elapsed, (1 << 63) - 1), -(1 << 63)))
        if index == PciRegion.CONFIG:
            return bytes(self._config[offset : offset + count])
        return self._bar1[offset : offset + count]

    def region_write(self, index: int, offset: int, data: bytes, now: float) -> None:
        self._check_access(index, offset, len(data), "REGION_WRITE")
        self._last_now = now
        if index == PciRegion.BAR0:
            (deadline,) = _TIME_T.unpack(data)
            if self._state is State.RUNNING:
                self._arm(deadline, now, "REGION_WRITE BAR0")
            self._bar0 = deadline
        elif index == PciRegion.CONFIG:
            for i, byte in enumerate(data, offset):
                mask = _CONFIG_WMASK[i]
                self._config[i] = (self._config[i] & ~mask) | (byte & mask)
        else:
            self._bar1[offset : offset + len(data)] = data

    def _arm(self, deadline: int, now: float, what: str) -> None:
        """The sample's ``arm_timer``: fire ``deadline - floor(unix_now)`` seconds from now."""
        delta = deadline - self._unix_seconds(now)
        if delta < 0:
            raise DeviceError(f"{what}: deadline {deadline} is {-delta} s in the past")
        self._timer = now + delta if delta > 0 else None

    # ----- timer and DMA ------------------------------------------------------------------
    def tick(self, now: float) -> None:
        self._last_now = now
        if self._closed or self._timer is None or self._state not in RUNNING_STATES:
            return
        if now < self._timer:
            return
        self._timer = None
        self.timer_fired += 1
        self._sink.trigger(IrqIndex.INTX, 0)
        if self._active_job is not None:
            self.dma_errors.append("timer fired while the previous DMA job was still running")
            return
        self._job_seq += 1
        self._active_job = self._job_seq
        self._pending_job = self._job(self._job_seq)

    def take_dma_job(self) -> DmaJob | None:
        job, self._pending_job = self._pending_job, None
        return job

    def abort_dma(self) -> None:
        self._abort_job()

    def _abort_job(self) -> None:
        self._pending_job = None
        if self._active_job is not None:
            self._active_job = None
            self.dma_errors.append("DMA job aborted")

    def _job(self, job_id: int) -> DmaJob:
        try:
            regions = yield from self._find_regions(2)
            if self._active_job != job_id:
                return
            if len(regions) < 2:
                self.dma_errors.append(
                    f"DMA: {len(regions)} mapped region(s) below {PROBE_LIMIT:#x}, need 2"
                )
                return
            direct, by_message = regions[1], regions[0]
            if not (yield from self._do_dma_io(job_id, direct, DmaMode.MAPPED_ONLY)):
                return
            if not (yield from self._do_dma_io(job_id, by_message, DmaMode.MESSAGE_ONLY)):
                return
            self.dma_runs += 1
        except DmaFault as fault:
            if self._active_job == job_id:
                self.dma_errors.append(f"DMA fault at {fault.iova:#x}+{fault.length:#x}: {fault}")
        finally:
            if self._active_job == job_id:
                self._active_job = None

    def _probe(self, iova: int, length: int) -> Generator[DmaOp, bytes | None, bool]:
        try:
            yield DmaOp.check(iova, length, write=True)
        except DmaFault:
            return False
        return True

    def _find_regions(self, wanted: int) -> Generator[DmaOp, bytes | None, list[int]]:
        """The IOVAs of the first ``wanted`` mapped regions (page-aligned, below the limit)."""
        found: list[int] = []
        iova = 0
        while len(found) < wanted and iova < PROBE_LIMIT:
            if not (yield from self._probe(iova, PAGE_SIZE)):
                iova += PAGE_SIZE
                continue
            length = PAGE_SIZE
            while iova + length < PROBE_LIMIT and (
                yield from self._probe(iova, length + PAGE_SIZE)
            ):
                length += PAGE_SIZE
            found.append(iova)
            iova += length
        return found

    def _do_dma_io(
        self, job_id: int, iova: int, mode: DmaMode
    ) -> Generator[DmaOp, bytes | None, bool]:
        written = b"".join(bytes([ord("A") + i]) * DMA_CHUNK for i in range(DMA_COUNT))
        for i in range(DMA_COUNT):
            if self._active_job != job_id:
                return False
            chunk = written[i * DMA_CHUNK : (i + 1) * DMA_CHUNK]
            yield DmaOp.write(iova + i * DMA_CHUNK, chunk, mode)
        back = bytearray()
        for i in range(0, DMA_COUNT, 2):
            if self._active_job != job_id:
                return False
            reply = yield DmaOp.read(iova + i * DMA_CHUNK, 2 * DMA_CHUNK, mode)
            back += reply or b""
        if bytes(back) != written:
            self.dma_errors.append(f"DMA at {iova:#x} ({mode.name}): read back differs")
            return False
        return True

    # ----- migration ----------------------------------------------------------------------
    def on_arc(self, src: State, dst: State) -> None:
        arc = f"{State(src).name} -> {State(dst).name}"
        if self._closed:
            raise ArcActionError(f"{arc}: device is closed", _errno.EBADF)
        if src != self._state:
            raise ArcActionError(f"{arc}: device is in {self._state.name}", _errno.EINVAL)
        if not is_direct_arc(src, dst, self._caps):
            raise ArcActionError(f"{arc}: not a direct arc of this device", _errno.EINVAL)
        if dst is State.RUNNING and self._bar0 != 0:
            try:
                self._arm(self._bar0, self._last_now, arc)
            except DeviceError as exc:
                raise ArcActionError(str(exc), _errno.EINVAL) from None
        if src in RUNNING_STATES and dst not in RUNNING_STATES:
            self._timer = None
            self._abort_job()
        if dst in SAVING_STATES or dst is State.RESUMING:
            self._transferred = 0
        if dst is State.RESUMING:
            self._power_on()
            self._restore_bar0[:] = bytes(BAR0_SIZE)
        elif src is State.RESUMING:
            if self._transferred != STOP_COPY_SIZE:
                got = self._transferred
                self._to_error()
                raise ArcActionError(
                    f"{arc}: restore got {got} bytes, needs {STOP_COPY_SIZE}",
                    _errno.EINVAL,
                    broken=True,
                )
            (self._bar0,) = _TIME_T.unpack(self._restore_bar0)
        self._state = State(dst)

    def _stream_total(self) -> int:
        return STOP_COPY_SIZE if self._state is State.STOP_COPY else BAR1_SIZE

    def mig_data_read(self, max_size: int) -> bytes:
        if self._closed:
            raise DeviceError("MIG_DATA_READ: device is closed", _errno.EBADF)
        if self._state not in SAVING_STATES:
            raise DeviceError(f"MIG_DATA_READ in {self._state.name}: not a saving state")
        if max_size < 1:
            raise DeviceError(f"MIG_DATA_READ: size {max_size} must be at least 1")
        start = self._transferred
        end = min(start + max_size, self._stream_total())
        if end <= start:
            return b""
        out = bytearray()
        if start < BAR1_SIZE:
            out += self._bar1[start : min(end, BAR1_SIZE)]
        if end > BAR1_SIZE:
            out += _TIME_T.pack(self._bar0)[max(start, BAR1_SIZE) - BAR1_SIZE : end - BAR1_SIZE]
        self._transferred = end
        return bytes(out)

    def mig_data_write(self, data: bytes | memoryview) -> None:
        if self._closed:
            raise DeviceError("MIG_DATA_WRITE: device is closed", _errno.EBADF)
        if self._state is not State.RESUMING:
            raise DeviceError(f"MIG_DATA_WRITE in {self._state.name}: not RESUMING")
        start = self._transferred
        end = start + len(data)
        if end > STOP_COPY_SIZE:
            raise DeviceError(
                f"MIG_DATA_WRITE: {len(data)} bytes at {start} exceed the {STOP_COPY_SIZE}-byte "
                "stream"
            )
        if start < BAR1_SIZE:
            n = min(end, BAR1_SIZE) - start
            self._bar1[start : start + n] = data[:n]
        if end > BAR1_SIZE:
            lo = max(start, BAR1_SIZE)
            self._restore_bar0[lo - BAR1_SIZE : end - BAR1_SIZE] = data[lo - start :]
        self._transferred = end

    # ----- state --------------------------------------------------------------------------
    def _power_on(self) -> None:
        self._abort_job()
        self._timer = None
        self._bar0 = 0
        self._bar1[:] = _ZERO_BAR1
        self._config[:] = _CONFIG_INIT

    def _to_error(self) -> None:
        self._power_on()
        self._transferred = 0
        self._state = State.ERROR

    def reset(self, *, keep_mig_state: bool = False) -> None:
        if self._closed:
            raise DeviceError("DEVICE_RESET: device is closed", _errno.EBADF)
        self._power_on()
        if not keep_mig_state:
            self._transferred = 0
            self._state = State.RUNNING

    def digest(self) -> str:
        if self._closed:
            raise DeviceError("digest: device is closed", _errno.EBADF)
        h = sha256(PROFILE.encode())
        h.update(self._bar1)
        h.update(_TIME_T.pack(self._bar0))
        return h.hexdigest()

    def close(self) -> None:
        if self._closed:
            return
        self._abort_job()
        self._closed = True
        self._bar1.close()
        os.close(self._fd)


def make_lvu_sample(
    *, mem_size: int = BAR1_SIZE, irq_sink: IrqSink, caps: MigrationCaps = VFIO_USER_CAPS
) -> Device:
    """Registry factory: ``mem_size`` is ignored (BAR1 is 0x3000 bytes, as in the sample);
    Unix time is derived for a server whose clock is ``time.monotonic``."""
    return LvuSample(irq_sink=irq_sink, caps=caps, unix_offset=time.time() - time.monotonic())


__all__ = [
    "BAR0_SIZE",
    "BAR1_SIZE",
    "BAR1_SPARSE",
    "STOP_COPY_SIZE",
    "LvuSample",
    "make_lvu_sample",
]
