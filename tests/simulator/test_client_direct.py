"""The client's direct paths (small REGION_READ/REGION_WRITE, MIG_DEVICE_STATE GET/SET): the
request bytes are the codec's; a reply that is not exactly the expected plain one (an error,
another shape) goes to the generic path, which decides as it always did; a subclass watching
``send`` still sees every message, and ``_before_send`` runs once per message either way.
The peer is the test itself on the other end of a real socketpair."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.simulator.conftest import serve_device
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp


def _wire(msg: Any) -> bytes:
    return b"".join(bytes(p) for p in wire.encode_parts(msg))


def _read_message(sock: socket.socket) -> bytes:
    head = sock.recv(16, socket.MSG_WAITALL)
    size = int.from_bytes(head[4:8], "little")
    return head + (sock.recv(size - 16, socket.MSG_WAITALL) if size > 16 else b"")


class _Peer:
    """Answers each request with ``answer(request bytes)`` (bytes to send back)."""

    def __init__(self, sock: socket.socket, answer: Callable[[bytes], bytes]) -> None:
        self.sock, self.answer, self.requests = sock, answer, []  # type: ignore[var-annotated]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                request = _read_message(self.sock)
            except OSError:
                return
            if len(request) < 16:
                return
            self.requests.append(request)
            self.sock.sendall(self.answer(request))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def _msg_id(request: bytes) -> int:
    return int.from_bytes(request[:2], "little")


def _state_reply(request: bytes, state: int = 2) -> bytes:
    return _wire(wire.DeviceFeatureReply(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET,
                                         wire.MigDeviceState(state, 0), msg_id=_msg_id(request)))


def test_direct_requests_are_the_codecs_bytes(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    def answer(req: bytes) -> bytes:
        msg = wire.decode(req)
        if isinstance(msg, wire.RegionWrite):
            return _wire(wire.RegionWriteReply(msg.offset, msg.region, msg.count,
                                               msg_id=msg.msg_id))
        if isinstance(msg, wire.RegionRead):
            return _wire(wire.RegionReadReply(msg.offset, msg.region, msg.count,
                                              b"\x07" * msg.count, msg_id=msg.msg_id))
        if msg.ops == FeatureOp.GET:
            return _state_reply(req)
        return _wire(wire.DeviceFeatureReply.echo(msg))

    peer = _Peer(b, answer)
    client = Client(a, timeout=5.0)
    assert client.get_state() is State.RUNNING
    client.set_state(State.STOP_COPY)
    client.set_state(8)  # not a state: still the codec's bytes
    client.region_write(2, 0x40, b"abcd")
    assert client.region_read(0, 8, 4) == b"\x07" * 4
    ids = [_msg_id(r) for r in peer.requests]
    assert peer.requests == [
        _wire(wire.DeviceFeature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, msg_id=ids[0])),
        _wire(wire.DeviceFeature.set_state(State.STOP_COPY, msg_id=ids[1])),
        _wire(wire.DeviceFeature.set_state(8, msg_id=ids[2])),
        _wire(wire.RegionWrite(offset=0x40, region=2, count=4, data=b"abcd", msg_id=ids[3])),
        _wire(wire.RegionRead(offset=8, region=0, count=4, msg_id=ids[4])),
    ]
    assert len(set(ids)) == 5 and client.core.pending == {} and client.core.idle


class _Generic(Client):
    """Overrides ``send``: no direct path, every request and reply through the codec."""

    def send(self, msg: Any, fds: Any = ()) -> None:
        super().send(msg, fds)


def _patched(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + value.to_bytes(4, "little") + data[offset + 4 :]


#: Replies to GET MIG_DEVICE_STATE that the direct path must leave to the generic one.
_ODD_GET_REPLIES: dict[str, Callable[[bytes], bytes]] = {
    "error": lambda req: _wire(wire.error_reply(wire.decode(req), errno.EBUSY)),
    "argsz": lambda req: _patched(_state_reply(req), 16, 24),  # argsz beyond the payload
    "flags": lambda req: _patched(_state_reply(req), 20, int(FeatureIndex.MIG_DEVICE_STATE)
                                  | int(FeatureOp.GET | FeatureOp.PROBE)),
    "longer": lambda req: _wire(wire.DeviceFeatureReply(
        FeatureIndex.MIG_DEVICE_STATE, FeatureOp.GET, wire.MigDeviceState(3, 0, b"\0" * 8),
        msg_id=_msg_id(req))),
    "not_a_state": lambda req: _state_reply(req, 9),
    # A reply to nothing, then the real one, in one receive.
    "two_in_one": lambda req: _state_reply((0x7000).to_bytes(2, "little") + req[2:]) +
    _state_reply(req, 5),
    "other_id": lambda req: _state_reply((_msg_id(req) + 1).to_bytes(2, "little") + req[2:]),
}


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", fn()
    except VfioUserError as exc:
        return "VfioUserError", exc.errno
    except Exception as exc:  # what the generic path raises is the reference
        return type(exc).__name__, None


@pytest.mark.parametrize("shape", sorted(_ODD_GET_REPLIES))
def test_other_replies_get_what_the_generic_path_gives(shape: str) -> None:
    got = []
    for cls in (Client, _Generic):
        a, b = socket.socketpair()
        try:
            _Peer(b, _ODD_GET_REPLIES[shape])
            client = cls(a, timeout=0.3)
            got.append((_outcome(client.get_state), client.unexpected_replies))
        finally:
            a.close()
            b.close()
    assert got[0] == got[1]
    if shape in ("error", "two_in_one", "not_a_state"):
        assert got[0][0] == {"error": ("VfioUserError", errno.EBUSY),
                             "two_in_one": ("value", State.RUNNING_P2P),
                             "not_a_state": ("ValueError", None)}[shape]


def test_error_replies_raise_on_every_direct_path(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    _Peer(b, lambda req: _wire(wire.error_reply(wire.decode(req), errno.EBUSY)))
    client = Client(a, timeout=5.0)
    for call in (lambda: client.set_state(State.STOP), lambda: client.region_write(2, 0, b"x"),
                 lambda: client.region_read(2, 0, 4)):
        with pytest.raises(VfioUserError) as info:
            call()
        assert info.value.errno == errno.EBUSY
    assert client.core.pending == {}


def test_a_set_reply_that_is_not_the_echo_is_decoded_generically(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair

    def answer(req: bytes) -> bytes:  # a SET reply with another state in it
        msg = wire.decode(req)
        return _wire(wire.DeviceFeatureReply(msg.feature, msg.ops, wire.MigDeviceState(1, 0),
                                             msg.argsz, msg_id=msg.msg_id))

    _Peer(b, answer)
    client = Client(a, timeout=5.0)
    client.set_state(State.STOP_COPY)  # accepted as before: the SET reply's content is unused
    assert client.core.pending == {} and client.core.idle


class _Watching(Client):
    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.sent: list[int] = []
        self.before = 0

    def send(self, msg: Any, fds: Any = ()) -> None:
        self.sent.append(int(msg.command))
        super().send(msg, fds)

    def _before_send(self) -> None:
        self.before += 1


class _Hooked(Client):
    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__(sock, **kwargs)
        self.before = 0

    def _before_send(self) -> None:
        self.before += 1


@pytest.mark.parametrize("cls", [_Watching, _Hooked])
def test_every_message_is_seen_once(cls: type[Client]) -> None:
    """Against a real server: a subclass overriding ``send`` gets every message through it
    (no direct path); one overriding only ``_before_send`` is called once per message on
    the direct paths too."""
    client, close = serve_device(MigDev(mem_size=1 << 16), client_cls=cls)
    try:
        client.get_state()
        client.set_state(State.STOP)
        client.set_state(State.RUNNING)
        client.region_write(2, 0, b"\1\2\3\4")
        assert client.region_read(2, 0, 4) == b"\1\2\3\4"
        with pytest.raises(VfioUserError):
            client.set_state(State.RESUMING + 10)
        assert client.before == 7  # type: ignore[attr-defined]
        if isinstance(client, _Watching):
            assert len(client.sent) == 7
    finally:
        close()
