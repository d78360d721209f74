"""ThreadedClient: many threads on one vfio-user socket, replies matched by message id."""

from __future__ import annotations

import errno
import socket
import threading
import time

import pytest

from tests.simulator.conftest import Session
from tests.simulator.test_server_e2e import run_dma_job
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.client.threaded import ThreadedClient
from vfio_user_mig.simulator.device.regs import DmaDir, Status
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import serve_socketpair

BAR0, BAR2 = 0, 2


def _threaded_session(mem_size: int = 1 << 20) -> Session:
    hosted = host_device("migdev", mem_size=mem_size)
    a, b = socket.socketpair()
    thread, stop = serve_socketpair(hosted.core, a)
    memory = GuestMemory(1 << 20)
    client = ThreadedClient(b, memory=memory, timeout=5.0)
    s = Session(hosted.device, hosted.core, client, memory, a)  # type: ignore[arg-type]
    s._thread, s._stop = thread, stop  # type: ignore[attr-defined]
    return s


def _close(s: Session) -> None:
    s.client.close()
    s._thread.join(5)  # type: ignore[attr-defined]
    s.server_sock.close()
    s.core.close()
    s.device.close()
    s.memory.close()


def test_threads_share_one_socket() -> None:
    s = _threaded_session()
    try:
        c = s.client
        c.negotiate()
        for i in range(4):
            c.region_write(BAR2, i * 4096, bytes([i + 1]) * 4096)
        c.set_state(State.PRE_COPY)
        errors: list[BaseException] = []
        got: dict[int, int] = {}

        def reader(i: int) -> None:
            try:
                for _ in range(200):
                    assert c.region_read(BAR2, i * 4096, 64) == bytes([i + 1]) * 64
                got[i] = 200
            except BaseException as exc:  # reported below
                errors.append(exc)

        def streamer() -> None:
            try:
                got[-1] = sum(len(x) for x in c.mig_data_read_stream(64 * 1024, 2))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
        threads.append(threading.Thread(target=streamer))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert got[-1] > (1 << 20) and all(got[i] == 200 for i in range(4))
    finally:
        _close(s)


def test_error_replies_reach_their_thread() -> None:
    s = _threaded_session()
    try:
        c = s.client
        c.negotiate()
        with pytest.raises(VfioUserError) as info:
            c.mig_data_read(16)  # RUNNING
        assert info.value.errno == errno.EINVAL
        assert c.region_read(BAR0, 0, 4) == b"MGDV"
    finally:
        _close(s)


def test_receiver_answers_server_dma_while_a_thread_waits() -> None:
    s = _threaded_session()
    try:
        c, mem = s.client, s.memory
        c.negotiate()
        mem.write(0x1000, b"G" * 4096)
        c.dma_map(0, mem.size)  # no fd: DMA_READ messages to the client
        status = run_dma_job(s, DmaDir.FROM_CLIENT, 0x1000, 4096)
        assert status & Status.DONE
        assert c.region_read(BAR2, 0, 4096) == b"G" * 4096
        assert c.dma_served >= 1
    finally:
        _close(s)


def test_waiters_see_a_closed_connection() -> None:
    s = _threaded_session()
    try:
        c = s.client
        c.negotiate()
        s.server_sock.shutdown(socket.SHUT_RDWR)
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            c.region_read(BAR0, 0, 4)
        assert time.monotonic() - start < 2
    finally:
        _close(s)
