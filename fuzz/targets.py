"""Fuzz targets with their oracles, shared by the atheris harnesses (``fuzz/fuzz_*.py``) and
the hypothesis tests (``tests/hardening/test_fuzz.py``).

Each target takes raw bytes (plus a few shaping parameters), runs the code under test, and
raises ``AssertionError`` when a promise of docs/SECURITY.md is broken:

* :func:`wire_decode`: ``wire.decode`` raises nothing but ``WireError`` (positive errno), and
  anything it accepts re-encodes byte for byte.
* :func:`framer_stream`: the ``Framer`` fed the bytes in arbitrary pieces returns exactly what
  a reference framer + ``decode`` per message gives; a bad ``msg_size`` is sticky.
* :func:`server_stream`: a ``ServerCore`` fed an arbitrary byte stream (optionally with fds)
  raises nothing but ``ConnectionError`` (after a framing error), answers every command that
  asked for a reply exactly once with the request's id and command (with the errno it
  reported), sends only decodable messages, closes every fd it was given by the time the
  client is gone, keeps the device in a valid state, and serves a valid request afterwards;
  and no handler ever raised: ``ServerCore.internal_errors`` stays empty (the core answers an
  internal error with EIO, which the reply checks alone would accept).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import itertools
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from fuzz.seeds import VERSION
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.types import Handled, ServerConfig
from vfio_user_mig.wire import FeatureIndex, FeatureOp

_HDR = struct.Struct("<HHIII")
HEADER_SIZE = 16
_COMMANDS = frozenset(int(c) for c in wire.Command)


def wire_decode(data: bytes, max_size: int = wire.DEFAULT_MAX_MSG_SIZE) -> bool:
    """Decode ``data`` as one message; True when accepted (then it must round-trip)."""
    try:
        msg = wire.decode(data, max_size=max_size)
    except wire.WireError as exc:
        assert exc.errno > 0, exc
        if len(data) >= HEADER_SIZE:
            assert exc.header is not None, f"header bytes present but not in {exc!r}"
        return False
    again = wire.encode(msg)
    assert again == data, f"{msg!r}: re-encodes to {again.hex()} not {data.hex()}"
    return True


def reference_frames(data: bytes, max_size: int) -> tuple[list[tuple[int, int]], int | None]:
    """Whole-message spans of ``data`` and, when a header has an impossible ``msg_size``, the
    errno of that framing error (it ends the stream)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        size = _HDR.unpack_from(data, pos)[2]
        if size < HEADER_SIZE:
            return spans, _errno.EINVAL
        if size > max_size:
            return spans, _errno.E2BIG
        if pos + size > len(data):
            break
        spans.append((pos, pos + size))
        pos += size
    return spans, None


