"""The ``dma`` group's dirty-logging rules (check/groups/dma_dirty.py) against our server in
this process (real sockets): no findings as shipped, and each rule catches a server planted
with the defect it is about (a small patch of the served device or handler, this test only)."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from typing import Any

import pytest

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups import run_suite
from vfio_user_mig.check.profiles import get_profile
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.target import SocketTarget
from vfio_user_mig.model import State
from vfio_user_mig.simulator.device.dirtylog import DirtyLog
from vfio_user_mig.simulator.server.hosting import HostedDevice
from vfio_user_mig.simulator.server.types import Refusal
from vfio_user_mig.wire import Command


def _findings(path: str, profile: str | None = "migdev") -> dict[str, Kind]:
    checker = Checker(SocketTarget(path), timeout=1.0,
                      profile=get_profile(profile) if profile else None)
    run_suite(checker, {"dma"})
    assert checker.report.checks > 0
    return {f.title: f.kind for f in checker.report.findings}


def _any(found: dict[str, Kind], needle: str, kind: Kind) -> bool:
    return any(needle in title and k is kind for title, k in found.items())


def _log(hosted: HostedDevice) -> DirtyLog:
    log: DirtyLog = hosted.device.dirty_log
    return log


def test_no_findings_against_our_server(served_device: tuple[HostedDevice, str]) -> None:
    assert _findings(served_device[1]) == {}


@pytest.mark.parametrize("served_device", ["lvu-sample"], indirect=True)
def test_no_findings_against_our_lvu_sample(served_device: tuple[HostedDevice, str]) -> None:
    assert _findings(served_device[1], "lvu-sample") == {}


def test_bits_lost_past_report_page_256_are_found(served_device: tuple[HostedDevice, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The migdev profile dirties pages past report page 256 at every ratio."""
    hosted, path = served_device
    log = _log(hosted)
    real = log.report

    def lossy(iova: int, length: int, page_size: int) -> list[int]:
        return [p for p in real(iova, length, page_size) if p < 256]

    monkeypatch.setattr(log, "report", lossy)
    found = _findings(path)
    for ratio in ("equal to", "4x", "half"):
        assert _any(found, f"({ratio}", Kind.DATA) or _any(found, f"({ratio} the", Kind.DATA), \
            (ratio, found)


