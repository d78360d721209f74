"""``decode`` / ``encode``: whole messages <-> bytes (sans-IO).

Contract:

* :func:`decode` takes exactly one whole message (header + payload, ``len(data) ==
  msg_size``) and returns its :class:`Message`; data fields are memoryviews into ``data``. It
  raises only :class:`WireError`, whose ``header`` is set once the 16 header bytes were read.
* :func:`encode_parts` returns the message as a list of buffers for ``sendmsg`` (header and
  fixed part first; large data buffers are separate items, never copied);
  :func:`encode` joins them.
* ``decode(b)`` then ``encode(...)`` gives back ``b`` for every accepted input (default
  compatibility mode). ``strict_spec=True`` sends what the spec text says where libvfio-user
  differs (docs/wire-compat.md).

Header rules (PROTOCOL.md section 1): 16 <= msg_size <= max_size (E2BIG above); type 0 or 1;
no flag bits besides type, no-reply (commands only) and error (replies only); ``error`` is 0
unless the error bit is set; command 1-18 except 14 (ENOTSUP otherwise).
"""

from __future__ import annotations

import errno as _errno
import struct

from vfio_user_mig.wire import (
    msg_access,
    msg_feature,
    msg_irq,
    msg_migration,
    msg_region,
    msg_setup,
)
from vfio_user_mig.wire.constants import (
    DEFAULT_MAX_MSG_SIZE,
    HEADER_KNOWN_FLAGS,
    HEADER_SIZE,
    RESERVED_COMMAND,
    Command,
    HeaderFlag,
    MsgType,
)
from vfio_user_mig.wire.errors import WireError, invalid
from vfio_user_mig.wire.header import Header
from vfio_user_mig.wire.layouts import HEADER
from vfio_user_mig.wire.msg_base import REGISTRY, Buffer, Data, ErrorReply, Message, Parts

# The message modules register themselves on import.
_MODULES = (msg_access, msg_feature, msg_irq, msg_migration, msg_region, msg_setup)

_UNPACK_HEADER = HEADER.struct.unpack_from
_TYPE_MASK = int(HeaderFlag.TYPE_MASK)
_NO_REPLY = int(HeaderFlag.NO_REPLY)
_ERROR = int(HeaderFlag.ERROR)
_UNKNOWN_FLAGS = ~int(HEADER_KNOWN_FLAGS) & 0xFFFF_FFFF
_COMMANDS = {int(c): c for c in Command}
_REPLY = int(MsgType.REPLY)
#: Header flag words that need no further checks: command, no-reply command, reply.
_PLAIN_FLAGS = frozenset({0, _NO_REPLY, _REPLY})
#: ``command << 1 | is_reply`` -> the class's ``_decode`` (one int-keyed lookup per message).
_DECODERS = {cmd << 1 | reply: cls._decode for (cmd, reply), cls in REGISTRY.items()}


def _header_error(
    exc: WireError, msg_id: int, cmd: int, size: int, flags: int, err: int
) -> WireError:
    exc.header = Header(msg_id, cmd, size, flags, err)
    return exc


def check_header(
    msg_id: int,
    cmd: int,
    size: int,
    flags: int,
    err: int,
    *,
    max_size: int = DEFAULT_MAX_MSG_SIZE,
) -> None:
    """Validate header fields that do not depend on the payload (raises WireError)."""
    if size < HEADER_SIZE:
        raise invalid("header.msg_size", f"{size} < {HEADER_SIZE}")
    if size > max_size:
        raise WireError(_errno.E2BIG, "header.msg_size", f"{size} > limit {max_size}")
    if flags & _UNKNOWN_FLAGS:
        raise invalid("header.flags", f"unknown bits {flags & _UNKNOWN_FLAGS:#x}")
    mtype = flags & _TYPE_MASK
    if mtype > _REPLY:
        raise invalid("header.flags", f"message type {mtype} is neither command nor reply")
    if cmd not in _COMMANDS:
        what = "reserved (migration v1 DIRTY_PAGES)" if cmd == RESERVED_COMMAND else "unknown"
        raise WireError(_errno.ENOTSUP, "header.command", f"{cmd} is {what}")
    if mtype == _REPLY:
        if flags & _NO_REPLY:
            raise invalid("header.flags", "no-reply bit set in a reply")
    elif flags & _ERROR:
        raise invalid("header.flags", "error bit set in a command")
    if err and not flags & _ERROR:
        raise invalid("header.error", f"{err} without the error bit")


