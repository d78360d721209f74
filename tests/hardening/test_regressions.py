"""Every finding of the hardening work (fuzzing and review), as a regression test.

F1 was found by the oracle of the fuzz target ``fuzz.targets.server_stream`` on a hand-picked
truncated seed, F2 by its plain random driver (both before atheris ran; the atheris campaigns
found nothing more); F3-F6 and F8 by review while adding the limits, F7 by the corpus replay
over a socket. docs/SECURITY.md lists them.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from fuzz.seeds import seed_messages
from fuzz.targets import server_stream
from tests.hardening.helpers import Driver, fd_closed, raw, version
from vfio_user_mig import wire
from vfio_user_mig.simulator.device.regs import Status
from vfio_user_mig.simulator.server.types import ServerConfig
from vfio_user_mig.wire import Command, IrqSetFlag

DMA_MAP_SEED = seed_messages()[10]


def test_f1_fds_of_a_partial_message_are_closed_on_disconnect() -> None:
    # The client sent an fd with the first bytes of a DMA_MAP and went away mid-message:
    # connection_lost replaced the framer and leaked the fd it held.
    assert wire.decode(DMA_MAP_SEED).command == Command.DMA_MAP
    server_stream(DMA_MAP_SEED[:20], nfds=1)
    with Driver() as d:
        fd = os.eventfd(0)
        d.core.receive_data(DMA_MAP_SEED[:20], [fd])
        assert d.core.next_event() is None
        d.core.connection_lost()
        assert fd_closed(fd)


def test_f1_fds_of_queued_messages_are_closed_on_disconnect() -> None:
    with Driver() as d:
        fd = os.eventfd(0)
        d.core.receive_data(DMA_MAP_SEED, [fd])  # whole, but never processed
        d.core.connection_lost()
        assert fd_closed(fd)


def test_f2_set_irqs_without_eventfd_data_refuses_and_closes_fds() -> None:
    # Fuzz input: SET_IRQS DATA_NONE|ACTION_TRIGGER (disable) carrying an fd. It succeeded and
    # the fd was never closed.
    finding = bytes.fromhex("06000800240000000000000000000000140000002100000000000000"
                            "0000000000000000")
    server_stream(finding, nfds=1)
    with Driver() as d:
        fd = os.eventfd(0)
        flags = int(IrqSetFlag.DATA_NONE | IrqSetFlag.ACTION_TRIGGER)
        answer = d.request(wire.IrqSet(flags, 0, 0, 0), [fd])
        assert answer.errno == errno.EINVAL and fd_closed(fd)


def test_f3_fds_sent_after_a_framing_error_are_closed() -> None:
    # After an impossible msg_size, feeding more data raised the framer's WireError out of
    # receive_data (a "server bug" in the pump) and leaked the fds that came with it.
    with Driver() as d:
        assert d.send(raw(1, Command.DEVICE_GET_INFO, size=0xFFFFFFFF)).errno == errno.E2BIG
        fd = os.eventfd(0)
        try:
            d.core.receive_data(b"x", [fd])
        except ConnectionError:
            pass
        else:
            raise AssertionError("receive_data accepted bytes on a broken stream")
        assert fd_closed(fd)


def test_f4_tiny_client_xfer_size_cannot_wrap_dma_message_ids() -> None:
    # max_data_xfer_size 1 turned one 64 KiB device DMA op into 65536 DMA_READ messages whose
    # ids (0x8000..0xFFFF) wrapped: replies were matched to the wrong chunk.
    with Driver(negotiate=False) as d:
        assert d.send(version(1)).errno == errno.EINVAL
    with Driver(ServerConfig(min_client_xfer_size=1), client_xfer=1) as d:
        d.ok(wire.DmaMap(0, 1 << 16))
        d.start_dma(1, 0, 1 << 16)
        assert d.status() & Status.FAULT and d.core.stats["dma_messages"] == 0


def test_f5_dma_write_reply_for_a_read_is_not_taken_as_data() -> None:
    with Driver() as d:
        d.ok(wire.DmaMap(0, 1 << 16))
        out = d.start_dma(1, 0, 4096)
        sent: list[Any] = [wire.decode(m) for m, _ in out]
        req = next(m for m in sent if m.command == Command.DMA_READ)
        wrong = wire.DmaWriteReply(req.addr, req.count, msg_id=req.msg_id)
        d.events(wire.encode(wrong))
        assert d.status() & Status.FAULT


def test_f6_dma_map_count_is_constant_time() -> None:
    # len(dma.mappings) copied every mapping on each DMA_MAP: 65535 maps took O(n^2).
    import time

    with Driver() as d:
        start = time.perf_counter()
        for i in range(20000):
            d.send(wire.encode(wire.DmaMap(i << 12, 4096, msg_id=i & 0x7FFF)))
        assert time.perf_counter() - start < 20


def test_f7_framing_error_reply_is_sent_before_the_connection_closes() -> None:
    # A pump that drains next_event() until it raises, then flushes, lost the E2BIG reply:
    # the core now reports "no event" until the reply was taken, and only then raises.
    with Driver() as d:
        d.core.receive_data(raw(9, Command.REGION_WRITE, size=0xFFFFFFFF))
        assert d.core.next_event() is not None
        assert d.core.next_event() is None  # the reply is still queued
        (parts, _fds), = d.core.data_to_send()
        reply: Any = wire.decode(b"".join(bytes(p) for p in parts))
        assert reply.errno == errno.E2BIG
        try:
            d.core.next_event()
        except ConnectionError:
            pass
        else:
            raise AssertionError("a broken stream must end the connection")


_SHRINK_SCRIPT = """
import os
from tests.hardening.helpers import Driver, fd_closed
from vfio_user_mig import wire
from vfio_user_mig.simulator.device.regs import DmaDir, Status
with Driver() as d:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)  # unsealed, like libvfio-user and QEMU
    os.ftruncate(fd, 1 << 16)
    assert d.request(wire.DmaMap(0, 1 << 16), [os.dup(fd)]).errno is None
    held = len(os.listdir("/proc/self/fd"))
    os.pwrite(fd, b"guest data", 0)
    os.ftruncate(fd, 0)  # the hostile client shrinks its memory under the mapping
    for direction in (DmaDir.TO_CLIENT, DmaDir.FROM_CLIENT):
        d.start_dma(int(direction), 0, 4096)
        assert d.core.stats["dma_messages"] == 0  # the fd route, not DMA_READ/WRITE messages
        status = d.status()
        assert status & Status.FAULT and not status & Status.DONE, status
    assert os.fstat(fd).st_size == 0  # the device write faulted: the file did not grow back
    assert d.request(wire.DmaUnmap(0, 1 << 16)).errno is None  # still serving
    assert len(os.listdir("/proc/self/fd")) == held - 1  # the mapping's fd was closed
    os.ftruncate(fd, 1 << 16)  # grown again: a new mapping of the same file works
    assert d.request(wire.DmaMap(0, 1 << 16), [os.dup(fd)]).errno is None
    os.pwrite(fd, b"ok", 0)
    d.start_dma(int(DmaDir.FROM_CLIENT), 0, 4096)
    assert d.status() & Status.DONE, d.status()
    d.core.connection_lost()
    assert len(os.listdir("/proc/self/fd")) == held - 1
    os.close(fd)
