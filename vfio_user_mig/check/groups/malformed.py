"""Group ``malformed``: messages that break the framing or a payload's rules.

Each case must get an error reply or a clean close (vfio-user.rst "Header"; PROTOCOL.md
section 1), never a hang or a crash; where the server keeps the connection it must still serve
the next request (a MIG_DEVICE_STATE GET, no new VERSION), and where it closes a new
connection must work (the next case runs on one). Cases: header lies (msg_size below 16,
huge), type and flag bits, a reply flag on a request, unknown commands (0, 14, 19, 0xFFFF),
argsz and size lies in each command with an argsz, truncated payloads, trailing bytes after
fixed payloads (accepted or refused: the spec is silent; libvfio-user ignores them), and a
msg_size larger than the bytes sent (then the client half-closes; the server must not hang on
the read or crash). First, on a connection no malformed message touched: message ids above 255
must be echoed whole, and a command with the no-reply flag must be executed and not answered
(:func:`header_effects`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass

from vfio_user_mig import wire
from vfio_user_mig.check.conn import BadFrame, ReplyTimeout, WrongReplyId
from vfio_user_mig.check.findings import Kind
from vfio_user_mig.check.requests import feature_request
from vfio_user_mig.check.session import CLEAN_EXIT, Checker, Sequence, SequenceAborted
from vfio_user_mig.check.steps import Expect, Step, make_fds
from vfio_user_mig.check.target import TargetError
from vfio_user_mig.model import State
from vfio_user_mig.wire import Command, FeatureIndex, FeatureOp
from vfio_user_mig.wire.constants import RESERVED_COMMAND

_HDR = struct.Struct("<HHIII")
_S1 = "PROTOCOL.md section 1; vfio-user.rst: Header"


@dataclass(frozen=True)
class Case:
    """One malformed message: ``command`` and ``payload`` with ``msg_size`` and ``flags`` as
    given (``None``: the true size), what the reply must be."""

    title: str
    command: int
    payload: bytes = b""
    msg_size: int | None = None
    flags: int = 0
    reply: str = "error_or_close"
    rule: str = _S1

    def data(self, msg_id: int) -> bytes:
        size = 16 + len(self.payload) if self.msg_size is None else self.msg_size
        return _HDR.pack(msg_id, self.command, size, self.flags, 0) + self.payload


def _state_get() -> bytes:
    return feature_request(0, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, argsz=16)[16:]


def _cases() -> list[Case]:
    get = _state_get()
    s2 = "PROTOCOL.md section 2 (payload layouts, argsz)"
    out = [
        Case("msg_size 8, below the header size", Command.DEVICE_FEATURE, b"", 8),
        Case("msg_size 0", Command.DEVICE_FEATURE, b"", 0),
        Case("huge msg_size (0xFFFFFFF0), header only", Command.DEVICE_FEATURE, b"",
             0xFFFFFFF0),
        Case("reply flag on a request", Command.DEVICE_FEATURE, get, flags=1,
             reply="error_or_drop", rule=f"{_S1}: a reply the server did not ask for is "
             "refused (libvfio-user EINVAL) or dropped; it is never executed"),
        Case("type 2 in the flags", Command.DEVICE_FEATURE, get, flags=2),
        Case("error flag on a request", Command.DEVICE_FEATURE, get, flags=0x20),
        Case("unknown flag bit 0x40", Command.DEVICE_FEATURE, get, flags=0x40, reply="any"),
        Case("request with no payload (DEVICE_GET_INFO)", Command.DEVICE_GET_INFO),
    ]
    for command in (0, RESERVED_COMMAND, 19, 0xFFFF):
        out.append(Case(f"unknown command {command}", command, bytes(8),
                        rule=f"{_S1}: commands 1-18 (14 reserved)"))
    lies = [
        ("DMA_MAP argsz 8", Command.DMA_MAP, struct.pack("<IIQQQ", 8, 3, 0, 0x7000_0000, 4096)),
        ("DMA_UNMAP argsz 8", Command.DMA_UNMAP, struct.pack("<IIQQ", 8, 0, 0x7000_0000, 4096)),
        ("DEVICE_GET_INFO argsz 4", Command.DEVICE_GET_INFO, struct.pack("<IIII", 4, 0, 0, 0)),
        ("DEVICE_GET_REGION_INFO argsz 8", Command.DEVICE_GET_REGION_INFO,
         struct.pack("<IIIIQQ", 8, 0, 0, 0, 0, 0)),
        ("DEVICE_GET_IRQ_INFO argsz 4", Command.DEVICE_GET_IRQ_INFO,
         struct.pack("<IIII", 4, 0, 0, 0)),
        ("DEVICE_SET_IRQS argsz 8", Command.DEVICE_SET_IRQS,
         struct.pack("<IIIII", 8, 0x21, 0, 0, 0)),
        ("DEVICE_SET_IRQS count 4 with one eventfd's worth of data", Command.DEVICE_SET_IRQS,
         struct.pack("<IIIII", 20 + 16, 0x22, 0, 0, 4) + bytes(1)),
        ("DEVICE_FEATURE argsz 0", Command.DEVICE_FEATURE, struct.pack("<II", 0, 0x10002)),
        ("REGION_READ count 0xFFFFFFFF", Command.REGION_READ,
         struct.pack("<QII", 0, 0, 0xFFFFFFFF)),
        ("REGION_WRITE count 64 with 8 bytes", Command.REGION_WRITE,
         struct.pack("<QII", 0, 0, 64) + bytes(8)),
        ("MIG_DATA_READ argsz 0", Command.MIG_DATA_READ, struct.pack("<II", 0, 64)),
        ("MIG_DATA_WRITE size 4096 with 8 bytes", Command.MIG_DATA_WRITE,
         struct.pack("<II", 8 + 4096, 4096) + bytes(8)),
    ]
    out += [Case(title, cmd, payload, rule=s2) for title, cmd, payload in lies]
    truncated = [
        ("DMA_MAP payload of 16 bytes", Command.DMA_MAP, struct.pack("<IIQ", 32, 3, 0)),
        ("DMA_UNMAP payload of 12 bytes", Command.DMA_UNMAP, struct.pack("<III", 24, 0, 0)),
        ("DEVICE_FEATURE payload of 4 bytes", Command.DEVICE_FEATURE, struct.pack("<I", 16)),
        ("REGION_READ payload of 8 bytes", Command.REGION_READ, struct.pack("<Q", 0)),
        ("MIG_DATA_READ payload of 4 bytes", Command.MIG_DATA_READ, struct.pack("<I", 72)),
        ("DEVICE_GET_REGION_INFO payload of 8 bytes", Command.DEVICE_GET_REGION_INFO,
         struct.pack("<II", 32, 0)),
    ]
    out += [Case(f"truncated {title}", cmd, payload, rule=s2) for title, cmd, payload in truncated]
    trailing = [
        ("DEVICE_GET_INFO", Command.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0)),
        ("DEVICE_GET_IRQ_INFO", Command.DEVICE_GET_IRQ_INFO, struct.pack("<IIII", 16, 0, 0, 0)),
        ("DEVICE_FEATURE GET", Command.DEVICE_FEATURE, get[:8] + bytes(8)),
    ]
    out += [Case(f"8 trailing bytes after a {title}", cmd, payload + bytes(8), reply="any",
                 rule=f"{s2}: the spec is silent on trailing bytes (accepted or refused)")
            for title, cmd, payload in trailing]
    return out


def _probe(seq: Sequence, case: Case) -> None:
    """The next request on a kept connection must be served."""
    reply = seq.exchange(feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                                         FeatureOp.GET, argsz=16), close_ok=True)
    if reply is None:  # the server answered the case, then closed: allowed
        raise SequenceAborted(case.title)
    ok = not reply.is_error and len(reply.payload) >= 16
    seq.verify(ok, Kind.REPLY,
               f"serves the next request after: {case.title}",
               "MIG_DEVICE_STATE GET succeeds (no new VERSION)",
               f"error {reply.errno}" if reply.is_error else f"{len(reply.payload)}-byte payload",
               f"{_S1}: a server that keeps the connection keeps its framing")


def _unsolicited(seq: Sequence, case: Case) -> None:
    """A reply-typed message: an error reply, or nothing, and the next request is served."""
    data = case.data(seq.next_id())
    seq.steps.append(Step(data, (), Expect("any", rule=case.rule), "no reply required"))
    if not seq.conn.send(data):
        raise SequenceAborted(case.title)
    reply = seq.exchange(feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                                         FeatureOp.GET, argsz=16), close_ok=True)
    if reply is None:
        raise SequenceAborted(case.title)
    ok = not reply.is_error and len(reply.payload) >= 16
    seq.verify(ok, Kind.REPLY, f"serves the next request after: {case.title}",
               "MIG_DEVICE_STATE GET succeeds", f"error {reply.errno}" if reply.is_error
               else f"{len(reply.payload)}-byte payload", case.rule)


def _cases_run(checker: Checker, cases: list[Case]) -> None:
    at = 0
    header = True  # header_effects not run yet
    while at < len(cases):
        start, ran_header = at, header
        try:
            with checker.sequence("malformed", f"malformed messages from {start}") as seq:
                if header:
                    header = False
                    if not seq.dead and seq.state == State.RUNNING:
                        header_effects(seq)  # first, on a connection no malformed case touched
                while at < len(cases):
                    case = cases[at]
                    at += 1
                    if case.reply == "error_or_drop":
                        _unsolicited(seq, case)
                        continue
                    expect = Expect(case.reply, rule=case.rule)
                    seq.check(f"{case.title}: an error reply or a clean close",
                              case.data(seq.next_id()), expect, close_ok=True)
                    _probe(seq, case)
        except TargetError:
            return
        if at == start and not ran_header:
            return


def _short_body(checker: Checker) -> None:
    """msg_size larger than the bytes sent, then a half-close (module docstring)."""
    try:
        ctx = checker.sequence("malformed", "msg_size larger than the bytes sent")
        with ctx as seq:
            data = _HDR.pack(seq.next_id(), Command.DEVICE_FEATURE, 64, 0, 0) + _state_get()
            seq.steps.append(Step(data, (), Expect("error_or_close"), "then shutdown(SHUT_WR)"))
            seq.conn.send(data)
            with contextlib.suppress(OSError):
                seq.conn.sock.shutdown(socket.SHUT_WR)
            observed = "a clean close"
            ok = True
            try:
                msg = seq.conn.receive(time.monotonic() + checker.timeout)
                if msg is not None and not msg.is_error:
                    ok, observed = False, "a success reply to an incomplete message"
            except ReplyTimeout:
                ok, observed = False, f"no reply and no close within {checker.timeout:g} s"
            except BadFrame as exc:
                ok, observed = False, str(exc)
            death = checker.target.death()
            if death is not None and death.status != CLEAN_EXIT:
                ok, observed = False, death.describe()
            seq.verify(ok, Kind.CRASH if death and death.status != CLEAN_EXIT else Kind.HANG,
                       "incomplete message then half-close: error reply or clean close",
                       "an error reply or a clean close", observed, _S1)
    except TargetError:
        return


#: Message id of the request hidden in a refused message's payload (never sent otherwise).
_SMUGGLED_ID = 0x7E57


#: Message ids above 255 whose low byte is 0: the checker's own ids are never 0, so a server
#: that keeps 8 bits of an id answers one no request of the checker has.
WIDE_IDS = (0x0100, 0xAB00, 0xFF00)
_HEADER_RULE = "vfio-user.rst \"Header\"; PROTOCOL.md section 1"


def _stray_after(seq: Sequence, data: bytes, note: str,
                 fds: tuple[str, ...] = ()) -> list[int] | None:
    """Send ``data`` (with fresh ``fds``) without waiting, then a MIG_DEVICE_STATE GET
    (answered as usual); the ids of the replies that came before the GET's (``None``: the
    sequence cannot go on)."""
    seq.steps.append(Step(data, fds, Expect("any", rule=_HEADER_RULE), note, no_reply=True))
    before = len(seq.conn.stray)
    opened = make_fds(fds)
    try:
        if not seq.conn.send(data, opened):
            return None
    finally:
        for fd in opened:
            os.close(fd)
    reply = seq.exchange(feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE,
                                         FeatureOp.GET, argsz=16))
    if reply is None:
        return None
    return seq.conn.stray[before:]


def header_effects(seq: Sequence) -> None:
    """Message ids and the no-reply flag (vfio-user.rst "Header": msg_id is 16 bits and the
    reply echoes it; a command with the No_reply flag (0x10) is executed and not answered):
    a MIG_DEVICE_STATE GET with each of :data:`WIDE_IDS`; a GET and a DMA_MAP with the no-reply
    flag, then a DMA_UNMAP of that map, which succeeds only if the map was made. The device
    stays in RUNNING (libvfio-user's sample aborts on entering RUNNING again)."""
    for msg_id in WIDE_IDS:
        data = feature_request(msg_id, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, argsz=16)
        seq.steps.append(Step(data, (), Expect("ok", rule=_HEADER_RULE), f"msg_id {msg_id:#06x}"))
        try:
            reply = seq.conn.request(data)
            observed = "the connection closed" if reply is None else f"{reply.msg_id:#06x}"
        except WrongReplyId as exc:  # the usual path reports it too, under a generic title
            reply, observed = None, f"a reply with msg_id {exc.got:#06x}"
        except ReplyTimeout:
            seq.verify(False, Kind.HANG, "message id above 255 echoed",
                       f"a reply with msg_id {msg_id:#06x}", f"no reply within "
                       f"{seq.conn.timeout:g} s", f"{_HEADER_RULE}: every command gets a reply")
            seq.dead = True
            return
        seq.verify(reply is not None and reply.msg_id == msg_id, Kind.REPLY,
                   "message id above 255 echoed", f"a reply with msg_id {msg_id:#06x}",
                   observed, f"{_HEADER_RULE}: msg_id is a 16-bit field the reply echoes")
        if reply is None and seq.conn.closed:
            seq.dead = True
            return
    no_reply = int(wire.HeaderFlag.NO_REPLY)
    get = feature_request(_NO_REPLY_ID, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, argsz=16)
    dma = wire.encode(wire.DmaMap(_NO_REPLY_IOVA, _PAGE, msg_id=_NO_REPLY_ID + 1))
    for data, fds, what in ((get, (), "MIG_DEVICE_STATE GET"),
                            (dma, (f"memfd:{_PAGE}",), "DMA_MAP")):
        flagged = data[:8] + struct.pack("<I", no_reply) + data[12:]
        ids = _stray_after(seq, flagged, f"{what} with the no-reply flag", fds)
        if ids is None:
            return
        msg_id = _HDR.unpack_from(flagged)[0]
        seq.verify(msg_id not in ids, Kind.REPLY,
                   "a request with the no-reply flag is answered",
                   f"no reply to {msg_id:#06x}", f"a reply to {msg_id:#06x}",
                   f"{_HEADER_RULE}: flags bit 4, No_reply: no reply is sent")
    seq.check("a DMA_MAP with the no-reply flag is executed",
              wire.encode(wire.DmaUnmap(_NO_REPLY_IOVA, _PAGE, msg_id=seq.next_id())),
              Expect("ok", payload_len=24, rule=f"{_HEADER_RULE}: No_reply suppresses the "
                     "reply, not the command; PROTOCOL.md section 2: DMA_UNMAP of the map"))


#: Ids of the no-reply requests (never used otherwise), and where the no-reply DMA_MAP maps.
_NO_REPLY_ID = 0x6E00
_NO_REPLY_IOVA = 0x7E00_0000
_PAGE = 4096


def _smuggled(checker: Checker, flags: int, what: str) -> None:
    """A refused message whose payload is itself a whole request: MIG_DEVICE_STATE SET STOP
    with an id the checker never uses. A server that answers the refused message but leaves
    its payload unread takes the payload for the next message and executes it. msg_size says
    where each message ends (PROTOCOL.md section 1), so the device must still be RUNNING and
    the hidden id never answered. Deterministic, unlike waiting for a desynchronised stream to
    hang; the recorded steps replay (the outer message is sent without waiting for a reply)."""
    with checker.sequence("malformed", f"payload of a refused {what}") as seq:
        if seq.dead or seq.caps is None or seq.state != State.RUNNING:
            return
        hidden = feature_request(_SMUGGLED_ID, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET,
                                 struct.pack("<II", State.STOP, 0))
        outer = _HDR.pack(seq.next_id(), Command.DEVICE_FEATURE, 16 + len(hidden), flags, 0)
        seq.steps.append(Step(outer + hidden, (), Expect("any", rule=_S1),
                              f"{what}; its payload is SET STOP with id {_SMUGGLED_ID:#x}",
                              no_reply=True))
        seq.conn.unanswered.add(_SMUGGLED_ID)  # a reply to it is judged below, not a wrong id
        if not seq.conn.send(outer + hidden):
            return
        get = feature_request(seq.next_id(), FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET,
                              argsz=16)
        running = struct.pack("<IIII", 16, int(FeatureOp.GET) | FeatureIndex.MIG_DEVICE_STATE,
                              State.RUNNING, 0)
        title = f"the payload of a refused {what} is executed as a message (framing lost)"
        reply = seq.check(title, get, Expect("ok", payload=running,
                                             rule=f"{_S1}: msg_size is the size of the whole "
                                             "message; the device is still RUNNING"),
                          close_ok=True)
        late = seq.conn.drain(0.05) if reply is not None else []
        answered = _SMUGGLED_ID in seq.conn.stray or any(m.msg_id == _SMUGGLED_ID for m in late)
        seq.verify(not answered, Kind.REPLY, title,
                   f"no reply to the hidden request {_SMUGGLED_ID:#x}",
                   f"a reply to the hidden request {_SMUGGLED_ID:#x}", _S1)


def run(checker: Checker) -> None:
    """The ``malformed`` group (module docstring)."""
    _cases_run(checker, _cases())
    _short_body(checker)
    _smuggled(checker, 1, "reply-typed message")
    _smuggled(checker, 2, "message of type 2")
