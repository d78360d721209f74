"""The relay's splice path: MIG_DATA_READ reply data moved from one socket to another through a
pipe (client/io.py ``SplicePipe``, ``mig_reply_to_pipe``, ``mig_data_write_from_pipe``), and
its fallbacks when the pipe cannot take a reply."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable

import pytest

from tests.simulator.conftest import serve_device
from vfio_user_mig import wire
from vfio_user_mig.model import State as S
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import SplicePipe
from vfio_user_mig.simulator.device import MigDev

pytestmark = pytest.mark.skipif(not hasattr(os, "splice"), reason="no splice(2)")

MEM = 1 << 21


def _serve(device: MigDev) -> tuple[Client, Callable[[], None]]:
    return serve_device(device, timeout=10.0)


def _read(client: Client, chunk: int) -> int:
    msg = wire.MigDataRead(size=chunk, msg_id=client.core.next_id())
    client.send(msg)
    return int(msg.msg_id)


@pytest.mark.parametrize(("pipe_size", "chunk"), [(1 << 20, 1 << 20), (1 << 16, 1 << 17)])
def test_stream_spliced_between_two_servers_restores(pipe_size: int, chunk: int) -> None:
    """A whole migration relayed chunk by chunk through the pipe (or, for chunks larger than
    the pipe, through the buffer) restores the source's state exactly."""
    src_dev, dst_dev = MigDev(mem_size=MEM), MigDev(mem_size=MEM)
    src, close_src = _serve(src_dev)
    dst, close_dst = _serve(dst_dev)
    pipe = SplicePipe(pipe_size)
    view = memoryview(bytearray(chunk))
    try:
        for at in range(0, MEM, 1 << 19):
            src.region_write(2, at, os.urandom(1 << 19))
        src.set_state(S.PRE_COPY)
        dst.set_state(S.STOP)
        dst.set_state(S.RESUMING)
        spliced = buffered = 0
        for phase in (S.PRE_COPY, S.STOP_COPY):
            if phase is S.STOP_COPY:
                src.region_write(2, 4096 * 7, b"changed after it was sent")
                src.set_state(S.STOP_COPY)
            while True:
                n, data = src.mig_reply_to_pipe(_read(src, chunk), chunk, pipe, lambda: view)
                if data is None:
                    spliced += 1
                    msg_id = dst.mig_data_write_from_pipe(pipe, n)
                else:
                    assert len(data) == n
                    buffered += 1
                    msg_id = dst.mig_data_write_nowait(data)
                dst.wait_reply(msg_id)
                assert pipe.held == 0
                if n < chunk:
                    break
        dst.set_state(S.STOP)
        src.set_state(S.STOP)
        assert dst_dev.digest() == src_dev.digest()
        if chunk <= pipe.capacity:
            assert spliced >= MEM // chunk and buffered <= 2  # a phase's short reply may not
        else:
            assert spliced == 0 and buffered >= MEM // chunk
    finally:
        pipe.close()
        close_src()
        close_dst()


def test_a_reply_arriving_in_pieces_that_fill_the_pipe_is_received_into_the_buffer() -> None:
    """A pipe counts buffers, not bytes: data arriving in many small pieces can fill it before
    the reply is in; the rest then comes the usual way, and the bytes are the ones sent."""
    chunk = 1 << 16
    server, sock = socket.socketpair()
    client = Client(sock, timeout=10.0)
    pipe = SplicePipe(chunk)
    payload = os.urandom(chunk)
    head = struct.pack("<HHIIIII", 0, int(wire.Command.MIG_DATA_READ), 24 + chunk,
                       int(wire.MsgType.REPLY), 0, 8 + chunk, chunk)

    def answer() -> None:
        request = server.recv(64)
        msg_id = struct.unpack_from("<H", request)[0]
        server.sendall(struct.pack("<H", msg_id) + head[2:])
        for at in range(0, chunk, 1024):  # one small segment (a pipe buffer) each
            server.sendall(payload[at : at + 1024])

    thread = threading.Thread(target=answer)
    thread.start()
    try:
        view = memoryview(bytearray(chunk))
        n, data = client.mig_reply_to_pipe(_read(client, chunk), chunk, pipe, lambda: view)
        thread.join(5)
        assert n == chunk and data is not None and bytes(data) == payload
        assert pipe.held == 0
        assert not client.core.pending
    finally:
        thread.join(5)
        pipe.close()
        client.close()
        server.close()


