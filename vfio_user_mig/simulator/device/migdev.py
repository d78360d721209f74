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
  RESUMING->STOP checks the stream is complete, every page's last copy matches its fingerprint
  and the digest matches (one pass over memory computes the page fingerprints both use); otherwise
  the device is cleared again and the arc fails with ``ArcActionError(EINVAL, broken=True)``
  (ERROR).

The device is built in layers, one module each: :mod:`.migdev_base` (shared state, tables,
digest, reset), :mod:`.migdev_dma` (DMA engine), :mod:`.migdev_regions` (region access) and
this module (the restore sink and migration: FSM arcs, MIG_DATA_READ/WRITE, pending bytes).
"""

from __future__ import annotations

import errno as _errno
from typing import TYPE_CHECKING

from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.model.graph import is_direct_arc
from vfio_user_mig.model.states import State
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.migdev_base import (
    PAGE_SIZE,
    PRECOPY_STATES,
    RUNNING_STATES,
    SAVING_STATES,
    Injected,
)
from vfio_user_mig.simulator.device.migdev_regions import MigDevRegions
from vfio_user_mig.simulator.device.regs import (
    MIGRATING,
    MIGRATING_STRUCT,
    Reg,
    Status,
)
from vfio_user_mig.simulator.device.stream import (
    END_PAYLOAD,
    MAX_RUN_PAGES,
    PAGE_FP,
    PAGES_PREFIX,
    RECORD_HEADER,
    StreamError,
    header_payload,
)

if TYPE_CHECKING:
    from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder

#: What :meth:`MigDev.mig_data_write_feed_size` answers for a restore that takes nothing in
#: place (any size: it is fed).
MAX_FEED = 1 << 20


class _Restorer:
    """The :class:`~.stream.RestoreSink` view of a device being restored."""

    def __init__(self, dev: MigDev) -> None:
        self._dev = dev

    def load_pages(self, first_page: int, data: memoryview) -> None:
        self._dev._load_pages(first_page, data)

    def load_regs(self, data: bytes) -> None:
        self._dev._load_regs(data)

    def page_fingerprints(self, first_page: int, count: int) -> bytes:
        return self._dev._page_fingerprints(first_page, count)

    def page_view(self, first_page: int, count: int) -> memoryview:
        a = first_page * PAGE_SIZE
        return memoryview(self._dev._mm)[a : a + count * PAGE_SIZE]

    def restored_digest(self, page_fingerprints: bytes) -> bytes:
        return self._dev._stream_digest(page_fingerprints)


class MigDev(MigDevRegions):
    """The migdev device; see the module docstring. Starts in RUNNING."""

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
        self._injected[(State(src), State(dst))] = Injected(errno, broken)

    def on_arc(self, src: State, dst: State) -> None:
        arc = f"{State(src).name} -> {State(dst).name}"
        if self._closed:
            raise ArcActionError(f"{arc}: device is closed", _errno.EBADF)
        if src != self._state:
            raise ArcActionError(f"{arc}: device is in {self._state.name}", _errno.EINVAL)
        if not is_direct_arc(src, dst, self._caps):
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
            self._drop_save()
        if dst is State.RESUMING:
            from vfio_user_mig.simulator.device.stream_decoder import StreamDecoder

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
        self._drop_save()
        self._restore = None
        self._state = State.ERROR

    def pending_bytes(self) -> int:
        """Bytes the device would still send if switched to STOP_COPY now (the answer to the
        experimental MIG_DATA_SIZE feature, the kernel's ``stop_copy_length``).

        In PRE_COPY: the record being read (what is left of it), HEADER if not sent yet, the
        pages the tracker reports as never sent or changed since sent (with their
        fingerprints),
        framed in PAGES records (runs of consecutive pages, at most ``MAX_RUN_PAGES`` each and
        never across a multiple of ``MAX_RUN_PAGES``, as the final pass cuts them), then REGS
        and END. Exact for the content at the time of the call; the guest may dirty
        more before the switch. In STOP_COPY the same, so an upper bound (REGS and END are
        counted until the stream ended), 0 once it ended. Outside the saving group (or with a
        save stream not built on the tracker), a whole stream: an upper bound.
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
            return (encoder.buffered + unsent_header + pages * (ps + PAGE_FP.size)
                    + records * (rec + PAGES_PREFIX.size) + tail)
        n = self._geo.n_pages
        records = -(-n // MAX_RUN_PAGES)
        return header + n * (ps + PAGE_FP.size) + records * (rec + PAGES_PREFIX.size) + tail

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

    def mig_data_read_parts(self, max_size: int) -> list[bytes | memoryview]:
        """:meth:`mig_data_read` as the parts the bytes are made of, for a scatter-gather
        send (in STOP_COPY read-only views of device memory: no copy); the caller sends them
        before it lets the device run again."""
        parts = getattr(self._save, "read_parts", None)
        if parts is None or max_size <= 0 or self._closed or self._state not in SAVING_STATES:
            return [self.mig_data_read(max_size)]
        out: list[bytes | memoryview] = parts(max_size)
        return out

    def _restoring(self) -> StreamDecoder:
        if self._closed:
            raise DeviceError("MIG_DATA_WRITE: device is closed", _errno.EBADF)
        if self._state is not State.RESUMING or self._restore is None:
            raise DeviceError(f"MIG_DATA_WRITE in {self._state.name}: not RESUMING")
        return self._restore

    def mig_data_write(self, data: bytes | memoryview) -> None:
        self._restoring().feed(data)

    # MIG_DATA_WRITE data received in place (the server's in-place path, :mod:`..server.mig_write`):
    # the same stream as :meth:`mig_data_write`, its page data received into device memory.
    def mig_data_write_buffers(self, max_size: int) -> list[memoryview]:
        """Where the next (at most ``max_size``) bytes of MIG_DATA_WRITE data may be received
        in place, in order: views of device memory and of the decoder's buffer
        (:meth:`.StreamDecoder.recv_buffers`); []: pass them to :meth:`mig_data_write`."""
        restore = self._restoring()
        recv_buffers = getattr(restore, "recv_buffers", None)  # a restore taking nothing in
        return recv_buffers(max_size) if recv_buffers is not None else []  # place: fed

    def mig_data_write_feed_size(self) -> int:
        """Bytes to pass to :meth:`mig_data_write` before :meth:`mig_data_write_buffers` may
        have buffers again (:meth:`.StreamDecoder.feed_size`)."""
        restore = self._restoring()
        feed_size = getattr(restore, "feed_size", None)
        return feed_size() if feed_size is not None else MAX_FEED

    def mig_data_write_received(self, n: int) -> None:
        """``n`` bytes were received into the last :meth:`mig_data_write_buffers`."""
        self._restoring().received(n)

    def mig_data_write_abort(self, reason: str) -> None:
        """Part of a MIG_DATA_WRITE was taken and the rest will never come: the restore in
        progress (if any) is refused (``reason``)."""
        if self._restore is not None:
            self._restore.abort(reason)


__all__ = ["MigDev"]
