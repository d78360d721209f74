"""The checker's bounds on what a server can make it do: how long one saving phase's stream
may go on and how many messages one sequence may send, so that no server makes the checker
run or grow without end.

One saving phase (from the MIG_DEVICE_STATE SET or DEVICE_RESET before it) may send at most a
byte bound of MIG_DATA_READ data (default :data:`STREAM_LIMIT`) within a time bound (default
:data:`STREAM_SECONDS`); beyond either its stream "never ends" (PROTOCOL.md section 4: a read
shorter than asked ends the stream), and the sequence ends, having kept nothing past the
bound. Once a state's stream was found endless, later phases of that state are cut at
:data:`ENDLESS_RECHECK` bytes: the finding is made again, the time is not spent again.
A sequence may send at most :data:`SEQUENCE_LIMIT` messages.
"""

from __future__ import annotations

import struct
import time

from vfio_user_mig import wire

#: Bytes one saving phase may send before its stream is a "never ends" finding.
STREAM_LIMIT = 64 * 1024 * 1024
#: Seconds one saving phase's reads may take before its stream is a "never ends" finding.
STREAM_SECONDS = 20.0
#: The bound for a state whose stream was already found endless in this run.
ENDLESS_RECHECK = 1024 * 1024
#: Messages one sequence may send.
SEQUENCE_LIMIT = 200_000

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


__all__ = ["ENDLESS_RECHECK", "SEQUENCE_LIMIT", "STREAM_LIMIT", "STREAM_SECONDS", "StreamMeter"]
