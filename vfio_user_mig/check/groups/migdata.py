"""Group ``migdata``: MIG_DATA_READ/MIG_DATA_WRITE rules and RESUMING bad streams
(PROTOCOL.md section 4).

* A read larger than the client's max_data_xfer_size is refused with EINVAL (the sequence
  offers 4096 at VERSION); a read whose argsz is below 8 + size is refused; a larger argsz is
  fine (it is the largest reply); a size 0 read returns size 0; the stream read in 4 KiB
  reads (its first MiB; a longer stream is then left, STOP_COPY -> STOP) ends with a short
  read and later reads return size 0.
* A write whose argsz is below 8 + size, or whose size exceeds the data sent, is refused.
* A read whose request carries bytes after its 8-byte struct (argsz = 8 + size) may be refused
  (the spec is silent on trailing bytes); answered, its reply payload is at most argsz bytes
  (argsz is the largest reply the client takes) and at most 8 + size.
* The STOP_COPY stream read in reads of the chunk size is the stream read again in reads of
  another size (3 bytes less, or a third of the stream plus one when that is smaller) after
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
  (:func:`~vfio_user_mig.check.groups.reset.check_reset`). The damaged streams follow one
  another on one server while it ends each one clean
  (:func:`~vfio_user_mig.check.groups.common.chained`).
"""

from __future__ import annotations

import random
import struct

from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import (
    EINVAL,
    chained,
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
#: 4 KiB reads of the STOP_COPY stream at most (1 MiB): a longer stream is left there (its end
#: is checked in reads of the chunk size by the fsm group), not read in thousands of reads.
_SMALL_READS = 256


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
        seq.check("MIG_DATA_READ with a larger argsz", mig_read(seq, 64, argsz=8 + 4096),
                  Expect("ok", max_len=8 + 64, rule=f"{_S4}: argsz is the largest reply the "
                         "client takes; the reply carries at most the size asked"))
        _trailing_read(seq)
        read_stream_checked(seq, _SMALL, "STOP_COPY stream in 4 KiB reads",
                            max_reads=_SMALL_READS)


def _same_stream(seq: Sequence) -> None:
    """The STOP_COPY stream read twice, in reads of the chunk size and of another size (module
    docstring); leaves the device in STOP."""
    chunk = chunk_size(seq.checker)
    seq.goto(State.STOP_COPY)
    whole = seq.read_stream(chunk)
    seq.goto(State.STOP)
    if whole is None:
        return
    # at least three reads, none a multiple of a usual chunk
    size = max(min(chunk - 3, len(whole) // 3 + 1), 1)
    seq.goto(State.STOP_COPY)
    odd = seq.read_stream(size)
    seq.goto(State.STOP)
    if odd is None:
        return
    seq.verify(whole == odd, Kind.DATA,
               "the STOP_COPY stream read in other read sizes is the same stream",
               f"{len(whole)} bytes in reads of {chunk}, the same in reads of {size}",
               f"{len(odd)} bytes, " + ("the same" if whole[:len(odd)] == odd[:len(whole)]
                                        else "different"),
               f"{_S4}: a read returns min(size, what is left); a short read ends the stream, "
               "so it comes only once the data is out (the device is stopped between the two "
               "reads: its data is fixed)")


def _trailing_read(seq: Sequence) -> None:
    """A read of 1024 bytes (argsz 8 + 1024) with 8 bytes after the struct (module docstring);
    the device is in STOP_COPY."""
    size = 1024
    data = raw_message(seq.next_id(), Command.MIG_DATA_READ,
                       struct.pack("<II", 8 + size, size) + bytes(8))
    rule = f"{_S4}: argsz is the largest reply the client takes; size <= the size asked"
    reply = seq.exchange(data, expect=Expect("any", max_len=8 + size, rule=rule))
    if reply is None or reply.is_error:
        seq.verify(reply is not None, Kind.CLOSE, "MIG_DATA_READ with 8 trailing bytes is "
                   "answered", "a reply", "the connection closed", rule)
        return
    payload = reply.payload
    got = struct.unpack_from("<I", payload, 4)[0] if len(payload) >= 8 else -1
    seq.verify(8 <= len(payload) <= 8 + size and 0 <= got <= size, Kind.REPLY,
               "MIG_DATA_READ reply longer than the request's argsz allows",
               f"a payload of at most argsz = {8 + size} bytes, size <= {size}",
               f"a {len(payload)}-byte payload, size {got}", rule)


def _writes(checker: Checker, stream: bytes) -> None:
    with checker.sequence("migdata", "the same stream in other read sizes; write argsz and "
                          "size lies") as seq:
        if seq.caps is None:
            return
        _same_stream(seq)
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
    """``size`` bytes no device saved: a fixed pseudo-random sequence."""
    return random.Random(0x5EED).randbytes(size)


def _raw_stream(checker: Checker) -> bool:
    """The profile declares a stream format without integrity checks (module docstring)."""
    return bool(getattr(checker.profile, "raw_stream", False))


def _resume(seq: Sequence, name: str, bad: bytes, chunk: int) -> bool:
    """RESUMING the ``bad`` stream ``name`` must fail (module docstring); the device is left
    clean for the next stream. False when the sequence cannot go on."""
    checker = seq.checker
    seq.goto(State.RESUMING)
    refused_write = False
    for at in range(0, len(bad), chunk):
        reply = seq.exchange(mig_write(seq, bad[at:at + chunk]),
                             expect=Expect("any", rule=_S4))
        if reply is None:
            seq.verify(False, Kind.CLOSE, f"{name} stream: MIG_DATA_WRITE answered",
                       "an error reply", "the connection closed", _S4)
            return False
        if reply.is_error:
            refused_write = True
            break
    must_fail = name == "truncated" or not _raw_stream(checker)
    # the SET's recorded expectation is the refusal, so that --replay shows the defect
    leave = seq.exchange(seq.set_state_request(int(State.STOP)), expect=Expect(
        "error" if must_fail and not refused_write else "any", rule=_DAMAGE_RULE))
    if leave is None:
        seq.verify(False, Kind.CLOSE, f"{name} stream: SET RESUMING -> STOP answered",
                   "a reply", "the connection closed", "vfio-user.rst: every command "
                   "gets a reply")
        return False
    observed = seq.get_state()
    if observed is None:
        return False
    allowed = {State.RESUMING, State.ERROR} if leave.is_error else {State.STOP}
    seq.verify(observed in allowed, Kind.STATE,
               f"SET RESUMING -> STOP after a {name} stream: state reached",
               " or ".join(sorted(s.name for s in allowed)), observed.name,
               "PROTOCOL.md section 5: a failed arc leaves the last state reached or ERROR")
    seq.state = observed
    refused_leave = leave.is_error
    title = f"a {name} migration stream is loaded without an error"
    if must_fail:
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
    return seq.state not in (State.RESUMING, State.ERROR)


_DAMAGE_RULE = ("kernel vfio.h, RESUMING -> STOP: data found incomplete, inconsistent or "
                "otherwise invalid must fail the SET_STATE; PROTOCOL.md section 5: a failed "
                "arc leaves the last state reached or ERROR")


def run(checker: Checker) -> None:
    """The ``migdata`` group (module docstring)."""
    stream = ensure_saved_stream(checker)  # first: later setups may find a stream half read
    _reads(checker)
    if stream is None or not stream:
        return
    _writes(checker, stream)
    chunk = min(chunk_size(checker), max(len(stream) // 4, 1))
    chained(checker, "migdata", "RESUMING damaged streams", _bad_streams(stream, chunk),
            lambda seq, damaged: _resume(seq, *damaged, chunk))
