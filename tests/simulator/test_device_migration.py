"""migdev save/restore: PRE_COPY with a guest writing through mmap, STOP_COPY, RESUMING checks."""

from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import random
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfio_user_mig.model.errors import ArcActionError
from vfio_user_mig.model.states import MigrationCaps, State
from vfio_user_mig.simulator.device import DeviceError, MigDev, PciRegion
from vfio_user_mig.simulator.device.config import Command, Off
from vfio_user_mig.simulator.device.regs import Reg
from vfio_user_mig.simulator.device.stream import (
    MAX_RUN_PAGES,
    PAGES_PREFIX,
    RECORD_HEADER,
    RecordType,
)

MEM = 256 << 10
S = State


def run(dev: MigDev, *path: State) -> None:
    for src, dst in itertools.pairwise(path):
        dev.on_arc(src, dst)


def drain(dev: MigDev, sizes: Iterator[int]) -> list[bytes]:
    """Read until a short read (PRE_COPY: caught up; STOP_COPY: end)."""
    out = []
    while True:
        size = next(sizes)
        data = dev.mig_data_read(size)
        out.append(data)
        if len(data) < size:
            return out


def personalise(dev: MigDev, rng: random.Random) -> None:
    dev.region_write(PciRegion.BAR0, Reg.SCRATCH, rng.randbytes(8), 0.0)
    dev.region_write(PciRegion.BAR0, Reg.TIMER_DEADLINE_US, (10**9).to_bytes(8, "little"), 0.0)
    dev.region_write(PciRegion.CONFIG, Off.COMMAND, Command.BUS_MASTER.to_bytes(2, "little"), 0)
    dev.region_write(PciRegion.CONFIG, Off.MSI_ADDRESS, rng.randbytes(4), 0.0)
    dev.region_write(PciRegion.BAR2, rng.randrange(MEM - 100), rng.randbytes(100), 0.0)


def save(src: MigDev, rng: random.Random, rounds: int, sizes: Iterator[int]) -> list[bytes]:
    guest = mmap.mmap(src.memory_fd, src.mem_size)
    try:
        guest[:] = rng.randbytes(src.mem_size)
        run(src, S.RUNNING, S.PRE_COPY)
        chunks: list[bytes] = []
        for _ in range(rounds):
            chunks += drain(src, sizes)
            for _ in range(rng.randrange(4)):  # the guest keeps running and dirtying
                at = rng.randrange(src.mem_size - 64)
                guest[at : at + 64] = rng.randbytes(64)
            if rng.random() < 0.3:
                src.region_write(PciRegion.BAR2, rng.randrange(MEM - 8), b"regwrite", 0.0)
        run(src, S.PRE_COPY, S.STOP_COPY)
        chunks += drain(src, sizes)
        assert src.mig_data_read(4096) == b""  # later reads return nothing
        run(src, S.STOP_COPY, S.STOP)
        return chunks
    finally:
        guest.close()


def restore(dst: MigDev, stream: bytes, sizes: Iterator[int]) -> None:
    run(dst, S.RUNNING, S.STOP, S.RESUMING)
    pos = 0
    while pos < len(stream):
        n = next(sizes)
        dst.mig_data_write(stream[pos : pos + n])
        pos += n
    dst.on_arc(S.RESUMING, S.STOP)


def sizes_from(values: list[int]) -> Iterator[int]:
    while True:
        yield from values


