"""Framer: same messages whatever the split; fds; size limit before buffering; recv_into path."""

from __future__ import annotations

import errno

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wire_strategies import any_message

from vfio_user_mig.wire import (
    DeviceReset,
    Framer,
    Message,
    MigDataWrite,
    RegionRead,
    RegionWrite,
    WireError,
    encode,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _drain(framer: Framer) -> list[tuple[Message, list[int]]]:
    return list(framer.messages())


@SETTINGS
@given(st.lists(any_message, min_size=1, max_size=6), st.data())
def test_any_split_gives_the_same_messages(messages: list[Message], data: st.DataObject) -> None:
    stream = b"".join(encode(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    framer = Framer(max_size=1 << 16)
    out: list[tuple[Message, list[int]]] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        framer.feed(stream[prev:cut])
        out.extend(_drain(framer))
        prev = cut
    assert [encode(m) for m, _ in out] == [encode(m) for m in messages]
    assert out == [(m, []) for m in messages]
    assert framer.at_boundary


@SETTINGS
@given(st.lists(any_message, min_size=1, max_size=5), st.data())
def test_recv_buffer_commit_path(messages: list[Message], data: st.DataObject) -> None:
    stream = memoryview(b"".join(encode(m) for m in messages))
    framer = Framer()
    pos = 0
    while pos < len(stream):
        want = data.draw(st.integers(1, 64))
        buf = framer.recv_buffer(want)
        k = min(len(buf), len(stream) - pos)
        buf[:k] = stream[pos : pos + k]  # what sock.recv_into(buf) would do
        framer.commit(k)
        pos += k
    assert [m for m, _ in _drain(framer)] == messages


def test_fds_attach_to_the_message_of_the_first_byte() -> None:
    a, b, c = encode(RegionRead(0, 0, 4, msg_id=1)), encode(DeviceReset(msg_id=2)), encode(
        RegionRead(8, 1, 4, msg_id=3)
    )
    framer = Framer()
    framer.feed(a[:5], fds=[10])  # first piece of message 1
    framer.feed(a[5:] + b, fds=[11])  # starts inside message 1
    framer.feed(c, fds=[12, 13])  # starts at a boundary: message 3
    got = _drain(framer)
    assert [(m.msg_id, fds) for m, fds in got] == [(1, [10, 11]), (2, []), (3, [12, 13])]


def test_size_limit_is_enforced_before_buffering() -> None:
    big = encode(MigDataWrite(bytes(4096)))
    framer = Framer(max_size=1024)
    framer.feed(encode(DeviceReset(msg_id=9)))
    framer.feed(big[:16], fds=[5])
    assert framer.next_message() == (DeviceReset(msg_id=9), [])
    with pytest.raises(WireError) as info:
        framer.next_message()
    assert info.value.errno == errno.E2BIG and info.value.field == "header.msg_size"
    assert info.value.fds == [5] and info.value.header is not None
    with pytest.raises(WireError):  # the stream is desynchronized for good
        framer.feed(big[16:])
    with pytest.raises(WireError):
        framer.next_message()


def test_msg_size_below_header_is_a_framing_error() -> None:
    framer = Framer()
    framer.feed(b"\x01\x00\x0d\x00\x08\x00\x00\x00" + bytes(8))
    with pytest.raises(WireError) as info:
        framer.next_message()
    assert info.value.errno == errno.EINVAL


def test_bad_message_does_not_desynchronize() -> None:
    bad = bytearray(encode(RegionRead(0, 0, 4, msg_id=1)))
    bad[2] = 14  # reserved command, but msg_size still frames it
    framer = Framer()
    framer.feed(bytes(bad) + encode(DeviceReset(msg_id=2)), fds=[7])
    with pytest.raises(WireError) as info:
        framer.next_message()
    assert info.value.errno == errno.ENOTSUP and info.value.fds == [7]
    assert framer.next_message() == (DeviceReset(msg_id=2), [])
    assert framer.next_message() is None


def test_large_payload_is_received_in_place() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    wire = encode(RegionWrite(0, 1, len(payload), payload))
    framer = Framer(max_size=len(wire))
    framer.feed(wire[:16])
    assert framer.needed == len(wire) - 16
    view = framer.recv_buffer(len(wire))
    assert len(view) == len(wire) - 16  # the whole payload in one receive
    view[:] = wire[16:]
    framer.commit(len(view))
    msg, _ = framer.next_message() or (None, None)
    assert isinstance(msg, RegionWrite) and isinstance(msg.data, memoryview)
    assert msg.data.obj is view.obj  # the very buffer received into: no copy
    assert msg.data == payload


def test_expect_reply_and_commit_bounds() -> None:
    framer = Framer(expect_reply=True)
    framer.feed(encode(DeviceReset()))
    with pytest.raises(WireError, match="expected a reply"):
        framer.next_message()
    with pytest.raises(ValueError):
        framer.commit(17)