print("survived")
"""


def test_f8_shrinking_dma_memory_after_map_faults_the_job_not_the_server() -> None:
    # A client that truncated the memfd it mapped made the next DMA through the mapping
    # fault with SIGBUS and killed the server. DMA_MAP memory is now read and written with
    # pread/pwrite, never mmap: the job FAULTs, the server keeps serving. Run in a child so
    # that a regression shows up as a failed test (died with SIGBUS), not a dead test runner.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _SHRINK_SCRIPT], capture_output=True,
                          timeout=60, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-1500:])
    assert proc.stdout.strip().endswith(b"survived")


def test_f8_shrink_in_process_partial_range() -> None:
    # Shrunk to mid-mapping: ops below the new end still work, ops crossing it fault.
    with Driver() as d:
        fd = os.memfd_create("guest", os.MFD_CLOEXEC)
        os.ftruncate(fd, 1 << 16)
        assert d.request(wire.DmaMap(0, 1 << 16), [os.dup(fd)]).errno is None
        os.ftruncate(fd, 0x3000)
        d.start_dma(1, 0, 0x3000)
        assert d.status() & Status.DONE
        d.start_dma(1, 0x2000, 0x2000)
        assert d.status() & Status.FAULT
        d.start_dma(0, 0x2000, 0x2000)
        assert d.status() & Status.FAULT and os.fstat(fd).st_size == 0x3000
        d.start_dma(0, 0, 0x1000)
        assert d.status() & Status.DONE
        os.close(fd)


def test_f8_sealed_fd_option_still_refuses_unsealed_fds() -> None:
    import fcntl

    with Driver(ServerConfig(require_sealed_dma_fds=True)) as d:
        fd = os.memfd_create("guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(fd, 1 << 16)
        dup = os.dup(fd)
        answer = d.request(wire.DmaMap(0, 1 << 16), [dup])
        assert answer.errno == errno.EPERM and d.core.dma.mappings == () and fd_closed(dup)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK)
        assert d.request(wire.DmaMap(0, 1 << 16), [os.dup(fd)]).errno is None
        try:
            os.ftruncate(fd, 0)
        except PermissionError:
            pass
        else:
            raise AssertionError("a sealed memfd shrank")
        d.start_dma(0, 0, 4096)
        assert d.status() & Status.DONE
        os.close(fd)


def test_dma_map_refuses_fds_it_cannot_read_and_write() -> None:
    # No mmap any more: DMA_MAP itself refuses what pread/pwrite could not serve.
    with Driver() as d:
        r, w = os.pipe()
        assert d.request(wire.DmaMap(0, 4096), [r]).errno == errno.EINVAL and fd_closed(r)
        os.close(w)
        fd = os.memfd_create("guest", os.MFD_CLOEXEC)
        os.ftruncate(fd, 4096)
        path = f"/proc/self/fd/{fd}"
        ro = os.open(path, os.O_RDONLY)
        assert d.request(wire.DmaMap(0, 4096), [ro]).errno == errno.EINVAL and fd_closed(ro)
        ro = os.open(path, os.O_RDONLY)
        read_only = int(wire.DmaMapFlag.READ)
        assert d.request(wire.DmaMap(0, 4096, flags=read_only), [ro]).errno is None
        app = os.open(path, os.O_RDWR | os.O_APPEND)
        assert d.request(wire.DmaMap(0x1000, 4096), [app]).errno == errno.EINVAL
        assert fd_closed(app)
        d.start_dma(0, 0, 4096)  # device -> client on a read-only mapping
        assert d.status() & Status.FAULT
        d.core.connection_lost()
        assert fd_closed(ro)
        os.close(fd)
