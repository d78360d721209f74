"""Message base classes, the (command, is_reply) -> class registry, and error replies.

Every message is a frozen dataclass carrying its header's ``msg_id`` (and, for commands, the
no-reply bit), so ``decode`` -> ``encode`` round-trips whole messages (PROTOCOL.md section 1).
A class implements two hooks used by :mod:`vfio_user_mig.wire.codec`:

* ``_decode(msg_id, flags, payload) -> Message``: ``payload`` is a memoryview of exactly
  ``msg_size - 16`` bytes; raise :class:`WireError` naming the field on any inconsistency.
* ``_encode(strict) -> list[bytes | memoryview]``: the whole message, header first; large
  data buffers are separate list items (never concatenated) for ``sendmsg`` scatter-gather.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

from vfio_user_mig.wire.constants import HEADER_SIZE, Command, HeaderFlag, MsgType
from vfio_user_mig.wire.errors import invalid
from vfio_user_mig.wire.layout import Layout
from vfio_user_mig.wire.layouts import HEADER
from vfio_user_mig.wire.record import Record, record

#: A received or outgoing byte buffer.
Buffer = bytes | bytearray | memoryview
#: What a message's data field holds: ``bytes`` when built in code, a memoryview into the
#: received buffer when decoded (zero-copy).
Data = bytes | memoryview
Parts = list[bytes | memoryview]

_HEADER_STRUCT = HEADER.struct
_REPLY = int(MsgType.REPLY)
#: Header no-reply bit as a plain int (hot-path friendly).
NO_REPLY = int(HeaderFlag.NO_REPLY)
_ERROR_FLAGS = int(MsgType.REPLY) | int(HeaderFlag.ERROR)


def hstruct(layout: Layout) -> struct.Struct:
    """The combined "header + fixed part" struct of ``layout`` (one pack per small message)."""
    return layout.with_prefix(HEADER)


@record(kw_only=True)
class Message(Record):
    """Base of every vfio-user message. ``msg_id`` is the header's message id (u16)."""

    COMMAND: ClassVar[Command]
    IS_REPLY: ClassVar[bool]

    msg_id: int = 0

    @property
    def command(self) -> Command:
        return self.COMMAND

    @property
    def is_reply(self) -> bool:
        return self.IS_REPLY

    def _flags(self) -> int:
        return _REPLY

    def _encode(self, strict: bool) -> Parts:
        raise NotImplementedError

    @classmethod
    def _decode(cls, msg_id: int, flags: int, payload: memoryview) -> Message:
        raise NotImplementedError


@record(kw_only=True)
class Request(Message):
    """A command message (header type 0). ``no_reply`` is header flag bit 4."""

    IS_REPLY: ClassVar[bool] = False

    no_reply: bool = False

    def _flags(self) -> int:
        return NO_REPLY if self.no_reply else 0


@record(kw_only=True)
class Reply(Message):
    """A successful reply (header type 1, error bit clear)."""

    IS_REPLY: ClassVar[bool] = True


@record
class ErrorReply(Message):
    """A failed reply to any command: header type 1, error bit set, ``error`` = ``errno``.

    ``payload`` is usually empty (the spec: "the reply message must only include the reply
    header"); libvfio-user echoes the request payload on a failed DEVICE_FEATURE SET, which is
    kept verbatim here and dropped when encoding with ``strict_spec``. ``errno`` 0 is legal
    (vfio-user.rst: the error "may be zero even if the Error bit is set").
    """

    IS_REPLY: ClassVar[bool] = True

    cmd: Command
    errno: int
    payload: Data = b""

    @property
    def command(self) -> Command:
        return self.cmd

    def _encode(self, strict: bool) -> Parts:
        payload = b"" if strict else self.payload
        head = _HEADER_STRUCT.pack(
            self.msg_id, self.cmd, HEADER_SIZE + len(payload), _ERROR_FLAGS, self.errno
        )
        return [head, payload] if payload else [head]

    def echoed_request(self) -> Message | None:
        """Decode the echoed payload as the request it echoes (``None`` when empty)."""
        if not self.payload:
            return None
        cls = REGISTRY[(int(self.cmd), False)]
        return cls._decode(self.msg_id, 0, memoryview(self.payload))


#: (command, is_reply) -> message class. Filled by :func:`register`.
REGISTRY: dict[tuple[int, bool], type[Message]] = {}

M = TypeVar("M", bound=type[Message])


def register(command: Command) -> Callable[[M], M]:
    """Class decorator: set ``COMMAND`` and enter the class in :data:`REGISTRY`."""

    def deco(cls: M) -> M:
        cls.COMMAND = command
        key = (int(command), cls.IS_REPLY)
        if key in REGISTRY:
            raise AssertionError(f"{key} registered twice")
        REGISTRY[key] = cls
        return cls

    return deco


def expect_len(name: str, payload: memoryview, size: int) -> None:
    """Raise EINVAL unless the payload is exactly ``size`` bytes."""
    if len(payload) != size:
        raise invalid(f"{name}.payload", f"{len(payload)} bytes, expected {size}")