def test_an_error_reply_is_raised_and_the_pipe_stays_empty() -> None:
    src, close = _serve(MigDev(mem_size=MEM))
    pipe = SplicePipe(1 << 20)
    try:
        with pytest.raises(OSError):  # RUNNING: MIG_DATA_READ is refused (EINVAL)
            src.mig_reply_to_pipe(_read(src, 1 << 20), 1 << 20, pipe,
                                  lambda: memoryview(bytearray(1 << 20)))
        assert pipe.held == 0
        assert src.get_state() is S.RUNNING  # the connection is still in sync
    finally:
        pipe.close()
        close()


# ----- the driver --------------------------------------------------------------------------------
class _DropsAtWrite(Client):
    """A client that can no longer send (its connection shut down for writing) from its
    ``drop_at``-th MIG_DATA_WRITE on, whichever way it is sent."""

    drop_at = 3

    def _count(self) -> None:
        self.writes = getattr(self, "writes", 0) + 1
        if self.writes == self.drop_at:
            self.sock.shutdown(socket.SHUT_WR)

    def mig_data_write(self, data: bytes | memoryview) -> None:
        self._count()
        super().mig_data_write(data)

    def mig_data_write_nowait(self, data: bytes | memoryview) -> int:
        self._count()
        return super().mig_data_write_nowait(data)

    def mig_data_write_from_pipe(self, pipe: SplicePipe, size: int) -> int:
        self._count()
        return super().mig_data_write_from_pipe(pipe, size)


@pytest.mark.parametrize("drop_at", [1, 3, 40])
def test_a_destination_lost_mid_stream_fails_as_without_the_pipe(drop_at: int) -> None:
    """The spliced relay fails at the same write as the pipelined relay through the driver's
    buffer, with the same error and the same chunks traced; the source is recovered."""
    import vfio_user_mig.simulator.migration.driver_relay as relay
    from tests.simulator.test_pipelining import PIPELINED, _chunks, _run
    from vfio_user_mig.simulator.migration.session import Hooks

    def factory(label: str, sock: socket.socket, guest: object, timeout: float) -> Client:
        client = (_DropsAtWrite if label == "dst" else Client)(
            sock, memory=guest.memory, timeout=timeout)  # type: ignore[attr-defined]
        client.drop_at = drop_at  # type: ignore[attr-defined]
        return client

    spliced: list[int] = []
    real = SplicePipe.drain_to

    def counting(self: SplicePipe, sock: socket.socket, n: int) -> None:
        spliced.append(n)
        real(self, sock, n)

    big = {"device_mem": 4 << 20, "chunk": 1 << 16}  # bulk-sized replies: spliced
    relay._SPLICE = False
    try:
        buffered = _run(PIPELINED, Hooks(client_factory=factory), **big)
    finally:
        relay._SPLICE = True
    SplicePipe.drain_to = counting  # type: ignore[method-assign]
    try:
        piped = _run(PIPELINED, Hooks(client_factory=factory), **big)
    finally:
        SplicePipe.drain_to = real  # type: ignore[method-assign]
    assert len(spliced) == drop_at - 1  # the writes before the lost one went through the pipe
    assert not buffered.ok and not piped.ok
    assert (piped.error.where, piped.error.errno) == (buffered.error.where,
                                                       buffered.error.errno)
    assert piped.error.where == "dst MIG_DATA_WRITE"
    assert _chunks(piped) == _chunks(buffered)
    assert piped.summary["source_path"][-1] == "RUNNING"


def test_a_destination_socket_in_non_blocking_mode_is_written_the_usual_way() -> None:
    """A destination socket with a Python timeout (non-blocking underneath) never gets a
    splice (it could stop half-way): the relay sends from the driver's buffer and the
    migration completes."""
    from tests.simulator.test_pipelining import PIPELINED, _run
    from vfio_user_mig.simulator.migration.session import Hooks

    def factory(label: str, sock: socket.socket, guest: object, timeout: float) -> Client:
        if label == "dst":
            sock.settimeout(timeout)
        return Client(sock, memory=guest.memory, timeout=timeout)  # type: ignore[attr-defined]

    spliced: list[int] = []
    real = SplicePipe.drain_to

    def counting(self: SplicePipe, sock: socket.socket, n: int) -> None:
        spliced.append(n)
        real(self, sock, n)

    SplicePipe.drain_to = counting  # type: ignore[method-assign]
    try:
        result = _run(PIPELINED, Hooks(client_factory=factory), device_mem=1 << 20,
                      chunk=1 << 16)
    finally:
        SplicePipe.drain_to = real  # type: ignore[method-assign]
    assert result.ok, result.summary["errors"]
    assert not spliced
