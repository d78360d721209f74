"""Group ``migdata``: MIG_DATA_READ/MIG_DATA_WRITE rules and RESUMING bad streams
(PROTOCOL.md section 4).

* A read larger than the client's max_data_xfer_size is refused with EINVAL (the sequence
  offers 4096 at VERSION); a read whose argsz is below 8 + size is refused; a larger argsz is
  fine (it is the largest reply); a size 0 read returns size 0; the stream ends with a short
  read and later reads return size 0.
* A write whose argsz is below 8 + size, or whose size exceeds the data sent, is refused.
* A read whose request carries bytes after its 8-byte struct (argsz = 8 + size) may be refused
  (the spec is silent on trailing bytes); answered, its reply payload is at most argsz bytes
  (argsz is the largest reply the client takes) and at most 8 + size.
* The STOP_COPY stream read in 4 KiB reads is the stream read again in 4093-byte reads after
  STOP -> STOP_COPY (the device is stopped: its data is fixed): a short read or size 0 before
  the data is out ends the stream too early.
* RESUMING a truncated, corrupted (one bit flipped), reordered (two chunks swapped) or foreign
  (bytes of the same length that no device saved) stream must fail: a refused MIG_DATA_WRITE or
  a refused RESUMING -> STOP, the device left in the last state reached or ERROR (kernel
  ``vfio.h``, RESUMING -> STOP: "If the user provided data is found to be incomplete,
  inconsistent, or otherwise invalid, the migration driver must fail the SET_STATE ioctl";
  PROTOCOL.md section 5). The damaged streams derive from the stream the device saved (formats
  are device-specific). A device whose profile declares a raw stream without integrity checks
  (``--profile lvu-sample``: libvfio-user's sample) cannot tell content damage: a corrupted,
  reordered or foreign stream it loads is then an *advisory*, not a finding.
* A device left in ERROR by a damaged stream is reset: DEVICE_RESET must bring it to RUNNING
  (:func:`~vfio_user_mig.check.groups.reset.check_reset`).
"""

from __future__ import annotations

import struct

from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    chunk_size,
    ensure_saved_stream,
    leave_clean,
    mig_read,
    mig_write,
    read_stream_checked,
)
from vfio_user_mig.check.groups.reset import check_reset
from vfio_user_mig.check.requests import raw_message
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import Expect, refused
from vfio_user_mig.model import State
from vfio_user_mig.wire import Command

_S4 = "PROTOCOL.md section 4"
_SMALL = 4096
#: A read size that divides no usual chunk: the same stream must come, in other pieces.
_ODD = 4093


def _reads(checker: Checker) -> None:
    with checker.sequence("migdata", "reads with a 4 KiB client max_data_xfer_size",
                          max_xfer=_SMALL) as seq:
        if seq.caps is None:
            return
        seq.goto(State.STOP_COPY)
        seq.check("MIG_DATA_READ larger than the client's max_data_xfer_size refused",
                  mig_read(seq, 2 * _SMALL),
                  refused(EINVAL, rule=f"{_S4}: size <= the peer's max_data_xfer_size"))
        seq.check("MIG_DATA_READ with argsz below 8 + size refused",
                  mig_read(seq, 1024, argsz=8 + 512),
                  refused(EINVAL, rule=f"{_S4}: argsz >= 8 + size"))
        reply = seq.check("MIG_DATA_READ of size 0", mig_read(seq, 0),
                          Expect("ok", rule=f"{_S4}: a read returns at most size bytes"))
        if reply is not None and len(reply.payload) >= 8:
            size = int.from_bytes(reply.payload[4:8], "little")
            seq.verify(size == 0, Kind.REPLY, "MIG_DATA_READ of size 0 returns size 0",
                       "size 0", f"size {size}", _S4)
        reply = seq.check("MIG_DATA_READ with a larger argsz", mig_read(seq, 64, argsz=8 + 4096),
                          Expect("ok", rule=f"{_S4}: argsz is the largest reply the client "
                                 "takes"))
        head = _data_of(reply, 64) + _trailing_read(seq)
        rest = read_stream_checked(seq, _SMALL, "STOP_COPY stream in 4 KiB reads")
        if rest is None:
            return
        small = head + rest
        seq.goto(State.STOP)
        seq.goto(State.STOP_COPY)
        odd = seq.read_stream(_ODD)
        if odd is not None and checker.saved_stream is None:
            checker.saved_stream = odd  # a whole stream: the RESUMING checks load it
        if odd is not None:
            seq.verify(small == odd, Kind.DATA,
                       "the STOP_COPY stream read in 4 KiB reads is the stream read in "
                       f"{_ODD}-byte reads", f"{len(small)} bytes, the same",
                       f"{len(odd)} bytes, " + ("the same" if small[:len(odd)] == odd[:len(small)]
                                                else "different"),
                       f"{_S4}: a read returns min(size, what is left); a short read ends the "
                       "stream, so it comes only once the data is out (the device is stopped "
                       "between the two reads: its data is fixed)")


def _data_of(reply: Reply | None, asked: int) -> bytes:
    """The data of a well-formed MIG_DATA_READ reply (empty otherwise)."""
    if reply is None or reply.is_error or len(reply.payload) < 8:
        return b""
    size = struct.unpack_from("<I", reply.payload, 4)[0]
    return bytes(reply.payload[8:8 + min(size, asked)])