def decode_header(data: Buffer, *, max_size: int = DEFAULT_MAX_MSG_SIZE) -> Header:
    """Parse and validate the first 16 bytes of ``data`` (the payload may not have arrived)."""
    if len(data) < HEADER_SIZE:
        raise invalid("header", f"{len(data)} bytes, a header needs {HEADER_SIZE}")
    fields = _UNPACK_HEADER(data, 0)
    try:
        check_header(*fields, max_size=max_size)
    except WireError as exc:
        raise _header_error(exc, *fields) from None
    return Header(*fields)


def decode(
    data: Buffer,
    *,
    max_size: int = DEFAULT_MAX_MSG_SIZE,
    expect_reply: bool | None = None,
) -> Message:
    """Decode one whole message. See the module docstring for the contract.

    ``expect_reply``: when given, a message of the other type (command vs reply) is rejected
    with EINVAL (e.g. a server receiving a reply on its command socket).
    """
    if type(data) is bytes:
        mv = memoryview(data)
    else:
        mv = data if isinstance(data, memoryview) else memoryview(data)
        if mv.format != "B" or mv.ndim != 1:
            try:
                mv = mv.cast("B")
            except (TypeError, ValueError) as exc:
                raise invalid("data", f"not a byte buffer ({exc})") from None
    n = len(mv)
    if n < HEADER_SIZE:
        raise invalid("header", f"{n} bytes, a header needs {HEADER_SIZE}")
    msg_id, cmd, size, flags, err = _UNPACK_HEADER(mv, 0)
    try:
        if flags not in _PLAIN_FLAGS or size != n or size > max_size or cmd not in _COMMANDS or err:
            check_header(msg_id, cmd, size, flags, err, max_size=max_size)
            if size != n:
                raise invalid("header.msg_size", f"{size} but {n} bytes given")
        is_reply = flags & _TYPE_MASK
        if expect_reply is not None and bool(is_reply) != expect_reply:
            want = "reply" if expect_reply else "command"
            raise invalid("header.flags", f"expected a {want}")
        if flags & _ERROR:
            payload: Data = mv[HEADER_SIZE:] if n > HEADER_SIZE else b""
            return ErrorReply(_COMMANDS[cmd], err, payload, msg_id=msg_id)
        return _DECODERS[cmd << 1 | is_reply](msg_id, flags, mv[HEADER_SIZE:])
    except WireError as exc:
        raise _header_error(exc, msg_id, cmd, size, flags, err) from None
    except (struct.error, IndexError, KeyError, OverflowError, TypeError, ValueError) as exc:
        # Defensive: a codec bug must still surface as WireError, never as a raw exception.
        wrapped = invalid(f"{_COMMANDS.get(cmd, cmd)!s}", f"undecodable ({exc!r})")
        raise _header_error(wrapped, msg_id, cmd, size, flags, err) from exc


def encode_parts(msg: Message, *, strict_spec: bool = False) -> Parts:
    """The message as ``[header + fixed part, data...]`` for scatter-gather ``sendmsg``.

    Raises :class:`WireError` (EINVAL) for values that do not fit their fields or for
    inconsistent fields (e.g. ``count != len(data)``).
    """
    try:
        return msg._encode(strict_spec)
    except struct.error as exc:
        raise invalid(type(msg).__name__, f"field out of range ({exc})") from None


def encode(msg: Message, *, strict_spec: bool = False) -> bytes:
    """The whole message as one ``bytes`` (joins :func:`encode_parts`)."""
    parts = encode_parts(msg, strict_spec=strict_spec)
    if len(parts) == 1:
        return bytes(parts[0])
    return b"".join(parts)


def error_reply(
    request: Header | Message, errno: int, echo_payload: Data | None = None
) -> ErrorReply:
    """The error reply to ``request`` (a header or a decoded request): same msg_id/command.

    ``echo_payload`` is sent after the header (libvfio-user echoes the request payload on a
    failed DEVICE_FEATURE SET); ``strict_spec`` encoding drops it.
    """
    cmd = request.command
    if cmd not in _COMMANDS:
        raise WireError(_errno.ENOTSUP, "header.command", f"{cmd} is not a command")
    return ErrorReply(_COMMANDS[int(cmd)], errno, echo_payload or b"", msg_id=request.msg_id)
