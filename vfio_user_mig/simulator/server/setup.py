"""Server handlers for session setup: VERSION (capabilities, the migration-data channel),
DMA_MAP/DMA_UNMAP (the client's memory; fds checked before use, docs/SECURITY.md),
DEVICE_GET_INFO and DEVICE_RESET (PROTOCOL.md section 2, vfio-user.rst).
"""

from __future__ import annotations

import errno as _errno
import fcntl
import mmap
import os
import stat
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.simulator.device.dma import (
    DmaMapError,
    FdMemory,
)
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.server.mig_channel import open_channel
from vfio_user_mig.simulator.server.state import ServerState
from vfio_user_mig.simulator.server.types import (
    IOVA_LIMIT,
    SERVER_MINOR,
    Refusal,
)
from vfio_user_mig.wire.capabilities import MIG_DATA_SOCKET_KEY, MIG_DATA_UNPADDED_KEY
from vfio_user_mig.wire.constants import (
    DeviceInfoFlag,
    DmaMapFlag,
    DmaUnmapFlag,
)
from vfio_user_mig.wire.layouts import (
    DEVICE_INFO,
)


class SetupHandlers(ServerState):
    """VERSION, DMA_MAP, DMA_UNMAP, DEVICE_GET_INFO and DEVICE_RESET."""

    def _version(self, msg: wire.Version, fds: list[int]) -> tuple[Any, list[int]]:
        if self.negotiated:
            raise Refusal(_errno.EINVAL, "VERSION already negotiated")
        if msg.major != 0:
            raise Refusal(_errno.ENOTSUP, f"major version {msg.major} unsupported (0 only)")
        client_caps = msg.capabilities or wire.Capabilities.make()
        if len(client_caps.text) > self.config.max_version_json:
            raise Refusal(
                _errno.E2BIG,
                f"VERSION JSON {len(client_caps.text)} bytes > {self.config.max_version_json}",
            )
        if client_caps.max_data_xfer_size < self.config.min_client_xfer_size:
            raise Refusal(
                _errno.EINVAL,
                f"client max_data_xfer_size {client_caps.max_data_xfer_size} < "
                f"{self.config.min_client_xfer_size}",
            )
        self.client_caps = client_caps
        self.negotiated = True
        extra: dict[str, Any] = {}
        reply_fds: list[int] = []
        self._pad_mig_data = not client_caps.mig_data_unpadded
        if not self._pad_mig_data:
            extra[MIG_DATA_UNPADDED_KEY] = True
        if self.config.experimental_mig_data_socket and client_caps.mig_data_socket_supported:
            self._drop_channel()
            self._new_channel = new = open_channel(self)
            self.mig_channel = new.channel
            extra[MIG_DATA_SOCKET_KEY] = {"fd_index": 0}
            reply_fds.append(new.client_end.fileno())
        caps = wire.Capabilities.make(
            max_msg_fds=self.config.max_msg_fds,
            max_data_xfer_size=self.config.max_data_xfer_size,
            migration_pgsize=self.config.migration_pgsize,
            extra=extra,
        )
        return wire.VersionReply(
            major=0, minor=min(msg.minor, SERVER_MINOR), capabilities=caps, msg_id=msg.msg_id
        ), reply_fds

    def _dma_map(self, msg: wire.DmaMap, fds: list[int]) -> tuple[Any, list[int]]:
        if len(fds) > 1:
            raise Refusal(_errno.EINVAL, f"DMA_MAP carries {len(fds)} fds, at most 1")
        # DmaSpace keeps its mappings in a list: its length is O(1) (``mappings`` copies).
        if len(self.dma) >= self.config.max_dma_maps:
            raise Refusal(_errno.ENOSPC, f"more than {self.config.max_dma_maps} DMA regions")
        if msg.size == 0 or msg.addr + msg.size > IOVA_LIMIT:
            raise Refusal(
                _errno.EINVAL, f"DMA_MAP addr={msg.addr:#x} size={msg.size:#x}: empty or wraps"
            )
        if not msg.flags & (DmaMapFlag.READ | DmaMapFlag.WRITE):
            # kernel vfio_dma_do_map: neither READ nor WRITE (nor VADDR) is EINVAL
            raise Refusal(_errno.EINVAL, f"DMA_MAP flags {msg.flags:#x}: neither READ nor WRITE")
        modes = msg.flags & (DmaMapFlag.MMAP | DmaMapFlag.FILE_IO)
        if modes and self.config.strict_spec:
            # the spec defines bits 0-1 only; the kernel's mask (READ|WRITE|VADDR) refuses
            # bit 3 and reads bit 2 as VADDR: libvfio-user's own bits only by default
            raise Refusal(_errno.EINVAL, f"DMA_MAP flags {msg.flags:#x}: bits 2-3 (strict spec)")
        if modes == DmaMapFlag.MMAP | DmaMapFlag.FILE_IO:
            # two access modes at once: libvfio-user's handle_dma_map takes MMAP and then finds
            # FILE_IO left over (EINVAL)
            raise Refusal(_errno.EINVAL, f"DMA_MAP flags {msg.flags:#x}: MMAP and FILE_IO")
        if modes and not fds:
            # libvfio-user's own flags (docs/wire-compat.md row 6) name an fd access mode
            raise Refusal(_errno.EINVAL, f"DMA_MAP flags {msg.flags:#x} need a file descriptor")
        readable = bool(msg.flags & DmaMapFlag.READ)
        writable = bool(msg.flags & DmaMapFlag.WRITE)
        memory: FdMemory | None = None
        if fds:
            # The mapping keeps a close-on-exec dup of the fd (the received one is closed, as
            # before) and reads/writes it with pread/pwrite: no mmap, so a client shrinking the
            # file can make DMA ops fault but can never raise SIGBUS in the server.
            fd = fds.pop()
            try:
                self._check_map_fd(
                    fd, msg.offset, msg.size, writable, self.config.require_sealed_dma_fds
                )
                memory = FdMemory(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 0), msg.offset, msg.size)
            except (OSError, ValueError, OverflowError) as exc:
                raise Refusal(_errno.EINVAL, f"DMA_MAP cannot use the fd: {exc}") from None
            finally:
                os.close(fd)
        try:
            self.dma.map(msg.addr, msg.size, readable=readable, writable=writable, fd=memory)
        except DmaMapError as exc:
            if memory is not None:
                memory.close()
            raise Refusal(exc.errno, str(exc)) from None
        return wire.DmaMapReply(msg_id=msg.msg_id), []

    @staticmethod
    def _check_map_fd(fd: int, offset: int, size: int, writable: bool, sealed: bool) -> None:
        """The fd must be a regular file (memfd, tmpfs/shm, hugetlbfs, disk file) opened for
        reading (and writing, without O_APPEND, for a writable mapping), the range
        [offset, offset+size) page aligned and inside it; with ``sealed``, the file must be
        sealed against shrinking. These are the fds the former mmap accepted, minus devices."""
        if offset % mmap.ALLOCATIONGRANULARITY:
            raise Refusal(_errno.EINVAL, f"DMA_MAP offset {offset:#x} not aligned")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        access = flags & os.O_ACCMODE
        if access == os.O_WRONLY or (writable and access != os.O_RDWR):
            raise Refusal(_errno.EINVAL, "DMA_MAP fd not open for the mapping's access")
        if writable and flags & os.O_APPEND:
            raise Refusal(_errno.EINVAL, "DMA_MAP fd is O_APPEND: writes would not land")
        if sealed:
            try:
                seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
            except OSError:
                seals = 0
            if not seals & fcntl.F_SEAL_SHRINK:
                raise Refusal(_errno.EPERM, "DMA_MAP fd is not sealed against shrinking")
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refusal(_errno.EINVAL, "DMA_MAP fd is not a regular file (memfd, shm, ...)")
        if offset + size > st.st_size:
            raise Refusal(
                _errno.EINVAL,
                f"DMA_MAP offset {offset:#x} + size {size:#x} past the end of the "
                f"{st.st_size:#x}-byte file",
            )

    def _dma_unmap(self, msg: wire.DmaUnmap, fds: list[int]) -> tuple[Any, list[int]]:
        if msg.flags == DmaUnmapFlag.GET_DIRTY_BITMAP:
            return self._dma_unmap_bitmap(msg), []
        if msg.flags & ~int(DmaUnmapFlag.ALL):
            raise Refusal(_errno.EINVAL, f"DMA_UNMAP flags {msg.flags:#x} unsupported")
        if msg.flags & DmaUnmapFlag.ALL:
            if msg.addr or msg.size:
                raise Refusal(_errno.EINVAL, "DMA_UNMAP ALL with a non-zero range")
            removed = self.dma.unmap_all()
        else:
            try:
                removed = (self.dma.unmap(msg.addr, msg.size),)
            except DmaMapError as exc:
                raise Refusal(exc.errno, str(exc)) from None
        for mapping in removed:
            self._release(mapping)
        return wire.DmaUnmapReply(
            addr=msg.addr, size=msg.size, flags=msg.flags, argsz=msg.argsz, msg_id=msg.msg_id
        ), []

    def _dma_unmap_bitmap(self, msg: wire.DmaUnmap) -> wire.DmaUnmapReply:
        """DMA_UNMAP with GET_DIRTY_BITMAP (docs/wire-compat.md row 7, libvfio-user's
        ``handle_dma_unmap``): the dirty pages of the region since the last report are
        returned in the reply (read-and-clear, as DMA_LOGGING_REPORT) and the region is
        unmapped, so no page dirtied in it is lost. EINVAL when logging is off, for a page
        size not a power of two of at least 4 KiB (the REPORT rule) or a bitmap size other
        than ``bitmap_len(size, pgsize)``; E2BIG above the bitmap limit; ENOENT when the range
        is not exactly one mapped region. Everything is checked before anything is cleared."""
        header = msg.bitmap
        if header is None:  # not reached: the codec requires the bitmap header
            raise Refusal(_errno.EINVAL, "DMA_UNMAP GET_DIRTY_BITMAP without a bitmap")
        if not self.device.dirty_log.active:
            raise Refusal(_errno.EINVAL, "DMA_UNMAP GET_DIRTY_BITMAP while not logging")
        pgsize = header.pgsize
        if pgsize < 4096 or pgsize & (pgsize - 1):
            raise Refusal(_errno.EINVAL, f"DMA_UNMAP bitmap pgsize {pgsize:#x}")
        if msg.size == 0:
            raise Refusal(_errno.EINVAL, "DMA_UNMAP GET_DIRTY_BITMAP of an empty range")
        need = wire.bitmap_len(msg.size, pgsize)
        if header.size != need:
            raise Refusal(_errno.EINVAL, f"DMA_UNMAP bitmap size {header.size} != {need}")
        limit = min(self.config.max_bitmap_size, self._client_limit())
        if need > limit:
            raise Refusal(_errno.E2BIG, f"DMA_UNMAP bitmap {need} bytes > {limit}")
        if not any(m.iova == msg.addr and m.size == msg.size for m in self.dma.mappings):
            raise Refusal(
                _errno.ENOENT, f"DMA_UNMAP iova={msg.addr:#x} size={msg.size:#x}: not mapped"
            )
        try:
            pages = self.device.dirty_log.report(msg.addr, msg.size, pgsize)
            bitmap = wire.DirtyBitmap.from_pages(msg.addr, msg.size, pgsize, pages).to_bytes()
        except (DeviceError, ValueError) as exc:
            raise Refusal(getattr(exc, "errno", _errno.EINVAL), str(exc)) from None
        self._release(self.dma.unmap(msg.addr, msg.size))
        return wire.DmaUnmapReply(
            addr=msg.addr, size=msg.size, flags=msg.flags, argsz=msg.argsz, bitmap=header,
            bitmap_data=bitmap, msg_id=msg.msg_id,
        )

    def _device_info(self, msg: wire.DeviceGetInfo, fds: list[int]) -> tuple[Any, list[int]]:
        if msg.argsz < DEVICE_INFO.size:
            raise Refusal(_errno.EINVAL, f"DEVICE_GET_INFO argsz {msg.argsz} too small")
        return wire.DeviceGetInfoReply(
            flags=int(DeviceInfoFlag.RESET | DeviceInfoFlag.PCI),
            num_regions=len(self.device.regions),
            num_irqs=len(self.device.irqs),
            msg_id=msg.msg_id,
        ), []

    def _reset(self, msg: wire.DeviceReset, fds: list[int]) -> tuple[Any, list[int]]:
        self._job = None
        self._pending = None
        self.fsm.reset()
        return wire.DeviceResetReply(msg_id=msg.msg_id), []


__all__ = ["SetupHandlers"]
