"""Pipelined migration data: ``Client.mig_data_read_stream`` (several MIG_DATA_READs in
flight), ``Client.mig_data_write_nowait``/``wait_reply``/``abandon``, and the driver's pipelined
relay (same trace and failures as the serial one)."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.simulator.conftest import Session, close_session, make_session, serve_device
from tests.simulator.test_server_e2e import enable_bus_master, reg_read, reg_write
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device.errors import DeviceError
from vfio_user_mig.simulator.device.memstream import MemStreamDev
from vfio_user_mig.simulator.device.migdev_base import SaveStream
from vfio_user_mig.simulator.device.regs import DmaDir, Reg, Status
from vfio_user_mig.simulator.migration.driver_types import DriverConfig
from vfio_user_mig.simulator.migration.session import Hooks, MigrateOptions, migrate

KiB = 1 << 10
MEM = 256 * KiB


class _FailingSave:
    """A save stream whose ``fail_at``-th read (0-based) is refused by the device."""

    def __init__(self, inner: SaveStream, fail_at: int) -> None:
        self.inner = inner
        self.reads = 0
        self.fail_at = fail_at

    def read(self, max_size: int) -> bytes:
        n = self.reads
        self.reads += 1
        if n == self.fail_at:
            raise DeviceError("injected read failure", errno.EIO)
        return self.inner.read(max_size)

    def stop_copy(self) -> None:
        self.inner.stop_copy()


class _FlakyStreamDev(MemStreamDev):
    fail_at: int | None = None

    def _new_save(self, *, precopy: bool) -> SaveStream:
        save = super()._new_save(precopy=precopy)
        return save if self.fail_at is None else _FailingSave(save, self.fail_at)


@dataclass
class _Stream:
    device: _FlakyStreamDev
    client: Client

    @property
    def precopy_end(self) -> int:
        return int(self.device._precopy_end)


@pytest.fixture
def stream() -> Iterator[_Stream]:
    device = _FlakyStreamDev(mem_size=MEM)
    client, close = serve_device(device)
    yield _Stream(device, client)
    close()


def _clean(client: Client) -> None:
    """Nothing left over: no request pending, nothing kept, nothing unexpected."""
    assert client.get_state() is not None  # a round trip: late replies have arrived
    assert not client.core.pending and not client._early and not client._abandoned
    assert client.unexpected_replies == 0


@pytest.mark.parametrize("chunk", [4 * KiB, 64 * KiB, 100_000])
@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("into", [False, True])
def test_stream_yields_the_chunks_in_order(stream: _Stream, chunk: int, depth: int,
                                           into: bool) -> None:
    c = stream.client
    buf = bytearray(chunk) if into else None
    c.set_state(State.STOP_COPY)  # the whole stream, then its end
    got = bytearray()
    for data in c.mig_data_read_stream(chunk, depth, into=buf):
        assert 0 < len(data) <= chunk
        got += data
    assert bytes(got) == stream.device.stream
    _clean(c)


def test_end_of_stream_with_requests_in_flight(stream: _Stream) -> None:
    c = stream.client
    c.set_state(State.STOP_COPY)
    chunks = list(c.mig_data_read_stream(64 * KiB, depth=8))
    assert b"".join(chunks) == stream.device.stream
    # The requests in flight after the end all got (empty) replies, taken by the stream.
    assert not c.core.pending and not c._early
    assert c.mig_data_read(64 * KiB) == b""  # still at the end
    _clean(c)


def test_precopy_short_read_means_caught_up_for_now(stream: _Stream) -> None:
    c = stream.client
    end = stream.precopy_end
    c.set_state(State.PRE_COPY)
    first = b"".join(bytes(d) for d in c.mig_data_read_stream(64 * KiB, depth=4))
    assert first == stream.device.stream[:end]
    assert not c.core.pending and not c._early  # in-flight requests drained, none dropped
    assert list(c.mig_data_read_stream(64 * KiB, depth=4)) == []  # still caught up
    c.set_state(State.STOP_COPY)
    rest = b"".join(bytes(d) for d in c.mig_data_read_stream(64 * KiB, depth=4))
    assert first + rest == stream.device.stream
    _clean(c)


def test_max_bytes_never_reads_beyond_the_budget(stream: _Stream) -> None:
    c = stream.client
    c.set_state(State.STOP_COPY)
    chunk = 16 * KiB
    head = b"".join(bytes(d) for d in c.mig_data_read_stream(chunk, 4, max_bytes=3 * chunk + 1))
    assert head == stream.device.stream[: 4 * chunk]  # ceil(budget / chunk) reads, no more
    rest = b"".join(bytes(d) for d in c.mig_data_read_stream(chunk, 4))
    assert head + rest == stream.device.stream
    _clean(c)


def test_error_reply_in_the_middle_aborts_cleanly(stream: _Stream) -> None:
    c = stream.client
    stream.device.fail_at = 2
    c.set_state(State.STOP_COPY)
    chunk = 16 * KiB
    got: list[bytes] = []
    with pytest.raises(VfioUserError) as info:
        for data in c.mig_data_read_stream(chunk, depth=4, into=bytearray(chunk)):
            got.append(bytes(data))
    assert info.value.errno == errno.EIO
    assert b"".join(got) == stream.device.stream[: 2 * chunk]  # the chunks before the error
    # The requests sent after the failing one are abandoned: their replies are dropped.
    _clean(c)
    # Reads 0-3 were sent, then 4 and 5 as chunks 0 and 1 arrived; read 2 consumed nothing,
    # the abandoned 3, 4 and 5 consumed (and lost) stream chunks 2, 3 and 4.
    assert c.mig_data_read(chunk) == stream.device.stream[5 * chunk : 6 * chunk]


def test_closing_the_stream_early_abandons_the_requests_in_flight(stream: _Stream) -> None:
    c = stream.client
    c.set_state(State.STOP_COPY)
    it = c.mig_data_read_stream(16 * KiB, depth=4)
    assert bytes(next(it)) == stream.device.stream[: 16 * KiB]
    it.close()
    assert c._abandoned  # three requests were still in flight
    _clean(c)


def test_abandon_drops_replies_already_kept(stream: _Stream) -> None:
    c = stream.client
    c.set_state(State.STOP_COPY)
    it = c.mig_data_read_stream(16 * KiB, depth=3)
    next(it)
    assert c.get_state() is State.STOP_COPY  # waits past the two chunk replies: kept early
    assert len(c._early) == 2
    it.close()
    assert not c._early and not c._abandoned
    _clean(c)


@pytest.fixture
def session() -> Iterator[Session]:
    s = make_session(mem_size=MEM, guest=1 << 20)
    s.client.negotiate()
    yield s
    close_session(s)


def test_dma_is_served_while_reads_are_in_flight(session: Session) -> None:
    c, mem = session.client, session.memory
    mem.write(0, b"G" * MEM)
    c.dma_map(0, mem.size)  # no fd: the server must send DMA_READ messages
    enable_bus_master(session)
    for reg, value, size in ((Reg.DMA_DEV_OFFSET, 0, 8), (Reg.DMA_IOVA, 0, 8),
                             (Reg.DMA_LEN, MEM, 8), (Reg.DMA_DIR, int(DmaDir.FROM_CLIENT), 4),
                             (Reg.DMA_MODE, 0, 4)):
        reg_write(session, reg, value, size)
    c.set_state(State.PRE_COPY)
    reg_write(session, Reg.DOORBELL, 1, 4)  # the job runs while the stream is read
    served = c.dma_served
    total = 0
    for data in c.mig_data_read_stream(4 * KiB, depth=4):
        total += len(data)
    assert total > 0
    assert c.dma_served > served  # served while the stream waited for its replies
    for _ in range(200):
        status = reg_read(session, Reg.STATUS)
        if status & Status.DONE:
            break
        c.poll(0.01)
    assert status & Status.DONE and c.dma_served > served
    assert session.core.stats["dma_messages"] >= 1
    _clean(c)


def test_write_nowait_then_wait_reply(session: Session) -> None:
    c = session.client
    src = make_session(mem_size=MEM)
    try:
        src.client.negotiate()
        src.client.region_write(2, 0, b"pipelined" * 100)
        src.client.set_state(State.STOP_COPY)
        c.set_state(State.RESUMING)
        window: list[int] = []
        for data in src.client.mig_data_read_stream(16 * KiB, depth=2):
            window.append(c.mig_data_write_nowait(data))
            if len(window) > 2:
                c.wait_reply(window.pop(0))
        for msg_id in window:
            c.wait_reply(msg_id)
        c.set_state(State.STOP)  # the device validates the whole stream
        assert c.region_read(2, 0, 900) == b"pipelined" * 100
        _clean(c)
    finally:
        close_session(src)


def test_write_nowait_error_surfaces_at_wait_reply(session: Session) -> None:
    c = session.client
    bad = c.mig_data_write_nowait(b"x")  # RUNNING: not RESUMING
    good = c.core.send(c.core.with_id(_get_state_msg()))
    for parts, fds in c.core.data_to_send():
        c.sock.sendmsg(parts)
        assert not fds
    assert c.wait_reply(good)[0] is not None
    with pytest.raises(VfioUserError) as info:
        c.wait_reply(bad)
    assert info.value.errno == errno.EINVAL
    _clean(c)


def _get_state_msg() -> Any:
    from vfio_user_mig import wire
    from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp

    return wire.DeviceFeature(feature=FeatureIndex.MIG_DEVICE_STATE, ops=FeatureOp.GET)


# ----- the driver --------------------------------------------------------------------------------
def _small(**kw: Any) -> MigrateOptions:
    base: dict[str, Any] = dict(device_mem=128 * KiB, guest_mem=256 * KiB, dirty_rate=0,
                                bandwidth=8 << 20, chunk=16 * KiB, timeout=5.0, deadline=20.0)
    base.update(kw)
    return MigrateOptions(**base)


def _run(config: dict[str, int], hooks: Hooks | None = None, **kw: Any) -> Any:
    """One migration with the driver configured as ``config`` says."""
    import vfio_user_mig.simulator.migration.session as session_mod

    real = DriverConfig

    def patched(**args: Any) -> DriverConfig:
        return real(**{**args, **config})

    setattr(session_mod, "DriverConfig", patched)  # noqa: B010
    try:
        return migrate(_small(**kw), hooks)
    finally:
        setattr(session_mod, "DriverConfig", real)  # noqa: B010


def _chunks(result: Any) -> list[tuple[str, int, int]]:
    return [(e["phase"], e["round"], e["bytes"]) for e in result.trace_events
            if e["ev"] == "chunk"]


SERIAL = {"read_depth": 1, "write_window": 0}
PIPELINED = {"read_depth": 3, "write_window": 2}


def test_pipelined_relay_traces_like_the_serial_one() -> None:
    serial, piped = _run(SERIAL), _run(PIPELINED)
    assert serial.ok and piped.ok, (serial.summary["errors"], piped.summary["errors"])
    assert _chunks(piped) == _chunks(serial) and _chunks(piped)
    assert piped.summary["stream_bytes"] == serial.summary["stream_bytes"]
    assert [e["ev"] for e in piped.trace_events] == [e["ev"] for e in serial.trace_events]


def _flip(i: int, data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:] if i == 3 else data


@pytest.mark.parametrize("relay_filter", [
    _flip,
    lambda i, d: None if i >= 5 else d,
    lambda i, d: b"garbage" if i == 2 else d,  # refused by the destination at once
], ids=["corrupt", "truncate", "garbage"])
def test_pipelined_relay_fails_and_recovers_like_the_serial_one(relay_filter: Any) -> None:
    serial = _run(SERIAL, Hooks(relay_filter=relay_filter))
    piped = _run(PIPELINED, Hooks(relay_filter=relay_filter))
    assert not serial.ok and not piped.ok
    assert (piped.outcome, piped.committed) == (serial.outcome, serial.committed)
    assert (piped.error.where, piped.error.errno) == (serial.error.where, serial.error.errno)
    assert _chunks(piped) == _chunks(serial)
    recov = [(e["side"], e["ok"]) for e in piped.trace_events if e["ev"] == "recovery"]
    assert recov == [(e["side"], e["ok"]) for e in serial.trace_events
                     if e["ev"] == "recovery"]
    assert piped.summary["source_path"][-1] == "RUNNING"



def test_pump_sends_every_reply_of_a_batch_ending_in_a_framing_error(stream: _Stream) -> None:
    """Large replies go out mid-batch; the rest (and the error reply) still go out when the
    batch ends the connection."""
    from vfio_user_mig import wire
    from vfio_user_mig.simulator.transport import send_parts

    c = stream.client
    c.set_state(State.STOP_COPY)
    chunk = 64 * KiB
    reads = [wire.MigDataRead(size=chunk, msg_id=100 + i) for i in range(3)]
    parts: list[bytes | memoryview] = []
    for msg in reads:
        parts.extend(wire.encode_parts(msg))
    parts.append(struct.pack("<HHIII", 200, int(wire.Command.REGION_READ), 8, 0, 0))  # size 8
    send_parts(c.sock, parts)
    c.sock.settimeout(5.0)
    want = 3 * (24 + chunk) + 16
    got = bytearray()
    while len(got) < want and (piece := c.sock.recv(want - len(got))):
        got += piece
    off = 0
    for i, msg in enumerate(reads):
        msg_id, _cmd, size, _flags, err = struct.unpack_from("<HHIII", got, off)
        assert (msg_id, err) == (msg.msg_id, 0)
        assert got[off + 24 : off + size] == stream.device.stream[i * chunk : (i + 1) * chunk]
        off += size
    msg_id, _cmd, size, _flags, err = struct.unpack_from("<HHIII", got, off)
    assert (msg_id, err) == (200, errno.EINVAL) and off + size == len(got)
