"""Endpoints: thread and process hosting give the same back door."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from vfio_user_mig.check.requests import raw_message, version_request
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.migration.isolation import ServerSpec, make_endpoint
from vfio_user_mig.wire import Command


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_endpoint_back_door(isolation: str) -> None:
    ep = make_endpoint(isolation, ServerSpec(mem_size=1 << 16), "src")
    try:
        client = Client(ep.connect(), timeout=5.0)
        client.negotiate()
        assert ep.state() is State.RUNNING and ep.digest()
        assert ep.inject_arc_failure(State.RUNNING, State.STOP, errno.EBUSY, False)
        with pytest.raises(VfioUserError) as info:
            client.set_state(State.STOP)
        assert info.value.errno == errno.EBUSY and ep.state() is State.RUNNING
        ep.crash()
        with pytest.raises((OSError, TimeoutError)):
            client.get_state()
    finally:
        ep.close()


def test_unknown_isolation() -> None:
    with pytest.raises(ValueError):
        make_endpoint("vm", ServerSpec(), "x")


def _replies(sock: socket.socket) -> list[int]:
    """msg_ids of the whole replies read until the server's end of stream."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    ids = []
    while len(data) >= 16:
        msg_id, _cmd, size, _flags, _err = struct.unpack_from("<HHIII", data)
        ids.append(msg_id)
        data = data[size:]
    return ids


@pytest.mark.parametrize("isolation", ["thread", "process"])
def test_a_crash_answers_what_was_sent_before_it(isolation: str) -> None:
    """The server dies between two messages: every request sent before ``crash()`` gets its
    reply, whatever the threads' timing (a seed's run must not depend on it); a send after it
    fails."""
    ep = make_endpoint(isolation, ServerSpec(mem_size=1 << 16), "dst")
    try:
        sock = ep.connect()
        sock.settimeout(10)
        sock.sendall(version_request(1) + b"".join(
            raw_message(i, Command.DEVICE_GET_INFO, struct.pack("<IIII", 16, 0, 0, 0))
            for i in range(2, 40)))
        ep.crash()
        assert _replies(sock) == list(range(1, 40))
        with pytest.raises(OSError):
            sock.sendall(raw_message(40, Command.DEVICE_GET_INFO, bytes(16)))
    finally:
        ep.close()
