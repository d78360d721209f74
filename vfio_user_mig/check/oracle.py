"""The model as an oracle: abstract operations, what their replies must be, and the device's
state as the model sees it (random exploration, ``check --random``).

An :class:`Op` is one abstract operation (set the migration state, read migration data, map a
DMA region, ...). :class:`Oracle` carries the model's view of one connection -- the migration
state (:func:`~vfio_user_mig.model.transition_path`), whether the STOP_COPY stream has ended,
whether DMA logging is on, the DMA maps, how much of a saved stream RESUMING has taken -- and
:meth:`Oracle.apply` turns an op into requests whose :class:`~.steps.Expect` it derives from the
model and :func:`~vfio_user_mig.protocol.gating.legality_table`. Where the model allows several
outcomes (an arc whose action may fail, a second
DMA_LOGGING_START) it accepts each and learns the outcome from the reply and a state GET.

Rules used (PROTOCOL.md sections): 2 (command gating in STOP/STOP_COPY, DMA_MAP/UNMAP, region
access), 3 (DEVICE_FEATURE ops and replies, dirty bitmap length), 4 (MIG_DATA_READ/WRITE
validity, reply form, end of the stream), 5 (the FSM paths, failed arcs, ERROR, DEVICE_RESET).
"""

from __future__ import annotations

import errno as _errno
import itertools
import struct
from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.check.conn import Reply
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.groups.common import UNKNOWN_FEATURE_ERRNOS, UNKNOWN_FEATURE_RULE
from vfio_user_mig.check.groups.dma_dirty import START_RULE, start_reply_page_size
from vfio_user_mig.check.requests import feature_request, raw_message
from vfio_user_mig.check.session import Sequence, SequenceAborted
from vfio_user_mig.check.steps import ANY, Expect, judge, refused, request_label
from vfio_user_mig.model import InvalidTransition, State, transition_path
from vfio_user_mig.protocol.gating import gate, readable_states
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp
from vfio_user_mig.wire.constants import FEATURE_OPS

#: The operations, with their weights in a random draw.
OP_WEIGHTS: dict[str, int] = {
    "set": 24, "get": 5, "read": 12, "write": 8, "map": 8, "unmap": 5, "unmap_all": 2,
    "log_start": 5, "log_stop": 3, "log_report": 5, "region_read": 6, "region_write": 5,
    "reset": 3, "probe": 5, "caps": 2, "info": 2, "irq_info": 2,
}
#: Targets of "set": every state value 0-7 plus 8 (out of range), states of vfio-user favoured.
SET_WEIGHTS = (1, 4, 4, 4, 4, 1, 4, 1, 1)
#: DMA slots (iova, size); the last overlaps the first two on purpose.
DMA_SLOTS: tuple[tuple[int, int], ...] = (
    (0x0, 0x1000), (0x1000, 0x1000), (0x4000, 0x2000), (0x100000, 0x4000), (0x0, 0x2000),
)
READ_SIZES = (1, 8, 1024, 4096, 65536)
WRITE_SIZES = (8, 1024, 4096, 65536)
LOG_PAGE = 4096
PROBE_FEATURES = (1, 2, 6, 7, 8, 3, 9)
PROBE_OPS = (FeatureOp.PROBE, FeatureOp.PROBE | FeatureOp.GET, FeatureOp.PROBE | FeatureOp.SET,
             FeatureOp.PROBE | FeatureOp.GET | FeatureOp.SET)
_STATE_REPLY = struct.Struct("<IIII")
_MIG = struct.Struct("<II")
_REGION_FLAG_READ, _REGION_FLAG_WRITE, _REGION_FLAG_MMAP = 1, 2, 4


@dataclass(frozen=True)
class Op:
    """One abstract operation: ``kind`` (a key of :data:`OP_WEIGHTS`) and two small arguments
    whose meaning depends on it (a state, a size index, a DMA slot, a region, a feature)."""

    kind: str
    a: int = 0
    b: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"op": self.kind, "a": self.a, "b": self.b}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        return cls(str(data["op"]), int(data.get("a", 0)), int(data.get("b", 0)))


