"""End-to-end: the server core hosting migdev over real sockets, driven by the client."""

from __future__ import annotations

import errno
import mmap
import os
import select
import struct
import time
from pathlib import Path

import pytest

from tests.simulator.conftest import Session, close_session, make_session
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device.regs import Control, DmaDir, Reg, Status
from vfio_user_mig.simulator.transport import connect_unix, recv_into, send_parts
from vfio_user_mig.wire.constants import FeatureIndex, FeatureOp

BAR0, BAR2, CONFIG = 0, 2, 7


def reg_write(s: Session, reg: Reg, value: int, size: int = 8) -> None:
    s.client.region_write(BAR0, int(reg), value.to_bytes(size, "little"))


def reg_read(s: Session, reg: Reg, size: int = 4) -> int:
    return int.from_bytes(s.client.region_read(BAR0, int(reg), size), "little")


def test_discovery(session: Session) -> None:
    c = session.client
    info = c.device_info()
    assert (info.num_regions, info.num_irqs) == (9, 5)
    bar2, fds = c.region_info(BAR2)
    assert bar2.size == 1 << 20 and len(fds) == 1 and bar2.caps
    mm = mmap.mmap(fds[0], bar2.size)
    mm[100:105] = b"mmap!"
    assert c.region_read(BAR2, 100, 5) == b"mmap!"
    mm.close()
    os.close(fds[0])
    assert c.irq_info(0).count >= 1
    assert c.migration_caps() == session.device.migration_caps


def test_region_info_truncated_when_argsz_too_small(session: Session) -> None:
    reply, fds = session.client.region_info(BAR2, argsz=32)
    assert reply.caps == () and reply.argsz > 32
    for fd in fds:
        os.close(fd)


def test_region_access_errors_keep_serving(session: Session) -> None:
    c = session.client
    with pytest.raises(VfioUserError) as info:
        c.region_read(0xDEADBEEF, 0, 4)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        c.region_read(BAR2, (1 << 20) - 2, 4)
    with pytest.raises(VfioUserError):
        c.region_write(BAR2, 1 << 20, b"x")
    assert c.region_read(BAR2, 0, 4) == bytes(4)


def test_malformed_messages_get_errno_and_server_keeps_serving(session: Session) -> None:
    sock = session.client.sock
    # REGION_READ with a 4-byte payload (needs 16): EINVAL
    send_parts(sock, [struct.pack("<HHIII", 77, 9, 20, 0, 0), b"\0" * 4])
    # reserved command 14: EINVAL (libvfio-user's answer to any unknown command)
    send_parts(sock, [struct.pack("<HHIII", 78, 14, 16, 0, 0)])
    got = {}
    deadline = time.monotonic() + 5
    buf = memoryview(bytearray(4096))
    while len(got) < 2 and time.monotonic() < deadline:
        select.select([sock], [], [], 1)
        n, _ = recv_into(sock, buf)
        for off in range(0, n, 16):
            msg_id, cmd, _size, flags, err = struct.unpack_from("<HHIII", buf, off)
            got[msg_id] = (cmd, flags & 0x20, err)
    assert got[77] == (9, 0x20, errno.EINVAL)
    assert got[78] == (14, 0x20, errno.EINVAL)
    assert session.client.device_info().num_regions == 9


def test_migration_state_machine_over_the_wire(session: Session) -> None:
    c = session.client
    assert c.get_state() == State.RUNNING
    c.set_state(State.STOP_COPY)  # walks RUNNING -> STOP -> STOP_COPY
    assert c.get_state() == State.STOP_COPY
    with pytest.raises(VfioUserError) as info:
        c.set_state(State.PRE_COPY)  # blocked arc
    assert info.value.errno == errno.EINVAL and info.value.payload  # libvfio-user echoes
    with pytest.raises(VfioUserError):
        c.set_state(State.ERROR)
    with pytest.raises(VfioUserError):
        c.set_state(8)  # libvfio-user's bound bug: 8 must be refused
    with pytest.raises(VfioUserError) as info:
        c.region_read(BAR2, 0, 4)  # no region access in STOP_COPY
    assert info.value.errno == errno.EINVAL
    assert c.get_state() == State.STOP_COPY


