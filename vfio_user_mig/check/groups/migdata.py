"""Group ``migdata``: MIG_DATA_READ/MIG_DATA_WRITE rules and RESUMING bad streams
(PROTOCOL.md section 4).

* A read larger than the client's max_data_xfer_size is refused with EINVAL (the sequence
  offers 4096 at VERSION); a read whose argsz is below 8 + size is refused; a larger argsz is
  fine (it is the largest reply); a size 0 read returns size 0; the stream ends with a short
  read and later reads return size 0.
* A write whose argsz is below 8 + size, or whose size exceeds the data sent, is refused.
* RESUMING a truncated stream must be refused, on a MIG_DATA_WRITE or on leaving RESUMING,
  and the device must be left in a defined state (the last state reached or ERROR, PROTOCOL.md
  section 5): the device cannot have restored state it never received, so a device that loads
  it silently is reported as ``data``.
* A stream with two chunks swapped or one bit flipped has the right length; only a stream
  format with integrity checks can tell. Neither the spec nor the kernel asks for one, so a
  device that loads it is an *advisory* (:meth:`Sequence.advise`), not a finding.
"""

from __future__ import annotations

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
from vfio_user_mig.check.session import Checker
from vfio_user_mig.check.steps import Expect, refused
from vfio_user_mig.model import State

_S4 = "PROTOCOL.md section 4"
_SMALL = 4096


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
                  Expect("ok", rule=f"{_S4}: argsz is the largest reply the client takes"))
        read_stream_checked(seq, _SMALL, "STOP_COPY stream in 4 KiB reads")


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
    out = [("truncated", stream[:len(stream) // 2])]
    if len(stream) >= 2 * chunk and stream[:chunk] != stream[chunk:2 * chunk]:
        out.append(("reordered", stream[chunk:2 * chunk] + stream[:chunk]
                    + stream[2 * chunk:]))
    flipped = bytearray(stream)
    flipped[len(stream) // 2] ^= 0x10
    out.append(("corrupted", bytes(flipped)))
    return out


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
        if name == "truncated":
            seq.verify(refused_write or refused_leave, Kind.DATA, title,
                       "an error on a MIG_DATA_WRITE or on leaving RESUMING",
                       "every write and the SET to STOP succeeded",
                       f"{_S4}; PROTOCOL.md section 5: a device cannot restore state it never "
                       "received; a failed arc leaves the last state reached or ERROR")
        elif not (refused_write or refused_leave):
            seq.advise(title, "the stream has the right length but damaged content; a stream "
                       "format without integrity checks cannot tell (the spec does not "
                       "require one; the kernel's drivers and this project's migdev check)")
        leave_clean(seq)


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
