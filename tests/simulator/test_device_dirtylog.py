"""DMA dirty logging: errors, read-and-clear, page-size conversion against a brute-force model."""

from __future__ import annotations

import errno

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from vfio_user_mig.simulator.device import DeviceError, DirtyLog
from vfio_user_mig.simulator.device.dirtylog import MAX_PAGE_SIZE, select_page_size

PAGE_SIZES = [1 << 12, 1 << 13, 1 << 14, 1 << 16]
SPAN = 1 << 20


class Reference:
    """A deliberately naive model: dirty logging pages as a set, reports page by page."""

    def __init__(self, lps: int, ranges: list[tuple[int, int]]) -> None:
        self.lps = lps
        self.ranges = ranges or [(0, 1 << 64)]
        self.dirty: set[int] = set()

    def mark(self, iova: int, length: int) -> None:
        for addr in range(iova, iova + length):  # small lengths only
            if any(r <= addr < r + n for r, n in self.ranges):
                self.dirty.add(addr // self.lps)

    def report(self, iova: int, length: int, ps: int) -> list[int]:
        end = iova + length
        out = []
        for n in range(-(-length // ps)):
            lo, hi = iova + n * ps, min(iova + (n + 1) * ps, end)
            if any(p * self.lps < hi and lo < (p + 1) * self.lps for p in self.dirty):
                out.append(n)
        self.dirty = {
            p for p in self.dirty if not (iova <= p * self.lps < (p + 1) * self.lps <= end)
        }
        return out


@pytest.mark.parametrize(("hint", "selected"), [
    (1, 4096), (512, 4096), (4095, 4096), (4096, 4096), (0x3000, 0x2000), (8192, 8192),
    (1 << 21, 1 << 21), (1 << 63, MAX_PAGE_SIZE), ((1 << 64) - 1, MAX_PAGE_SIZE)])
def test_page_size_hint_selects_a_supported_size(hint: int, selected: int) -> None:
    """vfio-user.rst DMA_LOGGING_START: page_size is a hint; the device selects the largest
    power of two not above it (the kernel's mlx5 ilog2), clamped into [4 KiB, 1 TiB]."""
    assert select_page_size(hint) == selected
    log = DirtyLog()
    assert log.start(hint) == selected == log.page_size
    assert log.start(hint) == selected  # a second START selecting the same size is a no-op


def test_start_ranges_aligned_to_the_hint() -> None:
    """Kernel vfio_ioctl_device_feature_logging_start: IS_ALIGNED(iova/length, page_size)."""
    log = DirtyLog()
    assert log.start(512, [(0x200, 0x400)]) == 4096  # aligned to the 512-byte hint
    log.mark(0, 0x1000)
    assert log.report(0, 0x1000, 4096) == [0]
    log.stop()
    with pytest.raises(DeviceError):
        log.start(0x2000, [(0x1000, 0x2000)])


def test_start_errors_and_stop() -> None:
    log = DirtyLog()
    log.mark(0, 4096)  # inactive: ignored
    with pytest.raises(DeviceError) as exc:
        log.report(0, 4096, 4096)
    assert exc.value.errno == errno.EINVAL
    with pytest.raises(DeviceError) as exc:
        log.start(0)  # hints nothing
    assert exc.value.errno == errno.EINVAL
    for bad_ranges in ([(0, 0)], [(2**64 - 4096, 8192)], [(0, 8192), (4096, 4096)],
                       [(0x800, 0x1000)], [(0, 0x1800)]):  # the last two: not aligned
        with pytest.raises(DeviceError) as exc:
            log.start(4096, bad_ranges)
        assert exc.value.errno == errno.EINVAL
    assert not log.active
    log.start(4096)
    log.mark(0, 1)
    # A second start: the same page size is a no-op keeping the dirty pages, another page
    # size is EINVAL (libvfio-user's rule; it used to be EBUSY here).
    log.start(4096)
    with pytest.raises(DeviceError) as exc:
        log.start(8192)
    assert exc.value.errno == errno.EINVAL
    assert log.report(0, 4096, 4096) == [0]
    with pytest.raises(DeviceError):
        log.report(100, 4096, 4096)  # unaligned iova
    log.mark(0, 1)
    log.stop()
    log.stop()
    log.start(8192)
    assert log.report(0, 1 << 20, 4096) == []


def test_read_and_clear_and_replication() -> None:
    log = DirtyLog()
    log.start(8192, [(0, 1 << 20)])
    log.mark(0x2000, 1)  # logging page 1 = bytes 0x2000..0x3fff
    log.mark(1 << 21, 4096)  # outside the logged range: ignored
    assert log.report(0, 0x10000, 4096) == [2, 3]  # one 8 KiB page -> two 4 KiB pages
    assert log.report(0, 0x10000, 4096) == []  # cleared
    log.mark(0x6000, 0x4000)
    assert log.report(0, 0x10000, 0x10000) == [0]  # coarser report
    log.mark(0x2000, 1)
    assert log.report(0x0, 0x3000, 4096) == [2]  # page 1 only partly inside: kept
    assert log.report(0x0, 0x4000, 4096) == [2, 3]
    assert log.report(0x0, 0x4000, 4096) == []


ops = st.lists(
    st.one_of(
        st.tuples(st.just("mark"), st.integers(0, SPAN), st.integers(1, 40000)),
        st.tuples(
            st.just("report"),
            st.integers(0, SPAN // 4096),
            st.integers(1, SPAN // 2),
            st.sampled_from(PAGE_SIZES),
        ),
    ),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(
    hint=st.sampled_from([512, 1024, *PAGE_SIZES]),
    ranges=st.sampled_from([[], [(0x4000, 0x20000)], [(0, 0x1000), (0x50000, 0x30000)],
                            [(0x200, 0x1400), (0x50400, 0x30000)]]),
    script=ops,
)
def test_matches_reference(
    hint: int,
    ranges: list[tuple[int, int]],
    script: list[tuple[str, int, int] | tuple[str, int, int, int]],
) -> None:
    # ranges must be aligned to the hint (kernel IS_ALIGNED); a hint below 4 KiB selects 4 KiB
    # logging pages that ranges only partly cover
    assume(all((a | n) % hint == 0 for a, n in ranges))
    lps = select_page_size(hint)
    log, ref = DirtyLog(), Reference(lps, ranges)
    assert log.start(hint, ranges) == lps
    for op in script:
        if op[0] == "mark":
            log.mark(op[1], op[2])
            ref.mark(op[1], op[2])
        else:
            _, page, length, ps = op  # type: ignore[misc]
            iova = page * 4096 // ps * ps
            assert log.report(iova, length, ps) == ref.report(iova, length, ps)
    assert log.report(0, 2 * SPAN, 4096) == ref.report(0, 2 * SPAN, 4096)


@settings(max_examples=40, deadline=None)
@given(
    lps=st.sampled_from(PAGE_SIZES),
    writes=st.lists(st.tuples(st.integers(0, SPAN), st.integers(1, 20000)), max_size=8),
    ps=st.sampled_from(PAGE_SIZES),
)
def test_every_written_byte_is_reported_once_then_cleared(
    lps: int, writes: list[tuple[int, int]], ps: int
) -> None:
    log = DirtyLog()
    log.start(lps)
    for iova, length in writes:
        log.mark(iova, length)
    pages = set(log.report(0, 2 * SPAN, ps))
    for iova, length in writes:
        assert all(addr // ps in pages for addr in (iova, iova + length - 1))
    assert log.report(0, 2 * SPAN, ps) == []


def test_unreported_counts_dirty_pages_until_reported_or_stopped() -> None:
    log = DirtyLog()
    assert log.unreported == 0
    log.start(4096)
    log.mark(0, 3 * 4096)
    log.mark(0x10000, 1)
    assert log.unreported == 4
    assert log.report(0, 0x1000, 4096) == [0]
    assert log.unreported == 3
    log.stop()
    assert log.unreported == 0
