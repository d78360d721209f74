"""The few ways a defect is planted in one hosted device: every helper patches one *instance*
(a core's handler table, gate table or method, a device's method), never a class, so the
hosted devices of other sequences and tests stay correct."""

from __future__ import annotations

import dataclasses
import errno as _errno
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import HostedDevice
from vfio_user_mig.simulator.transport import close_fds
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp

EINVAL = _errno.EINVAL
_HEADER = struct.Struct("<HHIII")
_REPLY_FLAG = int(wire.MsgType.REPLY)
_ERROR_FLAG = int(wire.HeaderFlag.ERROR)

#: A handler of the core's table: ``(msg, fds) -> (reply, reply_fds)``.
Handler = Callable[[Any, list[int]], Any]


def wrap_handler(core: ServerCore, command: Command,
                 fn: Callable[[Handler, Any, list[int]], Any]) -> None:
    """Route ``command`` through ``fn(real_handler, msg, fds)``. REGION_READ also has a fast
    path that bypasses the table: it is turned off for that command."""
    real = core._handlers[command]
    core._handlers[command] = lambda msg, fds: fn(real, msg, fds)
    if command == Command.REGION_READ:
        core.region_read_fast = lambda data, now: None  # type: ignore[method-assign]


def answer_refused(core: ServerCore, command: Command,
                   reply: Callable[[Any], Any | None]) -> None:
    """Route ``command`` so that a request its real handler refuses is answered with
    ``reply(msg)`` (a success reply) instead; ``None`` from ``reply`` keeps the refusal."""
    from vfio_user_mig.simulator.server.types import Refusal

    def fn(real: Handler, msg: Any, fds: list[int]) -> Any:
        try:
            return real(msg, fds)
        except Refusal:
            answer = reply(msg)
            if answer is None:
                raise
            return answer, []

    wrap_handler(core, command, fn)


def wrap_feature(core: ServerCore, fn: Callable[[Handler, Any, list[int]], Any]) -> None:
    """:func:`wrap_handler` for DEVICE_FEATURE."""
    wrap_handler(core, Command.DEVICE_FEATURE, fn)


def is_state_set(msg: Any) -> bool:
    """A MIG_DEVICE_STATE SET without PROBE."""
    return (int(msg.feature) == FeatureIndex.MIG_DEVICE_STATE and bool(msg.ops & FeatureOp.SET)
            and not msg.ops & FeatureOp.PROBE and isinstance(msg.data, wire.MigDeviceState))


def is_feature(msg: Any, index: FeatureIndex, op: FeatureOp) -> bool:
    """A DEVICE_FEATURE ``index`` with operation ``op`` and without PROBE."""
    return (int(msg.feature) == index and bool(msg.ops & op)
            and not msg.ops & FeatureOp.PROBE)


def set_gate(core: ServerCore, state: State, command: Command, errno: int | None) -> None:
    """Open (``None``) or close (an errno) one cell of the core's gate table."""
    core._gates[(state, command)] = errno


def force_state(core: ServerCore, state: State) -> None:
    """Put the server's FSM in ``state`` without any device action (a bookkeeping defect)."""
    core.fsm.machine.set_state(state.name, model=core.fsm._model)


def rewrite_out(core: ServerCore, fn: Callable[[bytes], bytes | None]) -> None:
    """Pass every message the server sends (replies and its own requests, whole) through
    ``fn``; ``None`` drops it (its fds are closed)."""
    real = core.data_to_send

    def patched() -> list[tuple[list[bytes | memoryview], list[int]]]:
        out: list[tuple[list[bytes | memoryview], list[int]]] = []
        for parts, fds in real():
            new = fn(b"".join(bytes(p) for p in parts))
            if new is None:
                close_fds(fds)
                continue
            out.append(([new], fds))
        return out

    core.data_to_send = patched  # type: ignore[method-assign]


def header(raw: bytes) -> tuple[int, int, int, int, int]:
    """(msg_id, command, msg_size, flags, error) of a whole message."""
    return _HEADER.unpack_from(raw)


def with_header(raw: bytes, **fields: int) -> bytes:
    """``raw`` with header fields replaced (msg_id, command, msg_size, flags, error)."""
    names = ("msg_id", "command", "msg_size", "flags", "error")
    values = dict(zip(names, header(raw), strict=True))
    values.update(fields)
    return _HEADER.pack(*(values[n] for n in names)) + raw[_HEADER.size:]


def is_reply_to(raw: bytes, command: Command) -> bool:
    """A reply (success or error) to ``command``."""
    _id, cmd, _size, flags, _err = header(raw)
    return cmd == command and flags & 0xF == _REPLY_FLAG


def is_ok_reply_to(raw: bytes, command: Command) -> bool:
    """A success reply to ``command``."""
    return is_reply_to(raw, command) and not header(raw)[3] & _ERROR_FLAG


def wrap_dispatch(core: ServerCore, fn: Callable[[Callable[..., Any], Any, list[int], float,
                                                  Any], Any]) -> None:
    """Route every decoded request through ``fn(real_dispatch, msg, fds, now, end)``: it runs
    before the gate, and may raise to end the connection."""
    real = core._dispatch
    core._dispatch = lambda msg, fds, now, end: fn(real, msg, fds, now, end)  # type: ignore


def wrap_send_error(core: ServerCore, fn: Callable[..., None]) -> None:
    """Route every error reply through ``fn(real_send_error, request, errno, echo, no_reply,
    out)``; ``request`` is a :class:`wire.Header` for a message the codec refused."""
    real = core._send_error

    def patched(request: Any, errno: int, echo: bytes | None, no_reply: bool,
                out: Any = None) -> None:
        fn(real, request, errno, echo, no_reply, core._out if out is None else out)

    core._send_error = patched  # type: ignore[method-assign]


def success_header(request: Any) -> bytes:
    """A header-only success reply to ``request`` (a message or a :class:`wire.Header`)."""
    return _HEADER.pack(request.msg_id, int(request.command), wire.HEADER_SIZE, _REPLY_FLAG, 0)


def replace(msg: Any, **fields: Any) -> Any:
    """A copy of a (frozen) wire message with ``fields`` changed."""
    return dataclasses.replace(msg, **fields)


def on_device(hosted: HostedDevice, name: str,
              fn: Callable[..., Any]) -> None:
    """Replace the device's method ``name`` by ``fn(real_method, *args)`` on this instance.

    The server reads migration data through the device's ``mig_data_read_parts``; replacing
    ``mig_data_read`` also gives this instance the base device's parts (one part, the
    replacement's bytes), so the server reads through the replacement."""
    device = hosted.device
    real = getattr(device, name)
    setattr(device, name, lambda *args, **kw: fn(real, *args, **kw))
    if name == "mig_data_read":
        device.mig_data_read_parts = partial(  # type: ignore[method-assign]
            Device.mig_data_read_parts, device)


__all__ = [
    "EINVAL", "force_state", "header", "is_feature", "is_ok_reply_to", "is_reply_to",
    "is_state_set", "on_device", "replace", "rewrite_out", "set_gate", "success_header",
    "with_header", "wrap_dispatch", "wrap_feature", "wrap_handler", "wrap_send_error",
]
