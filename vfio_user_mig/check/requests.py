"""Requests the checker builds by hand, so that any field may carry any value (PROTOCOL.md
sections 1-3): VERSION with the checker's limits, DEVICE_FEATURE with any argsz and flags, and
any message from a command number and a payload; plus names for states and commands."""

from __future__ import annotations

import json
import struct
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.check.steps import command_name
from vfio_user_mig.model import State

#: What the checker offers at VERSION (PROTOCOL.md section 2, VERSION).
CLIENT_MAX_MSG_FDS = 8
CLIENT_MAX_DATA_XFER = 1024 * 1024
#: The version the checker asks for (major 0).
CLIENT_MINOR = 2
_FEATURE = struct.Struct("<II")


def version_request(msg_id: int, minor: int = CLIENT_MINOR, max_xfer: int = CLIENT_MAX_DATA_XFER,
                    extra: dict[str, Any] | None = None) -> bytes:
    caps = {"capabilities": {"max_msg_fds": CLIENT_MAX_MSG_FDS, "max_data_xfer_size": max_xfer,
                             **(extra or {})}}
    text = json.dumps(caps, separators=(",", ":")).encode() + b"\0"
    return raw_message(msg_id, wire.Command.VERSION, struct.pack("<HH", 0, minor) + text)


def feature_request(msg_id: int, index: int, ops: int, data: bytes = b"",
                    argsz: int | None = None) -> bytes:
    """DEVICE_FEATURE {argsz, flags, data} by hand, so that any value can be sent."""
    payload = _FEATURE.pack(_FEATURE.size + len(data) if argsz is None else argsz,
                            (index & 0xFFFF) | ops) + data
    return raw_message(msg_id, wire.Command.DEVICE_FEATURE, payload)


def raw_message(msg_id: int, command: int, payload: bytes, flags: int = 0) -> bytes:
    return wire.Header(msg_id, command, 16 + len(payload), flags).pack() + payload


def state_name(value: int) -> str:
    """A state's name, or the number when no state has it."""
    try:
        return State(value).name
    except ValueError:
        return str(value)


def command_of(data: bytes) -> str:
    return command_name(struct.unpack_from("<H", data, 2)[0])
