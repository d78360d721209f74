"""The referee's socket side: serve a client, record every message, misbehave on cue.

:class:`Referee` listens on one UNIX socket path for one role (``"src"`` or ``"dst"``),
hosts one device for all connections to it, and serves each connection with
:func:`serve_connection`: the client's bytes are cut into whole messages at ``msg_size``
(PROTOCOL.md section 1) and recorded, the scenario's misbehaviour (:mod:`.scenarios`) acts
before or after the server core processes each one, and every message the core sends is
recorded on its way out. Nothing here judges; the record does not wait for anyone: a held
reply is released, and the fact noted, once the referee's own DMA request has waited
``timeout`` seconds for its answer.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.referee.record import ConnLog
from vfio_user_mig.simulator.referee.scenarios import Misbehaviour, arm_arc_failure, dirty_device
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.types import ServerConfig
from vfio_user_mig.simulator.transport import (
    PeerClosed,
    close_fds,
    listen_unix,
    recv_into,
    send_parts,
)
from vfio_user_mig.wire.constants import Command, FeatureIndex, FeatureOp
from vfio_user_mig.wire.layouts import HEADER, MIG_DATA

_REPLY = int(wire.MsgType.REPLY)
_ERROR = int(wire.HeaderFlag.ERROR)
#: Ids of the referee's own DMA requests (the server core uses 0x8000 and up).
_OWN_IDS = 0x7F00
#: Bytes of client memory the referee's DMA requests read.
_DMA_BYTES = 64


def header(data: bytes) -> tuple[int, int, int, int, int]:
    """(msg_id, command, msg_size, flags, error) of a whole message."""
    msg_id, command, size, flags, error = HEADER.unpack_from(data)
    return msg_id, command, size, flags, error


@dataclass
class _Conn:
    """One served connection's working state."""

    hosted: HostedDevice
    sock: socket.socket
    log: ConnLog
    knobs: Misbehaviour
    rng: random.Random
    timeout: float
    clock: Callable[[], float]
    t0: float
    buf: bytearray = field(default_factory=bytearray)
    fds: list[int] = field(default_factory=list)
    stop_copy_reads: int = 0
    dma_sent: bool = False
    waiting: set[int] = field(default_factory=set)
    held: list[tuple[bytes, list[int]]] = field(default_factory=list)
    hold_until: float = 0.0
    last_state: State | None = None

    def now(self) -> float:
        return self.clock() - self.t0

    def send(self, data: bytes, fds: list[int]) -> None:
        """Send (and record) one message, or hold it while the client owes a DMA answer."""
        if self.waiting:
            self.held.append((data, fds))
            return
        self.log.add("s2c", data, len(fds), self.now())
        send_parts(self.sock, [data], fds)

    def release(self) -> None:
        held, self.held = self.held, []
        for data, fds in held:
            self.log.add("s2c", data, len(fds), self.now())
            send_parts(self.sock, [data], fds)


def _unpad(data: bytes) -> bytes:
    """A successful MIG_DATA_READ reply without the zero padding: argsz = 8 + size."""
    _argsz, size = MIG_DATA.unpack_from(data, HEADER.size)
    body = MIG_DATA.pack(MIG_DATA.size + size, size) + data[HEADER.size + MIG_DATA.size:][:size]
    msg_id, command, _size, flags, error = header(data)
    return HEADER.pack(msg_id, command, HEADER.size + len(body), flags, error) + body


def _is_feature(msg: object, feature: FeatureIndex, op: FeatureOp) -> bool:
    return (isinstance(msg, wire.DeviceFeature) and msg.feature == feature
            and bool(msg.ops & op))


def _unreported(hosted: HostedDevice) -> int:
    """Pages the device dirtied that no report returned yet (0 when logging is off)."""
    return hosted.device.dirty_log.unreported


