"""The sans-IO judge: a recorded session in, findings against the client rules out.

:func:`judge_session` walks each connection's events in the order they crossed the socket
(:mod:`vfio_user_mig.simulator.referee.record`), decodes every message (``wire.decode`` for
the client's requests, the header and the MIG_DATA layout for the referee's replies), keeps
the device's migration state from the referee's notes, and applies the rules of
:mod:`.rules` as each message comes: transitions through the model
(:func:`~vfio_user_mig.model.paths.transition_path`), what each state accepts through
:func:`vfio_user_mig.protocol.gating.gate`. Rules between connections (the destination got the
source's whole stream; the two device states are equal) are applied once both are walked.
Nothing here does IO or looks at a clock: the same session always gives the same findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vfio_user_mig import wire
from vfio_user_mig.check.client.rules import spec_of
from vfio_user_mig.check.findings import Finding, Kind
from vfio_user_mig.check.steps import ANY, Step, request_label
from vfio_user_mig.model import VFIO_USER_CAPS, InvalidTransition, MigrationCaps, State
from vfio_user_mig.model.paths import transition_path
from vfio_user_mig.protocol.gating import gate
from vfio_user_mig.simulator.referee.record import ConnLog, Session
from vfio_user_mig.wire.constants import Command, FeatureIndex, FeatureOp
from vfio_user_mig.wire.layouts import HEADER, MIG_DATA

#: Reads a pipelining client may still have in flight when the STOP_COPY stream ends.
PIPELINE_ALLOWANCE = 8
#: Messages of a connection a finding's reproducer carries (the last ones before it).
REPRODUCER_MESSAGES = 64
_FD_COMMANDS = {Command.DMA_MAP, Command.DEVICE_SET_IRQS}
_SIZED = {Command.MIG_DATA_READ, Command.MIG_DATA_WRITE, Command.REGION_READ,
          Command.REGION_WRITE}


@dataclass
class ConnFacts:
    """What one connection showed, for the cross-connection rules and the verdicts."""

    role: str
    final_state: str = ""
    states: list[str] = field(default_factory=list)
    stop_copy_stream: bytearray = field(default_factory=bytearray)
    stop_copy_digest: str = ""
    written: bytearray = field(default_factory=bytearray)
    written_at_resume_stop: bytes | None = None
    resumed_digest: str = ""
    resume_stop_index: int = -1
    #: Stream bytes the record did not keep whole (Event.cut): no stream comparison then.
    record_cut: bool = False
    failed_sets: int = 0
    resets: int = 0
    ended: str = ""


@dataclass
class _Walk:
    """The judge's state while walking one connection."""

    log: ConnLog
    caps: MigrationCaps
    limits: dict[str, int]
    findings: list[Finding]
    facts: ConnFacts
    state: State = State.RUNNING
    versioned: bool = False
    outstanding: dict[int, tuple[Command, Any, int]] = field(default_factory=dict)
    server_requests: dict[int, int] = field(default_factory=dict)
    mapped: int = 0
    logging: bool = False
    stream_end_seen: bool = False
    reads_after_end: int = 0
    seen: set[str] = field(default_factory=set)

    def find(self, rule: str, kind: Kind, title: str, at: int, expected: str, observed: str,
             command: str = "") -> None:
        if title in self.seen:  # one finding per defect and connection
            return
        self.seen.add(title)
        self.findings.append(Finding(
            kind, f"{title} ({self.log.role})", [command] if command else [], expected,
            observed, spec_of(rule), reproducer(self.log, at), group=rule))


def reproducer(log: ConnLog, at: int) -> list[dict[str, Any]]:
    """The connection's messages up to event ``at`` (the last REPRODUCER_MESSAGES of them) as
    steps: the client's requests with what the referee answered, in order."""
    messages = [(i, e) for i, e in enumerate(log.events[: at + 1]) if e.direction != "note"]
    kept = messages[-REPRODUCER_MESSAGES:]
    steps = []
    for n, (_i, event) in enumerate(kept):
        who = "client" if event.direction == "c2s" else "referee"
        note = f"{who} ({log.role})"
        if n == 0 and len(kept) < len(messages):
            note += f"; messages {len(messages) - len(kept) + 1}-{len(messages)} of the session"
        step = Step(event.data, tuple("fd" for _ in range(event.fds)), ANY, note).to_json()
        step["command"] = request_label(event.data) if len(event.data) >= 16 else "TRUNCATED"
        steps.append(step)
    return steps


