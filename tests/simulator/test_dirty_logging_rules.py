"""Dirty logging and DMA_MAP/UNMAP rules of our server as the proposal and the kernel write them
(docs/wire-compat.md, "Server behaviour"): the DMA_LOGGING_START page-size hint and the size
selected in the reply, ranges aligned to the hint, DMA_UNMAP with GET_DIRTY_BITMAP returning the
dirty pages, DMA_MAP flags. Raw request bytes over the sans-IO core."""

from __future__ import annotations

import errno
import struct
from collections.abc import Iterator

import pytest

from tests.simulator.test_conformance_rules import (
    ERROR,
    F_LOG_REPORT,
    F_LOG_START,
    GET,
    REPLY,
    SET,
    Session,
    _map,
    _session,
)

UNMAP, GET_DIRTY_BITMAP = 3, 1
MAP_AT, MAP_SIZE = 0x40000, 0x10000


@pytest.fixture
def s() -> Iterator[Session]:
    yield from _session()


@pytest.fixture
def strict() -> Iterator[Session]:
    yield from _session(strict_spec=True)


def _start(s: Session, page_size: int, *ranges: tuple[int, int]) -> tuple[int, int, bytes]:
    data = struct.pack("<QII", page_size, len(ranges), 0)
    data += b"".join(struct.pack("<QQ", a, n) for a, n in ranges)
    return s.feature(SET | F_LOG_START, data)


@pytest.mark.parametrize(("hint", "selected"), [(512, 4096), (4096, 4096), (0x3000, 0x2000),
                                                (1 << 16, 1 << 16)])
def test_start_reply_carries_the_selected_page_size(s: Session, hint: int, selected: int) -> None:
    """vfio-user.rst DMA_LOGGING_START: "On output the device will return the page size it
    selected"; the rest of the reply is the request echoed (argsz, flags, ranges)."""
    flags, err, payload = _start(s, hint, (0, 0x10000))
    assert (flags, err) == (REPLY, 0)
    request = struct.pack("<IIQII", 40, SET | F_LOG_START, hint, 1, 0) + struct.pack(
        "<QQ", 0, 0x10000)
    assert payload == request[:8] + struct.pack("<Q", selected) + request[16:]


def test_start_page_size_zero_is_einval(s: Session) -> None:
    assert _start(s, 0)[1] == errno.EINVAL


@pytest.mark.parametrize("rng", [(0x800, 0x1000), (0, 0x1800)])
def test_start_ranges_not_aligned_to_page_size_are_einval(s: Session, rng: tuple[int, int]
                                                          ) -> None:
    """Kernel vfio_ioctl_device_feature_logging_start: IS_ALIGNED(iova and length) or EINVAL;
    the error reply echoes the request (docs/wire-compat.md row 2)."""
    flags, err, payload = _start(s, 4096, rng)
    assert (flags & ERROR, err) == (ERROR, errno.EINVAL) and len(payload) == 8 + 32
    assert _start(s, 4096, (0, 0x2000))[1] == 0  # nothing was started: this one succeeds


