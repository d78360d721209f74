"""Server rules checked against the spec and libvfio-user (docs/wire-compat.md, section
"Server behaviour: where we differ from libvfio-user and why"), one test per rule, over the
sans-IO server core with raw request bytes (the codec's own encoders would refuse some of
them)."""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator

import pytest

from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.types import ServerConfig

HDR = struct.Struct("<HHIII")
VERSION_JSON = b'{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":%d}}\0'
GET, SET, PROBE = 1 << 16, 1 << 17, 1 << 18
F_MIGRATION, F_STATE, F_LOG_START, F_LOG_STOP, F_LOG_REPORT = 1, 2, 6, 7, 8
D_NONE, D_BOOL, D_EVENTFD, A_MASK, A_UNMASK, A_TRIGGER = 1, 2, 4, 8, 16, 32
REPLY, ERROR = 0x1, 0x20


class Session:
    """A negotiated lvu-sample core; :meth:`ask` returns (flags, errno, payload)."""

    def __init__(self, hosted: HostedDevice) -> None:
        self.hosted = hosted
        self.core: ServerCore = hosted.core
        self._id = 0

    def ask(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> tuple[
            int, int, bytes]:
        self._id += 1
        # the core owns what it receives (as a server owns SCM_RIGHTS copies): give it dups
        self.core.receive_data(HDR.pack(self._id, cmd, 16 + len(payload), 0, 0) + payload,
                               [os.dup(fd) for fd in fds])
        event = self.core.next_event(0.0)
        assert event is not None
        (parts, _fds), = self.core.data_to_send()
        raw = b"".join(bytes(p) for p in parts)
        msg_id, rcmd, size, flags, err = HDR.unpack_from(raw)
        assert (msg_id, rcmd, size) == (self._id, cmd, len(raw))
        return flags, err, raw[16:]

    def errno_of(self, cmd: int, payload: bytes = b"", fds: tuple[int, ...] = ()) -> int:
        flags, err, _ = self.ask(cmd, payload, fds)
        assert bool(flags & ERROR) == bool(err)
        return err

    def feature(self, flags: int, data: bytes = b"", argsz: int | None = None) -> tuple[
            int, int, bytes]:
        return self.ask(16, struct.pack("<II", 8 + len(data) if argsz is None else argsz,
                                        flags) + data)


def _session(xfer: int = 1 << 20, **config: bool) -> Iterator[Session]:
    hosted = host_device("lvu-sample", config=ServerConfig(**config))
    s = Session(hosted)
    _flags, err, _ = s.ask(1, struct.pack("<HH", 0, 2) + VERSION_JSON % xfer)
    assert err == 0
    try:
        yield s
        assert not s.core.internal_errors
    finally:
        hosted.close()


@pytest.fixture
def s() -> Iterator[Session]:
    yield from _session()


def _map(s: Session, iova: int, size: int, fd: bool = True, flags: int = 3) -> int:
    fds: tuple[int, ...] = ()
    if fd:
        mfd = os.memfd_create("t")
        os.ftruncate(mfd, size)
        fds = (mfd,)
    try:
        return s.errno_of(2, struct.pack("<IIQQQ", 32, flags, 0, iova, size), fds)
    finally:
        for f in fds:
            os.close(f)


def test_probe_reply_is_the_request_payload(s: Session) -> None:
    """PROTOCOL.md section 3: a PROBE reply echoes the request, data included."""
    request = struct.pack("<II", 16, PROBE | GET | F_MIGRATION) + b"\x01" * 8
    flags, err, payload = s.ask(16, request)
    assert (flags, err, payload) == (REPLY, 0, request)


def test_set_reply_is_the_request_payload(s: Session) -> None:
    """PROTOCOL.md section 3: a SET reply echoes the request, its argsz included."""
    request = struct.pack("<IIII", 64, SET | F_STATE, 1, 0)
    assert s.ask(16, request) == (REPLY, 0, request)


@pytest.mark.parametrize(("feature", "argsz"), [(F_MIGRATION, 15), (F_STATE, 8)])
def test_get_whose_reply_exceeds_argsz_is_einval(s: Session, feature: int, argsz: int) -> None:
    """vfio-user.rst: argsz is the largest reply; libvfio-user refuses with EINVAL."""
    assert s.feature(GET | feature, argsz=argsz)[1] == errno.EINVAL
    assert s.feature(GET | feature, argsz=16)[1] == 0


def test_report_argsz_and_length_checked_before_clearing(s: Session) -> None:
    """libvfio-user's handle_dma_device_feature_get: length < page_size and a too small argsz
    are EINVAL; a range not all DMA-mapped is ENOENT (dma_addr_to_sgl)."""
    assert _map(s, 0, 0x1000) == 0
    assert s.feature(SET | F_LOG_START, struct.pack("<QII", 4096, 0, 0))[1] == 0
    report = struct.pack("<QQQ", 0, 0x1000, 4096)
    assert s.feature(GET | F_LOG_REPORT, report, argsz=39)[1] == errno.EINVAL
    assert s.feature(GET | F_LOG_REPORT, struct.pack("<QQQ", 0, 0x1000, 8192),
                     argsz=64)[1] == errno.EINVAL
    _flags, err, payload = s.feature(GET | F_LOG_REPORT, report, argsz=40)
    assert (err, len(payload)) == (0, 40)
    unmapped = struct.pack("<QQQ", 0x10000, 0x1000, 4096)
    assert s.feature(GET | F_LOG_REPORT, unmapped, argsz=40)[1] == errno.ENOENT


def test_unknown_feature_is_einval(s: Session) -> None:
    """libvfio-user: an unsupported feature is EINVAL (the spec names no errno)."""
    for flags in (GET | 3, GET | 9, PROBE | 0x55, SET | 0x55):
        assert s.feature(flags, b"\0" * 8, argsz=16)[1] == errno.EINVAL


@pytest.mark.parametrize("cmd", [14, 99, 0xFFFF])
def test_unknown_command_is_einval(s: Session, cmd: int) -> None:
    """libvfio-user's handle_request: an unknown (or the retired 14) command is EINVAL."""
    assert s.ask(cmd, b"\0" * 8) == (REPLY | ERROR, errno.EINVAL, b"")


@pytest.mark.parametrize(
    ("flags", "index", "start", "count", "data", "nfds"),
    [
        (D_EVENTFD | A_TRIGGER, 0, 0, 0, b"", 0),  # count 0 only with TRIGGER + NONE
        (D_BOOL | A_TRIGGER, 0, 0, 0, b"", 0),
        (D_NONE | A_MASK, 0, 0, 0, b"", 0),
        (D_NONE | A_TRIGGER, 0, 1, 0, b"", 0),  # start past the vectors
        (D_NONE | A_TRIGGER, 1, 0, 0, b"", 0),  # MSI has no vector: even count 0
        (D_EVENTFD | A_TRIGGER, 0, 0, 2, b"", 2),  # range past the count
        (D_NONE | A_MASK, 0, 0, 1, b"", 0),  # INTx here is not MASKABLE
        (D_NONE | A_UNMASK, 0, 0, 1, b"", 0),
        (D_NONE | A_MASK, 3, 0, 1, b"", 0),  # ERR: trigger only
        (D_NONE | A_TRIGGER, 0, 0, 1, b"", 1),  # fds without DATA_EVENTFD
        (D_NONE | D_BOOL | A_TRIGGER, 0, 0, 1, b"\1", 0),  # two data types
        (D_NONE | A_TRIGGER | A_MASK, 0, 0, 1, b"", 0),  # two actions
        (D_NONE | A_TRIGGER | 0x100, 0, 0, 1, b"", 0),  # unknown bit
        (D_NONE | A_TRIGGER, 5, 0, 0, b"", 0),  # no such index
    ],
)
def test_set_irqs_validated_as_the_kernel_does(
    s: Session, flags: int, index: int, start: int, count: int, data: bytes, nfds: int
) -> None:
    """vfio_set_irqs_validate_and_prepare and libvfio-user's device_set_irqs_validate."""
    fds = tuple(os.eventfd(0) for _ in range(nfds))
    payload = struct.pack("<IIIII", 20 + len(data), flags, index, start, count) + data
    assert s.errno_of(8, payload, fds) == errno.EINVAL
    for fd in fds:
        os.close(fd)
    assert not s.core.irqs.configured()


def test_set_irqs_eventfd_without_fds_disables(s: Session) -> None:
    """libvfio-user: DATA_EVENTFD with no fds disables the range; DATA_NONE triggers."""
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        assert s.errno_of(8, struct.pack("<IIIII", 20, D_EVENTFD | A_TRIGGER, 0, 0, 1),
                          (efd,)) == 0
        assert s.errno_of(8, struct.pack("<IIIII", 20, D_NONE | A_TRIGGER, 0, 0, 1)) == 0
        assert s.errno_of(8, struct.pack("<IIIIIB", 21, D_BOOL | A_TRIGGER, 0, 0, 1, 1)) == 0
        assert os.eventfd_read(efd) == 2
        assert s.errno_of(8, struct.pack("<IIIII", 20, D_EVENTFD | A_TRIGGER, 0, 0, 1)) == 0
        assert not s.core.irqs.configured()
    finally:
        os.close(efd)


def test_mig_data_read_bounded_by_client_limit() -> None:
    """PROTOCOL.md section 4: the reply goes to the client, so its max_data_xfer_size (from
    VERSION) bounds the size (libvfio-user's handle_mig_data_read)."""
    for s in _session(xfer=4096):
        assert s.feature(SET | F_STATE, struct.pack("<II", 6, 0))[1] == 0
        assert s.errno_of(17, struct.pack("<II", 8 + 4097, 4097)) == errno.EINVAL
        _flags, err, payload = s.ask(17, struct.pack("<II", 8 + 4096, 4096))
        assert (err, len(payload)) == (0, 8 + 4096)


def test_mig_data_read_of_zero_bytes(s: Session) -> None:
    """libvfio-user: a 0-byte read is answered with size 0 in a saving state."""
    assert s.feature(SET | F_STATE, struct.pack("<II", 6, 0))[1] == 0
    assert s.ask(17, struct.pack("<II", 8, 0)) == (REPLY, 0, struct.pack("<II", 8, 0))


def test_second_log_start(s: Session) -> None:
    """libvfio-user: a second DMA_LOGGING_START with the same page size succeeds, another
    page size is EINVAL (the spec is silent)."""
    assert _map(s, 0, 0x1000) == 0
    start = struct.pack("<QII", 4096, 0, 0)
    assert s.feature(SET | F_LOG_START, start)[1] == 0
    assert s.feature(SET | F_LOG_START, start)[1] == 0
    assert s.feature(SET | F_LOG_START, struct.pack("<QII", 8192, 0, 0))[1] == errno.EINVAL


def test_log_stop_without_data(s: Session) -> None:
    """The kernel's DMA_LOGGING_STOP carries no data; libvfio-user accepts none."""
    request = struct.pack("<II", 8, SET | F_LOG_STOP)
    assert s.ask(16, request) == (REPLY, 0, request)


@pytest.mark.parametrize("region", [0, 1, 2, 7, 8])
def test_zero_count_access_same_on_every_region(s: Session, region: int) -> None:
    """libvfio-user's handle_region_access: count 0 is validated (index, bounds) and answered
    header-only without touching the device, whatever the region (BAR0's 8-byte rule too)."""
    for cmd in (9, 10):
        assert s.ask(cmd, struct.pack("<QII", 0, region, 0)) == (REPLY, 0, b"")
    assert s.errno_of(9, struct.pack("<QII", 0x5000, region, 0)) == errno.EINVAL
    assert s.errno_of(9, struct.pack("<QII", 0, 9, 0)) == errno.EINVAL


def test_zero_count_access_strict_spec_echoes() -> None:
    """docs/wire-compat.md row 5: strict_spec sends the 16-byte echo instead."""
    for s in _session(strict_spec=True):
        request = struct.pack("<QII", 8, 1, 0)
        assert s.ask(9, request) == (REPLY, 0, request)


def test_region_access_refused_by_device_echoes_prepared_reply(s: Session) -> None:
    """libvfio-user: a device-refused access replies with the reply it had built."""
    assert s.ask(9, struct.pack("<QII", 0, 0, 4)) == (
        REPLY | ERROR, errno.EINVAL, struct.pack("<QII", 0, 0, 4) + bytes(4))
    assert s.ask(10, struct.pack("<QII", 0x3000, 1, 4) + b"abcd") == (
        REPLY | ERROR, errno.EINVAL, struct.pack("<QII", 0x3000, 1, 4))


def test_bar1_size_is_a_power_of_two(s: Session) -> None:
    """PCI: a BAR's size is a power of two (libvfio-user refuses 0x3000): BAR1 is 0x4000."""
    _flags, err, payload = s.ask(5, struct.pack("<IIIIQQ", 32, 0, 1, 0, 0, 0))
    assert err == 0 and struct.unpack_from("<Q", payload, 16)[0] == 0x4000


@pytest.mark.parametrize(("argsz", "flags", "index", "count"),
                         [(16, 1, 0, 0), (16, 0, 0, 1), (16, 0, 2, 0), (0x200000, 0, 0, 0)])
def test_region_io_fds_validation(s: Session, argsz: int, flags: int, index: int,
                                  count: int) -> None:
    """libvfio-user's handle_device_get_region_io_fds: flags and count 0, a region with access
    flags, argsz within max_data_xfer_size."""
    assert s.errno_of(6, struct.pack("<IIII", argsz, flags, index, count)) == errno.EINVAL
    assert s.errno_of(6, struct.pack("<IIII", 16, 0, 0, 0)) == 0


def test_dma_map_fd_mode_flags_need_an_fd(s: Session) -> None:
    """libvfio-user's handle_dma_map: MMAP (4) or FILE_IO (8) without an fd is EINVAL."""
    assert _map(s, 0, 0x1000, fd=False, flags=3 | 4) == errno.EINVAL
    assert _map(s, 0, 0x1000, fd=False, flags=3 | 8) == errno.EINVAL
    assert _map(s, 0, 0x1000, fd=True, flags=3 | 4) == 0


TAIL = b"\xaa" * 8
#: (title, command, payload) of requests with a fixed end, each answered without error here.
FIXED_REQUESTS = [
    ("GET_INFO", 4, struct.pack("<IIII", 16, 0, 0, 0)),
    ("GET_REGION_INFO", 5, struct.pack("<IIIIQQ", 32, 0, 0, 0, 0, 0)),
    ("GET_IRQ_INFO", 7, struct.pack("<IIII", 16, 0, 0, 0)),
    ("SET_IRQS DATA_NONE", 8, struct.pack("<IIIII", 20, D_NONE | A_TRIGGER, 0, 0, 0)),
    ("DMA_MAP", 2, struct.pack("<IIQQQ", 32, 3, 0, 0x10000000, 0x1000)),
    ("REGION_READ", 9, struct.pack("<QII", 0, 1, 4)),
    ("DEVICE_RESET", 13, b""),
]


@pytest.mark.parametrize("title,cmd,payload", FIXED_REQUESTS, ids=[t for t, _, _ in
                                                                    FIXED_REQUESTS])
def test_trailing_bytes_after_a_fixed_payload_are_ignored(title: str, cmd: int,
                                                          payload: bytes) -> None:
    """libvfio-user reads the struct and ignores what follows (the spec is silent): the reply
    is the one to the request without the extra bytes; with strict_spec they are EINVAL."""
    plain = _session()
    lenient = _session()
    strict = _session(strict_spec=True)
    try:
        expected = next(plain).ask(cmd, payload)
        assert expected[1] == 0, title
        assert next(lenient).ask(cmd, payload + TAIL) == expected
        assert next(strict).errno_of(cmd, payload + TAIL) == errno.EINVAL
    finally:
        for gen in (plain, lenient, strict):
            gen.close()


def test_trailing_bytes_after_dma_unmap_and_mig_data(s: Session) -> None:
    _map(s, 0x10000000, 0x1000, fd=False)
    unmap = struct.pack("<IIQQ", 24, 0, 0x10000000, 0x1000)
    _flags, err, reply = s.ask(3, unmap + TAIL)
    assert err == 0 and reply == unmap
    assert s.feature(SET | F_STATE, struct.pack("<II", 1, 0))[1] == 0  # STOP
    assert s.feature(SET | F_STATE, struct.pack("<II", 4, 0))[1] == 0  # RESUMING
    # MIG_DATA_WRITE's end is its size field: 0 and 4 data bytes, each followed by 8 more
    assert s.ask(18, struct.pack("<II", 8, 0) + TAIL) == s.ask(18, struct.pack("<II", 8, 0))
    assert s.errno_of(18, struct.pack("<II", 12, 4) + b"abcd" + TAIL) == 0


def test_a_bitmap_unmap_or_eventfd_set_irqs_is_never_trimmed(s: Session) -> None:
    """Payloads whose size is variable by nature have no 'after': still EINVAL."""
    bitmap_unmap = struct.pack("<IIQQ", 24, 1, 0x10000000, 0x1000)
    assert s.errno_of(3, bitmap_unmap + TAIL) == errno.EINVAL
    eventfd_none = struct.pack("<IIIII", 20, D_EVENTFD | A_TRIGGER, 0, 0, 1)
    assert s.errno_of(8, eventfd_none + TAIL) == errno.EINVAL


def test_mig_device_state_set_with_argsz_beyond_the_struct(s: Session) -> None:
    """The kernel takes an argsz above the struct's size and libvfio-user echoes every byte
    within argsz; bytes beyond argsz are EINVAL on both."""
    payload = struct.pack("<IIII", 24, SET | F_STATE, 1, 0) + TAIL
    assert s.ask(16, payload) == (REPLY, 0, payload)
    beyond = struct.pack("<IIII", 16, SET | F_STATE, 1, 0) + TAIL
    assert s.errno_of(16, beyond) == errno.EINVAL
