"""The guest: its RAM, the VMM's own dirty tracking of guest (vCPU) writes, and a workload.

:class:`GuestRam` wraps a :class:`~vfio_user_mig.simulator.client.memory.GuestMemory` (a memfd the
source device DMAs into) with a page-granular dirty bitmap that every vCPU write through
:meth:`GuestRam.write` sets, as KVM's dirty log does for QEMU. Device writes into guest RAM
(DMA) are not seen here: the driver learns them from DMA_LOGGING_REPORT.

:class:`Workload` dirties memory at a rate (bytes/s of the migration clock), split between
vCPU writes to guest RAM, REGION_WRITEs to the device memory (BAR2; the device's pre-copy
tracking picks them up) and DMA jobs of the device copying its memory into guest RAM (seen only
by the device's dirty logging).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator

from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.device.regs import DmaDir, Reg, Status

PAGE_SIZE = 4096
BAR0, BAR2, CONFIG = 0, 2, 7


class GuestRam:
    """Guest RAM with the VMM's dirty bitmap of vCPU writes (see module docstring)."""

    def __init__(self, size: int, page_size: int = PAGE_SIZE, name: str = "guest-ram") -> None:
        if size <= 0 or size % page_size:
            raise ValueError(f"guest memory {size} must be a positive multiple of {page_size}")
        # Guest RAM is written whole (the fill on the source, the migration on the destination)
        self.memory = GuestMemory(size, name=name, populate=True)
        self.size = size
        self.page_size = page_size
        self.n_pages = size // page_size
        self._dirty = bytearray(self.n_pages)
        self._n_dirty = 0

    @property
    def fd(self) -> int:
        """The memfd (for DMA_MAP)."""
        return self.memory.fd

    @property
    def dirty_count(self) -> int:
        """Pages written since the last :meth:`take_dirty`."""
        return self._n_dirty

    def write(self, addr: int, data: bytes) -> None:
        """A vCPU write: store and mark the pages dirty."""
        self.memory.write(addr, data)
        ps = self.page_size
        for page in range(addr // ps, (addr + len(data) - 1) // ps + 1):
            if not self._dirty[page]:
                self._dirty[page] = 1
                self._n_dirty += 1

    def take_dirty(self) -> list[int]:
        """Dirty pages since the last call (read-and-clear)."""
        if not self._n_dirty:
            return []
        pages = [i for i, d in enumerate(self._dirty) if d]
        self._dirty = bytearray(self.n_pages)
        self._n_dirty = 0
        return pages

    def mark_all_dirty(self) -> None:
        """Every page dirty (the first pre-copy pass sends all of RAM)."""
        self._dirty = bytearray(b"\x01") * self.n_pages
        self._n_dirty = self.n_pages

    def pages(self, first: int, count: int) -> memoryview:
        """View of ``count`` pages from ``first``."""
        ps = self.page_size
        return self.memory.view[first * ps : (first + count) * ps]

    def store_pages(self, first: int, data: bytes | memoryview) -> None:
        """Receive pages (destination side; not a vCPU write, not tracked)."""
        ps = self.page_size
        self.memory.view[first * ps : first * ps + len(data)] = data

    def equals(self, other: GuestRam, block: int = 1 << 20) -> bool:
        """Same size and content (compared in bounded blocks: a copy of one side's block, a
        ``bytearray``, compared with the other's view is one ``memcmp``; two memoryviews
        compare element by element, some 30 times slower)."""
        if self.size != other.size:
            return False
        a, b = self.memory.view, other.memory.view
        return all(
            bytearray(a[off : off + block]) == b[off : off + block]
            for off in range(0, self.size, block)
        )

    def close(self) -> None:
        """Release the memfd."""
        self.memory.close()


def runs(pages: list[int], max_run: int) -> Iterator[tuple[int, int]]:
    """Sorted page numbers -> (first, count) runs of consecutive pages, at most ``max_run``."""
    first = count = 0
    for page in pages:
        if count and (page != first + count or count == max_run):
            yield first, count
            count = 0
        if not count:
            first = page
        count += 1
    if count:
        yield first, count


class Workload:
    """Dirties guest RAM and device memory at ``dirty_rate`` bytes per second of clock time.

    Shares: ``device_share`` of the dirtied pages are device memory (REGION_WRITE to BAR2),
    ``dma_share`` are DMA jobs copying device memory into guest RAM; the rest are vCPU writes.
    ``max_ops`` bounds the operations of one :meth:`run_until` call.
    """

    def __init__(
        self,
        rng: random.Random,
        guest: GuestRam,
        client: Client,
        device_mem: int,
        dirty_rate: float,
        *,
        device_share: float = 0.2,
        dma_share: float = 0.05,
        max_ops: int = 4096,
        dma_pages: int = 4,
    ) -> None:
        self.rng = rng
        self.guest = guest
        self.client = client
        self.device_mem = device_mem
        self.dirty_rate = dirty_rate
        self.device_share = device_share
        self.dma_share = dma_share
        self.max_ops = max_ops
        self.dma_pages = dma_pages
        self._last: float | None = None
        self._carry = 0.0
        self.stats = {"guest_writes": 0, "device_writes": 0, "dma_jobs": 0, "dma_failed": 0}
        self._bus_master = False

    def start(self, now: float) -> None:
        """Begin at ``now`` (enables bus mastering for DMA jobs)."""
        self._last = now
        if self.dma_share > 0 and not self._bus_master:
            self.client.region_write(CONFIG, 4, (0x0006).to_bytes(2, "little"))
            self._bus_master = True

    def stop(self) -> None:
        """No more writes until :meth:`start`."""
        self._last = None

    def run_until(self, now: float) -> int:
        """Dirty what the guest dirties between the last call and ``now``; returns pages."""
        if self._last is None or self.dirty_rate <= 0:
            return 0
        budget = self._carry + (now - self._last) * self.dirty_rate / PAGE_SIZE
        self._last = now
        n = int(budget)
        self._carry = budget - n
        # Dirtying more pages than exist (twice over) changes nothing the migration can see.
        n = min(n, self.max_ops, 2 * (self.guest.n_pages + self.device_mem // PAGE_SIZE))
        for _ in range(n):
            self._one()
        return n

    def _one(self) -> None:
        rng, ps = self.rng, PAGE_SIZE
        roll = rng.random()
        if roll < self.dma_share:
            self._dma_job()
        elif roll < self.dma_share + self.device_share:
            page = rng.randrange(self.device_mem // ps)
            self.client.region_write(BAR2, page * ps + rng.randrange(ps - 16), rng.randbytes(16))
            self.stats["device_writes"] += 1
        else:
            page = rng.randrange(self.guest.n_pages)
            self.guest.write(page * ps + rng.randrange(ps - 16), rng.randbytes(16))
            self.stats["guest_writes"] += 1

    def _reg(self, reg: Reg, value: int, size: int = 8) -> None:
        self.client.region_write(BAR0, int(reg), value.to_bytes(size, "little"))

    def _dma_job(self) -> None:
        """Device memory -> guest RAM (a DMA write the VMM does not see)."""
        ps, rng = PAGE_SIZE, self.rng
        n = min(rng.randint(1, self.dma_pages), self.guest.n_pages, self.device_mem // ps)
        dev = rng.randrange(self.device_mem // ps - n + 1) * ps
        iova = rng.randrange(self.guest.n_pages - n + 1) * ps
        self._reg(Reg.DMA_DEV_OFFSET, dev)
        self._reg(Reg.DMA_IOVA, iova)
        self._reg(Reg.DMA_LEN, n * ps)
        self._reg(Reg.DMA_DIR, int(DmaDir.TO_CLIENT), 4)
        self._reg(Reg.DMA_MODE, 0, 4)
        self._reg(Reg.DOORBELL, 1, 4)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            status = int.from_bytes(self.client.region_read(BAR0, int(Reg.STATUS), 4), "little")
            if not status & Status.BUSY:
                ok = status & Status.DONE and not status & (Status.FAULT | Status.REFUSED)
                self.stats["dma_jobs" if ok else "dma_failed"] += 1
                return
            self.client.poll(0.0)
        self.stats["dma_failed"] += 1


__all__ = ["PAGE_SIZE", "GuestRam", "Workload", "runs"]
