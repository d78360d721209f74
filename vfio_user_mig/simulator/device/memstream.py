"""``MemStreamDev``: a :class:`~.migdev.MigDev` whose save stream is generated in advance.

It exists to measure the *protocol path* of migration data (client, socket, IO pump, server
core) without the device's save work: at construction it encodes its own state once with the
real save path (a valid, restorable stream: HEADER, PAGES, REGS, END with CRCs and digest)
and keeps it in memory; each MIG_DATA_READ then returns a zero-copy memoryview slice of it.

Stream phases: PRE_COPY serves HEADER and all PAGES, then reads return short ("caught up");
STOP_COPY serves the rest (REGS, END; everything if PRE_COPY was skipped), then the stream
ends. Leaving the saving group discards the position; the next save starts from the top.
The stream is a snapshot of construction time: it describes the device's state only as
long as memory and registers are not changed afterwards (the benchmark never changes them).
"""

from __future__ import annotations

from typing import cast

from vfio_user_mig.simulator.device.migdev import MigDev
from vfio_user_mig.simulator.device.migdev_base import SaveStream
from vfio_user_mig.simulator.device.session import SaveSession
from vfio_user_mig.simulator.device.stream import RECORD_HEADER, RecordType

_GEN_CHUNK = 1 << 22


class PregeneratedStream:
    """A :class:`~.migdev.SaveStream` serving slices of ``stream``; PRE_COPY stops at
    ``precopy_end`` (see module docstring)."""

    def __init__(self, stream: bytes, precopy_end: int, *, precopy: bool) -> None:
        self._view = memoryview(stream).toreadonly()
        self._pos = 0
        self._limit = precopy_end if precopy else len(stream)

    def read(self, max_size: int) -> bytes:
        """Up to ``max_size`` bytes, as a read-only memoryview slice (no copy)."""
        pos = self._pos
        end = min(pos + max_size, self._limit)
        self._pos = end
        # The core hands this straight to the codec, which takes any buffer (wire ``Data``);
        # ``Device.mig_data_read`` is annotated ``bytes`` only.
        return cast(bytes, self._view[pos:end])

    def read_parts(self, max_size: int) -> list[bytes | memoryview]:
        """:meth:`read` as parts (one)."""
        return [self.read(max_size)]

    def stop_copy(self) -> None:
        """Serve the rest of the stream."""
        self._limit = len(self._view)


def _regs_offset(stream: bytes) -> int:
    """Offset of the REGS record (the end of HEADER + PAGES)."""
    pos = 0
    while pos < len(stream):
        _magic, _ver, rtype, _seq, length, _crc = RECORD_HEADER.unpack_from(stream, pos)
        if rtype == RecordType.REGS:
            return pos
        pos += RECORD_HEADER.size + length
    raise ValueError("stream without REGS")


class MemStreamDev(MigDev):
    """MigDev serving a pre-generated save stream (see module docstring). ``fill`` writes a
    non-zero pattern into device memory first, so the stream is not all zero pages."""

    def __init__(self, *, mem_size: int, fill: bool = True) -> None:
        super().__init__(mem_size=mem_size)
        if fill:
            pattern = bytes(range(256)) * (self.page_size // 256)
            for off in range(0, mem_size, len(pattern)):
                self._mm[off : off + len(pattern)] = pattern
        session = SaveSession(
            self._mm, self._geo, self._regs_snapshot, self._digest_of, precopy=False
        )
        chunks = []
        while chunk := session.read(_GEN_CHUNK):
            chunks.append(chunk)
        session.close()
        self.stream = b"".join(chunks)
        self._precopy_end = _regs_offset(self.stream)

    def _new_save(self, *, precopy: bool) -> SaveStream:
        return PregeneratedStream(self.stream, self._precopy_end, precopy=precopy)


__all__ = ["MemStreamDev", "PregeneratedStream"]
