"""Fixtures: a migdev served by a ServerCore over a real socketpair, and a client."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from vfio_user_mig.simulator.client.api import Client
from vfio_user_mig.simulator.client.memory import GuestMemory
from vfio_user_mig.simulator.device import MigDev
from vfio_user_mig.simulator.server.core import ServerCore
from vfio_user_mig.simulator.server.hosting import host_device
from vfio_user_mig.simulator.server.io import serve_socketpair


@dataclass
class Session:
    device: MigDev
    core: ServerCore
    client: Client
    memory: GuestMemory
    server_sock: socket.socket

    def reconnect(self, **client_kwargs: object) -> Client:
        """Drop the connection and connect a new client to the same server core."""
        self.client.close()
        self._thread.join(5)
        self.server_sock.close()
        a, b = socket.socketpair()
        self.server_sock = a
        self._thread, self._stop = serve_socketpair(self.core, a)
        self.client = Client(b, memory=self.memory, timeout=5.0, **client_kwargs)  # type: ignore[arg-type]
        return self.client


def make_session(mem_size: int = 1 << 20, guest: int = 1 << 20, **client_kwargs: object) -> Session:
    hosted = host_device("migdev", mem_size=mem_size)
    device, core = hosted.device, hosted.core
    a, b = socket.socketpair()
    thread, stop = serve_socketpair(core, a)
    memory = GuestMemory(guest)
    client = Client(b, memory=memory, timeout=5.0, **client_kwargs)  # type: ignore[arg-type]
    session = Session(device, core, client, memory, a)
    session._thread, session._stop = thread, stop  # type: ignore[attr-defined]
    return session


def close_session(s: Session) -> None:
    s.client.close()
    s._stop.set()  # type: ignore[attr-defined]
    s._thread.join(5)  # type: ignore[attr-defined]
    s.server_sock.close()
    s.core.close()
    s.device.close()
    s.memory.close()


@pytest.fixture
def session() -> Iterator[Session]:
    s = make_session()
    s.client.negotiate()
    yield s
    close_session(s)


def serve_device(device: MigDev, *, timeout: float = 5.0, socket_timeout: float | None = None
                 ) -> tuple[Client, Callable[[], None]]:
    """``device`` served on one end of a socketpair (the server core in a thread), a negotiated
    client on the other; returns the client and the function that closes all of it.
    ``socket_timeout`` puts a Python timeout on the client's socket (then the client polls with
    select instead of SO_RCVTIMEO)."""
    core = ServerCore(device)
    a, b = socket.socketpair()
    if socket_timeout is not None:
        b.settimeout(socket_timeout)
    thread, stop = serve_socketpair(core, a)
    client = Client(b, timeout=timeout)
    client.negotiate()

    def close() -> None:
        client.close()
        stop.set()
        thread.join(5)
        a.close()
        core.close()
        device.close()

    return client, close