def test_command_gating(session: Session) -> None:
    c = session.client
    with pytest.raises(VfioUserError):
        c.mig_data_read(16)  # RUNNING: not a saving state
    with pytest.raises(VfioUserError):
        c.mig_data_write(b"x")
    c.set_state(State.STOP)
    assert c.region_read(BAR2, 0, 4) == bytes(4)  # region access allowed in STOP
    with pytest.raises(VfioUserError):
        c.device_info()  # everything else refused in STOP
    c.set_state(State.RUNNING)
    assert c.device_info().num_regions == 9


def enable_bus_master(s: Session) -> None:
    """PCI command register: memory space + bus master, as a guest driver does."""
    s.client.region_write(CONFIG, 4, (0x0006).to_bytes(2, "little"))


def run_dma_job(s: Session, direction: DmaDir, iova: int, length: int, mode: int = 0) -> int:
    enable_bus_master(s)
    reg_write(s, Reg.DMA_DEV_OFFSET, 0)
    reg_write(s, Reg.DMA_IOVA, iova)
    reg_write(s, Reg.DMA_LEN, length)
    reg_write(s, Reg.DMA_DIR, int(direction), 4)
    reg_write(s, Reg.DMA_MODE, mode, 4)
    reg_write(s, Reg.DOORBELL, 1, 4)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = reg_read(s, Reg.STATUS)
        if not status & Status.BUSY and status & (Status.DONE | Status.FAULT | Status.REFUSED):
            return status
        s.client.poll(0.01)
    raise AssertionError("DMA job did not finish")


def test_dma_through_fd_mapping_with_dirty_logging(session: Session) -> None:
    c, mem = session.client, session.memory
    c.region_write(BAR2, 0, b"D" * 8192)
    c.dma_map(0, mem.size, fd=mem.fd)
    c.dma_logging_start(4096)
    status = run_dma_job(session, DmaDir.TO_CLIENT, 0x3000, 8192)
    assert status & Status.DONE
    assert mem.read(0x3000, 8192) == b"D" * 8192
    assert c.dma_logging_report(0, mem.size, 4096) == [3, 4]
    assert c.dma_logging_report(0, mem.size, 4096) == []  # read-and-clear


def test_logging_page_size_hint_and_later_map(session: Session) -> None:
    """DMA_LOGGING_START page_size is a hint: the client gets the size selected (512 -> 4 KiB);
    num_ranges 0 logs a map added after START; DMA_UNMAP with GET_DIRTY_BITMAP does not lose
    the pages dirtied in it."""
    c, mem = session.client, session.memory
    c.region_write(BAR2, 0, b"E" * 8192)
    assert c.dma_logging_start(512) == 4096
    c.dma_map(0, mem.size, fd=mem.fd)  # after START
    status = run_dma_job(session, DmaDir.TO_CLIENT, 0x5000, 4096)
    assert status & Status.DONE
    reply, _ = c.request(wire.DmaUnmap(0, mem.size, int(wire.DmaUnmapFlag.GET_DIRTY_BITMAP),
                                       argsz=40 + wire.bitmap_len(mem.size, 4096),
                                       bitmap=wire.UnmapBitmap(4096,
                                                               wire.bitmap_len(mem.size, 4096)),
                                       msg_id=c._new_id()))
    bitmap = wire.DirtyBitmap(0, mem.size, 4096, bytearray(reply.bitmap_data))
    assert list(bitmap.pages()) == [5]


