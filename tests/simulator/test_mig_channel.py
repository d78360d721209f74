"""The experimental migration-data socket (``x-mig-data-socket``), end to end over sockets."""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vfio_user_mig import wire
from vfio_user_mig.model import State
from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.io import VfioUserError
from vfio_user_mig.simulator.client.threaded import ThreadedClient
from vfio_user_mig.simulator.migration.session import Hooks, MigrateOptions, migrate
from vfio_user_mig.simulator.server.hosting import HostedDevice, host_device
from vfio_user_mig.simulator.server.io import serve_socketpair
from vfio_user_mig.simulator.server.types import ServerConfig
from vfio_user_mig.wire.capabilities import MIG_DATA_SOCKET_KEY

BAR0, BAR2 = 0, 2


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Served:
    def __init__(self, enabled: bool = True, mem_size: int = 1 << 20) -> None:
        config = ServerConfig(experimental_mig_data_socket=enabled)
        self.hosted: HostedDevice = host_device("migdev", mem_size=mem_size, config=config)
        self.server_sock, client_sock = socket.socketpair()
        self.thread, self.stop = serve_socketpair(self.hosted.core, self.server_sock)
        self.client = Client(client_sock, timeout=5.0)

    def close(self) -> None:
        self.client.close()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.server_sock.close()
        self.hosted.close()


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.close()


def test_negotiated_channel_carries_the_stream(served: Served) -> None:
    c = served.client
    reply = c.negotiate(mig_data_socket=True)
    assert reply.capabilities is not None
    assert reply.capabilities.obj["capabilities"][MIG_DATA_SOCKET_KEY] == {"fd_index": 0}
    channel = c.mig_channel
    assert channel is not None and c.data_client is channel
    assert served.hosted.core.mig_channel is not None
    c.region_write(BAR2, 0, b"M" * 4096)
    c.set_state(State.STOP_COPY)
    stream = b"".join(bytes(x) for x in channel.mig_data_read_stream(64 * 1024, 2))
    assert stream.startswith(b"MGDV") and len(stream) > (1 << 20)


def test_channel_refuses_other_commands_and_main_refuses_mig_data(served: Served) -> None:
    c = served.client
    c.negotiate(mig_data_socket=True)
    channel = c.mig_channel
    assert channel is not None
    with pytest.raises(VfioUserError) as info:
        channel.region_read(BAR0, 0, 4)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError) as info:
        channel.device_info()
    assert info.value.errno == errno.EINVAL
    c.set_state(State.PRE_COPY)
    with pytest.raises(VfioUserError) as info:
        c.mig_data_read(4096)  # the main socket while the channel is open
    assert info.value.errno == errno.EINVAL
    assert c.region_read(BAR0, 0, 4) == b"MGDV"  # the main socket keeps serving
    assert len(channel.mig_data_read(4096)) == 4096


def test_gating_applies_on_the_channel(served: Served) -> None:
    c = served.client
    c.negotiate(mig_data_socket=True)
    channel = c.mig_channel
    assert channel is not None
    with pytest.raises(VfioUserError) as info:
        channel.mig_data_read(4096)  # RUNNING is not a saving state
    assert info.value.errno == errno.EINVAL
    with pytest.raises(VfioUserError):
        channel.mig_data_write(b"x")  # nor a resuming one


def test_closing_the_channel_returns_mig_data_to_the_main_socket(served: Served) -> None:
    c = served.client
    c.negotiate(mig_data_socket=True)
    assert c.mig_channel is not None
    c.mig_channel.close()
    c.mig_channel = None
    deadline = time.monotonic() + 5
    while served.hosted.core.mig_channel is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served.hosted.core.mig_channel is None
    c.set_state(State.PRE_COPY)
    assert len(c.mig_data_read(4096)) == 4096


def test_server_without_the_feature_ignores_the_offer() -> None:
    s = Served(enabled=False)
    try:
        reply = s.client.negotiate(mig_data_socket=True)
        assert reply.capabilities is not None
        assert MIG_DATA_SOCKET_KEY not in reply.capabilities.obj["capabilities"]
        assert s.client.mig_channel is None and s.client.data_client is s.client
        s.client.set_state(State.PRE_COPY)
        assert len(s.client.mig_data_read(4096)) == 4096
    finally:
        s.close()


def test_client_that_does_not_offer_gets_no_channel(served: Served) -> None:
    reply = served.client.negotiate()
    assert reply.capabilities is not None
    assert MIG_DATA_SOCKET_KEY not in reply.capabilities.obj["capabilities"]
    assert served.hosted.core.mig_channel is None


def test_disconnect_ends_the_channel_and_leaks_no_fd() -> None:
    before = _open_fds()
    threads = threading.active_count()
    for _ in range(5):
        s = Served()
        s.client.negotiate(mig_data_socket=True)
        assert s.client.mig_channel is not None
        s.client.set_state(State.PRE_COPY)
        s.client.data_client.mig_data_read(4096)
        s.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == threads
    assert _open_fds() == before


def test_capability_shape_is_validated() -> None:
    for bad in ({"supported": 1}, {"fd_index": -1}, []):
        text = json.dumps({"capabilities": {MIG_DATA_SOCKET_KEY: bad}})
        with pytest.raises(wire.WireError) as info:
            wire.Capabilities.parse(text.encode() + b"\0")
        assert info.value.errno == errno.EINVAL
    caps = wire.Capabilities.parse(b'{"capabilities":{"x-mig-data-socket":{"fd_index":0}}}\0')
    assert caps.mig_data_socket_fd_index == 0 and not caps.mig_data_socket_supported


@pytest.mark.parametrize("isolation", ["thread", "process"])
@pytest.mark.parametrize("threaded", [False, True])
def test_migration_over_the_channel_verifies(isolation: str, threaded: bool) -> None:
    hooks = Hooks(client_factory=lambda _label, sock, guest, timeout: ThreadedClient(
        sock, memory=guest.memory, timeout=timeout)) if threaded else None
    opts = MigrateOptions(device_mem=2 << 20, guest_mem=4 << 20, mig_data_socket=True,
                          isolation=isolation, chunk=256 * 1024)
    result = migrate(opts, hooks)
    assert result.ok and result.summary["verified"], result.outcome
