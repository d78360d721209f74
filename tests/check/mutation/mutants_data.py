"""Mutants of what moves data: DMA maps, dirty page logging, MIG_DATA_READ/WRITE bounds, the
saved stream and its restore (PROTOCOL.md sections 2 to 4; kernel ``vfio.h`` migration uapi)."""

from __future__ import annotations

from typing import Any

from tests.check.mutation.catalogue import mutant
from tests.check.mutation.patches import (
    answer_refused,
    is_feature,
    is_ok_reply_to,
    on_device,
    replace,
    rewrite_out,
    with_header,
    wrap_feature,
    wrap_handler,
)
from vfio_user_mig import wire
from vfio_user_mig.model import ArcActionError, State
from vfio_user_mig.simulator.device import DeviceError, DmaKind, PciRegion
from vfio_user_mig.simulator.server.hosting import HostedDevice
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

# ----- DMA maps -------------------------------------------------------------------------------


@mutant("dma_map_overlap_accepted", "a DMA_MAP overlapping an existing map is acknowledged "
        "(and ignored)", "dma", "errno")
def _dma_map_overlap_accepted(hosted: HostedDevice) -> None:
    core = hosted.core

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if any(m.iova < msg.addr + msg.size and msg.addr < m.iova + m.size
               for m in core.dma.mappings):
            return wire.DmaMapReply(msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_handler(core, Command.DMA_MAP, fn)


@mutant("dma_map_mmap_flag_ignored", "DMA_MAP ignores its access-mode flags: the MMAP flag "
        "without an fd is accepted", "dma", "errno")
def _dma_map_mmap_flag_ignored(hosted: HostedDevice) -> None:
    wrap_handler(hosted.core, Command.DMA_MAP,
                 lambda real, msg, fds: real(replace(msg, flags=msg.flags & 0x3), fds))


@mutant("report_of_unmapped_range", "DMA_LOGGING_REPORT of a range that is not DMA-mapped "
        "answers a clean bitmap", "dma", "errno")
def _report_of_unmapped_range(hosted: HostedDevice) -> None:
    hosted.core.dma.covers = lambda iova, length: True  # type: ignore[method-assign]


@mutant("dma_unmap_unmapped_ok", "DMA_UNMAP of a range that is not mapped succeeds", "dma",
        "errno")
def _dma_unmap_unmapped_ok(hosted: HostedDevice) -> None:
    answer_refused(hosted.core, Command.DMA_UNMAP, lambda msg: None if msg.flags else
                   wire.DmaUnmapReply(addr=msg.addr, size=msg.size, flags=msg.flags,
                                      argsz=msg.argsz, msg_id=msg.msg_id))


# ----- dirty page logging ---------------------------------------------------------------------


def _wrap_report(hosted: HostedDevice, fn: Any) -> None:
    """Replace the dirty log's ``report(iova, length, page_size)`` by ``fn(real, ...)``."""
    log = hosted.device.dirty_log
    real = log.report
    log.report = lambda iova, length, page_size: fn(real, iova, length, page_size)  # type: ignore


@mutant("logging_stop_keeps_logging", "DMA_LOGGING_STOP is acknowledged but logging goes on",
        "dma", "errno")
def _logging_stop_keeps_logging(hosted: HostedDevice) -> None:
    hosted.device.dirty_log.stop = lambda: None  # type: ignore[method-assign]


@mutant("report_before_start_answered", "DMA_LOGGING_REPORT before START answers a clean "
        "bitmap", "dma", "errno")
def _report_before_start_answered(hosted: HostedDevice) -> None:
    log = hosted.device.dirty_log

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_feature(msg, FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET) and not log.active:
            data = msg.data
            size = wire.bitmap_len(data.length, data.page_size)
            body = wire.DmaLoggingReportData(data.iova, data.length, data.page_size,
                                             bytes(size))
            return wire.DeviceFeatureReply(msg.feature, msg.ops, body, msg_id=msg.msg_id), []
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("report_at_logging_page_size", "DMA_LOGGING_REPORT answers at the logging page size, "
        "not the page size asked for", "dma", "reply")
def _report_at_logging_page_size(hosted: HostedDevice) -> None:
    log = hosted.device.dirty_log

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if is_feature(msg, FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET) and log.active:
            data = replace(msg.data, page_size=log.page_size)
            return real(replace(msg, data=data), fds)
        return real(msg, fds)

    wrap_feature(hosted.core, fn)


@mutant("logging_start_not_echoed", "the DMA_LOGGING_START reply carries no data instead of "
        "echoing the request", "dma", "reply")
def _logging_start_not_echoed(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        reply, out = real(msg, fds)
        if is_feature(msg, FeatureIndex.DMA_LOGGING_START, FeatureOp.SET):
            reply = wire.DeviceFeatureReply(msg.feature, msg.ops, None, msg_id=msg.msg_id)
        return reply, out

    wrap_feature(hosted.core, fn)


@mutant("dirty_pages_never_reported", "DMA_LOGGING_REPORT always answers a clean bitmap",
        "dma", "dirty", profile="migdev")
def _dirty_pages_never_reported(hosted: HostedDevice) -> None:
    _wrap_report(hosted, lambda real, iova, length, page_size: (real(iova, length, page_size),
                                                                [])[1])


@mutant("dirty_pages_lost_past_64", "dirty pages from report page 64 on are lost (one u64 word "
        "of bitmap)", "dma", "dirty", profile="migdev")
def _dirty_pages_lost_past_64(hosted: HostedDevice) -> None:
    _wrap_report(hosted, lambda real, iova, length, page_size:
                 [p for p in real(iova, length, page_size) if p < 64])


@mutant("dirty_last_page_lost", "the last page of a reported range is never reported dirty",
        "dma", "dirty", profile="migdev")
def _dirty_last_page_lost(hosted: HostedDevice) -> None:
    def fn(real: Any, iova: int, length: int, page_size: int) -> list[int]:
        last = (length - 1) // page_size
        return [p for p in real(iova, length, page_size) if p != last]

    _wrap_report(hosted, fn)


@mutant("report_does_not_clear", "DMA_LOGGING_REPORT does not clear the pages it returned",
        "dma", "dirty", profile="migdev")
def _report_does_not_clear(hosted: HostedDevice) -> None:
    log = hosted.device.dirty_log

    def fn(real: Any, iova: int, length: int, page_size: int) -> list[int]:
        pages: list[int] = real(iova, length, page_size)
        for page in pages:  # dirty again: what was reported stays set
            log.mark(iova + page * page_size, page_size)
        return pages

    _wrap_report(hosted, fn)


@mutant("dirty_not_logged_in_precopy", "device writes during PRE_COPY are not logged (the "
        "pages changed after pre-copy sent them are never sent again)", "dma", "dirty",
        profile="migdev")
def _dirty_not_logged_in_precopy(hosted: HostedDevice) -> None:
    core = hosted.core
    log = hosted.device.dirty_log
    real = log.mark

    def mark(iova: int, length: int) -> None:
        if core.state != State.PRE_COPY:
            real(iova, length)

    log.mark = mark  # type: ignore[method-assign]


@mutant("dma_write_corrupts_data", "the device's DMA writes to guest memory carry one flipped "
        "byte", "dma", "data", profile="migdev")
def _dma_write_corrupts_data(hosted: HostedDevice) -> None:
    space = hosted.core.dma
    real = space.resolve

    def resolve(op: Any, message: Any = None) -> Any:
        if op.kind is DmaKind.WRITE and op.data:
            op = replace(op, data=bytes([op.data[0] ^ 0x01]) + bytes(op.data[1:]))
        return real(op, message)

    space.resolve = resolve  # type: ignore[method-assign]


# ----- MIG_DATA_READ / MIG_DATA_WRITE ---------------------------------------------------------


@mutant("mig_read_ignores_size", "MIG_DATA_READ returns up to twice the size asked for",
        ("fsm", "migdata"), "reply")
def _mig_read_ignores_size(hosted: HostedDevice) -> None:
    device = hosted.device

    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if msg.size == 0:
            return real(msg, fds)
        data = device.mig_data_read(2 * msg.size)
        return wire.MigDataReadReply(data, None, msg_id=msg.msg_id), []

    wrap_handler(hosted.core, Command.MIG_DATA_READ, fn)


@mutant("mig_read_fills_argsz", "MIG_DATA_READ reads argsz - 8 bytes when argsz is larger than "
        "8 + size", "migdata", "reply")
def _mig_read_fills_argsz(hosted: HostedDevice) -> None:
    def fn(real: Any, msg: Any, fds: list[int]) -> Any:
        if msg.argsz > 8 + msg.size:
            msg = replace(msg, size=msg.argsz - 8)
        return real(msg, fds)

    wrap_handler(hosted.core, Command.MIG_DATA_READ, fn)


@mutant("mig_read_reply_overlong", "MIG_DATA_READ replies carry 16 bytes more than argsz allows",
        ("fsm", "migdata"), "reply")
def _mig_read_reply_overlong(hosted: HostedDevice) -> None:
    def fn(raw: bytes) -> bytes:
        if is_ok_reply_to(raw, Command.MIG_DATA_READ):
            return with_header(raw, msg_size=len(raw) + 16) + bytes(16)
        return raw

    rewrite_out(hosted.core, fn)


@mutant("mig_read_client_limit_ignored", "MIG_DATA_READ larger than the client's "
        "max_data_xfer_size is served", "migdata", "errno")
def _mig_read_client_limit_ignored(hosted: HostedDevice) -> None:
    hosted.core._client_limit = lambda: 1 << 30  # type: ignore[method-assign]


@mutant("mig_write_reply_with_payload", "the MIG_DATA_WRITE reply echoes the request's argsz "
        "and size", ("gating", "migdata"), "reply")
def _mig_write_reply_with_payload(hosted: HostedDevice) -> None:
    def fn(raw: bytes) -> bytes:
        if is_ok_reply_to(raw, Command.MIG_DATA_WRITE):
            return with_header(raw, msg_size=len(raw) + 8) + bytes(8)
        return raw

    rewrite_out(hosted.core, fn)


@mutant("stop_copy_stream_never_ends", "in STOP_COPY every MIG_DATA_READ is answered in full, "
        "the stream never ends", "fsm", "data", timeout=0.5)
def _stop_copy_stream_never_ends(hosted: HostedDevice) -> None:
    core = hosted.core

    def read(real: Any, size: int) -> bytes:
        data: bytes = real(size)
        if core.state == State.STOP_COPY and len(data) < size:
            return data + bytes(size - len(data))
        return data

    on_device(hosted, "mig_data_read", read)


# ----- restore --------------------------------------------------------------------------------


def _swallow_restore_errors(hosted: HostedDevice, only_after_error: bool) -> None:
    """MIG_DATA_WRITE errors are ignored (the rest of the stream is dropped); leaving RESUMING
    succeeds: always, or (``only_after_error``) when a write had failed, so that only a
    stream whose length is wrong is still refused."""
    device = hosted.device
    poisoned = {"yes": False}

    def write(real: Any, data: Any) -> None:
        if poisoned["yes"]:
            return
        try:
            real(data)
        except DeviceError:
            poisoned["yes"] = True

    def on_arc(real: Any, src: State, dst: State) -> None:
        if src == State.RESUMING:
            swallow = poisoned["yes"] or not only_after_error
            poisoned["yes"] = False
            try:
                real(src, dst)
            except ArcActionError:
                if not swallow:
                    raise
                device._state = State(dst)  # type: ignore[attr-defined]
            return
        if dst == State.RESUMING:
            poisoned["yes"] = False
        real(src, dst)

    on_device(hosted, "mig_data_write", write)
    on_device(hosted, "on_arc", on_arc)


@mutant("resume_accepts_truncated", "RESUMING -> STOP succeeds whatever was written (a truncated "
        "stream is loaded as if complete)", "migdata", "data")
def _resume_accepts_truncated(hosted: HostedDevice) -> None:
    _swallow_restore_errors(hosted, only_after_error=False)


@mutant("resume_ignores_integrity", "a stream whose content fails the device's checks "
        "(corrupted, reordered) is loaded silently; only a wrong length is refused",
        "migdata", "data")
def _resume_ignores_integrity(hosted: HostedDevice) -> None:
    _swallow_restore_errors(hosted, only_after_error=True)


@mutant("save_corrupts_one_byte", "the STOP_COPY stream carries one flipped byte of BAR1 (a "
        "device whose stream has no integrity check)", "roundtrip", "data",
        device="lvu-sample", profile="lvu-sample")
def _save_corrupts_one_byte(hosted: HostedDevice) -> None:
    core = hosted.core
    sent = {"n": 0}

    def read(real: Any, size: int) -> bytes:
        data: bytes = real(size)
        if core.state == State.STOP_COPY:
            start, sent["n"] = sent["n"], sent["n"] + len(data)
            at = 100 - start
            if 0 <= at < len(data):
                data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]
        return data

    def on_arc(real: Any, src: State, dst: State) -> None:
        if dst == State.STOP_COPY:
            sent["n"] = 0
        real(src, dst)

    on_device(hosted, "mig_data_read", read)
    on_device(hosted, "on_arc", on_arc)


@mutant("save_corrupts_one_page", "one byte of device memory (BAR2) is flipped while STOP_COPY "
        "saves it and put back afterwards: the stream carries a page the device never had",
        "roundtrip", "data", profile="migdev")
def _save_corrupts_one_page(hosted: HostedDevice) -> None:
    device = hosted.device
    at = 0x3000

    def flip() -> None:
        byte = device.region_read(PciRegion.BAR2, at, 1, 0.0)
        device.region_write(PciRegion.BAR2, at, bytes([byte[0] ^ 0x5A]), 0.0)

    def on_arc(real: Any, src: State, dst: State) -> None:
        real(src, dst)
        if State.STOP_COPY in (src, dst):  # flipped on the way in, put back on the way out
            flip()

    on_device(hosted, "on_arc", on_arc)


@mutant("stop_copy_sends_stale_bar1", "STOP_COPY after PRE_COPY sends BAR1 as it was when "
        "pre-copy began: changes made during pre-copy are lost", "roundtrip", "data",
        device="lvu-sample", profile="lvu-sample")
def _stop_copy_sends_stale_bar1(hosted: HostedDevice) -> None:
    core = hosted.core
    device = hosted.device
    saved: dict[str, Any] = {"bar1": None, "sent": 0}

    def on_arc(real: Any, src: State, dst: State) -> None:
        if dst == State.PRE_COPY:
            saved["bar1"] = device.region_read(PciRegion.BAR1, 0, 0x3000, 0.0)
        if dst == State.STOP_COPY:
            saved["sent"] = 0
        if dst not in (State.PRE_COPY, State.STOP_COPY):
            saved["bar1"] = None
        real(src, dst)

    def read(real: Any, size: int) -> bytes:
        data: bytes = real(size)
        old = saved["bar1"]
        if core.state == State.STOP_COPY and old is not None:
            start = saved["sent"]
            saved["sent"] = start + len(data)
            stale = old[start:start + len(data)]
            data = stale + data[len(stale):]
        return data

    on_device(hosted, "on_arc", on_arc)
    on_device(hosted, "mig_data_read", read)


@mutant("restore_register_wrong", "after a restore BAR0 (the device's register) is off by one",
        "roundtrip", "data", device="lvu-sample", profile="lvu-sample")
def _restore_register_wrong(hosted: HostedDevice) -> None:
    device = hosted.device

    def on_arc(real: Any, src: State, dst: State) -> None:
        real(src, dst)
        if src == State.RESUMING:
            device._bar0 += 1  # type: ignore[attr-defined]

    on_device(hosted, "on_arc", on_arc)


@mutant("restore_one_page_wrong", "after a restore one byte of device memory (BAR2) differs "
        "from the source's", "roundtrip", "data", profile="migdev")
def _restore_one_page_wrong(hosted: HostedDevice) -> None:
    device = hosted.device

    def on_arc(real: Any, src: State, dst: State) -> None:
        real(src, dst)
        if src == State.RESUMING:
            byte = device.region_read(PciRegion.BAR2, 0x1000, 1, 0.0)
            device.region_write(PciRegion.BAR2, 0x1000, bytes([byte[0] ^ 0xFF]), 0.0)

    on_device(hosted, "on_arc", on_arc)