@dataclass(frozen=True)
class RegionFact:
    """A region the server reported (DEVICE_GET_REGION_INFO): index, size, flags."""

    index: int
    size: int
    flags: int


@dataclass
class World:
    """What a run learns once about the server: its regions and a stream it saved."""

    regions: tuple[RegionFact, ...] = ()
    saved_stream: bytes | None = None

    @property
    def readable(self) -> tuple[RegionFact, ...]:
        return tuple(r for r in self.regions if r.size and r.flags & _REGION_FLAG_READ)

    @property
    def memory(self) -> tuple[RegionFact, ...]:
        """Writable mmappable regions (device memory): safe to write with REGION_WRITE."""
        need = _REGION_FLAG_WRITE | _REGION_FLAG_MMAP
        return tuple(r for r in self.regions if r.size >= 64 and r.flags & need == need)


def learn_regions(seq: Sequence) -> tuple[RegionFact, ...]:
    """DEVICE_GET_INFO and DEVICE_GET_REGION_INFO of every region (no checks counted)."""
    reply = seq.exchange(wire.encode(wire.DeviceGetInfo(msg_id=seq.next_id())))
    if reply is None or reply.is_error or len(reply.payload) < 16:
        return ()
    count = min(struct.unpack_from("<I", reply.payload, 8)[0], 16)
    out = []
    for index in range(count):
        reply = seq.exchange(wire.encode(wire.RegionInfo(index=index, msg_id=seq.next_id())))
        if reply is not None and not reply.is_error and len(reply.payload) >= 32:
            _argsz, flags, idx, _cap, size = struct.unpack_from("<IIIIQ", reply.payload)
            out.append(RegionFact(idx, size, flags))
    return tuple(out)


def _pattern(op: Op, size: int) -> bytes:
    seed = (op.a * 131 + op.b * 31 + 7) & 0xFF
    return bytes((seed + i * 13) & 0xFF for i in range(size))