def test_dma_by_messages_while_client_has_requests_in_flight(session: Session) -> None:
    c, mem = session.client, session.memory
    mem.write(0x1000, b"G" * 4096)
    c.dma_map(0, mem.size)  # no fd: the server must use DMA_READ/DMA_WRITE messages
    status = run_dma_job(session, DmaDir.FROM_CLIENT, 0x1000, 4096)
    assert status & Status.DONE
    assert c.region_read(BAR2, 0, 4096) == b"G" * 4096
    assert c.dma_served >= 1 and session.core.stats["dma_messages"] >= 1


def test_dma_outside_mapped_ranges_faults_and_touches_nothing(session: Session) -> None:
    c, mem = session.client, session.memory
    c.dma_map(0, 0x4000, fd=mem.fd)
    c.region_write(BAR2, 0, b"Z" * 0x2000)
    status = run_dma_job(session, DmaDir.TO_CLIENT, 0x3000, 0x2000)  # crosses the map end
    assert status & Status.FAULT
    assert mem.read(0x3000, 0x1000) == bytes(0x1000)


def test_client_that_does_not_serve_dma_deadlocks() -> None:
    s = make_session(serve_dma_while_waiting=False)
    try:
        s.client.timeout = 0.5
        s.client.negotiate()
        s.client.dma_map(0, s.memory.size)
        enable_bus_master(s)
        for reg, value, size in ((Reg.DMA_DEV_OFFSET, 0, 8), (Reg.DMA_IOVA, 0, 8),
                                 (Reg.DMA_LEN, 4096, 8), (Reg.DMA_DIR, 1, 4)):
            reg_write(s, reg, value, size)
        reg_write(s, Reg.DOORBELL, 1, 4)
        # The job waits for a DMA_READ reply that this client never sends: a job-dependent
        # request (read BUSY until done) never completes.
        status = reg_read(s, Reg.STATUS)
        assert status & Status.BUSY
        assert s.client.deferred_requests, "the server's DMA_READ is stuck in the client"
    finally:
        close_session(s)


def test_interrupt_via_eventfd(session: Session) -> None:
    c, mem = session.client, session.memory
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    c.set_irq_eventfds(0, [efd])
    c.dma_map(0, mem.size, fd=mem.fd)
    reg_write(session, Reg.CONTROL, int(Control.IRQ_ON_JOB), 4)
    run_dma_job(session, DmaDir.TO_CLIENT, 0, 4096)
    ready, _, _ = select.select([efd], [], [], 2)
    assert ready and int.from_bytes(os.read(efd, 8), "little") >= 1
    os.close(efd)


def test_disconnect_keeps_device_state_and_unmaps(session: Session) -> None:
    c = session.client
    c.region_write(BAR2, 64, b"persist")
    c.dma_map(0, session.memory.size, fd=session.memory.fd)
    c.set_state(State.STOP)
    c2 = session.reconnect()
    c2.negotiate()
    assert c2.get_state() == State.STOP
    assert c2.region_read(BAR2, 64, 7) == b"persist"
    assert session.core.dma.mappings == ()


def test_feature_probe_and_unknown_feature(session: Session) -> None:
    c = session.client
    reply = c.feature(FeatureIndex.MIG_DEVICE_STATE, FeatureOp.PROBE | FeatureOp.SET)
    assert reply.feature == FeatureIndex.MIG_DEVICE_STATE
    with pytest.raises(VfioUserError) as info:
        c.feature(3, FeatureOp.GET)  # type: ignore[arg-type]
    assert info.value.errno == errno.EINVAL  # libvfio-user: unknown feature is EINVAL


def migrate(src: Session, dst: Session, chunk: int, corrupt: bool = False) -> None:
    sc, dc = src.client, dst.client
    sc.set_state(State.PRE_COPY)
    dc.set_state(State.RESUMING)
    stream_bytes = 0
    for phase in (State.PRE_COPY, State.STOP_COPY):
        if phase is State.STOP_COPY:
            sc.set_state(State.STOP_COPY)
        while True:
            data = sc.mig_data_read(chunk)
            if data:
                if corrupt and stream_bytes == 0:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                dc.mig_data_write(data)
                stream_bytes += len(data)
            if len(data) < chunk:
                break
        if phase is State.PRE_COPY:
            src.client.region_write(BAR2, 4096 * 3, b"dirty after first pass")
    sc.set_state(State.STOP)
    dc.set_state(State.STOP)


