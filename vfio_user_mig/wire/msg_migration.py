"""MIG_DATA_READ (17) and MIG_DATA_WRITE (18): ``struct vfio_user_mig_data`` {argsz u32,
size u32, data} (PROTOCOL.md section 4; vfio-user.rst "VFIO_USER_MIG_DATA_READ/WRITE").

Size rules enforced on decode: READ request payload is exactly 8 bytes with
``argsz >= 8 + size``; READ reply has ``argsz == 8 + size`` and either exactly ``size`` data
bytes or, as libvfio-user sends, zero padding up to the requested size; WRITE request has
exactly ``size`` data bytes and ``argsz >= 8 + size`` (libvfio-user's rule). The
``max_data_xfer_size`` limit is session state and is left to the caller.
"""

from __future__ import annotations

from vfio_user_mig.wire.constants import HEADER_SIZE, Command
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layouts import MIG_DATA
from vfio_user_mig.wire.msg_base import (
    NO_REPLY,
    Data,
    EmptyPayload,
    Message,
    Parts,
    Reply,
    Request,
    expect_len,
    expect_min,
    hstruct,
    register,
)
from vfio_user_mig.wire.record import record

_H_MIG = hstruct(MIG_DATA).pack
_MD = MIG_DATA.size


#: Shared zero bytes for reply padding (read-only; sliced, never copied per reply).
_ZEROS = bytes(1 << 20)


def _zeros(n: int) -> bytes | memoryview:
    return memoryview(_ZEROS)[:n] if n <= len(_ZEROS) else bytes(n)


class Gather:
    """Data bytes given as several buffers, sent back to back by scatter-gather and never
    joined on encode (a device's save stream as records and views of its memory).
    ``len()`` is the byte count; ``bytes()`` joins them."""

    __slots__ = ("_size", "parts")

    def __init__(self, parts: list[Data] | tuple[Data, ...]) -> None:
        self.parts = tuple(parts)
        self._size = sum(len(p) for p in self.parts)

    def __len__(self) -> int:
        return self._size

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Gather):
            return bytes(self) == bytes(other)
        if isinstance(other, bytes | bytearray | memoryview):
            return bytes(self) == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@register(Command.MIG_DATA_READ)
@record
class MigDataRead(Request):
    """MIG_DATA_READ request {argsz = 8 + size (default), size}."""

    size: int
    argsz: int | None = None

    def __post_init__(self) -> None:
        if self.argsz is None:
            object.__setattr__(self, "argsz", _MD + self.size)

    def _encode(self, strict: bool) -> Parts:
        return [
            _H_MIG(
                self.msg_id, self.COMMAND, HEADER_SIZE + _MD, self._flags(), 0,
                self.argsz, self.size,
            )
        ]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        expect_len("MIG_DATA_READ", payload, _MD)
        argsz, size = MIG_DATA.unpack_from(payload)
        if argsz < _MD + size:
            raise invalid("MIG_DATA_READ.argsz", f"{argsz} < 8 + size {size}")
        return cls(size, argsz, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.MIG_DATA_READ)
@record
class MigDataReadReply(Reply):
    """MIG_DATA_READ reply {argsz = 8 + len(data), size = len(data), data}.

    ``requested``: the size the request asked for. When it exceeds ``len(data)`` the payload
    is zero-padded to ``8 + requested`` bytes, as libvfio-user sends and its client expects
    (PROTOCOL.md section 4); ``strict_spec`` encoding never pads. ``None`` = no padding.
    A reply shorter than requested ends the stream.
    """

    data: Data | Gather
    requested: int | None = None

    def __post_init__(self) -> None:
        if self.requested is not None and self.requested == len(self.data):
            object.__setattr__(self, "requested", None)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def argsz(self) -> int:
        return _MD + len(self.data)

    def _encode(self, strict: bool) -> Parts:
        n = len(self.data)
        pad = 0
        if self.requested is not None:
            if self.requested < n:
                raise invalid("MIG_DATA_READ.reply.requested", f"{self.requested} < size {n}")
            if not strict:
                pad = self.requested - n
        head = _H_MIG(
            self.msg_id, self.COMMAND, HEADER_SIZE + _MD + n + pad, self._flags(), 0, _MD + n, n
        )
        parts: Parts = [head]
        if isinstance(self.data, Gather):
            parts.extend(self.data.parts)
        elif n:
            parts.append(self.data)
        if pad:
            parts.append(_zeros(pad))
        return parts

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        name = "MIG_DATA_READ.reply"
        expect_min(name, payload, _MD)
        argsz, size = MIG_DATA.unpack_from(payload)
        n = len(payload)
        if _MD + size > n:
            raise invalid(f"{name}.size", f"{size} > {n - _MD} data bytes")
        if argsz != _MD + size:
            raise invalid(f"{name}.argsz", f"{argsz} != 8 + size {size}")
        end = _MD + size
        requested = None
        if n > end:
            pad = payload[end:]
            if pad != bytes(len(pad)):
                raise invalid(f"{name}.padding", "padding after the data is not zero")
            requested = n - _MD
        return cls(payload[_MD:end], requested, msg_id=msg_id)


@register(Command.MIG_DATA_WRITE)
@record
class MigDataWrite(Request):
    """MIG_DATA_WRITE request {argsz (default 8 + size), size = len(data), data}."""

    data: Data
    argsz: int | None = None

    def __post_init__(self) -> None:
        if self.argsz is None:
            object.__setattr__(self, "argsz", _MD + len(self.data))

    @property
    def size(self) -> int:
        return len(self.data)

    def _encode(self, strict: bool) -> Parts:
        n = len(self.data)
        head = _H_MIG(
            self.msg_id, self.COMMAND, HEADER_SIZE + _MD + n, self._flags(), 0, self.argsz, n
        )
        return [head, self.data] if n else [head]

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        name = "MIG_DATA_WRITE"
        expect_min(name, payload, _MD)
        argsz, size = MIG_DATA.unpack_from(payload)
        if len(payload) - _MD != size:
            raise invalid(f"{name}.size", f"{size} != {len(payload) - _MD} data bytes")
        if argsz < _MD + size:
            raise invalid(f"{name}.argsz", f"{argsz} < 8 + size {size}")
        return cls(payload[_MD:], argsz, msg_id=msg_id, no_reply=bool(flags & NO_REPLY))


@register(Command.MIG_DATA_WRITE)
@record
class MigDataWriteReply(EmptyPayload, Reply):
    """MIG_DATA_WRITE reply: no payload."""


