"""Helpers shared by the deterministic groups: well-formed requests built by the wire codecs,
the DEVICE_FEATURE operation table of the spec, stream reading with its checks, and the region
the checker may touch.

Every request here is encoded by :mod:`vfio_user_mig.wire` (one source of truth for layouts);
only deliberately malformed bytes are built by hand, in the groups that send them.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from vfio_user_mig import wire
from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.requests import feature_request, raw_message
from vfio_user_mig.check.session import Checker, Sequence
from vfio_user_mig.check.steps import Expect, describe_reply
from vfio_user_mig.model import State
from vfio_user_mig.wire import FeatureIndex, FeatureOp

#: Errnos for an unknown feature index: the spec is silent; libvfio-user answers EINVAL, the
#: kernel's vfio_ioctl_device_feature() ENOTTY, and ENOTSUP is the generic "not supported".
UNKNOWN_FEATURE_ERRNOS = (_errno.EINVAL, _errno.ENOTTY, _errno.ENOTSUP)
UNKNOWN_FEATURE_RULE = ("PROTOCOL.md section 3 lists the features; an unknown index is refused "
                        "(libvfio-user EINVAL, kernel ENOTTY, ENOTSUP accepted)")

EINVAL = _errno.EINVAL
T = TypeVar("T")
_MIG = struct.Struct("<II")
#: Guest-physical addresses the groups map (far from any profile's maps, page aligned).
IOVA_BASE = 0x4000_0000


def enc(seq: Sequence, msg: wire.Message) -> bytes:
    """``msg`` encoded with the sequence's next message id."""
    return wire.encode(dataclasses.replace(msg, msg_id=seq.next_id()))


def feature(seq: Sequence, index: int, ops: int, data: object = None,
            argsz: int | None = None) -> bytes:
    return enc(seq, wire.DeviceFeature(index, FeatureOp(ops), data, argsz))  # type: ignore[arg-type]


def log_start(seq: Sequence, page_size: int, ranges: tuple[tuple[int, int], ...] = ()) -> bytes:
    control = wire.DmaLoggingControl(page_size, tuple(wire.DmaRange(a, n) for a, n in ranges))
    return feature(seq, FeatureIndex.DMA_LOGGING_START, FeatureOp.SET, control)


def log_stop(seq: Sequence) -> bytes:
    return feature(seq, FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET,
                   wire.DmaLoggingControl(0, ()))


def log_report(seq: Sequence, iova: int, length: int, page_size: int,
               argsz: int | None = None) -> bytes:
    """DMA_LOGGING_REPORT GET; ``argsz`` defaults to the reply's size (the maximum)."""
    need = 8 + 24 + bitmap_size(length, page_size)
    return feature_request(seq.next_id(), FeatureIndex.DMA_LOGGING_REPORT, int(FeatureOp.GET),
                           struct.pack("<QQQ", iova, length, page_size),
                           need if argsz is None else argsz)


