"""The migration driver: the VMM's migration code (QEMU's VFIO migration, over vfio-user).

Source: RUNNING -> PRE_COPY (when the device offers it), pre-copy rounds while the guest keeps
running (each round sends the dirty guest RAM, then drains the device's stream until a short
read says "caught up for now"), the switchover policy decides after every round, then
-> STOP_COPY, the last dirty RAM, the device stream drained to its end (a short read), -> STOP.
Destination: -> RESUMING before the first byte, every chunk written as it arrives (the driver
never holds the device state), -> STOP (the device validates the stream), -> RUNNING.

The device stream is relayed pipelined (:attr:`DriverConfig.read_depth` MIG_DATA_READs in
flight on the source, a write-behind window of :attr:`DriverConfig.write_window`
MIG_DATA_WRITEs awaiting their reply on the destination): at most depth + window chunks are in
transit. Without a relay filter a chunk goes from the source's socket to the destination's
through a pipe (``splice``: the driver never copies it), or, where a pipe cannot take it,
through one reused buffer (received into it and sent from it before the next). A chunk is
traced (and charged to the clock) once the destination acknowledged it, so the trace and the
errors are those of the serial relay: a destination error surfaces before any later source
error, the chunks before it all traced. Pre-copy rounds with a running workload stay serial
(one read, one write), so the guest's writes interleave with the reads exactly as before.

Guest RAM is copied from the source guest to the destination guest; dirty pages are the VMM's
own tracking of vCPU writes (:class:`~.guest.GuestRam`) plus the device's DMA_LOGGING_REPORT
(device writes into guest RAM).

Migration data goes on each side's :attr:`Client.data_client`: the main socket, or the
experimental migration-data channel when the client negotiated one
(:mod:`vfio_user_mig.simulator.server.mig_channel`).

Failures: until the destination runs, any failure puts the source back to RUNNING (QEMU's
recovery: the VM keeps running where it was) and discards the destination (DEVICE_RESET).

Pending device bytes: vfio-user has no way to ask the device (the kernel's VFIO has
MIG_DATA_SIZE and PRECOPY_INFO), so after each round the driver estimates them (the device bytes
the round read; after a first round that caught up, those scaled by the fraction of guest RAM
dirtied). With :attr:`DriverConfig.size_query` it asks the source with the experimental
MIG_DATA_SIZE feature instead: a ``size_query`` event (``supported``, then ``pending`` or
``errno``, ``message``) records the probe before the first round, and each ``round`` event then
also carries ``pending_device_estimate`` and ``pending_device_reported`` (the value used).

Every decision and every byte goes to the :class:`~.trace.Trace`; timings come from the
:class:`~.clock.Clock` given (simulated or real), so the driver itself never reads time.

The driver is built in layers: :mod:`.driver_types` (config, sides, result, errors),
:mod:`.driver_base` (state and plumbing), :mod:`.driver_relay` (the device-stream relay) and
this module (the phases).
"""

from __future__ import annotations

import contextlib
import errno as _errno
from typing import Any

from vfio_user_mig.model import MigrationCaps, State
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.migration.driver_relay import DeviceRelay
from vfio_user_mig.simulator.migration.driver_types import (
    MigrationError,
    MigrationResult,
    NotConverged,
    region_digest,
    region_sizes,
)
from vfio_user_mig.simulator.migration.guest import runs
from vfio_user_mig.simulator.migration.policies import RoundStats