@dataclass
class Oracle:
    """The model's view of one connection (module docstring); ``seq.state`` is its state."""

    seq: Sequence
    world: World
    maps: dict[int, tuple[int, bool]] = field(default_factory=dict)
    logging: bool | None = None
    stream_ended: bool | None = None
    resume_written: int = 0
    resume_clean: bool = False

    def start(self) -> None:
        """Begin from a known logging state: DMA_LOGGING_STOP, whatever its reply (a server
        reached by ``--socket`` may have been left logging)."""
        reply = self.seq.exchange(self._feature(FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET,
                                                wire.DmaLoggingControl(LOG_PAGE)), expect=ANY)
        self.logging = False if reply is not None and not reply.is_error else None

    # -- helpers ------------------------------------------------------------------------------
    @property
    def state(self) -> State:
        if self.seq.state is None:
            raise SequenceAborted("state unknown")
        return self.seq.state

    def _gate(self, command: Command) -> int | None:
        assert self.seq.caps is not None
        return gate(self.state, command, self.seq.caps)

    def _gated(self, command: Command, ok: Expect) -> Expect:
        errno = self._gate(command)
        if errno is None:
            return ok
        return refused(errno, rule=f"PROTOCOL.md sections 2 and 4: {command.name} is refused "
                       f"in {self.state.name} (legality table)")

    def _feature(self, index: int, ops: int, data: Any = None) -> bytes:
        return wire.encode(wire.DeviceFeature(feature=index, ops=FeatureOp(ops), data=data,
                                              msg_id=self.seq.next_id()))

    def _check(self, title: str, data: bytes, expect: Expect, fds: tuple[str, ...] = ()
               ) -> Reply:
        reply = self.seq.check(f"{title} in {self.state.name}", data, expect, fds=fds)
        if reply is None:  # check() aborts the sequence first; this keeps the type honest
            raise SequenceAborted(title)
        return reply

    def read_state(self, title: str, allowed: set[State], rule: str) -> State:
        """MIG_DEVICE_STATE GET; one check: the state is one of ``allowed``."""
        seq = self.seq
        data = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET,
                               argsz=16)
        flags = int(FeatureIndex.MIG_DEVICE_STATE | FeatureOp.GET)
        expect = (Expect("ok", payload=_STATE_REPLY.pack(16, flags, int(next(iter(allowed))),
                                                         0), rule=rule)
                  if len(allowed) == 1 else Expect("ok", payload_len=16, rule=rule))
        before = self.seq.state
        reply = seq.exchange(data, expect=expect)
        if before is not None:
            seq.checker.report.coverage.cells[(before.name, "DEVICE_FEATURE")] += 1
        if reply is None or reply.is_error or len(reply.payload) < 16:
            seq.verify(False, Kind.REPLY, f"{title}: MIG_DEVICE_STATE GET answers",
                       "success with a 16-byte payload", judge(expect, reply).observed,
                       "PROTOCOL.md section 3", ["DEVICE_FEATURE"])
            raise SequenceAborted("state unreadable")
        value = struct.unpack_from("<I", reply.payload, 8)[0]
        names = "/".join(sorted(s.name for s in allowed))
        try:
            observed = State(value)
        except ValueError:
            seq.verify(False, Kind.STATE, f"{title}: state reached", names, str(value), rule,
                       ["DEVICE_FEATURE"])
            raise SequenceAborted("unknown state") from None
        seq.verify(observed in allowed, Kind.STATE, f"{title}: state reached", names,
                   observed.name, rule, ["DEVICE_FEATURE"])
        self._moved(before, observed)
        return observed

    def _moved(self, before: State | None, after: State) -> None:
        """Track the saving stream and RESUMING as the state moves from ``before``."""
        assert self.seq.caps is not None
        saving = readable_states(self.seq.caps)
        if after in saving and (before not in saving or after != before):
            self.stream_ended = False
        elif after not in saving:
            self.stream_ended = None
        if after == State.RESUMING and before != State.RESUMING:
            self.resume_written, self.resume_clean = 0, True
        self.seq.state = after

    # -- operations ---------------------------------------------------------------------------
    def apply(self, op: Op) -> None:
        """Send ``op``'s requests and check their replies (module docstring)."""
        getattr(self, f"_op_{op.kind}")(op)

    def _op_set(self, op: Op) -> None:
        cur, caps, seq = self.state, self.seq.caps, self.seq
        assert caps is not None
        target = op.a
        data = seq.set_state_request(target)
        name = State(target).name if 0 <= target <= 7 else str(target)
        title = f"SET {cur.name} -> {name}"
        try:
            path: tuple[State, ...] | None = tuple(transition_path(cur, State(target), caps))
        except (InvalidTransition, ValueError):
            path = None
        arcs = list(itertools.pairwise(path)) if path else []
        fallible = (State.RESUMING, State.STOP) in arcs and not self._stream_complete()
        if path is None:
            expect = refused(_errno.EINVAL, rule="PROTOCOL.md section 5: an invalid transition "
                             "is refused with EINVAL and the state is unchanged")
        elif fallible:
            expect = Expect("any", rule="PROTOCOL.md section 5: RESUMING -> STOP may fail on an "
                            "incomplete or foreign stream (last state reached, or ERROR)")
        else:
            expect = Expect("ok", payload=data[16:], rule="PROTOCOL.md section 5; section 3: "
                            "a SET reply echoes the request")
        reply = seq.check(title, data, expect)
        if reply is None:
            raise SequenceAborted(title)
        if path is None:
            allowed, rule = {cur}, "PROTOCOL.md section 5: a refused SET leaves the state"
        elif not reply.is_error:
            seq.verify(reply.payload == data[16:], Kind.REPLY, f"{title}: reply echoes",
                       data[16:].hex(), reply.payload.hex(), "PROTOCOL.md section 3")
            for a, b in arcs:
                seq.checker.report.coverage.arcs[(a.name, b.name)] += 1
            allowed, rule = {State(target)}, "PROTOCOL.md section 5 (the model's path)"
        else:
            allowed = set(path[:-1]) | {State.ERROR}
            rule = "PROTOCOL.md section 5: a failed arc leaves the last state reached or ERROR"
        self.read_state(title, allowed, rule)

    def _stream_complete(self) -> bool:
        stream = self.world.saved_stream
        return (self.resume_clean and stream is not None
                and self.resume_written == len(stream))

    def _op_get(self, op: Op) -> None:
        self.read_state("GET", {self.state}, "PROTOCOL.md section 3: GET reports the state")

    def _op_read(self, op: Op) -> None:
        size = READ_SIZES[op.a % len(READ_SIZES)]
        state = self.state
        data = raw_message(self.seq.next_id(), Command.MIG_DATA_READ, _MIG.pack(8 + size, size))
        expect = self._gated(Command.MIG_DATA_READ,
                             Expect("ok", rule="PROTOCOL.md section 4: MIG_DATA_READ"))
        reply = self._check("MIG_DATA_READ", data, expect)
        if reply.is_error:
            return
        pay = reply.payload
        argsz, got = _MIG.unpack_from(pay) if len(pay) >= 8 else (0, size + 1)
        form = (len(pay) >= 8 and got <= size and argsz == 8 + got
                and len(pay) in (8 + got, 8 + size) and not any(pay[8 + got:]))
        self.seq.verify(form, Kind.REPLY, f"MIG_DATA_READ reply form in {state.name}",
                        f"argsz = 8 + size, size <= {size}, payload 8 + size or 8 + {size} "
                        "(zero padding)", f"{len(pay)} bytes, argsz {argsz}, size {got}",
                        "PROTOCOL.md section 4; docs/wire-compat.md difference 1")
        if state == State.STOP_COPY and form:
            if self.stream_ended:
                self.seq.verify(got == 0, Kind.DATA,
                                "MIG_DATA_READ after the end of the STOP_COPY stream",
                                "size 0", f"size {got}",
                                "PROTOCOL.md section 4: later reads return size 0")
            if got < size:
                self.stream_ended = True

    def _op_write(self, op: Op) -> None:
        size = WRITE_SIZES[op.a % len(WRITE_SIZES)]
        stream = self.world.saved_stream
        legal = self._gate(Command.MIG_DATA_WRITE) is None
        part = b""
        if legal and stream is not None and self.resume_clean and \
                self.resume_written < len(stream):
            part = stream[self.resume_written:self.resume_written + size]
            ok = Expect("ok", payload_len=0, rule="PROTOCOL.md section 4: MIG_DATA_WRITE of "
                        "the next part of a stream the device saved")
        else:
            part = _pattern(op, size)
            ok = Expect("any", rule="PROTOCOL.md section 4: the device judges foreign data")
        data = raw_message(self.seq.next_id(), Command.MIG_DATA_WRITE,
                           _MIG.pack(8 + len(part), len(part)) + part)
        reply = self._check("MIG_DATA_WRITE", data, self._gated(Command.MIG_DATA_WRITE, ok))
        if legal:
            if ok.reply == "ok" and not reply.is_error:
                self.resume_written += len(part)
            else:
                self.resume_clean = False

    def _op_map(self, op: Op) -> None:
        iova, size = DMA_SLOTS[op.a % len(DMA_SLOTS)]
        with_fd = bool(op.b & 1)
        exact = self.maps.get(iova, (0, False))[0] == size
        overlap = any(b < iova + size and iova < b + s for b, (s, _fd) in self.maps.items())
        rule = "PROTOCOL.md section 2: DMA_MAP"
        if exact:
            ok = Expect("any", rule=rule + " (a repeated map: implementation-defined)")
        elif overlap:
            ok = Expect("error", rule=rule + ": a region overlapping a mapped one is refused "
                        "(any errno: vfio-user.rst gives none)")
        else:
            ok = Expect("ok", payload_len=0, rule=rule + ": the reply has no payload")
        msg = wire.encode(wire.DmaMap(addr=iova, size=size, msg_id=self.seq.next_id()))
        expect = self._gated(Command.DMA_MAP, ok)
        reply = self._check("DMA_MAP", msg, expect, (f"memfd:{size}",) if with_fd else ())
        if not reply.is_error and not exact:
            self.maps[iova] = (size, with_fd)

    def _op_unmap(self, op: Op) -> None:
        iova, size = DMA_SLOTS[op.a % len(DMA_SLOTS)]
        mapped = self.maps.get(iova, (0, False))[0] == size
        rule = "PROTOCOL.md section 2: DMA_UNMAP echoes the 24-byte request"
        ok = (Expect("ok", payload_len=24, rule=rule) if mapped else
              Expect("error", rule="PROTOCOL.md section 2: DMA_UNMAP of a region not mapped "
                     "(any errno: vfio-user.rst gives none)"))
        msg = wire.encode(wire.DmaUnmap(addr=iova, size=size, msg_id=self.seq.next_id()))
        reply = self._check("DMA_UNMAP", msg, self._gated(Command.DMA_UNMAP, ok))
        if not reply.is_error:
            self.maps.pop(iova, None)

    def _op_unmap_all(self, op: Op) -> None:
        msg = wire.encode(wire.DmaUnmap(addr=0, size=0, flags=wire.DmaUnmapFlag.ALL,
                                        msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=24, rule="docs/wire-compat.md difference 7: UNMAP ALL")
        reply = self._check("DMA_UNMAP ALL", msg, self._gated(Command.DMA_UNMAP, ok))
        if not reply.is_error:
            self.maps.clear()

    def _op_log_start(self, op: Op) -> None:
        data = self._feature(FeatureIndex.DMA_LOGGING_START, FeatureOp.SET,
                             wire.DmaLoggingControl(LOG_PAGE))
        expect = (Expect("ok", payload_len=len(data) - 16, rule=START_RULE)
                  if self.logging is False else
                  Expect("any", rule="PROTOCOL.md section 3: starting logging twice is "
                         "implementation-defined"))
        reply = self._check("DMA_LOGGING_START", data, expect)
        if self.logging is False and not reply.is_error:
            start_reply_page_size(self.seq, data, reply, f"DMA_LOGGING_START in {self.state.name}")
        if not reply.is_error or self.logging is not False:
            self.logging = True if not reply.is_error or self.logging else None

    def _op_log_stop(self, op: Op) -> None:
        data = self._feature(FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET,
                             wire.DmaLoggingControl(LOG_PAGE))
        expect = (Expect("ok", payload=data[16:], rule="PROTOCOL.md section 3: a SET reply "
                         "echoes the request") if self.logging else
                  Expect("any", rule="PROTOCOL.md section 3: stopping logging that is off is "
                         "implementation-defined"))
        reply = self._check("DMA_LOGGING_STOP", data, expect)
        if not reply.is_error:
            self.logging = False

    def _op_log_report(self, op: Op) -> None:
        iova, size = DMA_SLOTS[op.a % len(DMA_SLOTS)]
        entry = self.maps.get(iova)
        data = self._feature(FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET,
                             wire.DmaLoggingReport(iova, size, LOG_PAGE))
        rule = "PROTOCOL.md section 3: DMA_LOGGING_REPORT"
        if self.logging and entry == (size, True):
            expect = Expect("ok", payload_len=8 + 24 + wire.bitmap_len(size, LOG_PAGE),
                            rule=rule + ": the bitmap is ceil(pages / 64) * 8 bytes")
        elif self.logging is False:
            expect = Expect("error", rule=rule + " while logging is off is refused (any errno: "
                            "the kernel leaves it to the driver)")
        else:
            expect = Expect("any", rule=rule + " of a range that is not one fd-backed map is "
                            "implementation-defined")
        self._check("DMA_LOGGING_REPORT", data, expect)

    def _op_region_read(self, op: Op) -> None:
        regions = self.world.readable
        if not regions:
            return
        region = regions[op.a % len(regions)]
        count = min(region.size, 8 if op.b % 2 == 0 else 64)
        msg = wire.encode(wire.RegionRead(offset=0, region=region.index, count=count,
                                          msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=16 + count, rule="PROTOCOL.md section 2: the REGION_READ "
                    "reply is the 16-byte echo and the data")
        self._check(f"REGION_READ of region {region.index}", msg,
                    self._gated(Command.REGION_READ, ok))

    def _op_region_write(self, op: Op) -> None:
        regions = self.world.memory
        if not regions:
            return
        region = regions[op.a % len(regions)]
        # the lower half only: the sample's BAR1 (and ours) is a 0x4000 region backed by 0x3000
        # bytes, refusing access past them (INTEROP.md, building it)
        offset = max(min((op.b % 4) * 0x1000, region.size // 2 - 64), 0)
        msg = wire.encode(wire.RegionWrite(offset=offset, region=region.index, count=64,
                                           data=_pattern(op, 64), msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=16, rule="PROTOCOL.md section 2: the REGION_WRITE reply is "
                    "the 16-byte echo")
        reply = self._check(f"REGION_WRITE of region {region.index}", msg,
                            self._gated(Command.REGION_WRITE, ok))
        if not reply.is_error and self.state == State.RESUMING:
            self.resume_clean = False

    def _op_reset(self, op: Op) -> None:
        before = self.state
        msg = wire.encode(wire.DeviceReset(msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=0, rule="PROTOCOL.md section 2: DEVICE_RESET")
        reply = self._check("DEVICE_RESET", msg, self._gated(Command.DEVICE_RESET, ok))
        if reply.is_error:
            return
        self.logging = None
        self.resume_clean = False
        self.read_state(f"DEVICE_RESET in {before.name}", {State.RUNNING},
                        "kernel vfio.h (VFIO_DEVICE_RESET returns the device_state to "
                        "RUNNING); PROTOCOL.md section 5")
        if self.seq.state == before:
            self.stream_ended = None

    def _op_probe(self, op: Op) -> None:
        feature = PROBE_FEATURES[op.a % len(PROBE_FEATURES)]
        ops = PROBE_OPS[op.b % len(PROBE_OPS)]
        data = feature_request(self.seq.next_id(), feature, int(ops))
        supported = FEATURE_OPS.get(feature)
        asked = ops & (FeatureOp.GET | FeatureOp.SET)
        rule = "PROTOCOL.md section 3: PROBE"
        if supported is None:
            expect = refused(*UNKNOWN_FEATURE_ERRNOS, rule=UNKNOWN_FEATURE_RULE)
        elif asked & ~supported:
            expect = refused(_errno.EINVAL, rule=rule + " of an operation the feature lacks")
        else:
            expect = Expect("ok", payload=data[16:], rule=rule + " replies echo the request")
        name = request_label(data).split(" ", 1)[1]
        self._check(f"PROBE {name}", data, expect)

    def _op_caps(self, op: Op) -> None:
        assert self.seq.caps is not None
        data = feature_request(self.seq.next_id(), FeatureIndex.MIGRATION, FeatureOp.GET,
                               argsz=16)
        flags = int(FeatureIndex.MIGRATION | FeatureOp.GET)
        expect = Expect("ok", payload=struct.pack("<IIQ", 16, flags, int(self.seq.caps)),
                        rule="PROTOCOL.md section 3: MIGRATION GET gives the same flags")
        self._check("MIGRATION GET", data, expect)

    def _op_info(self, op: Op) -> None:
        msg = wire.encode(wire.DeviceGetInfo(msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=16, rule="PROTOCOL.md section 2: DEVICE_GET_INFO")
        self._check("DEVICE_GET_INFO", msg, self._gated(Command.DEVICE_GET_INFO, ok))

    def _op_irq_info(self, op: Op) -> None:
        msg = wire.encode(wire.IrqInfo(index=op.a % 5, msg_id=self.seq.next_id()))
        ok = Expect("ok", payload_len=16, rule="PROTOCOL.md section 2: DEVICE_GET_IRQ_INFO")
        self._check(f"DEVICE_GET_IRQ_INFO {op.a % 5}", msg,
                    self._gated(Command.DEVICE_GET_IRQ_INFO, ok))


__all__ = ["DMA_SLOTS", "OP_WEIGHTS", "SET_WEIGHTS", "Op", "Oracle", "RegionFact", "World",
           "learn_regions"]
