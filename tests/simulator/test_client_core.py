"""The sans-IO ClientCore against a ServerCore, purely in memory (no sockets): the bytes one
core has to send are fed to the other's ``receive_data``."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.core import (
    ClientCore,
    ErrorReceived,
    Event,
    ReplyReceived,
    ServerRequest,
    UnexpectedReply,
    answer_dma,
)
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.device.regs import DmaDir, Reg, Status
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.wire.constants import DmaMapFlag, FeatureIndex, FeatureOp

BAR0, BAR2, CONFIG = 0, 2, 7


def _join(parts: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(p) for p in parts)


@dataclass
class Pair:
    """A client core wired to a server core by two in-memory byte shuttles."""

    client: ClientCore
    server: ServerCore
    hosted: HostedDevice
    now: float = 0.0

    def to_server(self) -> int:
        """Deliver what the client queued; let the server process it. Returns messages."""
        sent = self.client.data_to_send()
        for parts, fds in sent:
            self.server.receive_data(_join(parts), fds)
        while self.server.next_event(self.now) is not None:
            pass
        return len(sent)

    def to_client(self) -> list[Event]:
        """Deliver what the server queued, in one piece, and take the client's events."""
        stream = b"".join(_join(parts) for parts, _fds in self.server.data_to_send())
        self.client.receive_data(stream)
        return self.client.events(self.now)

    def request(self, msg: wire.Message) -> Event:
        """Send one request and return the single event that answers it."""
        self.client.send(msg)
        self.to_server()
        events = self.to_client()
        assert len(events) == 1, events
        return events[0]


@pytest.fixture
def pair() -> Iterator[Pair]:
    hosted = host_device("migdev", mem_size=1 << 20)
    yield Pair(ClientCore(), hosted.core, hosted)
    hosted.close()


def negotiate(p: Pair) -> None:
    caps = wire.Capabilities.make(max_msg_fds=8, max_data_xfer_size=1 << 20)
    event = p.request(wire.Version(major=0, minor=2, capabilities=caps))
    assert isinstance(event, ReplyReceived)


def test_negotiate(pair: Pair) -> None:
    caps = wire.Capabilities.make(max_msg_fds=8, max_data_xfer_size=1 << 20)
    msg_id = pair.client.send(wire.Version(major=0, minor=2, capabilities=caps))
    assert msg_id == 1 and pair.client.pending == {1: wire.Command.VERSION}
    assert pair.to_server() == 1
    assert pair.server.negotiated
    [event] = pair.to_client()
    assert isinstance(event, ReplyReceived) and event.msg_id == msg_id and event.fds == []
    assert (event.message.major, event.message.minor) == (0, 2)
    assert event.message.capabilities is not None
    assert pair.client.pending == {}
    assert pair.client.next_event() is None


def test_region_read_and_write(pair: Pair) -> None:
    negotiate(pair)
    write = pair.request(wire.RegionWrite(offset=64, region=BAR2, count=4, data=b"abcd"))
    assert isinstance(write, ReplyReceived)
    event = pair.request(wire.RegionRead(offset=62, region=BAR2, count=8))
    assert isinstance(event, ReplyReceived)
    assert bytes(event.message.data) == b"\0\0abcd\0\0"


def test_state_set_and_get(pair: Pair) -> None:
    negotiate(pair)
    feature = wire.DeviceFeature(
        feature=FeatureIndex.MIG_DEVICE_STATE, ops=FeatureOp.SET,
        data=wire.MigDeviceState(State.STOP, 0),
    )
    assert isinstance(pair.request(feature), ReplyReceived)
    assert pair.server.state is State.STOP
    get = pair.request(
        wire.DeviceFeature(feature=FeatureIndex.MIG_DEVICE_STATE, ops=FeatureOp.GET)
    )
    assert isinstance(get, ReplyReceived)
    assert State(int(get.message.data.device_state)) is State.STOP


def test_error_reply_is_an_event_and_the_stream_goes_on(pair: Pair) -> None:
    negotiate(pair)
    event = pair.request(wire.RegionRead(offset=0, region=0xDEAD, count=4))
    assert isinstance(event, ErrorReceived)
    assert (event.command, event.errno) == (wire.Command.REGION_READ, errno.EINVAL)
    assert pair.client.pending == {}
    # The error consumed exactly its own reply: the next request is answered normally.
    assert isinstance(pair.request(wire.RegionRead(offset=0, region=BAR2, count=4)),
                      ReplyReceived)


def test_request_before_negotiation_gets_an_error_event(pair: Pair) -> None:
    event = pair.request(wire.DeviceGetInfo())
    assert isinstance(event, ErrorReceived) and event.errno == errno.EINVAL


def test_unexpected_reply_is_an_event(pair: Pair) -> None:
    stray = wire.encode(wire.DeviceResetReply(msg_id=77))
    pair.client.receive_data(stray)
    [event] = pair.client.events()
    assert isinstance(event, UnexpectedReply) and event.msg_id == 77


