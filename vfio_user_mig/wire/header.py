"""The 16-byte message header (PROTOCOL.md section 1; vfio-user.rst "Header").

``flags`` bits 0-3 are the type (0 command, 1 reply), bit 4 no-reply, bit 5 error; ``error``
is a positive errno when the error bit is set. Validation of a received header (sizes, known
command, flag combinations) is done by :func:`vfio_user_mig.wire.codec.decode`.
"""

from __future__ import annotations

from vfio_user_mig.wire.constants import HEADER_SIZE, HeaderFlag, MsgType
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layouts import HEADER
from vfio_user_mig.wire.record import Record, record


@record
class Header(Record):
    """A message header exactly as on the wire (``command`` may be any u16 here)."""

    msg_id: int
    command: int
    msg_size: int
    flags: int
    error: int = 0

    @property
    def type(self) -> int:
        """The type nibble: ``MsgType.COMMAND`` (0) or ``MsgType.REPLY`` (1)."""
        return self.flags & HeaderFlag.TYPE_MASK

    @property
    def is_reply(self) -> bool:
        return self.type == MsgType.REPLY

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & HeaderFlag.NO_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.flags & HeaderFlag.ERROR)

    @property
    def payload_size(self) -> int:
        return self.msg_size - HEADER_SIZE

    def pack(self) -> bytes:
        """The 16 header bytes."""
        return HEADER.pack(self.msg_id, self.command, self.msg_size, self.flags, self.error)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> Header:
        """Parse the first 16 bytes of ``data`` without validating them.

        Raises :class:`WireError` (``EINVAL``) when fewer than 16 bytes are given.
        """
        if len(data) < HEADER_SIZE:
            raise invalid("header", f"{len(data)} bytes, a header needs {HEADER_SIZE}")
        return cls(*HEADER.unpack_from(data, 0))