def _header(data: bytes) -> tuple[int, int, int, int, int] | None:
    if len(data) < HEADER.size:
        return None
    msg_id, command, size, flags, error = HEADER.unpack_from(data)
    return msg_id, command, size, flags, error


def _client_message(w: _Walk, i: int, data: bytes, fds: int, cut: int = 0) -> None:
    head = _header(data)
    label = request_label(data)
    if head is None or head[2] != (cut or len(data)):
        w.find("header", Kind.REPLY, "message with a wrong msg_size", i,
               "msg_size equal to the message's length", f"{len(data)} bytes", label)
        return
    msg_id, command, _size, flags, _error = head
    if fds > w.limits.get("max_msg_fds", 1):
        w.find("fds", Kind.REPLY, "more fds than max_msg_fds", i,
               f"at most {w.limits.get('max_msg_fds')} fds", f"{fds} fds", label)
    if flags & 0xF == wire.MsgType.REPLY:
        if msg_id not in w.server_requests:
            w.find("msg-id", Kind.REPLY, "a reply to no server request", i,
                   "a reply echoing the id of a server DMA request", f"reply id {msg_id:#x}",
                   label)
        w.server_requests.pop(msg_id, None)
        return
    if cut:  # only its first bytes were kept: the header rules only
        w.outstanding[msg_id] = (Command(command), None, i)
        w.facts.record_cut = True
        return
    try:
        msg: Any = wire.decode(data)
    except wire.WireError as exc:
        w.find("decode", Kind.REPLY, f"malformed {label}", i, "a well-formed request",
               str(exc), label)
        return
    cmd = Command(command)
    if not w.versioned and cmd != Command.VERSION:
        w.find("version-first", Kind.STATE, "request before VERSION", i, "VERSION first",
               label, label)
    w.versioned = True
    if fds and cmd not in _FD_COMMANDS:
        w.find("fds", Kind.REPLY, f"fds with {cmd.name}", i,
               "fds only with DMA_MAP or DEVICE_SET_IRQS", f"{fds} fds", label)
    if msg_id in w.outstanding:
        w.find("msg-id", Kind.REPLY, "request id reused while its request waits", i,
               "a fresh id", f"id {msg_id:#x} still waiting for its reply", label)
    w.outstanding[msg_id] = (cmd, msg, i)
    _judge_request(w, i, cmd, msg, label)


def _judge_request(w: _Walk, i: int, cmd: Command, msg: Any, label: str) -> None:
    limit = w.limits.get("max_data_xfer_size", wire.DEFAULT_MAX_DATA_XFER_SIZE)
    if cmd in _SIZED:
        size = msg.size if cmd == Command.MIG_DATA_READ else (
            len(msg.data) if cmd == Command.MIG_DATA_WRITE else getattr(
                msg, "count", len(getattr(msg, "data", b""))))
        if size > limit:
            w.find("xfer-size", Kind.REPLY, f"{cmd.name} beyond max_data_xfer_size", i,
                   f"at most {limit} bytes", f"{size} bytes", label)
    if w.state == State.ERROR and cmd not in (Command.DEVICE_RESET, Command.DEVICE_FEATURE):
        w.find("error-reset", Kind.STATE, "device in ERROR used without a reset", i,
               "DEVICE_RESET first", label, label)
    refused = gate(w.state, cmd, w.caps) if w.state != State.ERROR else None
    if refused is not None and cmd not in (Command.MIG_DATA_READ, Command.MIG_DATA_WRITE):
        w.find("gated", Kind.STATE, f"{cmd.name} in {w.state.name}", i,
               f"no {cmd.name} while the device is in {w.state.name}", label, label)
    if cmd == Command.MIG_DATA_READ:
        if refused is not None:
            w.find("read-state", Kind.STATE, f"MIG_DATA_READ in {w.state.name}", i,
                   "PRE_COPY or STOP_COPY", w.state.name, label)
        if w.state == State.STOP_COPY and w.stream_end_seen:
            w.reads_after_end += 1
            if w.reads_after_end > PIPELINE_ALLOWANCE:
                w.find("past-end", Kind.DATA, "reads past the end of the STOP_COPY stream", i,
                       f"no reads after the end (at most {PIPELINE_ALLOWANCE} in flight)",
                       f"{w.reads_after_end} reads after the end", label)
    elif cmd == Command.MIG_DATA_WRITE:
        if refused is not None:
            w.find("write-state", Kind.STATE, f"MIG_DATA_WRITE in {w.state.name}", i,
                   "RESUMING", w.state.name, label)
        w.facts.written += bytes(msg.data)
    elif cmd == Command.DMA_MAP:
        w.mapped += 1
    elif cmd == Command.DMA_UNMAP:
        w.mapped = 0 if msg.flags & wire.DmaUnmapFlag.ALL else max(0, w.mapped - 1)
    elif cmd == Command.DEVICE_FEATURE:
        _judge_feature(w, i, msg, label)


