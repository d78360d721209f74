"""Device-initiated DMA as a sans-IO coroutine, and the client's DMA address space.

A DMA job is a generator (:data:`DmaJob`) that yields :class:`DmaOp` values and receives, for
each one, the result: ``bytes`` of exactly ``op.length`` for a READ, ``None`` for a WRITE or a
CHECK; or a :class:`DmaFault` thrown in with ``job.throw(fault)`` when the op failed. The
server resolves each op through the client's fd-backed mapping (:class:`DmaSpace`) or by sending
DMA_READ/DMA_WRITE messages (splitting them to the client's max_data_xfer_size), and resumes the
job when the reply arrives. A job handles its own completion (device status, interrupts).

A mapping reaches client memory either through a memoryview (in-process callers, tests) or,
for a DMA_MAP fd, through :class:`FdMemory`: ``os.pread``/``os.pwrite`` on the client's fd,
never an mmap. A client can shrink its file at any time; through an mmap the next access past
the new end would kill the process with SIGBUS, through pread/pwrite it is a short transfer
(or a size check) that becomes a :class:`DmaFault`: the job faults, the server keeps serving.

CHECK_READ/CHECK_WRITE ops ask "is this whole IOVA range reachable with that access, on the
route the op's mode allows?" before any byte moves, so that a job aimed outside the mapped
ranges fails without touching memory on either side. The server must mark every completed
WRITE (mapped or message-based) in the device's dirty log.
"""

from __future__ import annotations

import bisect
import enum
import errno as _errno
import os
from collections.abc import Callable, Generator

from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.wire.record import Record, record

#: The largest IOVA + 1.
IOVA_LIMIT = 1 << 64


class DmaMode(enum.IntEnum):
    """How an op may reach client memory."""

    AUTO = 0
    """Through the fd-backed mapping when there is one, else by message."""
    MAPPED_ONLY = 1
    """Only through an fd-backed mapping; a mapping without fd is a fault."""
    MESSAGE_ONLY = 2
    """Only with DMA_READ/DMA_WRITE messages, even when an fd-backed mapping exists."""


class DmaKind(enum.IntEnum):
    """What an op does."""

    READ = 0
    WRITE = 1
    CHECK_READ = 2
    CHECK_WRITE = 3


class Route(enum.Enum):
    """How the server carries out an op."""

    DIRECT = "direct"
    MESSAGE = "message"


@record
class DmaOp(Record):
    """One step of a DMA job. ``data`` is set for WRITE only; ``length`` is always set."""

    kind: DmaKind
    iova: int
    length: int
    mode: DmaMode = DmaMode.AUTO
    data: bytes | None = None

    @classmethod
    def read(cls, iova: int, length: int, mode: DmaMode = DmaMode.AUTO) -> DmaOp:
        """Read ``length`` bytes of client memory at ``iova``."""
        return cls(DmaKind.READ, iova, length, mode)

    @classmethod
    def write(cls, iova: int, data: bytes, mode: DmaMode = DmaMode.AUTO) -> DmaOp:
        """Write ``data`` to client memory at ``iova``."""
        return cls(DmaKind.WRITE, iova, len(data), mode, data)

    @classmethod
    def check(cls, iova: int, length: int, *, write: bool, mode: DmaMode = DmaMode.AUTO) -> DmaOp:
        """Ask whether the whole range is reachable for reading (or writing)."""
        return cls(DmaKind.CHECK_WRITE if write else DmaKind.CHECK_READ, iova, length, mode)

    @property
    def is_write_access(self) -> bool:
        """True for WRITE and CHECK_WRITE."""
        return self.kind in (DmaKind.WRITE, DmaKind.CHECK_WRITE)


class DmaFault(Exception):
    """An op could not be carried out. ``errno`` is EFAULT.

    Nothing was read or written, except for an fd-backed WRITE that the kernel cut short
    mid-transfer (e.g. ENOSPC on a sparse file): a prefix of the range may then hold new data.
    """

    def __init__(self, message: str, iova: int, length: int, errno: int = _errno.EFAULT) -> None:
        super().__init__(message)
        self.iova = iova
        self.length = length
        self.errno = errno