def test_full_migration_between_two_servers() -> None:
    src, dst = make_session(), make_session()
    try:
        for s in (src, dst):
            s.client.negotiate()
        src.client.region_write(BAR2, 0, os.urandom(64 * 1024))
        migrate(src, dst, 64 * 1024)
        assert src.device.digest() == dst.device.digest()
        dst.client.set_state(State.RUNNING)
        assert dst.client.region_read(BAR2, 4096 * 3, 22) == b"dirty after first pass"
    finally:
        close_session(src)
        close_session(dst)


def test_corrupted_stream_is_refused_at_resuming_to_stop() -> None:
    src, dst = make_session(), make_session()
    try:
        for s in (src, dst):
            s.client.negotiate()
        with pytest.raises(VfioUserError) as info:
            migrate(src, dst, 32 * 1024, corrupt=True)
        assert info.value.errno == errno.EINVAL
        assert dst.client.get_state() in (State.ERROR, State.RESUMING)
        src.client.set_state(State.RUNNING)  # the source recovers
        assert src.client.get_state() == State.RUNNING
    finally:
        close_session(src)
        close_session(dst)


def test_unix_socket_path_mode_0600(tmp_path: object) -> None:
    from vfio_user_mig.simulator.device import MigDev
    from vfio_user_mig.simulator.server.core import ServerCore
    from vfio_user_mig.simulator.server.io import UnixServer

    path = os.path.join(str(tmp_path), "s.sock")
    device = MigDev(mem_size=1 << 16)
    server = UnixServer(ServerCore(device), path, max_connections=1).start()
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600
        from vfio_user_mig.simulator.client.api import Client

        client = Client(connect_unix(path), timeout=5)
        assert client.negotiate().minor == 2
        client.close()
    finally:
        server.stop()
        device.close()


def test_legality_table_matches_live_server() -> None:
    from vfio_user_mig.model import VFIO_USER_CAPS
    from vfio_user_mig.protocol.gating import legality_table
    from vfio_user_mig.simulator.server.legality_probe import make_probe

    probe = make_probe(VFIO_USER_CAPS)
    table = legality_table(VFIO_USER_CAPS)
    mismatches = {cell: (want, probe(*cell)) for cell, want in table.items()
                  if probe(*cell) != want}
    assert not mismatches
    assert len(table) == 90
    assert wire.Command.MIG_DATA_WRITE in {c for (_, c) in table}


def test_a_failed_cleanup_after_a_client_costs_no_later_client(tmp_path: Path) -> None:
    """The cleanup after a connection raises (a planted bug at its end): the server logs it
    and serves the next clients, where it used to stop listening."""
    from vfio_user_mig.simulator.client.api import Client
    from vfio_user_mig.simulator.server.hosting import host_device
    from vfio_user_mig.simulator.server.io import UnixServer

    hosted = host_device("migdev", mem_size=1 << 16)
    real = hosted.core.connection_lost
    calls: list[int] = []

    def failing_once() -> None:
        calls.append(1)
        real()
        if len(calls) == 1:
            raise RuntimeError("planted: a bug at the end of the cleanup")

    hosted.core.connection_lost = failing_once  # type: ignore[method-assign]
    path = str(tmp_path / "s.sock")
    server = UnixServer(hosted.core, path).start()
    try:
        for served in (1, 2):
            with connect_unix(path, 5) as sock:
                Client(sock, timeout=5).negotiate()
            deadline = time.monotonic() + 5
            while len(calls) < served and time.monotonic() < deadline:
                time.sleep(0.01)
        with connect_unix(path, 5) as sock:
            client = Client(sock, timeout=5)
            client.negotiate()
            assert client.get_state() == State.RUNNING
    finally:
        server.stop()
        hosted.close()
    assert len(calls) >= 2