def _judge_feature(w: _Walk, i: int, msg: Any, label: str) -> None:
    feature, ops = int(msg.feature), msg.ops
    if ops & FeatureOp.PROBE:
        return
    if feature == FeatureIndex.MIG_DEVICE_STATE and ops & FeatureOp.SET:
        target = State(int(msg.data.device_state)) if int(msg.data.device_state) in \
            State._value2member_map_ else None
        try:
            if target is None or target == State.ERROR:
                raise ValueError("ERROR (or no state) is never requested")
            transition_path(w.state, target, w.caps)
        except (InvalidTransition, ValueError):
            w.find("arc", Kind.STATE, "a transition the model refuses", i,
                   "a transition of the model", f"{w.state.name} -> "
                   f"{target.name if target else msg.data.device_state}", label)
            return
        if w.state == State.STOP_COPY and target != State.STOP_COPY and not w.stream_end_seen:
            w.find("drain", Kind.DATA, "left STOP_COPY before the end of the stream", i,
                   "a short MIG_DATA_READ reply before leaving STOP_COPY",
                   f"STOP_COPY -> {target.name} with the stream not at its end", label)
        if target == State.PRE_COPY and w.mapped and not w.logging:
            w.find("log-before-precopy", Kind.DATA, "PRE_COPY without dirty logging", i,
                   "DMA_LOGGING_START before PRE_COPY",
                   f"{w.mapped} DMA regions mapped, logging off", label)
        if w.state == State.RESUMING and target != State.RESUMING:
            w.facts.written_at_resume_stop = bytes(w.facts.written)
            w.facts.resume_stop_index = i
    elif feature == FeatureIndex.DMA_LOGGING_START and ops & FeatureOp.SET:
        w.logging = True
    elif feature == FeatureIndex.DMA_LOGGING_STOP and ops & FeatureOp.SET:
        w.logging = False
    elif feature == FeatureIndex.DMA_LOGGING_REPORT and ops & FeatureOp.GET:
        report = msg.data
        page = getattr(report, "page_size", 0)
        if page <= 0 or page & (page - 1):
            w.find("bitmap", Kind.REPLY, "DMA_LOGGING_REPORT page size not a power of two", i,
                   "a power-of-two page size", f"{page}", label)
            return
        need = 8 + 24 + report.bitmap_size()
        if msg.argsz < need:
            w.find("bitmap", Kind.REPLY, "DMA_LOGGING_REPORT argsz too small for its bitmap",
                   i, f"argsz >= {need}", f"argsz {msg.argsz}", label)


def _server_message(w: _Walk, i: int, data: bytes, cut: int = 0) -> None:
    head = _header(data)
    if head is None:
        return
    msg_id, _command, _size, flags, _error = head
    if flags & 0xF != wire.MsgType.REPLY:
        w.server_requests[msg_id] = i
        return
    pending = w.outstanding.pop(msg_id, None)
    if pending is None:
        return
    cmd, msg, _at = pending
    if msg is None:
        return
    failed = bool(flags & wire.HeaderFlag.ERROR)
    if cmd == Command.DEVICE_FEATURE and failed and int(msg.feature) == \
            FeatureIndex.MIG_DEVICE_STATE and msg.ops & FeatureOp.SET:
        w.facts.failed_sets += 1
    if cmd != Command.MIG_DATA_READ or failed or len(data) < HEADER.size + MIG_DATA.size:
        return
    _argsz, size = MIG_DATA.unpack_from(data, HEADER.size)
    if w.state == State.STOP_COPY:
        w.facts.record_cut |= bool(cut)
        start = HEADER.size + MIG_DATA.size
        w.facts.stop_copy_stream += data[start:start + size]
        if size < msg.size:
            w.stream_end_seen = True