@pytest.fixture
def pair() -> Iterator[tuple[MigDev, MigDev]]:
    src, dst = MigDev(mem_size=MEM), MigDev(mem_size=MEM)
    yield src, dst
    src.close()
    dst.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    rounds=st.integers(0, 4),
    read_sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=5),
    write_sizes=st.lists(st.integers(1, 70000), min_size=1, max_size=5),
)
def test_save_restore_roundtrip(
    seed: int, rounds: int, read_sizes: list[int], write_sizes: list[int]
) -> None:
    rng = random.Random(seed)
    src, dst = MigDev(mem_size=MEM), MigDev(mem_size=MEM)
    try:
        personalise(src, rng)
        stream = b"".join(save(src, rng, rounds, sizes_from(read_sizes)))
        assert src.digest() != dst.digest()
        restore(dst, stream, sizes_from(write_sizes))
        assert dst.mig_state is S.STOP
        assert dst.digest() == src.digest()
        for index, size in ((PciRegion.BAR2, MEM), (PciRegion.CONFIG, 256), (PciRegion.BAR0, 0x50)):
            assert dst.region_read(index, 0, size, 0.0) == src.region_read(index, 0, size, 0.0)
    finally:
        src.close()
        dst.close()


def test_stop_copy_without_pre_copy_and_default_size() -> None:
    src, dst = MigDev(), MigDev()
    try:
        src.region_write(PciRegion.BAR2, src.mem_size - 5, b"last!", 0.0)
        run(src, S.RUNNING, S.STOP, S.STOP_COPY)
        stream = b"".join(drain(src, sizes_from([1 << 20])))
        restore(dst, stream, sizes_from([1 << 20]))
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def test_pre_copy_reads_short_when_caught_up_and_sees_mmap_writes(
    pair: tuple[MigDev, MigDev],
) -> None:
    src, _ = pair
    run(src, S.RUNNING, S.PRE_COPY)
    first = drain(src, sizes_from([4096]))
    assert sum(map(len, first)) > MEM
    assert src.mig_data_read(4096) == b""  # caught up for now: nothing changed
    guest = mmap.mmap(src.memory_fd, MEM)
    guest[MEM - 1] = 0x5A  # the device does not see this write happen...
    guest.close()
    more = src.mig_data_read(1 << 20)  # ...but finds it at the next pass
    assert 0 < len(more) < 1 << 20 and more.endswith(b"\x5a")
    assert src.mig_data_read(1 << 20) == b""
    run(src, S.PRE_COPY, S.RUNNING)  # ends the session
    with pytest.raises(DeviceError):
        src.mig_data_read(10)


def test_stream_buffers_at_most_one_record() -> None:
    src, dst = MigDev(), MigDev()
    try:
        run(src, S.RUNNING, S.PRE_COPY)
        run(dst, S.RUNNING, S.STOP, S.RESUMING)
        session, decoder = src.save_session, dst.restore_decoder
        assert session is not None and decoder is not None
        read = 256 << 10
        tracemalloc.start()
        try:
            for _ in range(2):
                while len(chunk := src.mig_data_read(read)) == read:
                    dst.mig_data_write(chunk)
                dst.mig_data_write(chunk)
                if src.mig_state is S.PRE_COPY:
                    run(src, S.PRE_COPY, S.STOP_COPY)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # 16 MiB went through in 256 KiB reads. Alive at once: the previous chunk, the read
        # buffer and its copy, a record or two: a few reads' worth, never the stream.
        assert peak < 6 * read
        record = RECORD_HEADER.size + PAGES_PREFIX.size + MAX_RUN_PAGES * (8 + 4096)
        assert session.encoder.peak == record
        assert 0 < decoder.peak <= 4096  # a page split across writes, never a whole record
        run(src, S.STOP_COPY, S.STOP)
        dst.on_arc(S.RESUMING, S.STOP)
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def valid_stream(src: MigDev) -> bytes:
    rng = random.Random(7)
    personalise(src, rng)
    return b"".join(save(src, rng, 1, sizes_from([10000])))