def expect_min(name: str, payload: memoryview, size: int) -> None:
    """Raise EINVAL unless the payload is at least ``size`` bytes."""
    if len(payload) < size:
        raise invalid(f"{name}.payload", f"{len(payload)} bytes, need at least {size}")


def empty_payload(cls_name: str) -> Callable[[memoryview], None]:
    """A checker for messages without payload."""

    def check(payload: memoryview) -> None:
        if len(payload):
            raise invalid(f"{cls_name}.payload", f"{len(payload)} bytes, expected none")

    return check


def header_only(msg: Message) -> Parts:
    """Encode a message that has no payload."""
    return [_HEADER_STRUCT.pack(msg.msg_id, msg.COMMAND, HEADER_SIZE, msg._flags(), 0)]


def _slot_setter(cls: type, name: str) -> Callable[[object, Any], None]:
    for klass in cls.__mro__:
        if name in klass.__dict__:
            setter: Callable[[object, Any], None] = klass.__dict__[name].__set__
            return setter
    raise AssertionError(f"{cls.__name__}.{name} has no slot")


def fast_factory(cls: type[Message]) -> Callable[..., Message]:
    """A constructor for the decode hot path: ``make(*values)`` in ``dataclasses.fields``
    order (``msg_id``, [``no_reply``,] then the class's own fields).

    It fills the slots directly instead of running the frozen dataclass ``__init__`` (which
    pays one ``object.__setattr__`` call per field: about twice the cost). Only for classes
    without ``__post_init__``; the result is equal to ``cls(...)`` with the same values.
    """
    if hasattr(cls, "__post_init__"):
        raise AssertionError(f"{cls.__name__} has __post_init__")
    setters = tuple(_slot_setter(cls, f.name) for f in fields(cls))
    new = object.__new__
    if len(setters) == 5:
        s0, s1, s2, s3, s4 = setters

        def make5(a: Any, b: Any, c: Any, d: Any, e: Any) -> Any:
            o = new(cls)
            s0(o, a)
            s1(o, b)
            s2(o, c)
            s3(o, d)
            s4(o, e)
            return o

        return make5
    if len(setters) == 6:
        t0, t1, t2, t3, t4, t5 = setters

        def make6(a: Any, b: Any, c: Any, d: Any, e: Any, f: Any) -> Any:
            o = new(cls)
            t0(o, a)
            t1(o, b)
            t2(o, c)
            t3(o, d)
            t4(o, e)
            t5(o, f)
            return o

        return make6
    raise AssertionError(f"{cls.__name__}: no fast factory for {len(setters)} fields")


def wire_name(cls: type[Message]) -> str:
    """The name errors use for a message class: ``COMMAND`` or ``COMMAND.reply``."""
    return cls.COMMAND.name + (".reply" if cls.IS_REPLY else "")


class EmptyPayload:
    """Mixin for messages that are a header only: encodes the header, refuses any payload.

    Put it first in the bases (``class X(EmptyPayload, Reply)``).
    """

    __slots__ = ()

    def _encode(self: Any, strict: bool) -> Parts:
        return header_only(self)

    @classmethod
    def _decode(cls: Any, msg_id: int, flags: int, payload: memoryview) -> Message:
        if len(payload):
            raise invalid(f"{wire_name(cls)}.payload", f"{len(payload)} bytes, expected none")
        if cls.IS_REPLY:
            return cls(msg_id=msg_id)  # type: ignore[no-any-return]
        return cls(msg_id=msg_id, no_reply=bool(flags & NO_REPLY))  # type: ignore[no-any-return]


class FixedLayout:
    """Mixin for messages whose payload is exactly one :class:`Layout` and whose dataclass
    fields carry the layout's field names: encode and decode are derived from the table.

    Set ``LAYOUT``; requests with an ``argsz`` field refuse ``argsz`` smaller than the layout
    (the caller's buffer must hold the struct). Put the mixin first in the bases.
    """

    __slots__ = ()
    LAYOUT: ClassVar[Layout]
    _HSTRUCT: ClassVar[struct.Struct]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "LAYOUT" in cls.__dict__:
            cls._HSTRUCT = hstruct(cls.LAYOUT)

    def _encode(self: Any, strict: bool) -> Parts:
        layout = self.LAYOUT
        values = [getattr(self, name) for name in layout.names]
        size = HEADER_SIZE + layout.size
        return [self._HSTRUCT.pack(self.msg_id, self.COMMAND, size, self._flags(), 0, *values)]

    @classmethod
    def _decode(cls: Any, msg_id: int, flags: int, payload: memoryview) -> Message:
        layout = cls.LAYOUT
        name = wire_name(cls)
        expect_len(name, payload, layout.size)
        values = dict(zip(layout.names, layout.unpack_from(payload), strict=True))
        if cls.IS_REPLY:
            return cls(**values, msg_id=msg_id)  # type: ignore[no-any-return]
        argsz = values.get("argsz")
        if argsz is not None and argsz < layout.size:
            raise invalid(f"{name}.argsz", f"{argsz} < {layout.size}")
        return cls(**values, msg_id=msg_id,  # type: ignore[no-any-return]
                   no_reply=bool(flags & NO_REPLY))
