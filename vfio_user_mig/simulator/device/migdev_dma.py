"""``migdev``'s DMA engine (:mod:`.migdev` describes it): the DOORBELL checks, the job
generator that CHECKs the client range then copies in ``dma_chunk`` ops, its end (DONE or
FAULT, and an interrupt) and the timer tick.
"""

from __future__ import annotations

from vfio_user_mig.simulator.device.dma import IOVA_LIMIT, DmaFault, DmaJob, DmaMode, DmaOp
from vfio_user_mig.simulator.device.migdev_base import (
    RUNNING_STATES,
    MigDevBase,
)
from vfio_user_mig.simulator.device.regs import (
    Control,
    DmaDir,
    JobError,
    Reg,
    Status,
)
from vfio_user_mig.wire.record import Record, record


@record
class _Descriptor(Record):
    """The DMA registers as read when DOORBELL was written."""

    dev_offset: int
    iova: int
    length: int
    direction: DmaDir
    mode: DmaMode



class MigDevDma(MigDevBase):
    """DMA engine and timer of a migdev device."""

    def take_dma_job(self) -> DmaJob | None:
        job, self._pending_job = self._pending_job, None
        return job

    def abort_dma(self) -> None:
        """Abort the job in flight (STATUS.ABORTED); its generator ends at its next step."""
        self._abort_job()
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

    def tick(self, now: float) -> None:
        deadline = self._regs[Reg.TIMER_DEADLINE_US]
        if self._closed or self._state not in RUNNING_STATES or deadline == 0:
            return
        if now * 1_000_000 >= deadline:
            self._regs[Reg.TIMER_DEADLINE_US] = 0
            self._set_status(Status.TIMER)
            if self._regs[Reg.CONTROL] & Control.IRQ_ON_TIMER:
                self._interrupt()

__all__ = ["MigDevDma"]