def _trailing_read(seq: Sequence) -> bytes:
    """A read of 1024 bytes (argsz 8 + 1024) with 8 bytes after the struct (module docstring);
    returns the data it read (part of the stream)."""
    size = 1024
    data = raw_message(seq.next_id(), Command.MIG_DATA_READ,
                       struct.pack("<II", 8 + size, size) + bytes(8))
    reply = seq.check("MIG_DATA_READ with 8 trailing bytes is answered", data,
                      Expect("any", rule=f"{_S4}; the spec is silent on trailing bytes"))
    if reply is None or reply.is_error:
        return b""
    payload = reply.payload
    got = struct.unpack_from("<I", payload, 4)[0] if len(payload) >= 8 else -1
    seq.verify(8 <= len(payload) <= 8 + size and 0 <= got <= size, Kind.REPLY,
               "MIG_DATA_READ reply longer than the request's argsz allows",
               f"a payload of at most argsz = {8 + size} bytes, size <= {size}",
               f"a {len(payload)}-byte payload, size {got}",
               f"{_S4}: argsz is the largest reply the client takes; size <= the size asked")
    return _data_of(reply, size)


def _writes(checker: Checker, stream: bytes) -> None:
    with checker.sequence("migdata", "write argsz and size lies") as seq:
        if seq.caps is None:
            return
        seq.goto(State.RESUMING)
        part = stream[:64]
        seq.check("MIG_DATA_WRITE with argsz below 8 + size refused",
                  mig_write(seq, part, argsz=8 + len(part) // 2),
                  refused(EINVAL, rule=f"{_S4}: argsz >= 8 + size"))
        seq.check("MIG_DATA_WRITE whose size exceeds the data sent refused",
                  mig_write(seq, part, size=len(part) * 2, argsz=8 + len(part) * 2),
                  refused(EINVAL, rule=f"{_S4}: size bytes of data follow"))
        leave_clean(seq)


def _bad_streams(stream: bytes, chunk: int) -> list[tuple[str, bytes]]:
    """The damaged streams, derived from ``stream`` (module docstring)."""
    out = [("truncated", stream[:len(stream) // 2])]
    if len(stream) >= 2 * chunk and stream[:chunk] != stream[chunk:2 * chunk]:
        out.append(("reordered", stream[chunk:2 * chunk] + stream[:chunk]
                    + stream[2 * chunk:]))
    flipped = bytearray(stream)
    flipped[len(stream) // 2] ^= 0x10
    out.append(("corrupted", bytes(flipped)))
    out.append(("foreign", _foreign(len(stream))))
    return out


def _foreign(size: int) -> bytes:
    """``size`` bytes no device saved: a fixed pseudo-random sequence (xorshift32)."""
    out = bytearray(size)
    x = 0x2545F491
    for i in range(size):
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out[i] = x & 0xFF
    return bytes(out)


def _raw_stream(checker: Checker) -> bool:
    """The profile declares a stream format without integrity checks (module docstring)."""
    return bool(getattr(checker.profile, "raw_stream", False))


def _resume(checker: Checker, name: str, bad: bytes, chunk: int) -> None:
    with checker.sequence("migdata", f"RESUMING a {name} stream") as seq:
        if seq.caps is None:
            return
        seq.goto(State.RESUMING)
        refused_write = False
        for at in range(0, len(bad), chunk):
            reply = seq.exchange(mig_write(seq, bad[at:at + chunk]),
                                 expect=Expect("any", rule=_S4))
            if reply is None:
                seq.verify(False, Kind.CLOSE, f"{name} stream: MIG_DATA_WRITE answered",
                           "an error reply", "the connection closed", _S4)
                return
            if reply.is_error:
                refused_write = True
                break
        seq.set_state(State.STOP, may_fail=True,
                      title=f"SET RESUMING -> STOP after a {name} stream")
        refused_leave = seq.state != State.STOP
        title = f"a {name} migration stream is loaded without an error"
        if name == "truncated" or not _raw_stream(checker):
            seq.verify(refused_write or refused_leave, Kind.DATA, title,
                       "an error on a MIG_DATA_WRITE or on leaving RESUMING",
                       "every write and the SET to STOP succeeded", _DAMAGE_RULE)
        elif not (refused_write or refused_leave):
            seq.advise(title, "the stream has the right length but damaged content; the "
                       "profile declares a raw stream format without integrity checks, which "
                       "cannot tell (" + _DAMAGE_RULE + ")")
        if seq.state == State.ERROR:
            check_reset(seq, State.ERROR, f" (after a {name} stream)")
        elif seq.state == State.STOP and not refused_write:
            # the damaged image was loaded: load the saved one over it, so that what comes
            # next meets a sane device (a foreign BAR0 deadline makes the sample refuse RUNNING)
            seq.goto(State.RESUMING)
            seq.goto(State.STOP)
        leave_clean(seq)


_DAMAGE_RULE = ("kernel vfio.h, RESUMING -> STOP: data found incomplete, inconsistent or "
                "otherwise invalid must fail the SET_STATE; PROTOCOL.md section 5: a failed "
                "arc leaves the last state reached or ERROR")


def run(checker: Checker) -> None:
    """The ``migdata`` group (module docstring)."""
    _reads(checker)
    stream = ensure_saved_stream(checker)
    if stream is None or not stream:
        return
    _writes(checker, stream)
    chunk = min(chunk_size(checker), max(len(stream) // 4, 1))
    for name, bad in _bad_streams(stream, chunk):
        _resume(checker, name, bad, chunk)