def bitmap_size(length: int, page_size: int) -> int:
    """ceil(ceil(length / page_size) / 64) * 8 (PROTOCOL.md section 3, dirty bitmap)."""
    pages = -(-length // max(page_size, 1))
    return -(-pages // 64) * 8


def mig_read(seq: Sequence, size: int, argsz: int | None = None) -> bytes:
    return raw_message(seq.next_id(), wire.Command.MIG_DATA_READ,
                       _MIG.pack(8 + size if argsz is None else argsz, size))


def mig_write(seq: Sequence, data: bytes, argsz: int | None = None,
              size: int | None = None) -> bytes:
    size = len(data) if size is None else size
    return raw_message(seq.next_id(), wire.Command.MIG_DATA_WRITE,
                       _MIG.pack(8 + size if argsz is None else argsz, size) + data)


def chunk_size(checker: Checker, limit: int | None = None) -> int:
    """The read size: at most the server's and the client's max_data_xfer_size."""
    size = min(checker.facts.max_data_xfer_size, checker.client_max_xfer, 1 << 20)
    return min(size, limit) if limit else size


def read_stream_checked(seq: Sequence, chunk: int, label: str,
                        max_reads: int | None = None) -> bytes | None:
    """Read a saving state's data to its end with the checks of PROTOCOL.md section 4: every
    read succeeds, each reply has size <= requested and argsz = 8 + size (zero padding
    allowed), a short read ends the stream and the next read returns size 0. Three checks per
    stream, however many reads it takes (the first bad reply is the one reported). ``None``
    when a read is refused.

    With ``max_reads``, a stream not ended after that many reads is left there: the device is
    moved STOP_COPY -> STOP (the rest of its data discarded, as a VMM cancelling a migration
    does) and the bytes read so far are returned, without the end-of-stream check."""
    out = bytearray()
    rule = "PROTOCOL.md section 4 (MIG_DATA_READ)"
    reads = 0
    bad: tuple[Reply, int] | None = None
    refused_reply: Reply | None = None
    while len(out) <= 256 << 20:
        if max_reads is not None and reads == max_reads:
            seq.set_state(State.STOP, title=f"{label}: the rest left unread (-> STOP)")
            return bytes(out)
        reply = seq.exchange(mig_read(seq, chunk), expect=Expect("ok", rule=rule))
        reads += 1
        if reply is None or reply.is_error:
            refused_reply = reply
            break
        size = _fields_ok(reply, chunk)
        if size is None:
            bad = (reply, chunk)
            break
        out += memoryview(reply.payload)[8:8 + size]
        if size < chunk:
            break
    ok = seq.verify(refused_reply is None, Kind.ERRNO,
                    f"{label}: MIG_DATA_READs of {chunk} bytes succeed",
                    "success", f"read {reads}: {describe_reply(refused_reply)}", rule)
    if not ok:
        return None
    if not _verify_fields(seq, bad, label):
        return None
    reply = seq.exchange(mig_read(seq, chunk), expect=Expect("ok", rule=rule))
    size = None if reply is None or reply.is_error else _fields_ok(reply, chunk)
    seq.verify(size == 0, Kind.DATA, f"{label}: reads after the end of the stream return size 0",
               "success with size 0", describe_reply(reply) if size is None else f"size {size}",
               "PROTOCOL.md section 4: a short read ends the stream; later reads return size 0")
    return bytes(out)


def _fields_ok(reply: Reply, requested: int) -> int | None:
    """The reply's data size when its fields follow PROTOCOL.md section 4, else ``None``."""
    payload = reply.payload
    if len(payload) < 8:
        return None
    argsz, size = _MIG.unpack_from(payload)
    padding = payload[8 + size:]
    ok = (size <= requested and argsz == 8 + size and len(payload) in (8 + size, 8 + requested)
          and not any(padding))
    return size if ok else None


def _verify_fields(seq: Sequence, bad: tuple[Reply, int] | None, label: str) -> bool:
    observed = "every reply well formed"
    if bad is not None:
        reply, requested = bad
        if len(reply.payload) < 8:
            observed = f"a {len(reply.payload)}-byte payload"
        else:
            argsz, size = _MIG.unpack_from(reply.payload)
            observed = (f"argsz {argsz}, size {size}, payload {len(reply.payload)} bytes for a "
                        f"read of {requested}")
    return seq.verify(bad is None, Kind.REPLY, f"{label}: MIG_DATA_READ reply fields",
                      "size <= requested, argsz = 8 + size, payload 8 + size (or zero-padded "
                      "to 8 + requested) bytes", observed,
                      "PROTOCOL.md section 4; docs/wire-compat.md difference 1 (padding)")


def ensure_saved_stream(checker: Checker) -> bytes | None:
    """A STOP_COPY stream of this server (read once, kept on the checker)."""
    if checker.saved_stream is None:
        with checker.sequence("setup", "save a stream for RESUMING checks") as seq:
            if seq.caps is not None:
                seq.goto(State.STOP_COPY)
                seq.goto(State.STOP)
    return checker.saved_stream


@dataclass(frozen=True)
class Region:
    """A region the checker reads and writes (index, size)."""

    index: int
    size: int


def find_region(seq: Sequence) -> Region | None:
    """The largest readable and writable region (config space, index 7, excluded) from
    DEVICE_GET_INFO and DEVICE_GET_REGION_INFO; exchanges only, no check counted."""
    reply = seq.exchange(enc(seq, wire.DeviceGetInfo()))
    if reply is None or reply.is_error or len(reply.payload) < 16:
        return None
    count = struct.unpack_from("<I", reply.payload, 8)[0]
    best: Region | None = None
    rw = int(wire.RegionInfoFlag.READ | wire.RegionInfoFlag.WRITE)
    for index in range(min(count, 7)):
        info = seq.exchange(enc(seq, wire.RegionInfo(index)))
        if info is None or info.is_error or len(info.payload) < 32:
            continue
        _argsz, flags, _idx, _cap, size = struct.unpack_from("<IIIIQ", info.payload)
        if flags & rw == rw and size >= 8 and (best is None or size > best.size):
            best = Region(index, size)
    return best


def chained(checker: Checker, group: str, title: str, items: Iterable[T],
            one: Callable[[Sequence, T], bool]) -> None:
    """``one(seq, item)`` for every item, on as few sequences (server processes) as possible:
    a sequence that cannot go on (``one`` returns False, or it ended early on a finding) is
    replaced by a fresh one for the items left. An item that failed after others on the same
    sequence runs once more on a fresh one (what the earlier items left may be the cause), so
    one server's failure costs no item the fresh server could check."""
    pending = list(enumerate(items))
    retried: set[int] = set()
    while pending:
        with checker.sequence(group, title) as seq:
            if seq.caps is None:
                return
            first = True
            while pending:
                index, item = pending.pop(0)
                done = False
                try:
                    done = one(seq, item)
                finally:  # also when the sequence ends early: it goes on in the next one
                    if not done and not first and index not in retried:
                        retried.add(index)
                        pending.insert(0, (index, item))
                first = False
                if not done:
                    break


def supported_states(checker: Checker, group: str) -> list[State]:
    """The states the server's migration capabilities allow: from what an earlier sequence of
    this run learnt (the same server), else from a ``capabilities`` sequence of ``group``."""
    from vfio_user_mig.model.graph import transition_graph

    if checker.facts.caps is not None:
        return sorted(transition_graph(checker.facts.caps).nodes)
    with checker.sequence(group, "capabilities") as seq:
        return seq.supported_states()
    return []  # the sequence ended early (a finding says why)


def is_saving(seq: Sequence, state: State) -> bool:
    from vfio_user_mig.protocol.gating import readable_states
    return seq.caps is not None and state in readable_states(seq.caps)


def leave_clean(seq: Sequence) -> None:
    """Leave RESUMING or ERROR before the sequence ends, so that the next sequence on a
    ``--socket`` server does not load a second stream on top of this one: leave RESUMING
    (a refusal is accepted, PROTOCOL.md section 5), then DEVICE_RESET if the device is still
    in RESUMING or ERROR. Exchanges only, no check counted."""
    if seq.state == State.RESUMING:
        reply = seq.exchange(seq.set_state_request(int(State.STOP)), expect=Expect("any"))
        if reply is not None and not reply.is_error:
            seq.state = State.STOP
            return
    if seq.state in (State.RESUMING, State.ERROR):
        seq.exchange(raw_message(seq.next_id(), wire.Command.DEVICE_RESET, b""),
                     expect=Expect("any"))
        reply = seq.exchange(feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                                             int(FeatureOp.GET), argsz=16))
        if reply is not None and not reply.is_error and len(reply.payload) >= 16:
            seq.state = State(struct.unpack_from("<I", reply.payload, 8)[0] & 7)
