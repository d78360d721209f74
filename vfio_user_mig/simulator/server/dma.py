"""Device-initiated DMA: runs the device's DMA jobs, ops on fd-backed mappings directly and
the others as DMA_READ/DMA_WRITE requests to the client (split at the client's
``max_data_xfer_size``), interleaved with the client's requests; matches the client's replies
to the chunks in flight and marks written pages dirty (PROTOCOL.md section 5).
"""

from __future__ import annotations

import errno as _errno
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.simulator.device.dma import (
    DmaFault,
    DmaKind,
    DmaOp,
    Route,
)
from vfio_user_mig.simulator.server.state import PendingOp, ServerState
from vfio_user_mig.simulator.server.types import (
    MAX_DMA_CHUNKS_PER_OP,
    Handled,
)
from vfio_user_mig.wire.constants import (
    Command,
)


class DmaInitiator(ServerState):
    """Server-to-client DMA for the hosted device."""

    def _tick(self, now: float) -> None:
        self.device.tick(now)
        if self._job is None:
            job = self.device.take_dma_job()
            if job is not None:
                self._job = job
                self._advance(None, first=True)

    def _advance(self, result: bytes | DmaFault | None, first: bool = False) -> None:
        """Resume the job with ``result`` and run ops until one must wait for the client."""
        job = self._job
        while job is not None:
            try:
                if first:
                    op = next(job)
                    first = False
                elif isinstance(result, DmaFault):
                    op = job.throw(result)
                else:
                    op = job.send(result)
            except StopIteration:
                self._job = None
                return
            try:
                route = self.dma.route(op)
                if op.kind in (DmaKind.CHECK_READ, DmaKind.CHECK_WRITE):
                    result = None
                    continue
                if route is Route.DIRECT:
                    try:
                        result = self.dma.resolve(op)
                    finally:
                        # Mark even when the write faulted part-way: over-marking only
                        # resends a page, under-marking would lose data in a migration.
                        if op.kind is DmaKind.WRITE:
                            self.device.dirty_log.mark(op.iova, op.length)
                    continue
            except DmaFault as fault:
                result = fault
                continue
            chunks = -(-op.length // max(1, self._client_limit()))
            if chunks > MAX_DMA_CHUNKS_PER_OP:
                result = DmaFault(
                    f"DMA op of {op.length} bytes needs {chunks} messages", op.iova, op.length
                )
                continue
            self._send_dma_messages(op)
            return

    def _send_dma_messages(self, op: DmaOp) -> None:
        pending = PendingOp(op)
        if op.kind is DmaKind.READ:
            pending.buffer = bytearray(op.length)
        limit = max(1, self._client_limit())
        for off in range(0, op.length, limit):
            size = min(limit, op.length - off)
            msg_id = self._next_id
            self._next_id = 0x8000 + ((self._next_id + 1) & 0x7FFF)
            pending.waiting[msg_id] = (off, size)
            msg: Any
            if op.kind is DmaKind.READ:
                msg = wire.DmaRead(addr=op.iova + off, count=size, msg_id=msg_id)
            else:
                assert op.data is not None
                msg = wire.DmaWrite(
                    addr=op.iova + off,
                    count=size,
                    data=memoryview(op.data)[off : off + size],
                    msg_id=msg_id,
                )
            self._out.append((wire.encode_parts(msg, strict_spec=self.config.strict_spec), []))
            self.stats["dma_messages"] += 1
        self._pending = pending

    def _client_reply(self, msg: Any) -> Handled:
        pending = self._pending
        if pending is None or msg.msg_id not in pending.waiting:
            return Handled(msg.command, msg.msg_id, True, _errno.EINVAL, "unexpected reply")
        off, size = pending.waiting.pop(msg.msg_id)
        is_read = pending.op.kind is DmaKind.READ
        expected = Command.DMA_READ if is_read else Command.DMA_WRITE
        addr = pending.op.iova + off
        if isinstance(msg, wire.ErrorReply):
            pending.fault = DmaFault(f"client refused DMA (errno {msg.errno})", addr, size)
        elif msg.command != expected or (msg.addr, msg.count) != (addr, size):
            pending.fault = DmaFault(
                f"{msg.command.name} reply does not match the {expected.name} sent", addr, size
            )
        elif is_read:
            data = msg.data
            if len(data) != size:
                pending.fault = DmaFault("short DMA_READ reply", addr, size)
            else:
                pending.buffer[off : off + size] = data
        if pending.waiting:
            return Handled(msg.command, msg.msg_id, True, None)
        self._pending = None
        if pending.fault is not None:
            self._advance(pending.fault)
        elif pending.op.kind is DmaKind.READ:
            self._advance(bytes(pending.buffer))
        else:
            self.device.dirty_log.mark(pending.op.iova, pending.op.length)
            self._advance(None)
        return Handled(msg.command, msg.msg_id, True, None)


__all__ = ["DmaInitiator"]
