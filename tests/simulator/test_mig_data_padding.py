"""``x-mig-data-unpadded``: a client that says it takes spec-exact MIG_DATA_READ replies gets
them without the zero padding libvfio-user adds; any other client gets libvfio-user's padded
replies. Checked on the exact bytes of the sans-IO core and end to end over a socket."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.device.memstream import MemStreamDev
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import serve_socketpair
from vfio_user_mig.wire.capabilities import MIG_DATA_UNPADDED_KEY
from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp

CHUNK = 64 * 1024


def _exchange(core: ServerCore, msg: wire.Message) -> bytes:
    core.receive_data(wire.encode(msg))
    while core.next_event() is not None:
        pass
    return b"".join(b"".join(bytes(p) for p in parts) for parts, _fds in core.data_to_send())


@pytest.fixture
def hosted() -> Iterator[HostedDevice]:
    h = host_device("migdev", mem_size=1 << 16)
    yield h
    h.close()


@pytest.mark.parametrize("unpadded", [None, False, True])
def test_short_reply_bytes(hosted: HostedDevice, unpadded: bool | None) -> None:
    core = hosted.core
    extra = None if unpadded is None else {MIG_DATA_UNPADDED_KEY: unpadded}
    caps = wire.Capabilities.make(max_data_xfer_size=1 << 20, extra=extra)
    reply = wire.decode(_exchange(core, wire.Version(0, 2, caps, msg_id=1)), expect_reply=True)
    assert (reply.capabilities.caps.get(MIG_DATA_UNPADDED_KEY) is True) == (unpadded is True)
    state = wire.MigDeviceState(State.STOP_COPY, 0)
    _exchange(core, wire.DeviceFeature(feature=FeatureIndex.MIG_DEVICE_STATE,
                                       ops=FeatureOp.SET, data=state, msg_id=2))
    total = 0
    while True:  # drain the stream in CHUNK reads, checking every reply's size on the wire
        raw = _exchange(core, wire.MigDataRead(size=CHUNK, msg_id=3))
        header = wire.decode_header(raw[:16])
        size = int.from_bytes(raw[20:24], "little")
        assert not header.is_error
        total += size
        if size < CHUNK:
            break
        assert header.msg_size == 24 + CHUNK
    padded = unpadded is not True
    assert header.msg_size == 24 + (CHUNK if padded else size)
    assert total > 1 << 16
    decoded = wire.decode(raw, expect_reply=True)
    assert len(decoded.data) == size and decoded.requested == (CHUNK if padded else None)


def test_capability_must_be_a_boolean() -> None:
    with pytest.raises(wire.WireError) as info:
        wire.Capabilities.parse(b'{"capabilities":{"x-mig-data-unpadded":1}}\0')
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("unpadded", [False, True])
def test_client_reads_the_same_stream_either_way(unpadded: bool) -> None:
    device = MemStreamDev(mem_size=1 << 20)
    core = ServerCore(device)
    hosted = HostedDevice(device, core)
    a, b = socket.socketpair()
    thread, _stop = serve_socketpair(core, a)
    client = Client(b, timeout=5.0)
    try:
        reply = client.negotiate(unpadded_mig_data=unpadded)
        assert reply.capabilities is not None
        assert reply.capabilities.mig_data_unpadded == unpadded
        client.set_state(State.PRE_COPY)
        buf = memoryview(bytearray(CHUNK))
        got = []
        for phase in (State.PRE_COPY, State.STOP_COPY):
            if phase is State.STOP_COPY:
                client.set_state(State.STOP_COPY)
            got += [bytes(x) for x in client.mig_data_read_stream(CHUNK, 2, into=buf)]
        assert b"".join(got) == device.stream
        assert client.get_state() is State.STOP_COPY  # in sync: no padding left behind
    finally:
        client.close()
        thread.join(5)
        a.close()
        hosted.close()
