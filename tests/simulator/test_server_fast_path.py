"""The REGION_READ fast paths. The server's (``ServerCore.region_read_fast``) answers exactly
as the generic path (framer, decode, gate table, handler, encode) does, or declines without
consuming anything, and the IO pump serves a real client through it; the client's request
bytes are the codec's, and a subclass watching ``send`` still sees every request."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from tests.simulator.conftest import serve_core, serve_device
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.base import Device
from vfio_user_mig.simulator.device.lvu_sample import LvuSample
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.wire.layouts import HEADER, REGION_ACCESS

_REQ = REGION_ACCESS.with_prefix(HEADER)


def _wire(msg: wire.Message) -> bytes:
    return b"".join(bytes(p) for p in wire.encode_parts(msg))


def _sent(core: ServerCore) -> list[bytes]:
    return [b"".join(bytes(p) for p in parts) for parts, _fds in core.data_to_send()]


def _core(device: Device, negotiate: bool = True) -> ServerCore:
    core = ServerCore(device)
    if negotiate:
        core.receive_data(_wire(wire.Version(major=0, minor=2, msg_id=1)))
        assert core.next_event(0.0) is not None
        core.data_to_send()
    return core


def _request(region: int, offset: int, count: int, msg_id: int = 7, flags: int = 0) -> bytes:
    return _REQ.pack(msg_id, int(wire.Command.REGION_READ), _REQ.size, flags, 0, offset,
                     region, count)


def _both(make: type[Device] | object, data: bytes,
          negotiate: bool = True) -> tuple[list[bytes] | None, list[bytes], dict[str, int]]:
    """(fast path's replies or None if it declined, generic path's replies, fast stats)."""
    fast_dev, slow_dev = make(), make()  # type: ignore[operator]
    fast, slow = _core(fast_dev, negotiate), _core(slow_dev, negotiate)
    try:
        handled = fast.region_read_fast(memoryview(data), 0.0)
        fast_out = _sent(fast) if handled is not None else None
        if handled is None:
            assert fast.data_to_send() == [] and fast.framer.at_boundary
        slow.receive_data(data)
        assert slow.next_event(0.0) is not None
        return fast_out, _sent(slow), fast.stats
    finally:
        for core, dev in ((fast, fast_dev), (slow, slow_dev)):
            core.close()
            dev.close()


def _migdev() -> MigDev:
    dev = MigDev(mem_size=1 << 16)
    dev.region_write(2, 0, b"\x01\x02\x03\x04\x05", 0.0)
    return dev


def test_fast_reply_is_the_generic_reply() -> None:
    fast, slow, stats = _both(_migdev, _request(2, 0, 5))
    assert fast is not None and fast == slow
    assert fast[0].endswith(b"\x01\x02\x03\x04\x05")
    assert stats["requests"] == 2  # VERSION + this one


def test_device_refusal_gives_the_generic_error_reply() -> None:
    # lvu-sample's BAR0 passes the server's bounds check but takes 8-byte accesses only.
    fast, slow, stats = _both(LvuSample, _request(0, 0, 4))
    assert fast is not None and fast == slow
    _mid, _cmd, _size, flags, error = HEADER.unpack_from(fast[0])
    assert flags & int(wire.HeaderFlag.ERROR) and error != 0
    assert stats["errors"] == 1


@pytest.mark.parametrize(
    ("data", "negotiate"),
    [
        (_request(2, 0, 4), False),  # before VERSION: the generic path refuses it
        (_request(2, 1 << 20, 4), True),  # past the region end
        (_request(99, 0, 4), True),  # no such region
        (_request(2, 0, 0), True),  # count 0: a header-only reply
        (_request(2, 0, 4, flags=int(wire.HeaderFlag.NO_REPLY)), True),
        (_request(2, 0, 4) + b"x", True),  # not exactly one request
    ],
)
def test_declines_what_it_does_not_serve(data: bytes, negotiate: bool) -> None:
    fast, slow, _stats = _both(_migdev, data, negotiate)
    assert fast is None
    assert slow or data[8:12] != bytes(4)  # the generic path answered, unless NO_REPLY


def test_pump_serves_a_client_through_the_fast_path() -> None:
    core = ServerCore(_migdev())
    client, close = serve_core(core)
    try:
        before = core.stats["requests"]
        for _ in range(50):
            assert client.region_read(2, 0, 4) == b"\x01\x02\x03\x04"
        client.set_state(State.STOP)
        assert client.region_read(2, 0, 4) == b"\x01\x02\x03\x04"
        client.set_state(State.STOP_COPY)  # the gate table refuses REGION_READ here
        with pytest.raises(VfioUserError) as err:
            client.region_read(2, 0, 4)
        assert err.value.errno == errno.EINVAL
        assert core.stats["requests"] - before == 54
    finally:
        close()
        core.device.close()


class _CountingClient(Client):
    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        self.sent: list[int] = []
        super().__init__(sock, **kwargs)

    def send(self, msg: object, fds: object = ()) -> None:
        self.sent.append(int(msg.command))  # type: ignore[attr-defined]
        super().send(msg, fds)  # type: ignore[arg-type]


def test_a_client_subclass_watching_send_sees_small_region_reads() -> None:
    client, close = serve_device(_migdev(), client_cls=_CountingClient)
    try:
        assert client.region_read(2, 0, 4) == b"\x01\x02\x03\x04"
        assert client.sent[-1] == int(wire.Command.REGION_READ)  # type: ignore[attr-defined]
    finally:
        close()
