"""The pre-generated-stream device of the benchmarks, and the cheaper save path's invariants."""

from __future__ import annotations

import errno
import hashlib
import itertools
import random
from collections.abc import Callable

import pytest

from tests.simulator.conftest import serve_device
from vfio_user_mig.model import State as S
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.device.memstream import MemStreamDev
from vfio_user_mig.simulator.device.stream import memory_fingerprint, page_fingerprints
from vfio_user_mig.simulator.device.tracker import FingerprintTracker


def _arcs(dev: MigDev, *states: S) -> None:
    for a, b in itertools.pairwise(states):
        dev.on_arc(a, b)


def test_pregenerated_stream_restores_into_a_migdev() -> None:
    src, dst = MemStreamDev(mem_size=1 << 20), MigDev(mem_size=1 << 20)
    try:
        _arcs(src, S.RUNNING, S.PRE_COPY)
        _arcs(dst, S.RUNNING, S.STOP, S.RESUMING)
        pre = src.mig_data_read(1 << 16)
        assert isinstance(pre, memoryview)  # zero copy
        got = [bytes(pre)]
        while len(chunk := src.mig_data_read(1 << 16)) == 1 << 16:
            got.append(bytes(chunk))
        got.append(bytes(chunk))
        assert src.mig_data_read(1 << 16) == b""  # PRE_COPY caught up before REGS
        _arcs(src, S.PRE_COPY, S.STOP_COPY)
        while chunk := src.mig_data_read(1 << 16):
            got.append(bytes(chunk))
        stream = b"".join(got)
        assert stream == src.stream
        for i in range(0, len(stream), 300_000):
            dst.mig_data_write(stream[i : i + 300_000])
        dst.on_arc(S.RESUMING, S.STOP)
        _arcs(src, S.STOP_COPY, S.STOP)
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def test_tracker_runs_find_exactly_the_changed_pages() -> None:
    dev = MigDev(mem_size=1 << 20)
    try:
        mm = dev._mm  # the device memory (test only)
        tracker = FingerprintTracker(mm, 4096)
        mm[5 * 4096] = 9
        first = list(tracker.runs(64, live=False))
        assert tracker.all_sent
        assert [(p, len(d) // 4096) for p, d, _ in first] == [(p, 64) for p in range(0, 256, 64)]
        assert all(type(d) is bytes for _, d, _ in first)  # pre-copy: copies
        assert b"".join(d for _, d, _ in first) == mm[:]
        assert tracker.memory_digest() == memory_fingerprint(page_fingerprints(mm, 4096))
        assert tracker.fingerprints(5, 1) == page_fingerprints(mm[5 * 4096 : 6 * 4096], 4096)
        assert list(tracker.runs(16, live=False)) == []
        for page in (3, 4, 63, 64, 65, 200, 255):
            mm[page * 4096 + 7] = 1
        runs = [(p, len(d) // 4096) for p, d, _ in tracker.runs(16, live=True)]
        assert runs == [(3, 2), (63, 1), (64, 2), (200, 1), (255, 1)]  # cut at blocks
        assert tracker.memory_digest() == memory_fingerprint(page_fingerprints(mm, 4096))
        assert tracker.memory_digest() == hashlib.sha256(page_fingerprints(mm, 4096)).digest()
        assert list(tracker.runs(16, live=True)) == []
        mm[64 * 4096] = 2
        mm[64 * 4096] = 0  # changed and changed back: the same content, nothing to send
        assert list(tracker.runs(16, live=True)) == []
        mm[64 * 4096 + 1] = 2
        live = list(tracker.runs(16, live=True))
        assert [(p, len(d) // 4096) for p, d, _ in live] == [(64, 1)]
        _, data, fps = live[0]
        assert isinstance(data, memoryview) and data.readonly  # stop-copy: a view of memory
        assert fps == page_fingerprints(mm[64 * 4096 : 65 * 4096], 4096)
        data.release()
        tracker.release()
    finally:
        dev.close()


def test_pre_copy_reads_are_copies_and_stop_copy_parts_views_of_memory() -> None:
    """PRE_COPY: a read is bytes of its own (memory may change while it waits to be sent,
    the page is then sent again); STOP_COPY: the page data of a read's parts are views of
    device memory (no copy)."""
    src, dst = MigDev(mem_size=1 << 20), MigDev(mem_size=1 << 20)
    try:
        src.region_write(2, 0, b"\x11" * 4096, 0.0)
        _arcs(src, S.RUNNING, S.PRE_COPY)
        _arcs(dst, S.RUNNING, S.STOP, S.RESUMING)
        first = src.mig_data_read(300_000)
        kept = bytes(first)
        src.region_write(2, 0, b"\x22" * 4096, 0.0)  # page 0 changes after it was read
        rest = []
        while len(chunk := src.mig_data_read(1 << 20)) == 1 << 20:
            rest.append(bytes(chunk))
        assert chunk.endswith(b"\x22" * 4096)  # the end of pass 1 and pass 2 (page 0 again)
        rest.append(chunk)
        assert src.mig_data_read(1 << 20) == b""  # caught up
        assert bytes(first) == kept
        src.region_write(2, 8192, b"\x33" * 4096, 0.0)
        _arcs(src, S.PRE_COPY, S.STOP_COPY)
        parts = src.mig_data_read_parts(1 << 20)
        views = [p for p in parts if isinstance(p, memoryview) and len(p) == 4096]
        assert len(views) == 1 and views[0].readonly and views[0] == b"\x33" * 4096
        rest.append(b"".join(parts))
        while chunk := src.mig_data_read(1 << 20):
            rest.append(bytes(chunk))
        del parts, views
        for part in (first, *rest):
            dst.mig_data_write(part)
        _arcs(src, S.STOP_COPY, S.STOP)
        dst.on_arc(S.RESUMING, S.STOP)
        assert dst.digest() == src.digest()
        assert dst.region_read(2, 0, 4, 0.0) == b"\x22" * 4
    finally:
        src.close()
        dst.close()


def _serve(device: MigDev, timeout_on_socket: bool = False) -> tuple[Client, Callable[[], None]]:
    return serve_device(device, socket_timeout=5.0 if timeout_on_socket else None)


@pytest.mark.parametrize("timeout_on_socket", [False, True])
@pytest.mark.parametrize("chunk", [1 << 20, 100_000, 4096])  # bulk path, odd size, generic path
def test_client_reads_the_whole_stream_bytes_and_into(chunk: int, timeout_on_socket: bool) -> None:
    device = MemStreamDev(mem_size=1 << 20)
    stream = device.stream
    client, close = _serve(device, timeout_on_socket)
    try:
        with pytest.raises(VfioUserError) as exc:  # RUNNING: an error reply, not bulk data
            client.mig_data_read(chunk)
        assert exc.value.errno == errno.EINVAL
        client.set_state(S.PRE_COPY)
        got: list[bytes] = []
        buf = bytearray(chunk)
        use_into = False
        for phase in (S.PRE_COPY, S.STOP_COPY):
            if phase is S.STOP_COPY:
                client.set_state(S.STOP_COPY)
            while True:
                if use_into:
                    n = client.mig_data_read_into(buf)
                    got.append(bytes(buf[:n]))
                else:
                    data = client.mig_data_read(chunk)
                    assert type(data) is bytes
                    n = len(data)
                    got.append(data)
                use_into = not use_into
                if n < chunk:  # the short read is padded on the wire: generic path
                    break
        assert b"".join(got) == stream
        assert client.mig_data_read(chunk) == b""
        assert client.mig_data_read_into(buf) == 0
        assert client.get_state() is S.STOP_COPY  # still in sync
    finally:
        close()


def test_migdev_stream_through_the_bulk_path_restores() -> None:
    src, close_src = _serve(MigDev(mem_size=1 << 21))
    dst, close_dst = _serve(MigDev(mem_size=1 << 21))
    try:
        src.region_write(2, 12345, b"payload")
        src.set_state(S.PRE_COPY)
        dst.set_state(S.STOP)
        dst.set_state(S.RESUMING)
        for phase in (S.PRE_COPY, S.STOP_COPY):
            if phase is S.STOP_COPY:
                src.set_state(S.STOP_COPY)
            while len(data := src.mig_data_read(1 << 20)) == 1 << 20:
                dst.mig_data_write(data)
            dst.mig_data_write(data)
        dst.set_state(S.STOP)
        assert dst.region_read(2, 12345, 7) == b"payload"
    finally:
        close_src()
        close_dst()


@pytest.mark.parametrize("seed", range(40))
def test_pages_rewritten_during_a_read_restore_exactly(seed: int) -> None:
    """Regression: a page re-taken by a new pass inside the same read must not change bytes
    already gathered (fingerprint, content)."""
    rnd = random.Random(seed)
    mem = rnd.choice([32768, 1 << 20])
    src, dst = MigDev(mem_size=mem), MigDev(mem_size=mem)
    try:
        _arcs(src, S.RUNNING, S.PRE_COPY)
        _arcs(dst, S.RUNNING, S.STOP, S.RESUMING)
        for _ in range(rnd.randint(1, 12)):
            off = rnd.randrange(mem - 8)
            src.region_write(2, off, bytes([rnd.randrange(256)]) * rnd.randint(1, 8), 0.0)
            dst.mig_data_write(src.mig_data_read(rnd.choice([7, 4096, 16384, 100_000, 1 << 20])))
        _arcs(src, S.PRE_COPY, S.STOP_COPY)
        while chunk := src.mig_data_read(rnd.choice([7, 4096, 1 << 20])):
            dst.mig_data_write(chunk)
        dst.on_arc(S.RESUMING, S.STOP)
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def test_a_gathered_reply_is_sent_as_its_parts() -> None:
    """A MIG_DATA_READ reply given as parts (wire.Gather) encodes to the same bytes as the
    joined data, padding included, without joining them: the parts themselves are in the
    message's parts."""
    from vfio_user_mig import wire

    mem = bytearray(b"\x05" * 8192)
    parts = [b"head", memoryview(mem)[:4096], b"tail"]
    gathered = wire.MigDataReadReply(wire.Gather(parts), 9000, msg_id=7)
    joined = wire.MigDataReadReply(b"".join(parts), 9000, msg_id=7)
    encoded = wire.encode_parts(gathered)
    assert any(p is parts[1] for p in encoded)
    assert b"".join(encoded) == wire.encode(joined) == wire.encode(gathered)
    assert wire.Gather(parts) == b"".join(parts) and len(wire.Gather(parts)) == 4104
    decoded = wire.decode(wire.encode(gathered))
    assert isinstance(decoded, wire.MigDataReadReply) and decoded.data == b"".join(parts)
