"""Malformed input: a table of bytes -> (errno, field) that ``decode`` must raise."""

from __future__ import annotations

import errno

import pytest

from vfio_user_mig.wire import (
    Command,
    Header,
    RegionRead,
    WireError,
    decode,
    decode_header,
    encode,
    error_reply,
)


def u16(v: int) -> bytes:
    return v.to_bytes(2, "little")


def u32(v: int) -> bytes:
    return v.to_bytes(4, "little")


def u64(v: int) -> bytes:
    return v.to_bytes(8, "little")


def msg(cmd: int, payload: bytes, flags: int = 0, error: int = 0, size: int | None = None) -> bytes:
    size = 16 + len(payload) if size is None else size
    return u16(1) + u16(cmd) + u32(size) + u32(flags) + u32(error) + payload


R = 1  # reply type
EINVAL, E2BIG, ENOTSUP = errno.EINVAL, errno.E2BIG, errno.ENOTSUP
STATE_SET = u32(16) + u32(0x20002)
RI = u32(80) + u32(0xF) + u32(1)  # region info argsz, flags, index

BAD: list[tuple[str, bytes, int, str]] = [
    ("empty", b"", EINVAL, "header"),
    ("short-header", bytes(15), EINVAL, "header"),
    ("msg-size-below-16", msg(13, b"", size=15), EINVAL, "header.msg_size"),
    ("msg-size-above-limit", msg(10, b"", size=(1 << 20) + 33), E2BIG, "header.msg_size"),
    ("msg-size-not-buffer", msg(13, b"", size=17), EINVAL, "header.msg_size"),
    ("trailing-bytes", msg(13, b"") + b"x", EINVAL, "header.msg_size"),
    ("command-0", msg(0, b""), ENOTSUP, "header.command"),
    ("command-14-reserved", msg(14, b""), ENOTSUP, "header.command"),
    ("command-19", msg(19, b""), ENOTSUP, "header.command"),
    ("type-2", msg(13, b"", flags=2), EINVAL, "header.flags"),
    ("unknown-flag-bit", msg(13, b"", flags=0x40), EINVAL, "header.flags"),
    ("no-reply-in-reply", msg(13, b"", flags=R | 0x10), EINVAL, "header.flags"),
    ("error-in-command", msg(13, b"", flags=0x20, error=22), EINVAL, "header.flags"),
    ("error-without-bit", msg(13, b"", flags=R, error=22), EINVAL, "header.error"),
    ("reset-with-payload", msg(13, b"x"), EINVAL, "DEVICE_RESET.payload"),
    ("region-read-short", msg(9, bytes(15)), EINVAL, "REGION_READ.payload"),
    ("region-read-long", msg(9, bytes(17)), EINVAL, "REGION_READ.payload"),
    (
        "region-read-reply-count",
        msg(9, u64(0) + u32(0) + u32(4) + b"abc", R),
        EINVAL,
        "REGION_READ.reply.count",
    ),
    ("region-write-count", msg(10, u64(0) + u32(0) + u32(9) + bytes(8)), EINVAL, "count"),
    ("dma-write-count", msg(12, u64(0) + u64(1 << 40)), EINVAL, "DMA_WRITE.count"),
    ("dma-write-reply-size", msg(12, bytes(14), R), EINVAL, "DMA_WRITE.reply.payload"),
    ("version-short", msg(1, b"\0\0"), EINVAL, "VERSION.payload"),
    ("version-no-nul", msg(1, bytes(4) + b"{}"), EINVAL, "VERSION.json"),
    ("version-nul-inside", msg(1, bytes(4) + b"{}\0{}\0"), EINVAL, "VERSION.json"),
    ("version-bad-json", msg(1, bytes(4) + b"{,}\0"), EINVAL, "VERSION.json"),
    ("version-bad-utf8", msg(1, bytes(4) + b'{"\xff":1}\0'), EINVAL, "VERSION.json"),
    ("version-nan", msg(1, bytes(4) + b'{"a":NaN}\0'), EINVAL, "VERSION.json"),
    ("version-list", msg(1, bytes(4) + b"[]\0"), EINVAL, "VERSION.json"),
    ("version-deep", msg(1, bytes(4) + b"[" * 50000 + b"\0"), EINVAL, "VERSION.json"),
    (
        "version-fds-type",
        msg(1, bytes(4) + b'{"capabilities":{"max_msg_fds":"8"}}\0'),
        EINVAL,
        "max_msg_fds",
    ),
    (
        "version-twin-type",
        msg(1, bytes(4) + b'{"capabilities":{"twin_socket":{"supported":1}}}\0'),
        EINVAL,
        "twin_socket.supported",
    ),
    ("dma-map-flags", msg(2, u32(32) + u32(0x10) + bytes(24)), EINVAL, "DMA_MAP.flags"),
    ("dma-map-argsz", msg(2, u32(31) + u32(3) + bytes(24)), EINVAL, "DMA_MAP.argsz"),
    ("dma-unmap-flags", msg(3, u32(24) + u32(3) + bytes(16)), EINVAL, "DMA_UNMAP.flags"),
    ("region-info-argsz", msg(5, u32(16) + bytes(28)), EINVAL, "DEVICE_GET_REGION_INFO.argsz"),
    (
        "region-info-cap-offset",
        msg(5, RI + u32(40) + bytes(16) + bytes(48), R),
        EINVAL,
        "cap_offset",
    ),
    (
        "region-info-cap-overrun",
        msg(5, u32(56) + u32(0xF) + u32(1) + u32(32) + bytes(16) + u16(1) + u16(1) + u32(0)
            + u32(2) + u32(0) + bytes(8), R),
        EINVAL,
        "nr_areas",
    ),
    (
        "region-info-cap-next-backwards",
        msg(5, u32(48) + u32(0xF) + u32(1) + u32(32) + bytes(16) + u16(2) + u16(1) + u32(8)
            + bytes(8), R),
        EINVAL,
        "next",
    ),
    (
        "region-info-truncated-garbage",
        msg(5, u32(80) + u32(7) + u32(1) + u32(0) + bytes(16) + b"\x01", R),
        EINVAL,
        "DEVICE_GET_REGION_INFO.reply.payload",
    ),
    (
        "io-fds-entry-size",
        msg(6, u32(60) + u32(0) + u32(0) + u32(1) + bytes(44), R),
        EINVAL,
        "DEVICE_GET_REGION_IO_FDS.reply.count",
    ),
    (
        "set-irqs-two-data-bits",
        msg(8, u32(20) + u32(0x23) + bytes(12)),
        EINVAL,
        "DEVICE_SET_IRQS.flags",
    ),
    (
        "set-irqs-bool-count",
        msg(8, u32(21) + u32(0x22) + u32(0) + u32(0) + u32(2) + b"\1"),
        EINVAL,
        "DEVICE_SET_IRQS.count",
    ),
    ("write-multi-cnt", msg(15, u64(2) + bytes(24)), EINVAL, "REGION_WRITE_MULTI.wr_cnt"),
    (
        "write-multi-count-9",
        msg(15, u64(1) + u64(0) + u32(0) + u32(9) + bytes(8)),
        EINVAL,
        "wrs[0].count",
    ),
    ("feature-get-and-set", msg(16, u32(16) + u32(0x30002)), EINVAL, "DEVICE_FEATURE.flags"),
    ("feature-no-op", msg(16, u32(16) + u32(0x2)), EINVAL, "DEVICE_FEATURE.flags"),
    ("feature-bit-19", msg(16, u32(16) + u32(0x90002)), EINVAL, "DEVICE_FEATURE.flags"),
    ("feature-state-short", msg(16, STATE_SET + u32(2)), EINVAL, "DEVICE_FEATURE.data"),
    (
        "feature-set-argsz-small",
        msg(16, u32(8) + u32(0x20002) + u32(2) + u32(0)),
        EINVAL,
        "DEVICE_FEATURE.argsz",
    ),
    (
        "feature-logging-num-ranges",
        msg(16, u32(40) + u32(0x20006) + u64(4096) + u32(2) + u32(0) + bytes(16)),
        EINVAL,
        "num_ranges",
    ),
    (
        "feature-report-bitmap-len",
        msg(16, u32(48) + u32(0x10008) + u64(0) + u64(0x1000) + u64(4096) + bytes(16), R),
        EINVAL,
        "bitmap",
    ),
    (
        "feature-report-bits-beyond-range",
        msg(16, u32(40) + u32(0x10008) + u64(0) + u64(0x1000) + u64(4096) + u64(2), R),
        EINVAL,
        "bitmap",
    ),
    (
        "feature-report-page-size",
        msg(16, u32(40) + u32(0x10008) + u64(0) + u64(0x1000) + u64(3000) + u64(0), R),
        EINVAL,
        "page_size",
    ),
    (
        "feature-get-reply-argsz",
        msg(16, u32(32) + u32(0x10001) + u64(1), R),
        EINVAL,
        "DEVICE_FEATURE.reply.argsz",
    ),
    ("mig-read-argsz", msg(17, u32(1031) + u32(1024)), EINVAL, "MIG_DATA_READ.argsz"),
    ("mig-read-reply-size", msg(17, u32(12) + u32(4) + b"abc", R), EINVAL, "size"),
    ("mig-read-reply-argsz", msg(17, u32(16) + u32(4) + b"abcd", R), EINVAL, "argsz"),
    (
        "mig-read-reply-padding",
        msg(17, u32(12) + u32(4) + b"abcd" + b"\0\1", R),
        EINVAL,
        "padding",
    ),
    ("mig-write-size", msg(18, u32(12) + u32(4) + b"abc"), EINVAL, "MIG_DATA_WRITE.size"),
    ("mig-write-argsz", msg(18, u32(8) + u32(4) + b"abcd"), EINVAL, "MIG_DATA_WRITE.argsz"),
    ("mig-write-reply-payload", msg(18, b"x", R), EINVAL, "MIG_DATA_WRITE.reply.payload"),
]