class MigrationDriver(DeviceRelay):
    """Drives one live migration; see the module docstring. Use :meth:`run` once."""

    # ----- the phases -------------------------------------------------------------------------
    def run(self) -> MigrationResult:
        """Migrate; never raises for migration failures (they are in the result)."""
        self._emit("start", policy=self.policy.name, clock="sim" if self.clock.simulated
                   else "real", **self.params)
        committed = False
        error: MigrationError | None = None
        outcome = "failed"
        try:
            self._prepare()
            self._precopy()
            self._stop_and_copy()
            self._resume_destination()
            committed = True
            outcome = "verified" if self._verify() else "unverified"
        except MigrationError as exc:
            error = exc
            if isinstance(exc, NotConverged):
                outcome = "not_converged"
            self._emit("error", where=exc.where, errno=exc.errno, message=str(exc))
            if not committed:
                self._recover()
        if self.workload is not None:
            self.workload.stop()
        ok = outcome == "verified"
        self._emit("end", outcome=outcome, ok=ok)
        summary = self.trace.summary()
        return MigrationResult(ok, outcome, summary, error, committed,
                               self.workload.stats if self.workload is not None else {},
                               self.trace.events)

    def _prepare(self) -> None:
        src, dst = self.src, self.dst
        self.caps = self._io(src, "MIGRATION feature", src.client.migration_caps)
        dst_caps = self._io(dst, "MIGRATION feature", dst.client.migration_caps)
        if dst_caps != self.caps:
            raise MigrationError("capabilities", _errno.EINVAL,
                                 f"source {int(self.caps)} != destination {int(dst_caps)}")
        for side in (src, dst):
            limit = side.client.server_caps.max_data_xfer_size if side.client.server_caps else 0
            if limit:
                self._chunk = min(self._chunk, limit, side.client.max_data_xfer_size)
            side.state = self._query_state(side)
            if not side.hosted:  # its digest is read back later, from a stopped device
                side.region_sizes = self._io(side, "region sizes", region_sizes, side.client)
            self._io(side, "DMA_MAP", lambda s=side: s.client.dma_map(0, s.guest.size,
                                                                       fd=s.guest.fd))
        try:
            hint = self.config.log_page_hint or self.page_size
            # page_size is a hint: reports use the size the device selected (the reply's)
            self.log_page_size = src.client.dma_logging_start(hint, [(0, src.guest.size)])
            self.logging = True
        except VfioUserError as exc:
            self._emit("error", where="src DMA_LOGGING_START", errno=exc.errno,
                       message=f"{exc}: all guest RAM is resent at stop-copy")
        except (OSError, ValueError) as exc:
            src.alive = False
            raise MigrationError("src DMA_LOGGING_START", _errno.ECONNRESET, str(exc)) from exc
        if self.config.size_query:
            self._probe_size_query()
        if src.state is not State.RUNNING:
            self.set_state(src, State.RUNNING)
        self.set_state(dst, State.RESUMING)
        if self.workload is not None:
            self._io(src, "workload", self.workload.start, self.clock.now())

    def _probe_size_query(self) -> None:
        """One MIG_DATA_SIZE GET: does the source answer it? (traced either way)"""
        src = self.src
        try:
            size = src.client.mig_data_size()
        except VfioUserError as exc:
            self._emit("size_query", supported=False, errno=exc.errno,
                       message=f"{exc}: the pending device bytes stay an estimate")
            return
        except (OSError, ValueError) as exc:
            src.alive = False
            raise MigrationError("src MIG_DATA_SIZE", _errno.ECONNRESET, str(exc)) from exc
        self._size_query = True
        self._emit("size_query", supported=True, pending=size)

    def _collect_dirty(self) -> None:
        """DMA_LOGGING_REPORT (read-and-clear) into the pending set."""
        if not self.logging:
            return
        src = self.src
        lps, ps = self.log_page_size, self.page_size
        pages = self._io(src, "DMA_LOGGING_REPORT", src.client.dma_logging_report, 0,
                         src.guest.size, lps)
        if lps == ps:
            self._dma_dirty.update(pages)
        elif lps > ps:  # a logging page covers several guest pages
            per = lps // ps
            last = src.guest.n_pages
            for p in pages:
                self._dma_dirty.update(range(p * per, min((p + 1) * per, last)))
        else:
            self._dma_dirty.update(p * lps // ps for p in pages)

    def _send_ram(self, phase: str, everything: bool = False) -> tuple[int, int]:
        """Send the dirty guest pages; returns (bytes, pages)."""
        guest = self.src.guest
        self._collect_dirty()
        vcpu = guest.take_dirty()
        dma = len(self._dma_dirty)
        pages = set(vcpu)
        pages |= self._dma_dirty
        self._dma_dirty = set()
        if everything:
            pages = set(range(guest.n_pages))
        self._emit("dirty", round=self._round, guest=len(vcpu), dma=dma)
        total = 0
        for first, count in runs(sorted(pages), self.config.ram_run_pages):
            self.dst.guest.store_pages(first, guest.pages(first, count))
            nbytes = count * self.page_size
            self.clock.transfer(nbytes)
            total += nbytes
            self._emit("ram", phase=phase, round=self._round, pages=count, bytes=nbytes)
            if phase == "precopy":
                self._tick()
        return total, len(pages)

    def _precopy(self) -> None:
        device_precopy = bool(self.caps & MigrationCaps.PRE_COPY) and self.config.use_precopy
        if device_precopy:
            self.set_state(self.src, State.PRE_COPY)
        self.src.guest.mark_all_dirty()
        start = self.clock.now()
        while True:
            self._round += 1
            t0 = self.clock.now()
            ram_bytes, _ = self._send_ram("precopy")
            budget = self.config.round_device_budget or max(self.src.guest.size,
                                                            64 * self._chunk)
            device_bytes, caught_up = (self._drain("precopy", budget) if device_precopy
                                       else (0, True))
            t1 = self.clock.now()
            seconds = t1 - t0
            self._collect_dirty()
            dirty_pages = self.src.guest.dirty_count + len(self._dma_dirty)
            pending_ram = dirty_pages * self.page_size
            if self._round == 1 and caught_up:
                # Unknown over vfio-user (no PRECOPY_INFO): assume the device dirties like RAM.
                frac = dirty_pages / max(self.src.guest.n_pages, 1)
                pending_dev = int(device_bytes * min(frac, 1.0))
            else:
                pending_dev = device_bytes
            extra: dict[str, Any] = {}
            if self._size_query:
                reported = self._io(self.src, "MIG_DATA_SIZE", self.src.client.mig_data_size)
                extra = {"pending_device_estimate": pending_dev,
                         "pending_device_reported": reported}
                pending_dev = reported
            pending = pending_ram + pending_dev
            total = ram_bytes + device_bytes
            bandwidth = total / seconds if seconds > 0 else float("inf")
            dirty_rate = pending / seconds if seconds > 0 else 0.0
            stats = RoundStats(self._round, total, seconds, pending, bandwidth, dirty_rate,
                               t1 - start,
                               pending_source="device" if self._size_query else "estimate")
            decision = self.policy.decide(stats)
            self._emit("round", round=self._round, bytes=total, device_bytes=device_bytes,
                       ram_bytes=ram_bytes, seconds=round(seconds, 9), pending=pending,
                       bandwidth=bandwidth if seconds > 0 else None,
                       dirty_rate=round(dirty_rate, 3), decision=decision.action,
                       reason=decision.reason, **extra)
            if decision.switch:
                self._emit("switchover", reason=decision.reason, round=self._round)
                return
            if decision.action == "give_up":
                raise NotConverged("switchover policy", _errno.ETIMEDOUT, decision.reason)
            self._check_deadline()

    def _stop_and_copy(self) -> None:
        self._downtime_start = self.clock.now()
        if self.workload is not None:
            self.workload.stop()
        self._round = 0
        self.set_state(self.src, State.STOP_COPY)
        self._send_ram("stopcopy", everything=not self.logging)
        self._drain("stopcopy")  # the device is stopped: the stream ends
        self.set_state(self.src, State.STOP)
        self._src_digest = self.src.digest()
        if self._src_digest is None:
            self._src_digest = self._io(
                self.src, "region digest",
                lambda: region_digest(self.src.client, sizes=self.src.region_sizes))

    def _resume_destination(self) -> None:
        self.set_state(self.dst, State.STOP)  # the device validates the whole stream here
        self._dst_digest = self.dst.digest()
        if self._dst_digest is None:
            self._dst_digest = self._io(
                self.dst, "region digest",
                lambda: region_digest(self.dst.client, sizes=self.dst.region_sizes))
        self.set_state(self.dst, State.RUNNING)
        end = self.clock.now()
        self._emit("downtime", start=self._downtime_start, end=end,
                   ms=(end - self._downtime_start) * 1000)

    def _verify(self) -> bool:
        device_ok = self._src_digest is not None and self._src_digest == self._dst_digest
        ram_ok = self.src.guest.equals(self.dst.guest)
        self._emit("verify", src_digest=self._src_digest, dst_digest=self._dst_digest,
                   device_ok=device_ok, ram_ok=ram_ok)
        if self.logging and self.src.alive:
            with contextlib.suppress(VfioUserError, OSError, ValueError):
                self.src.client.dma_logging_stop()
        return device_ok and ram_ok

    def _recover(self) -> None:
        """Source back to RUNNING, destination discarded (see module docstring)."""
        src, dst = self.src, self.dst
        if src.alive:
            if src.state is None:
                src.state = self._query_state(src)
            if src.state is State.ERROR:  # only DEVICE_RESET leaves ERROR (PROTOCOL.md 5)
                ok = True
                try:
                    self._io(src, "DEVICE_RESET", src.client.reset)
                    src.state = self._query_state(src)
                except MigrationError:
                    ok = False
                self._emit("recovery", side="src", action="reset", ok=ok)
            if src.state not in (None, State.RUNNING, State.ERROR):
                ok = True
                try:
                    self.set_state(src, State.RUNNING)
                except MigrationError:
                    ok = False
                self._emit("recovery", side="src", action="resume", ok=ok)
            if self.logging and src.state is State.RUNNING:
                with contextlib.suppress(VfioUserError, OSError, ValueError):
                    src.client.dma_logging_stop()
        if dst.alive:
            if dst.state is None:
                dst.state = self._query_state(dst)
            ok = True
            try:
                if dst.state is State.STOP:
                    self.set_state(dst, State.RUNNING)
                self._io(dst, "DEVICE_RESET", dst.client.reset)
                dst.state = self._query_state(dst)
            except MigrationError:
                ok = False
            self._emit("recovery", side="dst", action="discard", ok=ok)



__all__ = ["MigrationDriver"]