def _note(w: _Walk, i: int, note: dict[str, Any]) -> None:
    if "state" in note:
        new = State[note["state"]]
        if new != w.state:
            w.facts.states.append(new.name)
            if new == State.STOP_COPY:
                w.facts.stop_copy_stream.clear()
                w.stream_end_seen = False
                w.reads_after_end = 0
            if w.state == State.STOP_COPY:
                w.facts.stop_copy_digest = note.get("digest", "")
            if w.state == State.RESUMING and new == State.STOP:
                w.facts.resumed_digest = note.get("digest", "")
            w.state = new
        w.facts.final_state = new.name
    if note.get("unreported_dirty") and w.logging:
        w.find("resend", Kind.DATA, "pages the device dirtied never reported", i,
               "every dirtied page reported before the switchover or logging stop",
               f"{note['unreported_dirty']} dirty pages unreported", "DEVICE_FEATURE")
    if note.get("dma_unanswered"):
        w.find("dma-answered", Kind.HANG, "server DMA request not answered while the client "
               "waits", i, "a reply to each DMA request",
               f"no reply to ids {note['dma_unanswered']}", "DMA_READ")
    if "ended" in note:
        w.facts.ended = str(note["ended"])


def walk_connection(log: ConnLog, caps: MigrationCaps, limits: dict[str, int],
                    findings: list[Finding]) -> ConnFacts:
    """Apply the per-connection rules to ``log`` (module docstring)."""
    w = _Walk(log, caps, limits, findings, ConnFacts(log.role))
    for i, event in enumerate(log.events):
        if event.direction == "c2s":
            _client_message(w, i, event.data, event.fds, event.cut)
        elif event.direction == "s2c":
            _server_message(w, i, event.data, event.cut)
        else:
            _note(w, i, event.note)
    end = len(log.events) - 1
    dropped = w.facts.ended.startswith("dropped")
    if w.server_requests and not dropped:
        w.find("dma-answered", Kind.HANG, "server DMA request never answered", end,
               "a reply to each DMA request", f"{len(w.server_requests)} unanswered",
               "DMA_READ")
    if w.state == State.ERROR and log.role == "src" and not dropped:
        w.find("error-reset", Kind.STATE, "source device left in ERROR", end,
               "DEVICE_RESET after a transition left the source device in ERROR (the VM "
               "goes on running on the source)", "ERROR at the end")
    if w.logging and log.role == "src" and "STOP_COPY" in w.facts.states and not dropped:
        w.find("log-stop", Kind.DATA, "dirty logging never stopped", end,
               "DMA_LOGGING_STOP after the migration", "logging still on at the end")
    return w.facts


def judge_session(session: Session, caps: MigrationCaps = VFIO_USER_CAPS) -> tuple[
        list[Finding], list[ConnFacts]]:
    """Every rule on every connection of ``session``, then the rules between them."""
    findings: list[Finding] = []
    limits = dict(session.meta.get("limits", {}))
    facts = [walk_connection(log, caps, limits, findings) for log in session.conns]
    sources = [f for f in facts if f.role == "src" and f.stop_copy_digest]
    for dst in facts:
        if dst.role != "dst" or dst.written_at_resume_stop is None or not sources:
            continue
        src = sources[-1]
        if src.record_cut or dst.record_cut:
            continue
        log = next(c for c in session.conns if c.role == "dst")
        if not dst.written_at_resume_stop.endswith(bytes(src.stop_copy_stream)):
            findings.append(Finding(
                Kind.DATA, "destination left RESUMING without the whole STOP_COPY stream (dst)",
                ["MIG_DATA_WRITE"], f"the {len(src.stop_copy_stream)} bytes of the source's "
                "STOP_COPY stream written last",
                f"{len(dst.written_at_resume_stop)} bytes written, not ending with the stream",
                spec_of("whole-stream"), reproducer(log, dst.resume_stop_index),
                group="whole-stream"))
        elif dst.resumed_digest and dst.resumed_digest != src.stop_copy_digest:
            findings.append(Finding(
                Kind.DATA, "destination device state differs from the source's (dst)",
                ["DEVICE_FEATURE"], f"digest {src.stop_copy_digest[:16]}",
                f"digest {dst.resumed_digest[:16]}", spec_of("same-state"),
                reproducer(log, dst.resume_stop_index), group="same-state"))
    return findings, facts


__all__ = ["PIPELINE_ALLOWANCE", "ConnFacts", "judge_session", "reproducer", "walk_connection"]