class DmaMapError(DeviceError):
    """DMA_MAP/DMA_UNMAP refused (overlap, wrap-around, unknown mapping, bad view)."""


#: A DMA job: yields ops, receives bytes (READ) or None (WRITE, CHECK_*), returns nothing.
DmaJob = Generator[DmaOp, bytes | None, None]

#: Carries out one op synchronously: returns the result or raises DmaFault.
DmaResolver = Callable[[DmaOp], bytes | None]


def run_job(job: DmaJob, resolver: DmaResolver) -> int:
    """Drive ``job`` to completion, resolving each op with ``resolver``; return the op count.

    A :class:`DmaFault` from the resolver is thrown into the job, which decides what to do.
    """
    count = 0
    try:
        op = next(job)
        while True:
            count += 1
            try:
                result = resolver(op)
            except DmaFault as fault:
                op = job.throw(fault)
            else:
                op = job.send(result)
    except StopIteration:
        return count


class FdMemory:
    """Bytes [offset, offset+size) of a client's file, reached with pread/pwrite, never mmap.

    Owns ``fd`` (closes it in :meth:`close`). The client may shrink the file at any time: a
    read past its end comes back short and a write past its end is refused before any byte
    moves (pwrite would silently grow the file again); both raise ``OSError(EFAULT)``. Any
    other kernel error (EIO, ENOSPC, EPERM from a write seal, ...) is raised as is. Nothing
    here can raise SIGBUS.
    """

    __slots__ = ("_fd", "offset", "size")

    def __init__(self, fd: int, offset: int, size: int) -> None:
        if offset < 0 or size <= 0:
            raise ValueError(f"fd range offset={offset:#x} size={size:#x}")
        self._fd = fd
        self.offset = offset
        self.size = size

    @property
    def fd(self) -> int:
        """The file descriptor, -1 once closed."""
        return self._fd

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._fd < 0

    def _check(self, start: int, length: int) -> int:
        if self._fd < 0:
            raise OSError(_errno.EBADF, "DMA fd already closed")
        if start < 0 or length < 0 or start + length > self.size:
            raise OSError(_errno.EFAULT, f"[{start:#x}, +{length:#x}) outside {self.size:#x}")
        return self.offset + start

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes at ``start`` (relative to ``offset``); OSError(EFAULT) if short."""
        pos = self._check(start, length)
        first = os.pread(self._fd, length, pos)
        if len(first) == length:
            return first
        buf = bytearray(first)
        while len(buf) < length:
            more = os.pread(self._fd, length - len(buf), pos + len(buf))
            if not more:
                raise OSError(_errno.EFAULT, f"file ends {len(buf):#x} bytes into the read")
            buf += more
        return bytes(buf)

    def write(self, start: int, data: bytes | memoryview) -> None:
        """Write ``data`` at ``start``; OSError(EFAULT), nothing written, if the file shrank."""
        pos = self._check(start, len(data))
        end = pos + len(data)
        if os.fstat(self._fd).st_size < end:
            raise OSError(_errno.EFAULT, f"file shrank below {end:#x} bytes")
        view = memoryview(data)
        done = 0
        while done < len(data):
            n = os.pwrite(self._fd, view[done:], pos + done)
            if n <= 0:
                raise OSError(_errno.EFAULT, f"write stopped {done:#x} bytes in")
            done += n

    def close(self) -> None:
        """Close the fd (idempotent)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"FdMemory(fd={self._fd}, offset={self.offset:#x}, size={self.size:#x})"