def _before(c: _Conn, raw: bytes, msg: object) -> bool:
    """The scenario's part before the core sees ``msg``; False drops the connection."""
    core, knobs = c.hosted.core, c.knobs
    state = core.state
    command = header(raw)[1]
    if c.log.role == "src" and command == Command.MIG_DATA_READ and state == State.STOP_COPY:
        c.stop_copy_reads += 1
        if c.stop_copy_reads == knobs.disconnect_at_read:
            c.log.add("note", t=c.now(), ended="dropped by the scenario",
                      at_read=c.stop_copy_reads)
            return False
        if knobs.dma_in_stop_copy and not c.dma_sent:
            c.dma_sent = True
            _send_dma(c)
    if knobs.keep_dirtying and c.log.role == "src":
        if command == Command.MIG_DATA_READ and state == State.PRE_COPY:
            # at least as much new pre-copy data as the client asks for: never caught up;
            # and guest pages written by the running device
            asked = getattr(msg, "size", 0)
            dirty_device(c.hosted.device, c.rng, max(4096, asked))
            _dirty_guest(c)
        stopping = (state in (State.RUNNING, State.PRE_COPY)
                    and _is_feature(msg, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET))
        if stopping or _is_feature(msg, FeatureIndex.DMA_LOGGING_REPORT, FeatureOp.GET):
            _dirty_guest(c)  # also the device's last writes before it stops
    leaving_stop_copy = (state == State.STOP_COPY
                         and _is_feature(msg, FeatureIndex.MIG_DEVICE_STATE, FeatureOp.SET))
    if leaving_stop_copy or _is_feature(msg, FeatureIndex.DMA_LOGGING_STOP, FeatureOp.SET):
        c.log.add("note", t=c.now(), unreported_dirty=_unreported(c.hosted),
                  logging=c.hosted.device.dirty_log.active)
    return True