def _pieces(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def framer_stream(data: bytes, cuts: Sequence[int] = (), max_size: int = 4096) -> int:
    """Feed ``data`` cut at ``cuts``; compare with :func:`reference_frames`. Returns the
    number of items (messages or errors) seen."""
    framer = wire.Framer(max_size=max_size)
    got: list[bytes | int] = []
    broken: int | None = None
    for piece in _pieces(data, cuts):
        try:
            framer.feed(piece)
        except wire.WireError as exc:
            assert broken is not None, f"feed raised before the error was reported: {exc!r}"
            break
        while True:
            try:
                item = framer.next_message()
            except wire.WireError as exc:
                if exc.field == "header.msg_size" and exc.errno in (_errno.E2BIG, _errno.EINVAL) \
                        and framer.pending and broken is None and _sticky(framer, exc):
                    broken = exc.errno
                    break
                got.append(exc.errno)
                continue
            if item is None:
                break
            msg, fds = item
            assert fds == []
            got.append(wire.encode(msg))
        if broken is not None:
            break
    spans, framing = reference_frames(data, max_size)
    want: list[bytes | int] = []
    for a, b in spans:
        try:
            want.append(wire.encode(wire.decode(data[a:b], max_size=max_size)))
        except wire.WireError as exc:
            want.append(exc.errno)
    assert got == want, f"framer {got!r} != reference {want!r}"
    assert broken == framing, f"framing error {broken} != reference {framing}"
    return len(got) + (broken is not None)


def _sticky(framer: wire.Framer, exc: wire.WireError) -> bool:
    """A framing error is raised again by every later call (a decode error is not)."""
    try:
        framer.next_message()
    except wire.WireError as again:
        return again is exc
    return False


@dataclass
class ServerOutcome:
    """What :func:`server_stream` saw."""

    events: list[Handled] = field(default_factory=list)
    replies: int = 0
    dma_requests: int = 0
    broken: bool = False
    state: State = State.RUNNING


def _split(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


def _check_output(
    core: ServerCore, header: tuple[int, int, int, int, int] | None, event: Handled | None,
    out: list[tuple[list[bytes | memoryview], list[int]]], outcome: ServerOutcome,
) -> None:
    replies: list[tuple[int, int, int, int]] = []
    for parts, _fds in out:
        raw = _split(parts)
        msg_id, cmd, size, flags, err = _HDR.unpack_from(raw, 0)
        assert size == len(raw), f"sent msg_size {size} but {len(raw)} bytes"
        if cmd in _COMMANDS:
            wire.decode(raw, max_size=core.config.max_data_xfer_size + 128)  # must be valid
        else:  # an unknown command is answered with a bare error header echoing it
            assert (size, flags) == (HEADER_SIZE, 0x21) and err > 0, (cmd, size, flags, err)
        if flags & 0xF == 1:
            replies.append((msg_id, cmd, flags, err))
        else:
            assert cmd in (wire.Command.DMA_READ, wire.Command.DMA_WRITE), cmd
            assert msg_id >= 0x8000
            outcome.dma_requests += 1
    outcome.replies += len(replies)
    if event is None:
        assert not replies, f"reply without a request: {replies}"
        return
    assert header is not None
    h_id, h_cmd, _size, h_flags, _err = header
    assert (event.msg_id, event.command) == (h_id, h_cmd), (event, header)
    wants_reply = h_flags & 0xF != 1 and not h_flags & 0x10
    assert len(replies) == int(wants_reply), f"{event}: {len(replies)} replies"
    if replies:
        r_id, r_cmd, r_flags, r_err = replies[0]
        assert (r_id, r_cmd) == (h_id, h_cmd), (replies[0], header)
        if event.errno is None:
            assert not r_flags & 0x20, f"{event} succeeded but the reply has the error bit"
        else:
            assert event.errno > 0 and r_flags & 0x20 and r_err == event.errno, (event, r_err)


def _state_request(msg_id: int) -> bytes:
    return wire.encode(
        wire.DeviceFeature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, msg_id=msg_id)
    )


def _fd_is_closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError as exc:
        return exc.errno == _errno.EBADF
    return False


def server_stream(
    data: bytes,
    *,
    negotiate: bool = True,
    cuts: Sequence[int] = (),
    nfds: int = 0,
    config: ServerConfig | None = None,
    setup: Callable[[ServerCore], None] | None = None,
) -> ServerOutcome:
    """Run a fresh server core over ``data`` (see the module docstring for the oracle).
    ``setup`` may adjust the fresh core first (tests plant faults with it)."""
    hosted = host_device("migdev", mem_size=1 << 16, config=config)
    core = hosted.core
    if setup is not None:
        setup(core)
    outcome = ServerOutcome()
    stream = (VERSION if negotiate else b"") + data
    spans, _ = reference_frames(stream, core.config.max_msg_size)
    headers = [_HDR.unpack_from(stream, a) for a, _ in spans]
    if len(stream) >= (spans[-1][1] if spans else 0) + HEADER_SIZE:
        headers.append(_HDR.unpack_from(stream, spans[-1][1] if spans else 0))
    if not data:
        nfds = 0  # fds travel with at least one byte on a stream socket
    fds = [os.memfd_create("fuzz", os.MFD_CLOEXEC) for _ in range(nfds)]
    for fd in fds:
        os.ftruncate(fd, 1 << 16)
    now = 0.0
    try:
        prefix = [VERSION] if negotiate else []
        pieces = prefix + _pieces(data, cuts)
        try:
            for i, piece in enumerate(pieces):
                core.receive_data(piece, fds if i == len(prefix) else ())
                while True:
                    now += 0.001
                    event = core.next_event(now)
                    out = core.data_to_send()
                    if event is None:
                        _check_output(core, None, None, out, outcome)
                        break
                    n = len(outcome.events)
                    assert n < len(headers), f"event {event} without a message"
                    _check_output(core, headers[n], event, out, outcome)
                    assert not core.internal_errors, f"internal error: {core.internal_errors}"
                    outcome.events.append(event)
            assert core.next_event(now) is None  # no new bytes: no event (or the end)
        except ConnectionError:
            outcome.broken = True
            assert outcome.events and outcome.events[-1].errno in (_errno.E2BIG, _errno.EINVAL)
        assert isinstance(core.state, State)
        if not outcome.broken and core.framer.at_boundary:
            core.receive_data(_state_request(0xBEEF))
            event = core.next_event(now)
            assert event is not None and event.msg_id == 0xBEEF
            _check_output(core, _HDR.unpack_from(_state_request(0xBEEF)), event,
                          core.data_to_send(), outcome)
            assert (event.errno is None) == core.negotiated, event
        # The client goes away: everything it gave must be released; a new one is served.
        core.connection_lost()
        assert core.dma.mappings == () and not core.irqs.configured()
        for fd in fds:
            assert _fd_is_closed(fd), f"fd {fd} given to the server is still open"
        core.receive_data(VERSION + _state_request(0xCAFE))
        for want_id in (0, 0xCAFE):
            event = core.next_event(now)
            assert event is not None and event.msg_id == want_id and event.errno is None, event
        out = core.data_to_send()
        reply = wire.decode(_split(out[-1][0]))
        assert isinstance(reply, wire.DeviceFeatureReply)
        assert isinstance(reply.data, wire.MigDeviceState)
        assert reply.data.device_state == core.state
        outcome.state = core.state
        assert not core.internal_errors, f"internal error: {core.internal_errors}"
    finally:
        core.connection_lost()
        hosted.close()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
    return outcome
