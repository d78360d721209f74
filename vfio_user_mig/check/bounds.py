"""The checker's bounds on what a server can make it do: how long one saving phase's stream
may go on and how many messages one sequence may send, so that no server makes the checker
run or grow without end.

One saving phase (from the MIG_DEVICE_STATE SET or DEVICE_RESET before it) may send at most a
byte bound of MIG_DATA_READ data within a time bound. By default (:func:`stream_bounds`) the
byte bound is :data:`STREAM_LIMIT` or :data:`SIZE_FACTOR` times what the device declares (the
sum of its region sizes, :func:`declared_size`), whichever is larger, and the time bound
:data:`STREAM_SECONDS` or the byte bound at :data:`SLOWEST_RATE`, whichever is longer; beyond
either its stream "never ends" (PROTOCOL.md section 4: a read shorter than asked ends the
stream), and the sequence ends, having kept nothing past the bound. Once a state's stream was
found endless, later phases of that state are cut at :data:`ENDLESS_RECHECK` bytes: the finding
is made again, the time is not spent again. A sequence may send at most :data:`SEQUENCE_LIMIT`
messages.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time

from vfio_user_mig import wire
from vfio_user_mig.check.conn import BadFrame, Conn, ReplyTimeout, WrongReplyId
from vfio_user_mig.check.requests import version_request

#: Bytes one saving phase may send before its stream is a "never ends" finding.
STREAM_LIMIT = 64 * 1024 * 1024
#: Seconds one saving phase's reads may take before its stream is a "never ends" finding.
STREAM_SECONDS = 20.0
#: The bound for a state whose stream was already found endless in this run.
ENDLESS_RECHECK = 1024 * 1024
#: Messages one sequence may send.
SEQUENCE_LIMIT = 200_000
#: The byte bound is at least this many times the device's declared size.
SIZE_FACTOR = 4
#: The slowest stream the time bound allows for (bytes per second).
SLOWEST_RATE = 8 * 1024 * 1024

_MIG_DATA_READ = int(wire.Command.MIG_DATA_READ)
_SET_STATE = int(wire.FeatureOp.SET) | int(wire.FeatureIndex.MIG_DEVICE_STATE)


class StreamMeter:
    """Counts one sequence's saving phases against the bounds (module docstring)."""

    def __init__(self, limit: int = STREAM_LIMIT, seconds: float = STREAM_SECONDS,
                 endless: set[str] | None = None) -> None:
        self.limit = limit
        self.seconds = seconds
        #: States whose stream was found endless (shared by a run's sequences).
        self.endless = endless if endless is not None else set()
        self._phase: tuple[str, int, float] | None = None

    def observe(self, request: bytes, error: bool, payload: bytes, state: str
                ) -> tuple[str, str, str] | None:
        """Count a request and its reply; (state, expected, observed) once a bound is
        passed (the state is then recorded as endless), else ``None``."""
        if len(request) < 16:
            return None
        code = struct.unpack_from("<H", request, 2)[0]
        if code == wire.Command.DEVICE_RESET or (
                code == wire.Command.DEVICE_FEATURE and len(request) >= 24
                and struct.unpack_from("<I", request, 20)[0] & 0x7FFFF == _SET_STATE):
            self._phase = None
            return None
        if code != _MIG_DATA_READ or error or len(payload) < 8:
            return None
        if self._phase is None:
            self._phase = (state, 0, time.monotonic())
        state, total, start = self._phase
        total += max(struct.unpack_from("<I", payload, 4)[0], len(payload) - 8)
        self._phase = (state, total, start)
        limit = min(self.limit, ENDLESS_RECHECK) if state in self.endless else self.limit
        seconds = time.monotonic() - start
        if total <= limit and seconds <= self.seconds:
            return None
        self.endless.add(state)
        return (state, f"a short read (the end of the stream) within {limit} bytes and "
                f"{self.seconds:g} s", f"{total} bytes in {seconds:.1f} s and no end of stream")


def declared_size(sock: socket.socket, timeout: float) -> int:
    """The sum of the device's region sizes (VERSION, DEVICE_GET_INFO, GET_REGION_INFO of each
    region, PROTOCOL.md section 2) on a connection of its own; 0 when the server does not tell.
    Closes ``sock``."""
    conn = Conn(sock, timeout)
    total = 0
    with contextlib.suppress(ReplyTimeout, BadFrame, WrongReplyId, OSError, struct.error):
        reply = conn.request(version_request(1))
        if reply is None or reply.is_error:
            return 0
        reply = conn.request(wire.encode(wire.DeviceGetInfo(msg_id=2)))
        if reply is None or reply.is_error or len(reply.payload) < 16:
            return 0
        count = min(struct.unpack_from("<I", reply.payload, 8)[0], 64)
        for index in range(count):
            info = conn.request(wire.encode(wire.RegionInfo(index, msg_id=3 + index)))
            if info is not None and not info.is_error and len(info.payload) >= 24:
                total += struct.unpack_from("<Q", info.payload, 16)[0]
    conn.close()
    return total


def stream_bounds(declared: int, limit: int | None = None) -> tuple[int, float]:
    """(byte bound, time bound) for a device declaring ``declared`` bytes; ``limit`` given
    by the user replaces the byte bound (module docstring)."""
    if limit is None:
        limit = max(STREAM_LIMIT, SIZE_FACTOR * declared)
    return limit, max(STREAM_SECONDS, limit / SLOWEST_RATE)


__all__ = ["ENDLESS_RECHECK", "SEQUENCE_LIMIT", "SIZE_FACTOR", "SLOWEST_RATE", "STREAM_LIMIT",
           "STREAM_SECONDS", "StreamMeter", "declared_size", "stream_bounds"]