def test_last_page_of_a_range_lost_is_found(served_device: tuple[HostedDevice, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    log = _log(hosted)
    real = log.report

    def no_last(iova: int, length: int, page_size: int) -> list[int]:
        last = (length - 1) // page_size
        return [p for p in real(iova, length, page_size) if p != last]

    monkeypatch.setattr(log, "report", no_last)
    assert _any(_findings(path), "every page written is reported dirty", Kind.DATA)


def test_report_that_does_not_clear_is_found(served_device: tuple[HostedDevice, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    log = _log(hosted)
    real = log.report

    def keeps(iova: int, length: int, page_size: int) -> list[int]:
        saved = set(log._dirty)
        pages = real(iova, length, page_size)
        log._dirty |= saved
        return pages

    monkeypatch.setattr(log, "report", keeps)
    assert _any(_findings(path), "a REPORT clears what it returned", Kind.DATA)


def test_stop_that_does_nothing_is_found(served_device: tuple[HostedDevice, str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    monkeypatch.setattr(_log(hosted), "stop", lambda: None)
    found = _findings(path)
    assert found.get("DMA_LOGGING_REPORT after STOP refused") == Kind.ERRNO


def test_stop_that_keeps_logging_is_found(served_device: tuple[HostedDevice, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """LOGGING_STOP that only hides the log: REPORT is refused while stopped, but the device
    keeps recording and the next START carries the old log on."""
    from vfio_user_mig.simulator.device.errors import DeviceError

    hosted, path = served_device
    log = _log(hosted)
    real_start, real_report = log.start, log.report
    stopped = {"on": False}

    def stop() -> None:
        stopped["on"] = True

    def start(page_size: int, ranges: Any = ()) -> int:
        if stopped["on"] and log.active:
            stopped["on"] = False
            return log.page_size
        return real_start(page_size, ranges)

    def report(iova: int, length: int, page_size: int) -> list[int]:
        if stopped["on"]:
            raise DeviceError("logging stopped")
        return real_report(iova, length, page_size)

    for name, fn in (("stop", stop), ("start", start), ("report", report)):
        monkeypatch.setattr(log, name, fn)
    found = _findings(path)
    assert _any(found, "writes while logging was stopped are not reported", Kind.DATA), found


def test_later_maps_not_logged_with_num_ranges_0_are_found(
        served_device: tuple[HostedDevice, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """num_ranges 0 read as "the maps there are now": a map added after START is not logged."""
    hosted, path = served_device
    log = _log(hosted)
    real = log.start

    def snapshot(page_size: int, ranges: Any = ()) -> int:
        ranges = list(ranges) or [(m.iova, m.size) for m in hosted.core.dma.mappings]
        return real(page_size, ranges)

    monkeypatch.setattr(log, "start", snapshot)
    assert _any(_findings(path), "a map added after START included", Kind.DATA)


def test_pages_written_in_pre_copy_not_logged_are_found(
        served_device: tuple[HostedDevice, str], monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    log = _log(hosted)
    real = log.mark

    def running_only(iova: int, length: int) -> None:
        if hosted.device.mig_state is not State.PRE_COPY:
            real(iova, length)

    monkeypatch.setattr(log, "mark", running_only)
    found = _findings(path)
    assert _any(found, "written again in PRE_COPY", Kind.DATA), found


def test_start_reply_echoing_the_hint_is_found(served_device: tuple[HostedDevice, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A START reply that echoes a 0x3000 hint instead of the selected power of two."""
    hosted, path = served_device
    real = hosted.core._handlers[Command.DEVICE_FEATURE]

    def echo_hint(msg: Any, fds: list[int]) -> Any:
        reply, out = real(msg, fds)
        if int(msg.feature) == 6 and not getattr(reply, "is_error", False):
            reply = dataclasses.replace(reply, data=msg.data)
        return reply, out

    monkeypatch.setitem(hosted.core._handlers, Command.DEVICE_FEATURE, echo_hint)
    found = _findings(path, None)
    assert found.get("DMA_LOGGING_START with a page size hint of 0x3000 (not a power of two): "
                     "reply echoes the request with a power-of-two page size") == Kind.REPLY


def test_small_hint_refused_is_found(served_device: tuple[HostedDevice, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The former rule: a power-of-two hint below 4 KiB refused instead of rounded up."""
    hosted, path = served_device
    log = _log(hosted)
    real = log.start

    def strict(page_size: int, ranges: Any = ()) -> int:
        if page_size < 4096:
            from vfio_user_mig.simulator.device.errors import DeviceError
            raise DeviceError("page size below 4 KiB")
        return real(page_size, ranges)

    monkeypatch.setattr(log, "start", strict)
    found = _findings(path, None)
    assert found.get("DMA_LOGGING_START with a page size hint of 512") == Kind.ERRNO


def test_unaligned_ranges_accepted_are_found(served_device: tuple[HostedDevice, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    log = _log(hosted)
    real = log.start
    monkeypatch.setattr(log, "start", lambda page_size, ranges=(): real(page_size, ()))
    found = _findings(path, None)
    assert found.get("DMA_LOGGING_START with a range not aligned to page_size refused") \
        == Kind.ERRNO


def test_unmap_with_bitmap_refused_is_found(served_device: tuple[HostedDevice, str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device

    def refuse(msg: Any) -> Any:
        raise Refusal(errno.EINVAL, "GET_DIRTY_BITMAP unsupported")

    monkeypatch.setattr(hosted.core, "_dma_unmap_bitmap", refuse)
    found = _findings(path)
    assert found.get("DMA_UNMAP with GET_DIRTY_BITMAP while logging") == Kind.ERRNO
    assert _any(found, "with GET_DIRTY_BITMAP (written again in PRE_COPY)", Kind.ERRNO)


def test_unmap_with_bitmap_losing_pages_is_found(served_device: tuple[HostedDevice, str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    real: Callable[[Any], Any] = hosted.core._dma_unmap_bitmap

    def blank(msg: Any) -> Any:
        reply = real(msg)
        return dataclasses.replace(reply, bitmap_data=bytes(len(reply.bitmap_data)))

    monkeypatch.setattr(hosted.core, "_dma_unmap_bitmap", blank)
    assert _any(_findings(path), "every page written is in the bitmap", Kind.DATA)


def test_dma_map_without_access_accepted_is_found(served_device: tuple[HostedDevice, str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hosted, path = served_device
    real = hosted.core._handlers[Command.DMA_MAP]

    def any_flags(msg: Any, fds: list[int]) -> Any:
        return real(dataclasses.replace(msg, flags=msg.flags or 3), fds)

    monkeypatch.setitem(hosted.core._handlers, Command.DMA_MAP, any_flags)
    assert _findings(path, None).get("DMA_MAP with neither READ nor WRITE refused") == Kind.ERRNO