def test_ids_are_assigned_kept_and_never_reused_while_pending() -> None:
    core = ClientCore()
    assert core.send(wire.DeviceReset(msg_id=5)) == 5
    with pytest.raises(ValueError, match="already awaits"):
        core.send(wire.DeviceReset(msg_id=5))
    core._next_id = 4
    assert core.send(wire.DeviceReset()) == 6  # 5 is pending: skipped
    assert core.send(wire.DeviceReset(no_reply=True)) == 7
    assert set(core.pending) == {5, 6}  # no_reply: nothing to wait for
    core._next_id = 0x7FFF
    assert core.next_id() == 1  # ids stay in 1..0x7FFF (0x8000.. are the server's)
    assert len(core.data_to_send()) == 3 and core.data_to_send() == []


def _reg_write(reg: Reg, value: int, size: int = 8, region: int = BAR0) -> wire.RegionWrite:
    return wire.RegionWrite(offset=int(reg), region=region, count=size,
                            data=value.to_bytes(size, "little"))


def test_server_dma_request_answered_while_a_client_request_is_pending(pair: Pair) -> None:
    negotiate(pair)
    memory = GuestMemory(1 << 16)
    try:
        memory.write(0x1000, b"G" * 4096)
        flags = int(DmaMapFlag.READ | DmaMapFlag.WRITE)
        # No fd: the server has to reach guest memory with DMA_READ/DMA_WRITE messages.
        assert isinstance(pair.request(wire.DmaMap(addr=0, size=memory.size, flags=flags)),
                          ReplyReceived)
        setup = [
            _reg_write(Reg.DMA_DEV_OFFSET, 0x100), _reg_write(Reg.DMA_IOVA, 0x1000),
            _reg_write(Reg.DMA_LEN, 4096), _reg_write(Reg.DMA_DIR, int(DmaDir.FROM_CLIENT), 4),
            _reg_write(Reg.DMA_MODE, 0, 4), _reg_write(4, 0x0006, 2, region=CONFIG),
        ]
        for msg in setup:
            assert isinstance(pair.request(msg), ReplyReceived)
        # Ring the doorbell and, in the same batch, ask for STATUS.
        ring = pair.client.send(_reg_write(Reg.DOORBELL, 1, 4))
        status = pair.client.send(wire.RegionRead(offset=int(Reg.STATUS), region=BAR0, count=4))
        pair.to_server()
        events = pair.to_client()
        kinds = [type(e) for e in events]
        assert kinds.count(ServerRequest) == 1 and kinds.count(ReplyReceived) == 2
        [dma] = [e for e in events if isinstance(e, ServerRequest)]
        assert isinstance(dma.message, wire.DmaRead) and dma.fds == []
        assert (dma.message.addr, dma.message.count) == (0x1000, 4096)
        assert dma.message.msg_id >= 0x8000
        replies = {e.msg_id: e for e in events if isinstance(e, ReplyReceived)}
        assert set(replies) == {ring, status}
        busy = int.from_bytes(replies[status].message.data, "little")
        assert busy & Status.BUSY  # the job waits for our DMA_READ reply

        # A request pending while the DMA request is answered: both complete.
        pending = pair.client.send(wire.RegionRead(offset=int(Reg.STATUS), region=BAR0,
                                                   count=4))
        assert pending in pair.client.pending
        reply = answer_dma(dma.message, memory)
        assert isinstance(reply, wire.DmaReadReply) and bytes(reply.data) == b"G" * 4096
        assert pair.client.send(reply) == dma.message.msg_id
        assert pending in pair.client.pending  # a reply we send is awaited by nobody
        pair.to_server()
        [done] = pair.to_client()
        assert isinstance(done, ReplyReceived) and done.msg_id == pending
        assert pair.server.stats["dma_messages"] == 1
        read = pair.request(wire.RegionRead(offset=0x100, region=BAR2, count=4096))
        assert isinstance(read, ReplyReceived) and bytes(read.message.data) == b"G" * 4096
        status_now = pair.request(
            wire.RegionRead(offset=int(Reg.STATUS), region=BAR0, count=4))
        assert isinstance(status_now, ReplyReceived)
        value = int.from_bytes(status_now.message.data, "little")
        assert value & Status.DONE and not value & Status.BUSY
    finally:
        memory.close()


def test_answer_dma_write_efault_and_einval() -> None:
    memory = GuestMemory(8192, base=0x10000)
    try:
        write = wire.DmaWrite(addr=0x10010, count=3, data=b"xyz", msg_id=0x8001)
        reply = answer_dma(write, memory)
        assert isinstance(reply, wire.DmaWriteReply) and reply.msg_id == 0x8001
        assert memory.read(0x10010, 3) == b"xyz"
        outside = answer_dma(wire.DmaRead(addr=0x11ff0, count=32, msg_id=0x8002), memory)
        assert isinstance(outside, wire.ErrorReply)
        assert (outside.errno, outside.msg_id) == (errno.EFAULT, 0x8002)
        assert answer_dma(write, None).errno == errno.EFAULT  # no guest memory at all
        other = answer_dma(wire.DeviceReset(msg_id=0x8003), memory)
        assert isinstance(other, wire.ErrorReply) and other.errno == errno.EINVAL
    finally:
        memory.close()