@record
class DmaMapping(Record):
    """One DMA_MAP. Client memory is ``view`` (in-process) or ``fd`` (the client's fd, read
    and written with pread/pwrite); both None when DMA_MAP passed no fd (message route)."""

    iova: int
    size: int
    view: memoryview | None
    readable: bool = True
    writable: bool = True
    fd: FdMemory | None = None

    @property
    def end(self) -> int:
        """One past the last IOVA."""
        return self.iova + self.size

    @property
    def direct(self) -> bool:
        """True when the server reaches this memory itself (view or fd), not by message."""
        return self.view is not None or self.fd is not None

    def release(self) -> None:
        """Drop the memory: release the view, close the fd. The mapping is then message-only."""
        if self.view is not None:
            self.view.release()
        if self.fd is not None:
            self.fd.close()


class DmaSpace:
    """The client's DMA mappings as the server knows them: IOVA ranges, some fd-backed.

    Mappings never overlap and never wrap past 2**64. An access must lie entirely inside one
    mapping and respect its read/write permission, else :class:`DmaFault` and nothing moves.
    """

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._maps: list[DmaMapping] = []

    def __len__(self) -> int:
        """How many mappings there are (O(1))."""
        return len(self._maps)

    @property
    def mappings(self) -> tuple[DmaMapping, ...]:
        """All mappings, by increasing IOVA."""
        return tuple(self._maps)

    def covers(self, iova: int, length: int) -> bool:
        """True when every byte of ``[iova, iova + length)`` is in some mapping (adjacent
        mappings may share the range); an empty range is covered."""
        pos, end = iova, iova + length
        i = bisect.bisect_right(self._starts, pos) - 1
        while pos < end:
            if i < 0 or i >= len(self._maps) or not self._maps[i].iova <= pos < self._maps[i].end:
                return False
            pos = self._maps[i].end
            i += 1
        return True

    def map(
        self,
        iova: int,
        size: int,
        *,
        view: memoryview | None = None,
        readable: bool = True,
        writable: bool = True,
        fd: FdMemory | None = None,
    ) -> DmaMapping:
        """Add a mapping; DmaMapError(EINVAL) on bad bounds, bad view/fd or overlap.

        ``view`` or ``fd`` (not both) is the memory; the mapping owns ``fd`` once added (the
        caller still owns it when this raises). :meth:`DmaMapping.release` frees either.
        """
        if size <= 0 or iova < 0 or iova + size > IOVA_LIMIT:
            raise DmaMapError(f"DMA_MAP iova={iova:#x} size={size:#x}: empty or wraps past 2**64")
        if view is not None and fd is not None:
            raise DmaMapError(f"DMA_MAP iova={iova:#x}: both a view and an fd")
        if fd is not None and (fd.closed or fd.size != size):
            raise DmaMapError(f"DMA_MAP iova={iova:#x}: fd range of {fd.size} bytes, not {size}")
        if view is not None:
            if view.nbytes != size or view.itemsize != 1:
                raise DmaMapError(
                    f"DMA_MAP iova={iova:#x}: view of {view.nbytes} bytes, not {size}"
                )
            if writable and view.readonly:
                raise DmaMapError(f"DMA_MAP iova={iova:#x}: writable mapping over read-only view")
        pos = bisect.bisect_left(self._starts, iova)
        for neighbour in self._maps[max(pos - 1, 0) : pos + 1]:
            if neighbour.iova < iova + size and iova < neighbour.end:
                raise DmaMapError(
                    f"DMA_MAP iova={iova:#x} size={size:#x} overlaps the mapping at "
                    f"{neighbour.iova:#x} size={neighbour.size:#x}"
                )
        mapping = DmaMapping(iova, size, view, readable, writable, fd)
        self._starts.insert(pos, iova)
        self._maps.insert(pos, mapping)
        return mapping

    def unmap(self, iova: int, size: int) -> DmaMapping:
        """Remove the mapping that is exactly (iova, size); DmaMapError(ENOENT) if none."""
        pos = bisect.bisect_left(self._starts, iova)
        if pos < len(self._maps) and self._maps[pos].iova == iova and self._maps[pos].size == size:
            self._starts.pop(pos)
            return self._maps.pop(pos)
        raise DmaMapError(f"DMA_UNMAP iova={iova:#x} size={size:#x}: not mapped", _errno.ENOENT)

    def unmap_all(self) -> tuple[DmaMapping, ...]:
        """Remove every mapping; return them."""
        removed = tuple(self._maps)
        self._starts.clear()
        self._maps.clear()
        return removed

    def lookup(self, iova: int, length: int, *, write: bool) -> DmaMapping:
        """The mapping holding all of [iova, iova+length) with the access; else DmaFault."""
        if length <= 0 or iova < 0 or iova + length > IOVA_LIMIT:
            raise DmaFault(f"DMA iova={iova:#x} length={length}: empty or wraps", iova, length)
        pos = bisect.bisect_right(self._starts, iova) - 1
        if pos < 0 or self._maps[pos].end < iova + length:
            raise DmaFault(
                f"DMA range iova={iova:#x} length={length:#x} is not inside one mapped region",
                iova,
                length,
            )
        mapping = self._maps[pos]
        if not (mapping.writable if write else mapping.readable):
            access = "write" if write else "read"
            raise DmaFault(f"DMA {access} at iova={iova:#x}: mapping forbids it", iova, length)
        return mapping

    def route(self, op: DmaOp) -> Route:
        """How ``op`` must be carried out; DmaFault when no allowed route reaches the range."""
        mapping = self.lookup(op.iova, op.length, write=op.is_write_access)
        if op.mode is DmaMode.MESSAGE_ONLY:
            return Route.MESSAGE
        if mapping.direct:
            return Route.DIRECT
        if op.mode is DmaMode.MAPPED_ONLY:
            raise DmaFault(
                f"DMA at iova={op.iova:#x}: mode MAPPED_ONLY but the mapping has no fd",
                op.iova,
                op.length,
            )
        return Route.MESSAGE

    def read(self, iova: int, length: int) -> bytes:
        """Read through an fd-backed mapping; DmaFault if unreachable or the file shrank."""
        mapping = self.lookup(iova, length, write=False)
        start = iova - mapping.iova
        if mapping.fd is not None:
            try:
                return mapping.fd.read(start, length)
            except OSError as exc:
                raise _fd_fault("read", iova, length, exc) from None
        view = self._view(mapping, iova, length)
        return bytes(view[start : start + length])

    def write(self, iova: int, data: bytes) -> None:
        """Write through an fd-backed mapping; DmaFault if unreachable or the file shrank."""
        mapping = self.lookup(iova, len(data), write=True)
        start = iova - mapping.iova
        if mapping.fd is not None:
            try:
                mapping.fd.write(start, data)
            except OSError as exc:
                raise _fd_fault("write", iova, len(data), exc) from None
            return
        view = self._view(mapping, iova, len(data))
        view[start : start + len(data)] = data

    def resolve(self, op: DmaOp, message: DmaResolver | None = None) -> bytes | None:
        """Carry out ``op``: DIRECT ops here, MESSAGE ops through ``message`` (the client).

        Without ``message`` a MESSAGE route is a fault. CHECK ops only route.
        """
        route = self.route(op)
        if op.kind in (DmaKind.CHECK_READ, DmaKind.CHECK_WRITE):
            return None
        if route is Route.MESSAGE:
            if message is None:
                raise DmaFault("DMA by message but no message channel", op.iova, op.length)
            return message(op)
        if op.kind is DmaKind.READ:
            return self.read(op.iova, op.length)
        if op.data is None or len(op.data) != op.length:
            raise DmaFault("DMA WRITE op without matching data", op.iova, op.length)
        self.write(op.iova, op.data)
        return None

    @staticmethod
    def _view(mapping: DmaMapping, iova: int, length: int) -> memoryview:
        if mapping.view is None:
            raise DmaFault(f"DMA at iova={iova:#x}: mapping has no fd", iova, length)
        return mapping.view


def _fd_fault(what: str, iova: int, length: int, exc: OSError) -> DmaFault:
    return DmaFault(
        f"DMA {what} at iova={iova:#x} length={length:#x} through the client's fd: {exc}",
        iova,
        length,
    )