def _dirty_guest(c: _Conn) -> None:
    """The device wrote (as far as the dirty log knows) a few pages of each of the first
    mapped regions."""
    for m in c.hosted.core.dma.mappings[:4]:
        page = c.rng.randrange(0, max(1, m.size // 4096)) * 4096
        c.hosted.device.dirty_log.mark(m.iova + page, min(m.size - page, 4 * 4096))


def _send_dma(c: _Conn) -> None:
    """Two DMA_READs of the first mapped region, sent while the client waits for data."""
    maps = c.hosted.core.dma.mappings
    if not maps:
        c.log.add("note", t=c.now(), dma="not exercised: no DMA region mapped")
        return
    m = maps[0]
    for n in range(2):
        request = wire.DmaRead(addr=m.iova + n * _DMA_BYTES, count=min(_DMA_BYTES, m.size),
                               msg_id=_OWN_IDS + n)
        data = wire.encode(request)
        c.log.add("s2c", data, t=c.now())
        send_parts(c.sock, [data], [])
        c.waiting.add(_OWN_IDS + n)
    c.hold_until = c.clock() + c.timeout


def _after(c: _Conn) -> None:
    core = c.hosted.core
    if core.state != c.last_state:
        c.last_state = core.state
        c.log.add("note", t=c.now(), state=core.state.name, digest=c.hosted.device.digest())


def _process(c: _Conn, raw: bytes, fds: list[int]) -> bool:
    """One whole client message; False ends the connection."""
    c.log.add("c2s", raw, len(fds), c.now())
    msg_id, _command, _size, flags, _error = header(raw)
    if flags & 0xF == _REPLY and msg_id in c.waiting:
        close_fds(fds)
        c.waiting.discard(msg_id)
        if not c.waiting:
            c.release()
        return True
    try:
        msg: object = wire.decode(raw)
    except wire.WireError:
        msg = None
    if not _before(c, raw, msg):
        close_fds(fds)
        return False
    core = c.hosted.core
    core.receive_data(raw, fds)
    try:
        while core.next_event(c.clock()) is not None:
            pass
    finally:
        _flush(c)
    _after(c)
    return True


def _flush(c: _Conn) -> None:
    for parts, fds in c.hosted.core.data_to_send():
        data = b"".join(bytes(p) for p in parts)
        _msg_id, command, _size, flags, _error = header(data)
        if (c.knobs.unpadded and command == Command.MIG_DATA_READ and flags == _REPLY
                and len(data) >= HEADER.size + MIG_DATA.size):
            data = _unpad(data)
        c.send(data, fds)


def _split(c: _Conn) -> list[tuple[bytes, list[int]]]:
    """Whole messages received so far (fds go with the first message they arrived with)."""
    out = []
    while len(c.buf) >= HEADER.size:
        size = header(bytes(c.buf[:HEADER.size]))[2]
        if size > c.hosted.core.config.max_msg_size:
            # never buffered: what came is recorded and given to the core, which refuses it
            # (E2BIG) and ends the connection
            raw, fds = bytes(c.buf), c.fds
            c.buf.clear()
            c.fds = []
            out.append((raw, fds))
            break
        size = max(size, HEADER.size)  # a lying msg_size: the core refuses it, we record it
        if len(c.buf) < size:
            break
        raw = bytes(c.buf[:size])
        del c.buf[:size]
        fds, c.fds = c.fds, []
        out.append((raw, fds))
    return out


def serve_connection(c: _Conn, stop: threading.Event, tick: float = 0.05) -> str:
    """Serve until the client closes, the scenario drops it, or ``stop``; returns why."""
    view = memoryview(bytearray(1 << 20))
    reason = "closed by the client"
    try:
        while not stop.is_set():
            if c.held and c.clock() > c.hold_until:
                c.log.add("note", t=c.now(), dma_unanswered=sorted(c.waiting))
                c.waiting.clear()
                c.release()
            if select.select([c.sock], [], [], tick)[0]:
                try:
                    n, fds = recv_into(c.sock, view)
                except PeerClosed:
                    break
                c.buf += view[:n]
                c.fds += fds
                for raw, msg_fds in _split(c):
                    if not _process(c, raw, msg_fds):
                        reason = "dropped by the scenario"
                        return reason
            else:
                c.hosted.core.next_event(c.clock())  # device timers, DMA jobs
                _flush(c)
        else:
            reason = "stopped"
    except (OSError, ConnectionError) as exc:
        reason = f"error: {exc}"
    except Exception as exc:  # a referee bug ends this connection, recorded, never the run
        reason = f"referee internal error: {exc!r}"
    finally:
        close_fds(c.fds)
        c.hosted.core.connection_lost()
        c.log.add("note", t=c.now(), ended=reason, state=c.hosted.core.state.name)
    return reason


class Referee:
    """Listen on ``path`` as ``role``; serve connections one at a time (module docstring)."""

    def __init__(self, role: str, path: str, *, device: str = "migdev", mem_size: int = 1 << 20,
                 knobs: Misbehaviour | None = None, seed: int = 0, timeout: float = 5.0,
                 config: ServerConfig | None = None) -> None:
        self.role = role
        self.path = path
        self.knobs = knobs or Misbehaviour()
        self.seed = seed
        self.timeout = timeout
        self.config = config or ServerConfig()
        self.hosted = host_device(device, mem_size=mem_size, config=self.config)
        self.fired: Callable[[], bool] = lambda: False
        if self.knobs.fail_arc is not None and self.knobs.fail_arc[0] == role:
            _role, source, target, errno = self.knobs.fail_arc
            self.fired = arm_arc_failure(self.hosted.device, source, target, errno)
        self.listener = listen_unix(path)
        self.logs: list[ConnLog] = []
        self.stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self.t0 = time.monotonic()

    def accept_one(self, wait: float) -> bool:
        """Serve one connection if a client connects within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            if not select.select([self.listener], [], [], 0.05)[0]:
                continue
            sock, _ = self.listener.accept()
            log = ConnLog(self.role, len(self.logs))
            self.logs.append(log)
            conn = _Conn(self.hosted, sock, log, self.knobs,
                         random.Random(f"{self.seed}/{self.role}/{log.index}"), self.timeout,
                         time.monotonic, self.t0)
            with sock:
                serve_connection(conn, self.stop_event)
            return True
        return False

    def serve_forever(self) -> None:
        while not self.stop_event.is_set():
            self.accept_one(0.2)

    def start(self) -> Referee:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name=f"referee-{self.role}")
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(OSError):
            self.listener.close()
        self.hosted.close()

    def limits(self) -> dict[str, int]:
        return {"max_data_xfer_size": self.config.max_data_xfer_size,
                "max_msg_fds": self.config.max_msg_fds}


__all__ = ["Referee", "header", "serve_connection"]
