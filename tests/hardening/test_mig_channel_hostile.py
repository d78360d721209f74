"""Hostile input on the experimental migration-data socket: every bad message gets its errno
on that socket, fds sent with it are closed, the device keeps its state and the main socket
keeps serving; a stream that cannot be resynchronised ends the channel only."""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.simulator.test_mig_channel import Served, _open_fds
from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.server.types import ServerConfig
from vfio_user_mig.simulator.transport import recv_into, send_parts

BAR0 = 0
_HEADER = struct.Struct("<HHIII")


class Channel(Served):
    """A served migdev whose client negotiated the channel; ``raw`` is the channel socket."""

    def __init__(self) -> None:
        super().__init__()
        self.client.negotiate(mig_data_socket=True)
        assert self.client.mig_channel is not None
        self.raw = self.client.mig_channel.sock

    def reply(self) -> wire.Header:
        """The next message on the channel, whole; its header (unpacked as is: an error
        reply echoes even an unknown command)."""
        head = bytearray(16)
        view = memoryview(head)
        got = 0
        while got < 16:
            n, fds = recv_into(self.raw, view[got:])
            assert not fds
            got += n
        header = wire.Header(*_HEADER.unpack(head))
        rest = header.msg_size - 16
        while rest:
            rest -= len(self.raw.recv(rest))
        return header


@pytest.fixture
def ch() -> Iterator[Channel]:
    c = Channel()
    yield c
    c.close()


def test_unknown_command_on_the_channel(ch: Channel) -> None:
    ch.raw.sendall(_HEADER.pack(7, 99, 16, 0, 0))
    header = ch.reply()
    assert header.msg_id == 7 and header.is_error and header.error == errno.EINVAL
    ch.client.set_state(State.PRE_COPY)
    assert ch.client.mig_channel is not None
    assert len(ch.client.mig_channel.mig_data_read(4096)) == 4096  # still serving


def test_malformed_mig_data_read_on_the_channel(ch: Channel) -> None:
    ch.client.set_state(State.PRE_COPY)
    # MIG_DATA_READ whose payload is 4 bytes instead of 8.
    ch.raw.sendall(_HEADER.pack(9, int(wire.Command.MIG_DATA_READ), 20, 0, 0) + b"\0" * 4)
    header = ch.reply()
    assert header.msg_id == 9 and header.is_error and header.error == errno.EINVAL
    assert ch.client.mig_channel is not None
    assert len(ch.client.mig_channel.mig_data_read(4096)) == 4096


def test_fds_sent_on_the_channel_are_closed_and_refused(ch: Channel) -> None:
    ch.client.set_state(State.PRE_COPY)
    efd = os.eventfd(0)
    before = _open_fds()
    msg = wire.MigDataRead(size=4096, msg_id=11)
    send_parts(ch.raw, wire.encode_parts(msg), [efd])
    header = ch.reply()
    assert header.msg_id == 11 and header.is_error and header.error == errno.EINVAL
    os.close(efd)
    assert _open_fds() == before - 1  # the server closed its copy
    assert ch.client.mig_channel is not None
    assert len(ch.client.mig_channel.mig_data_read(4096)) == 4096


def test_impossible_msg_size_ends_the_channel_not_the_connection(ch: Channel) -> None:
    too_big = ServerConfig().max_msg_size + 1
    ch.raw.sendall(_HEADER.pack(13, int(wire.Command.MIG_DATA_WRITE), too_big, 0, 0))
    header = ch.reply()
    assert header.msg_id == 13 and header.is_error and header.error == errno.E2BIG
    assert ch.raw.recv(1) == b""  # the channel is closed
    deadline = time.monotonic() + 5
    while ch.hosted.core.mig_channel is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ch.hosted.core.mig_channel is None
    c = ch.client
    assert c.region_read(BAR0, 0, 4) == b"MGDV"
    c.set_state(State.PRE_COPY)
    assert len(c.mig_data_read(4096)) == 4096  # migration data is back on the main socket


def test_state_is_kept_when_the_channel_breaks_mid_stream(ch: Channel) -> None:
    c = ch.client
    c.set_state(State.PRE_COPY)
    assert c.mig_channel is not None
    c.mig_channel.mig_data_read(4096)
    ch.raw.shutdown(socket.SHUT_RDWR)
    assert c.get_state() == State.PRE_COPY
    assert c.region_read(BAR0, 0, 4) == b"MGDV"
