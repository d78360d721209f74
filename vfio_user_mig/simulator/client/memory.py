"""Guest RAM for the client side of vfio-user: a memfd the client shares with the server in
DMA_MAP, or serves DMA_READ/DMA_WRITE requests from (PROTOCOL.md section 5)."""

from __future__ import annotations

import mmap
import os


class GuestMemory:
    """Guest RAM backed by a memfd (so the server can map it); addresses are IOVAs from
    ``base``. Reads/writes outside the range raise ``ValueError``."""

    def __init__(self, size: int, base: int = 0, name: str = "guest-ram", *,
                 populate: bool = False) -> None:
        """``populate``: fault every page in when mapping (``MAP_POPULATE``: one pass in the
        kernel instead of a fault per page at first touch), for memory that will be written
        whole anyway."""
        self.size = size
        self.base = base
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        flags = mmap.MAP_SHARED | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        self.mm = mmap.mmap(self.fd, size, flags=flags)
        self.view = memoryview(self.mm)

    def _range(self, iova: int, length: int) -> slice:
        start = iova - self.base
        if start < 0 or length < 0 or start + length > self.size:
            raise ValueError(f"guest address {iova:#x}+{length:#x} outside guest memory")
        return slice(start, start + length)

    def read(self, iova: int, length: int) -> bytes:
        """Copy of guest memory at ``iova``."""
        return bytes(self.view[self._range(iova, length)])

    def write(self, iova: int, data: bytes | memoryview) -> None:
        """Store into guest memory at ``iova``."""
        self.view[self._range(iova, len(data))] = data

    def close(self) -> None:
        """Unmap and close the memfd."""
        self.view.release()
        self.mm.close()
        os.close(self.fd)

__all__ = ["GuestMemory"]
