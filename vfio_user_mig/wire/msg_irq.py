"""Interrupt messages: DEVICE_GET_IRQ_INFO (7) and DEVICE_SET_IRQS (8)
(vfio-user.rst sections of the same names; ``struct vfio_irq_info`` / ``vfio_irq_set``).
"""

from __future__ import annotations

from typing import ClassVar

from vfio_user_mig.wire.constants import (
    HEADER_SIZE,
    IRQ_SET_ACTION_MASK,
    IRQ_SET_DATA_MASK,
    Command,
    IrqSetFlag,
)
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layout import Layout
from vfio_user_mig.wire.layouts import IRQ_INFO, IRQ_SET
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
    EmptyPayload,
    FixedLayout,
    Message,
    Parts,
    Reply,
    Request,
    expect_min,
    hstruct,
    register,
)
from vfio_user_mig.wire.record import record

_H_IRQ_INFO = hstruct(IRQ_INFO)
_H_IRQ_SET = hstruct(IRQ_SET)


# --------------------------------------------------------------------------- IRQ_INFO (7)


@register(Command.DEVICE_GET_IRQ_INFO)
@record
class IrqInfo(FixedLayout, Request):
    """DEVICE_GET_IRQ_INFO request ``struct vfio_irq_info`` with ``index`` set."""

    LAYOUT: ClassVar[Layout] = IRQ_INFO

    index: int
    argsz: int = IRQ_INFO.size
    flags: int = 0
    count: int = 0


@register(Command.DEVICE_GET_IRQ_INFO)
@record
class IrqInfoReply(FixedLayout, Reply):
    """DEVICE_GET_IRQ_INFO reply (16 bytes)."""

    LAYOUT: ClassVar[Layout] = IRQ_INFO

    index: int
    flags: int
    count: int
    argsz: int = IRQ_INFO.size


# --------------------------------------------------------------------------- SET_IRQS (8)


def check_irq_set_flags(flags: int) -> None:
    """Exactly one DATA bit and one ACTION bit, nothing else (vfio-user.rst "SET_IRQS")."""
    data = flags & IRQ_SET_DATA_MASK
    action = flags & IRQ_SET_ACTION_MASK
    if flags & ~(IRQ_SET_DATA_MASK | IRQ_SET_ACTION_MASK):
        raise invalid("DEVICE_SET_IRQS.flags", f"unknown bits in {flags:#x}")
    if data.bit_count() != 1 or action.bit_count() != 1:
        raise invalid("DEVICE_SET_IRQS.flags", f"{flags:#x}: need one DATA and one ACTION bit")


@register(Command.DEVICE_SET_IRQS)
@record
class IrqSet(Request):
    """DEVICE_SET_IRQS ``struct vfio_irq_set``; ``data`` = count bools with DATA_BOOL only.

    Eventfds (DATA_EVENTFD) travel as SCM_RIGHTS. ``argsz`` defaults to 20 + len(data).
    """

    flags: int
    index: int
    start: int
    count: int
    data: Data = b""
    argsz: int | None = None

    def __post_init__(self) -> None:
        if self.argsz is None:
            object.__setattr__(self, "argsz", IRQ_SET.size + len(self.data))

    def _encode(self, strict: bool) -> Parts:
        head = _H_IRQ_SET.pack(
            self.msg_id, self.COMMAND, HEADER_SIZE + IRQ_SET.size + len(self.data),
            self._flags(), 0, self.argsz, self.flags, self.index, self.start, self.count,
        )
        return [head, self.data] if len(self.data) else [head]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_min("DEVICE_SET_IRQS", payload, IRQ_SET.size)
        argsz, iflags, index, start, count = IRQ_SET.unpack_from(payload)
        check_irq_set_flags(iflags)
        data = payload[IRQ_SET.size :]
        if iflags & IrqSetFlag.DATA_BOOL:
            if len(data) != count:
                raise invalid("DEVICE_SET_IRQS.count", f"{count} != {len(data)} bool bytes")
        elif len(data):
            raise invalid("DEVICE_SET_IRQS.payload", f"{len(data)} data bytes without DATA_BOOL")
        if argsz < IRQ_SET.size:
            raise invalid("DEVICE_SET_IRQS.argsz", f"{argsz} < {IRQ_SET.size}")
        return cls(
            iflags, index, start, count, data if len(data) else b"", argsz,
            msg_id=msg_id, no_reply=bool(flags & NO_REPLY),
        )


@register(Command.DEVICE_SET_IRQS)
@record
class IrqSetReply(EmptyPayload, Reply):
    """DEVICE_SET_IRQS reply: no payload."""