def _unmap_bitmap(s: Session, addr: int, size: int, pgsize: int,
                  bitmap_size: int | None = None) -> tuple[int, int, bytes]:
    nbytes = -(-(size // pgsize) // 64) * 8 if bitmap_size is None else bitmap_size
    return s.ask(UNMAP, struct.pack("<IIQQQQ", 40 + nbytes, GET_DIRTY_BITMAP, addr, size,
                                    pgsize, nbytes))


def test_unmap_with_dirty_bitmap_returns_the_pages_dirtied(s: Session) -> None:
    """libvfio-user's handle_dma_unmap: the reply is the 24-byte echo, the 16-byte bitmap
    header and the bitmap; the region is gone afterwards, and the pages are not reported
    twice (read-and-clear)."""
    assert _map(s, MAP_AT, MAP_SIZE) == 0
    assert _start(s, 4096)[1] == 0
    s.core.device.dirty_log.mark(MAP_AT + 0x1000, 1)  # as the server's DMA path does
    s.core.device.dirty_log.mark(MAP_AT + 0xF000, 0x1000)
    flags, err, payload = _unmap_bitmap(s, MAP_AT, MAP_SIZE, 4096)
    assert (flags, err) == (REPLY, 0)
    assert payload[:24] == struct.pack("<IIQQ", 48, GET_DIRTY_BITMAP, MAP_AT, MAP_SIZE)
    assert payload[24:40] == struct.pack("<QQ", 4096, 8)
    assert int.from_bytes(payload[40:], "little") == (1 << 1) | (1 << 15)
    assert s.errno_of(UNMAP, struct.pack("<IIQQ", 24, 0, MAP_AT, MAP_SIZE)) == errno.ENOENT
    # the pages were cleared: a map at the same place starts clean
    assert _map(s, MAP_AT, MAP_SIZE) == 0
    report = struct.pack("<QQQ", MAP_AT, MAP_SIZE, 4096)
    flags, err, payload = s.feature(GET | F_LOG_REPORT, report, argsz=8 + 24 + 8)
    assert err == 0 and payload[32:] == bytes(8)


@pytest.mark.parametrize(("title", "pgsize", "size", "bitmap_size", "logging", "want"), [
    ("logging off", 4096, MAP_SIZE, None, False, errno.EINVAL),
    ("page size not a power of two", 3000, MAP_SIZE, 8, True, errno.EINVAL),
    ("page size below 4 KiB", 2048, MAP_SIZE, None, True, errno.EINVAL),
    ("wrong bitmap size", 4096, MAP_SIZE, 16, True, errno.EINVAL),
    ("part of the region", 4096, MAP_SIZE // 2, None, True, errno.ENOENT),
])
def test_unmap_with_dirty_bitmap_refusals_keep_the_region(
        s: Session, title: str, pgsize: int, size: int, bitmap_size: int | None,
        logging: bool, want: int) -> None:
    assert _map(s, MAP_AT, MAP_SIZE) == 0
    if logging:
        assert _start(s, 4096)[1] == 0
        s.core.device.dirty_log.mark(MAP_AT, 1)
    assert _unmap_bitmap(s, MAP_AT, size, pgsize, bitmap_size)[1] == want, title
    assert len(s.core.dma) == 1  # still mapped
    if logging:  # and its dirty page not cleared
        assert s.core.device.dirty_log.report(MAP_AT, MAP_SIZE, 4096) == [0]


def test_dma_map_without_read_or_write_is_einval(s: Session) -> None:
    """Kernel vfio_dma_do_map: no READ and no WRITE (and no VADDR) is EINVAL."""
    assert _map(s, 0, 0x1000, fd=False, flags=0) == errno.EINVAL
    assert _map(s, 0, 0x1000, fd=True, flags=4) == errno.EINVAL
    assert _map(s, 0, 0x1000, fd=False, flags=1) == 0


def test_dma_map_mmap_and_file_io_together_is_einval(s: Session) -> None:
    """libvfio-user's handle_dma_map takes MMAP, then finds FILE_IO left over: EINVAL."""
    assert _map(s, 0, 0x1000, fd=True, flags=3 | 4 | 8) == errno.EINVAL
    assert _map(s, 0, 0x1000, fd=True, flags=3 | 8) == 0


def test_dma_map_libvfio_user_bits_refused_under_strict_spec(strict: Session) -> None:
    """The spec defines flags bits 0-1; bits 2-3 are libvfio-user's (docs/wire-compat.md
    row 6): accepted by default, EINVAL with strict_spec."""
    assert _map(strict, 0, 0x1000, fd=True, flags=3 | 4) == errno.EINVAL
    assert _map(strict, 0, 0x1000, fd=True, flags=3 | 8) == errno.EINVAL
    assert _map(strict, 0, 0x1000, fd=True, flags=3) == 0


def test_start_reply_golden_bytes(s: Session) -> None:
    """docs/wire-compat.md, "DMA_LOGGING_START reply": a 512-byte hint with one range, id 7;
    the reply differs from the request in the flags (reply) and page_size (0x1000) only."""
    request = bytes.fromhex(
        "07001000380000000000000000000000" "2800000006000200" "0002000000000000"
        "0100000000000000" "0000040000000000" "0000010000000000")
    reply = bytes.fromhex(
        "07001000380000000100000000000000" "2800000006000200" "0010000000000000"
        "0100000000000000" "0000040000000000" "0000010000000000")
    s._id = 6
    flags, err, payload = s.ask(16, request[16:])
    assert struct.pack("<HHIII", 7, 16, 16 + len(payload), flags, err) + payload == reply


def test_a_client_that_leaves_takes_its_dirty_logging_with_it(s: Session) -> None:
    """Logging started by a client ends with its connection: its ranges named maps that are
    gone, and a new client's REPORT is refused as when logging was never started."""
    _map(s, MAP_AT, MAP_SIZE)
    assert _start(s, 4096, (MAP_AT, MAP_SIZE))[1] == 0
    s.core.connection_lost()
    assert not s.core.device.dirty_log.active
    _flags, err, _ = s.ask(1, struct.pack("<HH", 0, 2) + b"{}\0")  # the next client's VERSION
    assert err == 0
    _map(s, MAP_AT, MAP_SIZE)
    report = struct.pack("<QQQ", MAP_AT, MAP_SIZE, 4096)
    assert s.feature(GET | F_LOG_REPORT, report)[1] == errno.EINVAL
