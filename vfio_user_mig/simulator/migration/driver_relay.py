"""The device-stream relay of the migration driver (:mod:`.driver` describes it): chunks read
from the source with MIG_DATA_READ and written to the destination with MIG_DATA_WRITE, either
pipelined (``read_depth`` reads in flight, a write-behind window of ``write_window``) or
serially, each chunk traced once the destination acknowledged it.

Without a relay filter the pipelined relay moves each chunk's data from the source's socket to
the destination's through a pipe with ``splice(2)`` (:class:`~..client.io.SplicePipe`): the
kernel passes the pages on, the data never enters the driver. A chunk is wholly in the pipe
before its MIG_DATA_WRITE starts, so a source that fails mid-chunk leaves the destination's
socket untouched, as when the chunk is received into the driver's buffer (which stays the way
when the pipe cannot take a reply, or ``splice`` is not available).
"""

from __future__ import annotations

import errno as _errno
import os
from collections import deque
from collections.abc import Generator

from vfio_user_mig.simulator.client.io import SplicePipe
from vfio_user_mig.simulator.migration.driver_base import DriverBase
from vfio_user_mig.simulator.migration.driver_types import (
    MigrationError,
)

_SPLICE = hasattr(os, "splice")


class DeviceRelay(DriverBase):
    """Relays the device stream from source to destination."""

    def _relay(self, data: bytes, phase: str) -> None:
        index = self._chunks
        self._chunks += 1
        out: bytes | None = data
        if self.relay_filter is not None:
            out = self.relay_filter(index, data)
        if out:
            self._io(self.dst, "MIG_DATA_WRITE", self.dst.client.data_client.mig_data_write, out)
        self.clock.transfer(len(data))
        self._emit("chunk", phase=phase, round=self._round, bytes=len(data))

    def _drain(self, phase: str, budget: int | None = None) -> tuple[int, bool]:
        """MIG_DATA_READ until a short read (or ``budget`` bytes); every chunk relayed at once.
        Returns (bytes, caught up). Pipelined unless a workload runs during pre-copy (see
        module docstring)."""
        depth = max(1, self.config.read_depth)
        window = max(0, self.config.write_window)
        if (phase == "precopy" and self.workload is not None) or (depth == 1 and window == 0):
            return self._drain_serial(phase, budget)
        return self._drain_pipelined(phase, budget, depth, window)

    def _drain_pipelined(self, phase: str, budget: int | None, depth: int,
                         window: int) -> tuple[int, bool]:
        src, dst = self.src, self.dst
        chunk = self._chunk
        if not src.alive:
            raise MigrationError(f"{src.name} MIG_DATA_READ", _errno.ENOTCONN, "connection lost")
        reader = src.client.data_client
        # One pipe per drain (closed at its end): nothing to leak across runs. Splicing into
        # a socket in non-blocking mode (a Python timeout) could stop half-way: not there.
        spliceable = (_SPLICE and self.relay_filter is None
                      and dst.client.data_client.sock.gettimeout() is None)
        pipe = SplicePipe(chunk) if spliceable else None
        stream: Generator[tuple[int, bytes | memoryview | None], None, None]
        if pipe is not None:  # the relay buffer is made only if a chunk needs it
            spliced = pipe  # the reads fill the pipe; a chunk it cannot take comes as data
            stream = reader.pipelined_reads(
                chunk, depth, lambda msg_id: reader.mig_reply_to_pipe(
                    msg_id, chunk, spliced, self._buffer), max_bytes=budget, ask_early=True)
        else:
            into = self._buffer() if self.relay_filter is None else None
            stream = ((len(d), d) for d in reader.mig_data_read_stream(
                chunk, depth, into=into, max_bytes=budget))
        writes: deque[tuple[int | None, int]] = deque()
        total = 0
        short = False
        dst_failed = False
        try:
            while True:
                item = self._io(src, "MIG_DATA_READ", next, stream, None)
                if item is None:
                    break
                size, data = item
                index = self._chunks
                self._chunks += 1
                out: bytes | memoryview | None = data
                if self.relay_filter is not None and data is not None:
                    out = self.relay_filter(index, bytes(data))
                msg_id = None
                try:
                    writer = dst.client.data_client
                    if data is None and pipe is not None:
                        msg_id = self._io(dst, "MIG_DATA_WRITE", writer.mig_data_write_from_pipe,
                                          pipe, size)
                    elif out:
                        msg_id = self._io(dst, "MIG_DATA_WRITE", writer.mig_data_write_nowait,
                                          out)
                except MigrationError:
                    dst_failed = True
                    raise
                writes.append((msg_id, size))
                dst_failed = True
                self._finish_writes(phase, writes, window)
                dst_failed = False
                total += size
                if size < chunk:
                    short = True
                else:
                    self._check_deadline()
            dst_failed = True
            self._finish_writes(phase, writes, 0)
        except MigrationError:
            try:
                if not dst_failed:
                    self._finish_writes(phase, writes, 0)  # a destination error came first
            finally:
                if writes and dst.alive:
                    dst.client.data_client.abandon(m for m, _ in writes if m is not None)
            raise
        finally:
            stream.close()
            if pipe is not None:
                pipe.close()  # a chunk left half-way in it is dropped
        return total, budget is None or short or total < budget

    def _buffer(self) -> memoryview:
        """The relay buffer (one chunk; made on first use, then kept)."""
        if self._relay_buf is None or len(self._relay_buf) < self._chunk:
            self._relay_buf = memoryview(bytearray(self._chunk))
        return self._relay_buf

    def _finish_writes(self, phase: str, writes: deque[tuple[int | None, int]],
                       keep: int) -> None:
        """Wait for the oldest MIG_DATA_WRITE replies until ``keep`` remain; trace each chunk
        as it is acknowledged. On an error the writes after it are left in ``writes``."""
        dst = self.dst
        while len(writes) > keep:
            msg_id, nbytes = writes.popleft()
            if msg_id is not None:
                self._io(dst, "MIG_DATA_WRITE", dst.client.data_client.wait_reply, msg_id)
            self.clock.transfer(nbytes)
            self._emit("chunk", phase=phase, round=self._round, bytes=nbytes)

    def _drain_serial(self, phase: str, budget: int | None = None) -> tuple[int, bool]:
        total = 0
        while True:
            if budget is not None and total >= budget:
                return total, False
            data = self._io(self.src, "MIG_DATA_READ", self.src.client.data_client.mig_data_read,
                            self._chunk)
            if data:
                self._relay(data, phase)
                total += len(data)
            if phase == "precopy":
                self._tick()
            if len(data) < self._chunk:
                return total, True
            self._check_deadline()

__all__ = ["DeviceRelay"]
