"""DMA dirty logging: which client pages the device wrote (DMA_LOGGING_START/STOP/REPORT).

Logging keeps a set of dirty *logging pages* (absolute IOVA // ``page_size`` given to
:meth:`DirtyLog.start`). :meth:`DirtyLog.report` answers at any power-of-two page size:

* report page ``n`` covers ``[iova + n*ps, iova + (n+1)*ps)`` and is dirty when a dirty logging
  page intersects it within the report range ``[iova, iova + length)``; a coarse logging page
  therefore dirties every finer report page it overlaps (bits replicated), and a coarse report
  page is dirty when any finer logging page in it is;
* read-and-clear: the report clears the logging pages that lie entirely inside the report
  range. A logging page only partly inside stays dirty (a write is never lost; a page may be
  reported twice, which is safe).

The ``page_size`` given to :meth:`DirtyLog.start` is a hint (vfio-user.rst
"VFIO_DEVICE_FEATURE_DMA_LOGGING_START", the kernel's ``vfio.h``: "If the device cannot do the
hinted page size then it's the driver's choice which page size to pick based on its support.
On output the device will return the page size it selected"). :func:`select_page_size` is our
device's choice, the one the kernel's mlx5 driver makes (``mlx5vf_start_page_tracker``): the
largest power of two not above the hint (``ilog2``), clamped into
[:data:`MIN_PAGE_SIZE`, :data:`MAX_PAGE_SIZE`]. A hint of 0 hints nothing: EINVAL (as
libvfio-user's ``dma_controller_dirty_page_logging_start``). Each range must be aligned, iova
and length, to that power of two (the kernel's ``vfio_ioctl_device_feature_logging_start``
checks ``IS_ALIGNED(range.iova, page_size)`` and the length on the hint: EINVAL).

The bitmap encoding is the wire layer's job; this module deals in page numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from vfio_user_mig.simulator.device.errors import DeviceError

#: Smallest and largest page size accepted for logging and reports (the kernel's floor is 4 KiB).
MIN_PAGE_SIZE = 1 << 12
MAX_PAGE_SIZE = 1 << 40
IOVA_LIMIT = 1 << 64


def _check_page_size(page_size: int, what: str) -> None:
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise DeviceError(
            f"{what}: page_size {page_size:#x} is not a power of two in "
            f"[{MIN_PAGE_SIZE:#x}, {MAX_PAGE_SIZE:#x}]"
        )


def select_page_size(hint: int) -> int:
    """The logging page size our device selects for a START ``page_size`` hint (module
    docstring): ``2**floor(log2(hint))`` clamped into [MIN_PAGE_SIZE, MAX_PAGE_SIZE];
    :class:`DeviceError` (EINVAL) for 0."""
    if hint <= 0:
        raise DeviceError(f"DMA_LOGGING_START: page_size {hint:#x} hints no page size")
    return min(max(1 << (hint.bit_length() - 1), MIN_PAGE_SIZE), MAX_PAGE_SIZE)


def _check_range(iova: int, length: int, what: str) -> None:
    if length <= 0 or iova < 0 or iova + length > IOVA_LIMIT:
        raise DeviceError(f"{what}: range iova={iova:#x} length={length:#x} is empty or wraps")


class DirtyLog:
    """Dirty logging state of one device; inactive until :meth:`start`."""

    def __init__(self) -> None:
        self._page_size = 0
        self._ranges: tuple[tuple[int, int], ...] = ()
        self._dirty: set[int] = set()

    @property
    def active(self) -> bool:
        """True between start and stop."""
        return self._page_size != 0

    @property
    def page_size(self) -> int:
        """The logging page size (0 when inactive)."""
        return self._page_size

    @property
    def unreported(self) -> int:
        """How many logging pages are dirty and not returned by a report yet (0 when
        inactive)."""
        return len(self._dirty)

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The logged (iova, length) ranges, sorted; empty means everything."""
        return self._ranges

    def start(self, page_size: int, ranges: Iterable[tuple[int, int]] = ()) -> int:
        """Start logging with the page size selected for the hint ``page_size``
        (:func:`select_page_size`) and return it; no ranges means all of the IOVA space, maps
        added later included (vfio-user.rst: "A value of zero indicates that all writes should
        be logged").

        While logging, a second start whose hint selects the same page size succeeds and
        changes nothing (the dirty pages and ranges are kept); another page size is EINVAL
        (libvfio-user's ``dma_controller_dirty_page_logging_start``; the spec is silent).
        EINVAL for a hint of 0, a range not aligned to the hint's power of two, an
        empty/wrapping range or overlapping ranges. On error nothing changes.
        """
        selected = select_page_size(page_size)
        if self.active:
            if selected != self._page_size:
                raise DeviceError(
                    f"DMA_LOGGING_START: logging already started with page size "
                    f"{self._page_size:#x}, not {selected:#x}"
                )
            return selected
        align = 1 << (page_size.bit_length() - 1)
        sorted_ranges = sorted(ranges)
        for iova, length in sorted_ranges:
            _check_range(iova, length, "DMA_LOGGING_START")
            if (iova | length) & (align - 1):
                raise DeviceError(
                    f"DMA_LOGGING_START: range iova={iova:#x} length={length:#x} is not "
                    f"aligned to page_size {align:#x}"
                )
        for (a_iova, a_len), (b_iova, _) in itertools.pairwise(sorted_ranges):
            if a_iova + a_len > b_iova:
                raise DeviceError(
                    f"DMA_LOGGING_START: ranges at {a_iova:#x} and {b_iova:#x} overlap"
                )
        self._page_size = selected
        self._ranges = tuple(sorted_ranges)
        self._dirty = set()
        return selected

    def stop(self) -> None:
        """Stop logging and forget the dirty pages; stopping when inactive is a no-op."""
        self._page_size = 0
        self._ranges = ()
        self._dirty = set()

    def mark(self, iova: int, length: int) -> None:
        """Record a completed device write of ``length`` bytes at ``iova`` (no-op if inactive).

        Only the parts inside the logged ranges are recorded.
        """
        if not self.active or length <= 0:
            return
        end = min(iova + length, IOVA_LIMIT)
        spans = self._ranges or ((0, IOVA_LIMIT),)
        ps = self._page_size
        for r_iova, r_len in spans:
            lo, hi = max(iova, r_iova), min(end, r_iova + r_len)
            if lo < hi:
                self._dirty.update(range(lo // ps, (hi - 1) // ps + 1))

    def report(self, iova: int, length: int, page_size: int) -> list[int]:
        """Sorted dirty report-page numbers relative to ``iova`` at ``page_size``; clears them.

        EINVAL if logging is inactive, the page size is bad, ``iova`` is not aligned to it, or
        the range is empty or wraps. On error nothing is cleared.
        """
        if not self.active:
            raise DeviceError("DMA_LOGGING_REPORT: logging not started")
        _check_page_size(page_size, "DMA_LOGGING_REPORT")
        _check_range(iova, length, "DMA_LOGGING_REPORT")
        if iova % page_size:
            raise DeviceError(
                f"DMA_LOGGING_REPORT: iova {iova:#x} not aligned to page_size {page_size:#x}"
            )
        lps = self._page_size
        end = iova + length
        first, last = iova // lps, (end - 1) // lps
        if last - first + 1 <= len(self._dirty):
            hits = [p for p in range(first, last + 1) if p in self._dirty]
        else:
            hits = sorted(p for p in self._dirty if first <= p <= last)
        pages: list[int] = []
        for p in hits:
            lo, hi = max(p * lps, iova), min((p + 1) * lps, end)
            a, b = (lo - iova) // page_size, (hi - 1 - iova) // page_size
            if pages and pages[-1] >= a:
                a = pages[-1] + 1
            pages.extend(range(a, b + 1))
            if iova <= p * lps and (p + 1) * lps <= end:
                self._dirty.discard(p)
        return pages