def records(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        length = RECORD_HEADER.unpack_from(stream, pos)[4]
        out.append(stream[pos : pos + RECORD_HEADER.size + length])
        pos += RECORD_HEADER.size + length
    return out


def refused(dst: MigDev, stream: bytes) -> ArcActionError:
    fresh = MigDev(mem_size=MEM)
    cleared = fresh.digest()
    fresh.close()
    run(dst, S.RUNNING, S.STOP, S.RESUMING)
    try:
        dst.mig_data_write(stream)
    except DeviceError as exc:  # detected early: the write fails...
        assert exc.errno == errno.EINVAL
    with pytest.raises(ArcActionError) as info:  # ...and so does RESUMING -> STOP
        dst.on_arc(S.RESUMING, S.STOP)
    assert info.value.errno == errno.EINVAL and info.value.broken
    assert dst.mig_state is S.ERROR and dst.digest() == cleared  # defined: cleared
    with pytest.raises(DeviceError):
        dst.mig_data_write(b"x")
    dst.reset()
    assert dst.mig_state is S.RUNNING
    return info.value


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_bit_flip_refused(pair: tuple[MigDev, MigDev], where: float, bit: int) -> None:
    src, dst = pair
    stream = bytearray(valid_stream(src))
    stream[int(where * len(stream))] ^= 1 << bit
    refused(dst, bytes(stream))
    src.reset()


def test_truncated_reordered_dropped_junk_refused(pair: tuple[MigDev, MigDev]) -> None:
    src, dst = pair
    stream = valid_stream(src)
    recs = records(stream)
    assert RecordType(RECORD_HEADER.unpack_from(recs[-1])[2]) is RecordType.END
    cases = {
        "truncated": stream[:-1],
        "no END": b"".join(recs[:-1]),
        "header only": recs[0],
        "empty": b"",
        "reordered": b"".join([recs[0], recs[2], recs[1], *recs[3:]]),
        "dropped": b"".join([recs[0], *recs[2:]]),
        "junk": stream + b"\0" * 3,
    }
    for name, bad in cases.items():
        exc = refused(dst, bad)
        assert str(exc), name
    restore(dst, stream, sizes_from([333]))  # the same device still accepts a good stream
    assert dst.digest() == src.digest()


def test_mig_data_in_wrong_states_is_einval(pair: tuple[MigDev, MigDev]) -> None:
    dev, _ = pair
    for path in ([S.RUNNING], [S.RUNNING, S.STOP], [S.STOP, S.RESUMING]):
        run(dev, *path)
        with pytest.raises(DeviceError) as exc:
            dev.mig_data_read(16)
        assert exc.value.errno == errno.EINVAL
    dev.reset()  # leave RESUMING without a stream
    run(dev, S.RUNNING, S.PRE_COPY)
    for state_path in ([], [S.PRE_COPY, S.STOP_COPY], [S.STOP_COPY, S.STOP]):
        run(dev, *state_path)
        with pytest.raises(DeviceError) as exc:
            dev.mig_data_write(b"MGDV")
        assert exc.value.errno == errno.EINVAL
    run(dev, S.STOP, S.STOP_COPY)
    with pytest.raises(DeviceError) as exc:
        dev.mig_data_read(-1)
    assert exc.value.errno == errno.EINVAL


def test_zero_length_mig_data_read_reads_nothing_and_keeps_the_stream(
    pair: tuple[MigDev, MigDev],
) -> None:
    src, _ = pair
    run(src, S.RUNNING, S.PRE_COPY)
    assert src.mig_data_read(0) == b""  # not "caught up", not the end: nothing was read
    first = src.mig_data_read(4)
    assert first == b"MGDV"
    run(src, S.PRE_COPY, S.STOP_COPY)
    assert src.mig_data_read(0) == b""
    rest = src.mig_data_read(1 << 26)
    assert rest and src.mig_data_read(0) == b"" and src.mig_data_read(16) == b""


def test_arc_checks_and_injected_failures(pair: tuple[MigDev, MigDev]) -> None:
    dev, _ = pair
    with pytest.raises(ArcActionError) as exc:
        dev.on_arc(S.STOP, S.RUNNING)  # the device is in RUNNING
    assert exc.value.errno == errno.EINVAL and not exc.value.broken
    with pytest.raises(ArcActionError):
        dev.on_arc(S.RUNNING, S.STOP_COPY)  # not a direct arc
    with pytest.raises(ArcActionError):
        dev.on_arc(S.RUNNING, S.RUNNING_P2P)  # no P2P capability
    dev.inject_arc_failure(S.RUNNING, S.PRE_COPY, errno=errno.ENOMEM)
    with pytest.raises(ArcActionError) as exc:
        dev.on_arc(S.RUNNING, S.PRE_COPY)
    assert exc.value.errno == errno.ENOMEM and not exc.value.broken
    assert dev.mig_state is S.RUNNING and dev.save_session is None
    dev.on_arc(S.RUNNING, S.PRE_COPY)  # one-shot
    dev.inject_arc_failure(S.PRE_COPY, S.STOP_COPY, broken=True)
    dev.region_write(PciRegion.BAR2, 0, b"data", 0.0)
    with pytest.raises(ArcActionError) as exc:
        dev.on_arc(S.PRE_COPY, S.STOP_COPY)
    assert exc.value.broken and dev.mig_state is S.ERROR
    assert dev.region_read(PciRegion.BAR2, 0, 4, 0.0) == bytes(4)
    dev.reset(keep_mig_state=True)
    assert dev.mig_state is S.ERROR
    dev.reset()
    assert dev.mig_state is S.RUNNING


def test_p2p_arcs_save_and_restore() -> None:
    caps = MigrationCaps.STOP_COPY | MigrationCaps.P2P | MigrationCaps.PRE_COPY
    src, dst = MigDev(mem_size=MEM, caps=caps), MigDev(mem_size=MEM, caps=caps)
    try:
        personalise(src, random.Random(3))
        run(src, S.RUNNING, S.PRE_COPY)
        chunks = drain(src, sizes_from([50000]))
        run(src, S.PRE_COPY, S.PRE_COPY_P2P, S.STOP_COPY)
        chunks += drain(src, sizes_from([50000]))
        run(src, S.STOP_COPY, S.STOP)
        run(dst, S.RUNNING, S.RUNNING_P2P, S.STOP, S.RESUMING)
        dst.mig_data_write(b"".join(chunks))
        run(dst, S.RESUMING, S.STOP, S.RUNNING_P2P, S.RUNNING)
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def test_a_bit_flip_in_any_byte_of_a_real_stream_is_refused() -> None:
    """Format 3: every payload byte is under a record CRC or a page fingerprint (and every header
    byte under its record CRC): flip one bit of each byte of a whole one-page stream."""
    src, dst = MigDev(mem_size=4096), MigDev(mem_size=4096)
    try:
        src.region_write(PciRegion.BAR2, 100, b"payload", 0.0)
        run(src, S.RUNNING, S.STOP, S.STOP_COPY)
        stream = b"".join(drain(src, sizes_from([1 << 20])))
        run(dst, S.RUNNING, S.STOP)
        for pos in range(len(stream)):
            bad = bytearray(stream)
            bad[pos] ^= 1 << (pos % 8)
            dst.on_arc(S.STOP, S.RESUMING)
            with contextlib.suppress(DeviceError):
                dst.mig_data_write(bytes(bad))
            with pytest.raises(ArcActionError):
                dst.on_arc(S.RESUMING, S.STOP)
            dst.reset()
            run(dst, S.RUNNING, S.STOP)
        dst.on_arc(S.STOP, S.RESUMING)
        dst.mig_data_write(stream)
        dst.on_arc(S.RESUMING, S.STOP)
        assert dst.digest() == src.digest()
    finally:
        src.close()
        dst.close()


def test_pending_bytes_exact_across_a_block_boundary() -> None:
    dev = MigDev(mem_size=1 << 20)
    try:
        run(dev, S.RUNNING, S.PRE_COPY)
        drain(dev, sizes_from([1 << 20]))
        for page in (MAX_RUN_PAGES - 1, MAX_RUN_PAGES, 200):  # 63 and 64: two records
            dev.region_write(PciRegion.BAR2, page * 4096, b"\x77", 0.0)
        expected = dev.pending_bytes()
        run(dev, S.PRE_COPY, S.STOP_COPY)
        assert sum(map(len, drain(dev, sizes_from([4096])))) == expected
    finally:
        dev.close()