@pytest.mark.parametrize(("name", "data", "err", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input(name: str, data: bytes, err: int, field: str) -> None:
    with pytest.raises(WireError) as info:
        decode(data)
    assert info.value.errno == err
    assert field in info.value.field, str(info.value)
    assert isinstance(info.value, ValueError)
    if len(data) >= 16:
        assert info.value.header is not None and info.value.header.msg_id == 1


def test_max_size_parameter() -> None:
    data = encode(RegionRead(0, 0, 4))
    assert decode(data, max_size=32) == RegionRead(0, 0, 4)
    with pytest.raises(WireError) as info:
        decode(data, max_size=31)
    assert info.value.errno == E2BIG


def test_expect_reply_mismatch() -> None:
    data = encode(RegionRead(0, 0, 4))
    with pytest.raises(WireError, match="expected a reply"):
        decode(data, expect_reply=True)
    assert decode(data, expect_reply=False) == RegionRead(0, 0, 4)


def test_decode_header_and_error_reply() -> None:
    data = msg(9, u64(0) + u32(0xDEADBEEF) + u32(4))
    header = decode_header(data)
    assert header == Header(1, 9, 32, 0, 0) and not header.is_reply
    rep = error_reply(header, errno.EINVAL)
    assert encode(rep) == u16(1) + u16(9) + u32(16) + u32(0x21) + u32(22)
    echoed = error_reply(decode(data), errno.EINVAL, data[16:])
    assert encode(echoed) == u16(1) + u16(9) + u32(32) + u32(0x21) + u32(22) + data[16:]
    assert encode(echoed, strict_spec=True) == encode(rep)
    assert echoed.echoed_request() == RegionRead(0, 0xDEADBEEF, 4, msg_id=1)
    assert rep.command is Command.REGION_READ


def test_encode_rejects_inconsistent_fields() -> None:
    from vfio_user_mig.wire import MigDataReadReply, RegionReadReply, RegionWrite

    with pytest.raises(WireError, match="count"):
        encode(RegionWrite(0, 0, 5, b"abcd"))
    with pytest.raises(WireError, match="count"):
        encode(RegionReadReply(0, 0, 1, b""))
    with pytest.raises(WireError):
        encode(RegionRead(1 << 64, 0, 4))
    with pytest.raises(WireError, match="requested"):
        encode(MigDataReadReply(b"abcd", requested=2))
